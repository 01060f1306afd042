"""The runtime's features on the asyncio backend (the rest of the suite mostly runs on trio)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, call, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.tasks import Graph, parallel, pause, pipeline

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


log: list = []


@pytest.fixture(autouse=True)
def _reset():
    log.clear()


@task.with_options(retry_max_attempts=2, retry_delay=0, fallback=lambda x: f"fallback {x}")
async def flaky(x: int) -> str:
    log.append(("flaky", x))
    if x < 0:
        raise ValueError("negative")
    if len([e for e in log if e[0] == "flaky"]) < 2:
        raise ConnectionError("first attempt fails")
    return f"ok {x}"


async def undo(i):
    log.append(("undo", i))


@task.with_options(rollback=undo)
async def slow(i: int) -> int:
    await asyncio.sleep(30)  # asyncio code inside a task, cancelled by the failing sibling
    return i


@task
async def broken() -> None:
    await asyncio.sleep(0)
    raise KeyError("broken")


@task
async def inc(x: int) -> int:
    return x + 1


@workflow
async def child(ctx: ExecutionContext[int]):
    return await inc(ctx.input)


@workflow
async def everything(ctx: ExecutionContext):
    retried = await flaky(1)
    fallen = await flaky(-1)
    try:
        await parallel(slow(1), broken(), slow(2))
    except KeyError:
        caught = "caught"
    piped = await pipeline(inc, inc, input=1)
    mapped = await inc.map([1, 2, 3])
    sub = await call(child, 10)
    g = Graph("g").add_node("a", inc).add_node("b", inc).add_edge("a", "b")
    graphed = await g.start_with("a").end_with("b")(5)
    answer = await pause("approve")
    return [retried, fallen, caught, piped, mapped, sub, graphed, answer]


async def test_every_pattern_on_asyncio():
    async with open_engine() as engine:
        ctx = await everything.arun(engine=engine)
        assert ctx.state is ExecutionState.PAUSED
        done = await everything.arun(execution_id=ctx.execution_id, resume_value="y", engine=engine)
    assert done.output == ["ok 1", "fallback -1", "caught", 3, [2, 3, 4], 11, 7, "y"]
    assert sorted(x for x in log if x[0] == "undo") == [("undo", 1), ("undo", 2)]
    cancelled = {e.source_id for e in done.events if e.type is E.TASK_CANCELLED}
    assert cancelled == {"parallel#2/slow#0", "parallel#2/slow#2"}
    # replay on resume ran no completed body again
    assert [x for x in log if x[0] == "flaky"] == [
        ("flaky", 1),
        ("flaky", 1),
        ("flaky", -1),
        ("flaky", -1),
        ("flaky", -1),
    ]


async def test_task_timeout_on_asyncio():
    from flux import TaskTimeoutError

    @task.with_options(timeout=0.05)
    async def too_slow() -> None:
        await asyncio.sleep(10)

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await too_slow()
        except TaskTimeoutError as e:
            return str(e)

    with anyio.fail_after(5):
        ctx = await wf.arun()
    assert "timed out after 0.05s" in ctx.output
