"""Builtins: recorded values, durable sleep, pause and resume."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.tasks import choice, now, pause, randint, random, randrange, sleep, uuid4

counter: list[int] = []


@pytest.fixture(autouse=True)
def _reset():
    counter.clear()


@task
async def count(n: int) -> int:
    counter.append(n)
    return n


@workflow
async def randoms(ctx: ExecutionContext):
    t1 = await now()
    t2 = await now()
    return {
        "t1": t1,
        "t2": t2,
        "uuid": await uuid4(),
        "int": await randint(1, 10**9),
        "range": await randrange(0, 10**9, 7),
        "float": await random(),
        "choice": await choice(["a", "b", "c", "d"]),
    }


@pytest.mark.trio
async def test_builtins_are_recorded_and_replayed_exactly():
    first = await randoms.arun()
    out = first.output
    assert isinstance(out["t1"], datetime) and out["t1"].tzinfo is not None
    assert out["t1"] != out["t2"] and out["t1"] < out["t2"]  # two calls, two values
    assert isinstance(out["uuid"], uuid.UUID)
    assert 1 <= out["int"] <= 10**9 and out["range"] % 7 == 0
    assert 0 <= out["float"] < 1 and out["choice"] in "abcd"
    ids = [e.source_id for e in first.events if e.type is E.TASK_COMPLETED]
    assert ids == ["now#0", "now#1", "uuid4#2", "randint#3", "randrange#4", "random#5", "choice#6"]
    # replay from a crash after all builtins were recorded: same values
    async with open_engine() as engine:
        await _rewind(engine, first.execution_id, len(first.events) - 1)
        again = await randoms.arun(execution_id=first.execution_id, engine=engine)
    assert again.output == out


async def _rewind(engine, execution_id: str, keep: int, state: str = "RUNNING") -> None:
    def cut(conn):
        conn.execute("delete from events where execution_id=? and seq>?", (execution_id, keep))
        conn.execute(
            "update executions set state=?, output=NULL where execution_id=?",
            (state, execution_id),
        )

    await engine.store._run(cut)


@workflow
async def approvals(ctx: ExecutionContext[int]):
    a = await count(ctx.input)
    first = await pause("first_approval")
    b = await count(a + 1)
    second = await pause("second_approval")
    c = await count(b + 1)
    return [a, b, c, first, second]


@pytest.mark.trio
async def test_pause_and_resume_with_values():
    ctx = await approvals.arun(1)
    assert ctx.state is ExecutionState.PAUSED and ctx.is_paused and not ctx.has_finished
    assert counter == [1]
    assert [(e.type, e.value) for e in ctx.events[-2:]] == [
        (E.TASK_PAUSED, "first_approval"),
        (E.WORKFLOW_PAUSED, "first_approval"),
    ]
    ctx = await approvals.arun(execution_id=ctx.execution_id, resume_value={"ok": True})
    assert ctx.state is ExecutionState.PAUSED
    assert counter == [1, 2]
    resumed = [e for e in ctx.events if e.type in (E.WORKFLOW_RESUMED, E.TASK_RESUMED)]
    assert [(e.type, e.source_id, e.value) for e in resumed] == [
        (E.WORKFLOW_RESUMED, "approvals", {"ok": True}),
        (E.TASK_RESUMED, "pause#1", {"ok": True}),
    ]
    # input given to a paused execution is its resume value (0.2.7 style)
    ctx = await approvals.arun("yes", execution_id=ctx.execution_id)
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == [1, 2, 3, {"ok": True}, "yes"]
    assert counter == [1, 2, 3]  # no task ran twice across the three runs


@pytest.mark.trio
async def test_resume_without_value_gives_none():
    ctx = await approvals.arun(5)
    ctx = await approvals.arun(execution_id=ctx.execution_id)
    ctx = await approvals.arun(execution_id=ctx.execution_id)
    assert ctx.output == [5, 6, 7, None, None]


def test_sync_run_returns_on_pause():
    ctx = approvals.run(10)
    assert ctx.is_paused
    ctx = approvals.run(execution_id=ctx.execution_id, resume_value="a")
    ctx = approvals.run(execution_id=ctx.execution_id, resume_value="b")
    assert ctx.output == [10, 11, 12, "a", "b"]


@pytest.mark.trio
async def test_pause_inside_parallel_waits_for_running_siblings(autojump_clock):
    from flux.tasks import parallel

    release = anyio.Event()

    @task
    async def slow_work() -> str:
        await release.wait()
        counter.append(99)
        return "worked"

    @workflow
    async def mixed(ctx: ExecutionContext):
        return await parallel(pause("gate"), slow_work())

    async with anyio.create_task_group() as tg:
        results = {}

        async def go():
            results["ctx"] = await mixed.arun()

        tg.start_soon(go)
        await anyio.sleep(0.05)
        assert "ctx" not in results  # not suspended while a task body is still running
        release.set()
    ctx = results["ctx"]
    assert ctx.state is ExecutionState.PAUSED
    assert counter == [99]
    done = await mixed.arun(execution_id=ctx.execution_id, resume_value="go")
    assert done.output == ["go", "worked"]
    assert counter == [99]  # slow_work completed before the pause and was not run again


@pytest.mark.trio
async def test_sleep_is_a_durable_timer(autojump_clock):
    @workflow
    async def napper(ctx: ExecutionContext):
        await count(1)
        await sleep(timedelta(hours=1))
        return await count(2)

    start = anyio.current_time()
    async with open_engine(cancel_poll=None) as engine:  # no watcher: exact virtual time
        ctx = await napper.arun(engine=engine)
    assert ctx.output == 2
    assert anyio.current_time() - start == pytest.approx(3600, abs=1)
    started = next(e for e in ctx.events if e.source_id == "sleep#1" and e.type is E.TASK_STARTED)
    wake_at = started.value["args"]["wake_at"]

    # a process that crashed during the sleep resumes 50 minutes later: 10 minutes are left
    async with open_engine(clock=lambda: wake_at - 600, cancel_poll=None) as engine:
        await _rewind(engine, ctx.execution_id, started.id)
        before = anyio.current_time()
        again = await napper.arun(execution_id=ctx.execution_id, engine=engine)
        assert anyio.current_time() - before == pytest.approx(600, abs=1)
    assert again.output == 2
    # resumed after the wake time: no sleep at all
    async with open_engine(clock=lambda: wake_at + 5, cancel_poll=None) as engine:
        await _rewind(engine, ctx.execution_id, started.id)
        before = anyio.current_time()
        await napper.arun(execution_id=ctx.execution_id, engine=engine)
        assert anyio.current_time() - before == pytest.approx(0, abs=0.01)
    assert counter == [1, 2, 2, 2]  # count(1) never ran again


@pytest.mark.trio
async def test_sleep_validates_its_argument():
    @workflow
    async def bad(ctx: ExecutionContext):
        await sleep(-1)

    ctx = await bad.arun()
    assert ctx.has_failed and "non-negative" in str(ctx.output)
