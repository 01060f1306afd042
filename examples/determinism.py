"""What replay does: recorded values come back exactly, and a changed workflow is refused.

    python examples/determinism.py

1. A workflow draws a random number, a UUID and the time, and pauses.
2. Resumed, it gets the very same values back (they were recorded), not new ones.
3. The same execution resumed with *different* code (a call moved) stops with
   NondeterminismError, showing the recorded and the current call side by side, and the
   history is left intact so the original code can still finish it.
"""

from flux import ExecutionContext, NondeterminismError, task, workflow
from flux.tasks import now, pause, randint, uuid4


@task
async def charge(amount: int) -> str:
    return f"charged {amount}"


@workflow.with_options(name="lottery")
async def lottery(ctx: ExecutionContext):
    number = await randint(1, 1000)
    ticket = await uuid4()
    drawn_at = await now()
    await pause("wait_for_draw")
    return {"number": number, "ticket": str(ticket), "at": drawn_at.isoformat()}


@workflow.with_options(name="lottery")
async def lottery_edited(ctx: ExecutionContext):
    ticket = await uuid4()  # moved before randint: a different call at the same place
    number = await randint(1, 1000)
    drawn_at = await now()
    await pause("wait_for_draw")
    return {"number": number, "ticket": str(ticket), "at": drawn_at.isoformat()}


if __name__ == "__main__":
    paused = lottery.run()
    recorded = [e.value for e in paused.events if e.type.value == "TASK_COMPLETED"]
    print("recorded before the pause:", recorded[0], recorded[1], recorded[2].isoformat())

    try:
        lottery_edited.run(execution_id=paused.execution_id)
    except NondeterminismError as e:
        print("edited code refused:\n" + str(e))

    done = lottery.run(execution_id=paused.execution_id)
    print("resumed with the original code:", done.output)
    assert done.output["number"] == recorded[0]
    assert done.output["ticket"] == str(recorded[1])
    print("same values as recorded: yes")
