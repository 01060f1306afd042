"""Property: any workflow shape, crashed at any event and resumed in a fresh runtime, gives the
output of an uninterrupted run, and no task body whose completion was recorded runs again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import Counter

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.tasks import choice, now, parallel, pause, randint, sleep, uuid4

body_runs: Counter[str] = Counter()


class StepError(Exception):
    pass


@task
async def step(key: str) -> str:
    body_runs[key] += 1
    return f"done:{key}"


@task
async def failing(key: str) -> str:
    body_runs[key] += 1
    raise StepError(key)


@workflow
async def interpreter(ctx: ExecutionContext[list]):
    out = []
    for i, (kind, n) in enumerate(ctx.input):
        key = f"s{i}"
        if kind == "task":
            out.append(await step(key))
        elif kind == "fail":
            try:
                await failing(key)
            except StepError as e:
                out.append(f"caught:{e}")
        elif kind == "builtin":
            value = [now, uuid4, lambda: randint(3, 3), lambda: choice(["x"])][n % 4]
            result = await value()
            out.append(type(result).__name__ if n % 4 < 2 else result)
        elif kind == "pause":
            out.append(await pause(key))
        elif kind == "sleep":
            await sleep(0)
            out.append("slept")
        elif kind == "parallel":
            out.append(await parallel(*(step(f"{key}.{j}") for j in range(n))))
        elif kind == "parallel_fail":
            calls = [step(f"{key}.{j}") for j in range(n)] + [failing(f"{key}.x")]
            try:
                await parallel(*calls)
            except StepError as e:
                out.append(f"group-caught:{e}")
    return out


step_kinds = st.one_of(
    st.tuples(st.just("task"), st.just(0)),
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("builtin"), st.integers(0, 3)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("sleep"), st.just(0)),
    st.tuples(st.just("parallel"), st.integers(1, 4)),
    st.tuples(st.just("parallel_fail"), st.integers(1, 3)),
)


async def drive(db: str, shape, execution_id: str | None = None) -> ExecutionContext:
    """Run (or resume) until finished, answering every pause with "ok"."""
    async with open_engine(db=db, durability="normal") as engine:
        if execution_id is None:
            ctx = await interpreter.arun(shape, engine=engine)
        else:
            ctx = await interpreter.arun(
                execution_id=execution_id, resume_value="ok", engine=engine
            )
        while ctx.state is ExecutionState.PAUSED:
            ctx = await interpreter.arun(
                execution_id=ctx.execution_id, resume_value="ok", engine=engine
            )
        return ctx


def crash_copy(src: str, dst: str, execution_id: str, keep: int) -> list[tuple]:
    """Copy the store as a crash would leave it: only the first ``keep`` events."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    conn.execute("delete from events where execution_id=? and seq>?", (execution_id, keep))
    last = conn.execute(
        "select type from events where execution_id=? order by seq desc limit 1", (execution_id,)
    ).fetchone()
    state = "PAUSED" if last and last[0] == "WORKFLOW_PAUSED" else "RUNNING"
    conn.execute(
        "update executions set state=?, output=NULL where execution_id=?", (state, execution_id)
    )
    kept = conn.execute(
        "select seq, type, call_id, value from events where execution_id=? order by seq",
        (execution_id,),
    ).fetchall()
    conn.commit()
    conn.close()
    return kept


@settings(
    max_examples=int(os.environ.get("FLUX_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=st.lists(step_kinds, min_size=1, max_size=7), data=st.data())
def test_crash_anywhere_and_resume(shape, data):
    from flux.runtime import codec

    work = tempfile.mkdtemp(prefix="flux-prop-")
    try:
        original = os.path.join(work, "original.db")
        body_runs.clear()
        full = trio.run(drive, original, shape)
        assert full.state is ExecutionState.COMPLETED, full.output
        total = len(full.events)
        keep = data.draw(st.integers(1, total), label="crash after event")

        crashed = os.path.join(work, "crashed.db")
        kept = crash_copy(original, crashed, full.execution_id, keep)
        # which task bodies completed before the crash, by their key argument
        args_of = {}
        completed_keys = set()
        for _seq, type_, call_id, value in kept:
            if type_ == "TASK_STARTED":
                decoded = codec.decode(value)
                args = decoded.get("args")
                if isinstance(args, list) and args and isinstance(args[0], str):
                    args_of[call_id] = decoded["args"][0]
            if type_ == "TASK_COMPLETED" and call_id in args_of:
                completed_keys.add(args_of[call_id])

        body_runs.clear()
        resumed = trio.run(drive, crashed, shape, full.execution_id)
        assert resumed.state is ExecutionState.COMPLETED
        assert resumed.output == full.output
        rerun = {k for k in body_runs if k in completed_keys}
        assert not rerun, f"completed task bodies ran again after the crash: {rerun}"
        # the resumed history is a continuation of the kept prefix
        assert [e.id for e in resumed.events] == list(range(1, len(resumed.events) + 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
