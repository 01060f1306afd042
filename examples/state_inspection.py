"""Inspect an execution's state and events (the seed README's "State Management" snippet).

    python examples/state_inspection.py

``wf.run(execution_id=...)`` on an execution that has finished returns it unchanged, read from
the store (nothing runs again); on a paused one it resumes it. The returned ``ExecutionContext``
has the state predicates and the full event history. A failed workflow is recorded too: its
state is FAILED and ``output`` holds the exception.
"""

from flux import ExecutionContext, task, workflow


@task
async def add(a: int, b: int) -> int:
    return a + b


@task
async def divide(a: int, b: int) -> float:
    return a / b


@workflow
async def calculator(ctx: ExecutionContext[dict]):
    total = await add(ctx.input["a"], ctx.input["b"])
    return await divide(total, ctx.input["divisor"])


if __name__ == "__main__":
    first = calculator.run({"a": 4, "b": 6, "divisor": 4})
    previous_execution_id = first.execution_id

    # Resume existing workflow execution (finished: returned as recorded, nothing runs)
    ctx = calculator.run(execution_id=previous_execution_id)

    # Check workflow state
    print(f"Finished: {ctx.has_finished}")
    print(f"Succeeded: {ctx.has_succeeded}")
    print(f"Failed: {ctx.has_failed}")

    # Inspect workflow events
    for event in ctx.events:
        print(f"{event.type}: {event.value}")

    failed = calculator.run({"a": 1, "b": 2, "divisor": 0})
    print(f"Finished: {failed.has_finished}, Failed: {failed.has_failed}")
    print(f"output: {failed.output!r}")
    print(f"{ctx.state} {ctx.output} / {failed.state} {type(failed.output).__name__}")
