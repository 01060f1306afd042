"""The built-in tasks (the seed README's "Built-in Tasks" snippet, sleeping 0.1 s instead of 2.5).

    python examples/builtins.py

``now``, ``uuid4``, ``choice``, ``randint`` (and ``randrange``, ``random``) are recorded like
tasks: when the execution is replayed they return the recorded values, not new ones. ``sleep`` is
a durable timer (its wake time is recorded). ``pause`` stops the execution in state PAUSED;
``run(execution_id=...)`` resumes it, replaying everything before the pause point.
"""

from flux import ExecutionContext, workflow
from flux.tasks import choice, now, pause, randint, sleep, uuid4


@workflow
async def built_in_tasks_example(ctx: ExecutionContext):
    # Time operations
    start_time = await now()
    await sleep(0.1)  # Sleep for 0.1 seconds

    # Random operations
    random_choice = await choice(["option1", "option2", "option3"])
    random_number = await randint(1, 100)

    # UUID generation
    unique_id = await uuid4()

    # Workflow pause points
    await pause("wait_for_approval")

    return {
        "start_time": start_time,
        "choice": random_choice,
        "number": random_number,
        "id": str(unique_id),
    }


if __name__ == "__main__":
    paused = built_in_tasks_example.run()
    print(f"{paused.state.value} at 'wait_for_approval'")
    for event in paused.events:
        value = event.value
        if event.type.value == "TASK_STARTED":
            value = value["args"]  # TASK_STARTED also records kwargs and an argument digest
        print(f"  {event.type.value:18} {event.source_id:14} {value!r}")

    done = built_in_tasks_example.run(execution_id=paused.execution_id)
    out = done.output
    print(f"{done.state.value}: {out['choice']}, {out['number']}, {out['id']}, {out['start_time']}")

    recorded = {e.source_id: e.value for e in paused.events if e.type.value == "TASK_COMPLETED"}
    same = (
        out["start_time"] == recorded["now#0"]
        and out["choice"] == recorded["choice#2"]
        and out["number"] == recorded["randint#3"]
        and out["id"] == str(recorded["uuid4#4"])
    )
    print(f"resumed with the recorded values: {same}")
