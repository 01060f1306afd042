"""Retries with backoff, fallback and rollback (the seed README's "Error Handling" snippet), with
the events each path records.

    python examples/error_handling.py

Delays are tiny (0.01 s) so that it finishes at once; in real code they are seconds. Before retry
k a task waits ``retry_delay * retry_backoff ** (k - 1)``: here 0.01 s, then 0.02 s, then 0.04 s.

1. ``flaky_fetch`` fails twice and succeeds on its second retry.
2. ``risky_task`` (the seed snippet) always fails: after its retries, its ``fallback`` returns
   "fallback result" and the task completes with that value. Its rollback never runs.
3. ``reserve_seat`` always fails and has no fallback: its ``rollback`` runs, the task records
   TASK_FAILED, and the original ``ValueError`` reaches the workflow, which catches it.
"""

from flux import ExecutionContext, task, workflow

attempts = {"flaky_fetch": 0, "risky_task": 0, "reserve_seat": 0}
cleaned_up: list[str] = []


@task.with_options(retry_max_attempts=3, retry_delay=0.01, retry_backoff=2)
async def flaky_fetch(url: str) -> str:
    attempts["flaky_fetch"] += 1
    if attempts["flaky_fetch"] < 3:
        raise ConnectionError(f"{url} unreachable (attempt {attempts['flaky_fetch']})")
    return f"content of {url}"


def cleanup_function():
    cleaned_up.append("risky_task")


@task.with_options(
    retry_max_attempts=3,
    retry_delay=0.01,
    retry_backoff=2,
    fallback=lambda: "fallback result",
    rollback=cleanup_function,
)
async def risky_task():
    attempts["risky_task"] += 1
    raise RuntimeError("the risky service is down")


async def release_seat(seat: str) -> None:
    # a rollback (and a fallback) gets the same arguments as the task; async or sync
    cleaned_up.append(f"released {seat}")


@task.with_options(retry_max_attempts=1, retry_delay=0.01, rollback=release_seat)
async def reserve_seat(seat: str) -> str:
    attempts["reserve_seat"] += 1
    raise ValueError(f"seat {seat} is taken")


@workflow
async def error_handling(ctx: ExecutionContext):
    page = await flaky_fetch("https://example.com")
    fallback_value = await risky_task()
    try:
        seat = await reserve_seat("12A")
    except ValueError as e:  # the original exception type reaches the workflow
        seat = f"no seat ({e})"
    return {"page": page, "risky": fallback_value, "seat": seat}


def show(event) -> str:
    value = event.value
    if isinstance(value, dict) and "digest" in value:
        value = {"args": value["args"]}
    elif isinstance(value, dict) and isinstance(value.get("error"), BaseException):
        value = {**value, "error": repr(value["error"])}
    elif isinstance(value, dict) and "delay" in value:
        value = {**value, "delay": round(value["delay"], 3)}
    return f"  {event.type.value:24} {event.source_id:16} {value!r}"


if __name__ == "__main__":
    ctx = error_handling.run()
    for event in ctx.events:
        print(show(event))
    print("attempts:", attempts)
    print("cleaned up:", cleaned_up)
    print(ctx.state.value, ctx.output)
