"""Task timeouts: each attempt gets its own deadline.

    python examples/timeouts.py

``timeout=`` on a task is a cancel scope around each attempt. An attempt that runs past it is
cancelled and fails with ``TaskTimeoutError``, which is retried like any error; every retry starts
with a fresh ``timeout``. A timeout cancels everything the attempt started, nested task calls
included. ``@workflow.with_options(timeout=...)`` bounds a whole execution the same way.
"""

import anyio

from flux import ExecutionContext, TaskTimeoutError, task, workflow

attempt_durations = [0.5, 0.5, 0.001]  # the first two attempts hang, the third is quick
attempts = 0
nested_finished = False


@task.with_options(timeout=0.05, retry_max_attempts=2, retry_delay=0.01)
async def call_slow_service() -> str:
    global attempts
    attempts += 1
    await anyio.sleep(attempt_durations[attempts - 1])
    return f"answered on attempt {attempts}"


@task
async def step(n: int) -> int:
    global nested_finished
    await anyio.sleep(0.5)
    nested_finished = True
    return n


@task.with_options(timeout=0.05)
async def batch() -> list[int]:
    # nested task calls run inside the attempt's scope: the timeout cancels them too
    return [await step(1), await step(2)]


@workflow.with_options(timeout=0.05)
async def too_slow_workflow(ctx: ExecutionContext):
    await step(0)


@workflow
async def timeouts(ctx: ExecutionContext):
    answer = await call_slow_service()
    try:
        await batch()
        outcome = "batch finished"
    except TaskTimeoutError as e:
        outcome = f"batch: {e}"
    return [answer, outcome]


if __name__ == "__main__":
    ctx = timeouts.run()
    for event in ctx.events:
        value = event.value
        if event.type.value == "TASK_STARTED":
            value = value["args"]
        elif event.type.value == "TASK_RETRY_STARTED":
            value = f"attempt {value['attempt']} after: {value['error']}"
        elif isinstance(value, BaseException):
            value = f"{type(value).__name__}: {value}"
        print(f"  {event.type.value:20} {event.source_id:20} {value!r}")
    print("nested task finished after the timeout:", nested_finished)

    slow = too_slow_workflow.run()
    print(f"too_slow_workflow: {slow.state.value} with {type(slow.output).__name__}")
    print(ctx.state.value, ctx.output)
