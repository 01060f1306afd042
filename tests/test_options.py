"""Task options in their exact order: retries, per-attempt timeouts, fallback, rollback."""

from __future__ import annotations

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, TaskTimeoutError, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E

log: list = []


@pytest.fixture(autouse=True)
def _reset():
    log.clear()


def task_events(ctx: ExecutionContext, call_id: str) -> list[str]:
    return [e.type.value for e in ctx.events if e.source_id == call_id]


def make_flaky(failures: int, **options):
    """A task failing its first ``failures`` attempts, logging the virtual time of each."""
    attempts = {"n": 0}

    @task.with_options(name="flaky", **options)
    async def flaky(x: int) -> int:
        attempts["n"] += 1
        log.append(("attempt", attempts["n"], anyio.current_time()))
        if attempts["n"] <= failures:
            raise ValueError(f"attempt {attempts['n']} failed")
        return x * 10

    return flaky


async def run_one(t, *args):
    @workflow
    async def wf(ctx: ExecutionContext):
        return await t(*args)

    async with open_engine(cancel_poll=None) as engine:
        return await wf.arun(engine=engine)


@pytest.mark.trio
async def test_retry_schedule_is_exact(autojump_clock):
    flaky = make_flaky(3, retry_max_attempts=3, retry_delay=0.1, retry_backoff=2)
    ctx = await run_one(flaky, 4)
    assert ctx.output == 40
    times = [t for (_, _, t) in log]
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [0.1, 0.2, 0.4]
    assert task_events(ctx, "flaky#0") == [
        "TASK_STARTED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_FAILED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_FAILED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_COMPLETED",
        "TASK_COMPLETED",
    ]
    retry_started = [e.value for e in ctx.events if e.type is E.TASK_RETRY_STARTED]
    assert [v["attempt"] for v in retry_started] == [1, 2, 3]
    assert [v["delay"] for v in retry_started] == [0.1, 0.2, 0.4]
    assert str(retry_started[0]["error"]) == "attempt 1 failed"


@pytest.mark.trio
async def test_retries_exhausted_raise_the_original_error_type(autojump_clock):
    flaky = make_flaky(10, retry_max_attempts=2, retry_delay=1, retry_backoff=3)

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await flaky(1)
        except ValueError as e:  # the task's own exception type reaches the workflow
            return f"caught {e}"

    async with open_engine(cancel_poll=None) as engine:
        ctx = await wf.arun(engine=engine)
    assert ctx.output == "caught attempt 3 failed"
    assert [round(t, 6) for (_, _, t) in log][1:] == [
        round(log[0][2] + 1, 6),
        round(log[0][2] + 4, 6),
    ]
    assert task_events(ctx, "flaky#0") == [
        "TASK_STARTED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_FAILED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_FAILED",
        "TASK_FAILED",
    ]


@pytest.mark.trio
async def test_fallback_after_the_last_retry(autojump_clock):
    def fallback(x):
        log.append(("fallback", x))
        return -x

    flaky = make_flaky(10, retry_max_attempts=1, retry_delay=0.5, fallback=fallback)
    ctx = await run_one(flaky, 3)
    assert ctx.output == -3 and ctx.state is ExecutionState.COMPLETED
    assert log[-1] == ("fallback", 3)
    assert task_events(ctx, "flaky#0") == [
        "TASK_STARTED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_FAILED",
        "TASK_FALLBACK_STARTED",
        "TASK_FALLBACK_COMPLETED",
        "TASK_COMPLETED",
    ]
    completed = next(e for e in ctx.events if e.type is E.TASK_COMPLETED)
    assert completed.value == -3


@pytest.mark.trio
async def test_failing_fallback_then_rollback_then_task_failed(autojump_clock):
    async def fallback(x):
        raise RuntimeError("fallback broke too")

    async def rollback(x):
        log.append(("rollback", x))

    flaky = make_flaky(10, fallback=fallback, rollback=rollback)
    ctx = await run_one(flaky, 5)
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, ValueError) and str(ctx.output) == "attempt 1 failed"
    assert ("rollback", 5) in log
    assert task_events(ctx, "flaky#0") == [
        "TASK_STARTED",
        "TASK_FALLBACK_STARTED",
        "TASK_FALLBACK_FAILED",
        "TASK_ROLLBACK_STARTED",
        "TASK_ROLLBACK_COMPLETED",
        "TASK_FAILED",
    ]


@pytest.mark.trio
async def test_failing_rollback_is_recorded_and_original_error_propagates(autojump_clock):
    def rollback(x):
        raise OSError("cleanup failed")

    flaky = make_flaky(10, rollback=rollback)
    ctx = await run_one(flaky, 5)
    assert isinstance(ctx.output, ValueError)
    assert task_events(ctx, "flaky#0") == [
        "TASK_STARTED",
        "TASK_ROLLBACK_STARTED",
        "TASK_ROLLBACK_FAILED",
        "TASK_FAILED",
    ]
    failed = next(e for e in ctx.events if e.type is E.TASK_ROLLBACK_FAILED)
    assert isinstance(failed.value, OSError)


@pytest.mark.trio
async def test_every_attempt_has_its_own_timeout(autojump_clock):
    attempts = []

    @task.with_options(timeout=1, retry_max_attempts=2, retry_delay=0.5, retry_backoff=1)
    async def slow_then_fast(x: int) -> int:
        attempts.append(anyio.current_time())
        if len(attempts) < 3:
            await anyio.sleep(5)  # longer than the timeout
        return x

    ctx = await run_one(slow_then_fast, 9)
    assert ctx.output == 9
    gaps = [round(b - a, 6) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == [1.5, 1.5]  # 1 s timeout + 0.5 s delay, each attempt
    failures = [e.value for e in ctx.events if e.type is E.TASK_RETRY_FAILED]
    assert all(isinstance(f, TaskTimeoutError) for f in failures)
    assert "timed out after 1s" in str(failures[0])


@pytest.mark.trio
async def test_timeout_cancels_the_whole_subtree(autojump_clock):
    @task
    async def grandchild() -> None:
        try:
            await anyio.sleep(100)
        finally:
            log.append(("grandchild-ended", anyio.current_time()))

    @task
    async def child() -> None:
        await grandchild()

    @task.with_options(timeout=2)
    async def parent() -> None:
        await child()

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await parent()
        except TaskTimeoutError as e:
            return str(e)

    start = anyio.current_time()
    async with open_engine(cancel_poll=None) as engine:
        ctx = await wf.arun(engine=engine)
    assert "timed out after 2s" in ctx.output
    assert log == [("grandchild-ended", pytest.approx(start + 2, abs=0.01))]
    types = [(e.type.value, e.source_id) for e in ctx.events]
    assert ("TASK_CANCELLED", "parent#0/child#0/grandchild#0") in types
    assert ("TASK_CANCELLED", "parent#0/child#0") in types
    assert ("TASK_FAILED", "parent#0") in types
    # children are cancelled before their parent records its failure
    assert (
        types.index(("TASK_CANCELLED", "parent#0/child#0/grandchild#0"))
        < types.index(("TASK_CANCELLED", "parent#0/child#0"))
        < types.index(("TASK_FAILED", "parent#0"))
    )


@pytest.mark.trio
async def test_workflow_timeout(autojump_clock):
    @task
    async def forever() -> None:
        await anyio.sleep_forever()

    @workflow.with_options(name="bounded", timeout=3)
    async def bounded(ctx: ExecutionContext):
        await forever()

    async with open_engine(cancel_poll=None) as engine:
        ctx = await bounded.arun(engine=engine)
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, TaskTimeoutError)
    assert "timed out after 3s" in str(ctx.output)


@pytest.mark.trio
async def test_crash_in_the_middle_of_retries_resumes_the_count(autojump_clock):
    flaky = make_flaky(2, retry_max_attempts=3, retry_delay=0.1, retry_backoff=2)

    @workflow
    async def wf(ctx: ExecutionContext):
        return await flaky(7)

    async with open_engine(cancel_poll=None) as engine:
        full = await wf.arun(engine=engine)
        assert full.output == 70
        # keep history up to the first TASK_RETRY_FAILED (attempt 1 and retry 1 failed)
        cut = next(e.id for e in full.events if e.type is E.TASK_RETRY_FAILED)

        def rewind(conn):
            conn.execute(
                "delete from events where execution_id=? and seq>?", (full.execution_id, cut)
            )
            conn.execute(
                "update executions set state='RUNNING' where execution_id=?",
                (full.execution_id,),
            )

        await engine.store._run(rewind)
        log.clear()
        again = await wf.arun(execution_id=full.execution_id, engine=engine)
    assert again.output == 70
    # resumed at retry 2: exactly one more attempt ran, and it succeeded
    assert len(log) == 1
    retry_started = [e.value["attempt"] for e in again.events if e.type is E.TASK_RETRY_STARTED]
    assert retry_started == [1, 2]


def test_option_validation_names_the_option():
    with pytest.raises(ValueError, match="retry_max_attempts"):
        task.with_options(retry_max_attempts=-1)
    with pytest.raises(TypeError, match="timeout"):
        task.with_options(timeout="soon")
    with pytest.raises(TypeError, match="fallback"):
        task.with_options(fallback=3)
    with pytest.raises(TypeError, match="secret_requests"):
        task.with_options(secret_requests=[1])
    with pytest.raises(ValueError, match="retry_backoff"):
        task.with_options(retry_backoff=0)


@pytest.mark.trio
async def test_metadata_is_injected():
    from flux.decorators import TaskMetadata

    @task.with_options(metadata=True, retry_max_attempts=1, retry_delay=0)
    async def aware(data: str, metadata: TaskMetadata = None) -> dict:
        log.append(metadata)
        if metadata.attempt == 1:
            raise ValueError("first attempt fails")
        return {"id": metadata.task_id, "name": metadata.task_name, "exec": metadata.execution_id}

    @workflow
    async def wf(ctx: ExecutionContext):
        return await aware("x")

    ctx = await wf.arun()
    assert ctx.output == {"id": "aware#0", "name": "aware", "exec": ctx.execution_id}
    assert [m.attempt for m in log] == [1, 2]
    started = next(e for e in ctx.events if e.type is E.TASK_STARTED)
    assert started.value["kwargs"] == {}  # injected values are not part of the recorded call
