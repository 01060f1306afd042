"""Property: two runners racing on one execution (both start it, both resume it, one crashes at
random points and the other recovers it) never run a task body whose outcome is recorded, leave
a dense, coherent history, and produce the output of an uninterrupted run.

The runners are two engines on one SQLite file, each with its own connection and owner name.
A "crash" stops one runner's run at once (as a lost process would: nothing more is written)
and gives that engine a new owner name, the old one being reported gone, as after a restart.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import Counter

import anyio
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.runtime import owners
from flux.runtime.errors import LeaseLostError
from flux.tasks import parallel, pause, sleep

finished: Counter[str] = Counter()
violations: list[str] = []
STATE: dict[str, str] = {}


def _recorded(call_id: str) -> bool:
    conn = sqlite3.connect(STATE["db"])
    try:
        row = conn.execute(
            "select 1 from events where execution_id=? and call_id=? and type in "
            "('TASK_COMPLETED','TASK_FAILED')",
            (STATE["eid"], call_id),
        ).fetchone()
    finally:
        conn.close()
    return row is not None


class Boom(Exception):
    pass


@task.with_options(metadata=True)
async def rstep(key: str, metadata) -> str:
    if STATE.get("eid") and _recorded(metadata.task_id):
        violations.append(f"{key} ({metadata.task_id}) ran after its outcome was recorded")
    await anyio.sleep(0.001)  # a place where a crash can land
    finished[key] += 1
    return f"done:{key}"


@task.with_options(metadata=True)
async def rfail(key: str, metadata) -> str:
    if STATE.get("eid") and _recorded(metadata.task_id):
        violations.append(f"{key} ({metadata.task_id}) ran after its outcome was recorded")
    await anyio.sleep(0.001)
    finished[key] += 1
    raise Boom(key)


@workflow.with_options(name="raced")
async def raced(ctx: ExecutionContext[list]):
    out = []
    for i, (kind, n) in enumerate(ctx.input):
        key = f"s{i}"
        if kind == "task":
            out.append(await rstep(key))
        elif kind == "fail":
            try:
                await rfail(key)
            except Boom as e:
                out.append(f"caught:{e}")
        elif kind == "pause":
            out.append(await pause(key))
        elif kind == "sleep":
            await sleep(0)
            out.append("slept")
        elif kind == "parallel":
            out.append(await parallel(*(rstep(f"{key}.{j}") for j in range(n))))
    return out


kinds = st.one_of(
    st.tuples(st.just("task"), st.just(0)),
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("sleep"), st.just(0)),
    st.tuples(st.just("parallel"), st.integers(1, 3)),
)


async def uninterrupted(db: str, shape) -> ExecutionContext:
    async with open_engine(db=db, durability="normal") as engine:
        ctx = await raced.arun(shape, engine=engine)
        while ctx.state is ExecutionState.PAUSED:
            ctx = await raced.arun(execution_id=ctx.execution_id, resume_value="ok", engine=engine)
        return ctx


async def race(db: str, shape, eid: str, crashes: list[int], gone: set[str]) -> list:
    results: list = []
    async with (
        open_engine(db=db, durability="normal", lease_ttl=30) as one,
        open_engine(db=db, durability="normal", lease_ttl=30) as two,
    ):
        engines = [one, two]

        async def runner(engine) -> None:
            while True:
                try:
                    ctx = await raced.arun(
                        shape, execution_id=eid, resume_value="ok", engine=engine, wait=True
                    )
                except LeaseLostError:
                    continue  # this runner "crashed": it comes back as a new process
                if ctx.state.is_terminal:
                    results.append(ctx)
                    return

        async def crasher() -> None:
            for i, delay in enumerate(crashes):
                await anyio.sleep(delay / 1000)
                engine = engines[i % 2]
                running = engine._running.get(eid)
                if running is None:
                    continue
                gone.add(engine.owner)
                engine.owner = owners.new_owner()
                running.abandon(LeaseLostError("simulated crash"))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner, one)
                tg.start_soon(runner, two)
                tg.start_soon(crasher)
    return results


@settings(
    max_examples=int(os.environ.get("FLUX_RACE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shape=st.lists(kinds, min_size=1, max_size=6),
    crashes=st.lists(st.integers(0, 25), max_size=3),
)
def test_two_runners_racing_with_crashes(shape, crashes, monkeypatch_owner_gone):
    gone = monkeypatch_owner_gone
    gone.clear()
    work = tempfile.mkdtemp(prefix="flux-race-")
    try:
        STATE.clear()
        finished.clear()
        full = trio.run(uninterrupted, os.path.join(work, "clean.db"), shape)
        assert full.state is ExecutionState.COMPLETED

        db = os.path.join(work, "raced.db")
        STATE.update(db=db, eid="race-1")
        finished.clear()
        violations.clear()
        results = trio.run(race, db, shape, "race-1", crashes, gone)
        assert violations == []
        assert len(results) == 2
        for ctx in results:
            assert ctx.state is ExecutionState.COMPLETED
            assert ctx.output == full.output
        conn = sqlite3.connect(db)
        history = conn.execute(
            "select seq, type, call_id from events where execution_id='race-1' order by seq"
        ).fetchall()
        conn.close()
        assert [h[0] for h in history] == list(range(1, len(history) + 1))
        types = [h[1] for h in history]
        assert types.count("WORKFLOW_STARTED") == 1 and types[-1] == "WORKFLOW_COMPLETED"
        outcomes = Counter(
            h[2] for h in history if h[1] in ("TASK_COMPLETED", "TASK_FAILED", "TASK_CANCELLED")
        )
        assert all(n == 1 for n in outcomes.values()), outcomes  # one outcome per call
        if not crashes:  # nobody crashed: every body ran exactly once
            assert all(n == 1 for n in finished.values()), finished
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def monkeypatch_owner_gone(monkeypatch):
    gone: set[str] = set()
    real = owners.owner_gone
    monkeypatch.setattr(owners, "owner_gone", lambda owner: owner in gone or real(owner))
    return gone
