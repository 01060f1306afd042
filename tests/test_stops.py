"""A stop is not a failure: nondeterminism, a child's stop, store faults and lease loss stop a run
and leave the history exactly as it was (no TASK_CANCELLED, no rollback, no WORKFLOW_FAILED),
and the original code resumes it. Rollbacks that run because their task failed run once,
shielded. The first run sees what a replay sees."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from typing import NamedTuple

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.runtime.errors import NondeterminismError, StoreUnavailableError
from flux.runtime.settings import Settings
from flux.tasks import Graph, call, parallel, pause

bodies: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _clear():
    bodies.clear()


def crash_after(db: str, execution_id: str, keep: int) -> None:
    """Leave the store as a crash after event ``keep`` would: later events gone, RUNNING,
    nobody holding the lease."""
    conn = sqlite3.connect(db)
    conn.execute("delete from events where execution_id=? and seq>?", (execution_id, keep))
    conn.execute(
        "update executions set state='RUNNING', output=NULL, lease_owner=NULL, "
        "lease_expires_at=NULL where execution_id=?",
        (execution_id,),
    )
    conn.commit()
    conn.close()


def rows(db: str, execution_id: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "select seq, type, call_id, name, value, time from events where execution_id=? "
            "order by seq",
            (execution_id,),
        ).fetchall()
    finally:
        conn.close()


def state_of(db: str, execution_id: str) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "select state from executions where execution_id=?", (execution_id,)
        ).fetchone()[0]
    finally:
        conn.close()


@task
async def blocker(key: str) -> str:
    bodies[key] += 1
    await anyio.sleep(3600)
    return key


async def _undo(key: str) -> None:
    bodies[f"rollback:{key}"] += 1


@task.with_options(rollback=_undo)
async def undoable(key: str) -> str:
    bodies[key] += 1
    await anyio.sleep(0.2)
    return key


@task
async def quick(key: str) -> str:
    bodies[key] += 1
    return key


@task
async def other(key: str) -> str:
    bodies[f"other:{key}"] += 1
    return key


# --------------------------------------------------------------------------- inside parallel


@pytest.mark.trio
async def test_nondeterminism_next_to_an_in_flight_sibling_records_nothing(db_path):
    @workflow.with_options(name="fan")
    async def v1(ctx: ExecutionContext):
        return await parallel(undoable("a"), quick("b"))

    @workflow.with_options(name="fan")
    async def v2(ctx: ExecutionContext):
        return await parallel(undoable("a"), other("b"))

    async with open_engine() as engine:
        done = await v1.arun(engine=engine)
    eid = done.execution_id
    types = [e.type for e in done.events]
    # crash while undoable("a") was in flight: keep up to quick("b")'s completion only
    keep = max(
        e.id
        for e in done.events
        if e.type is E.TASK_COMPLETED and e.source_id.endswith("quick#1")
    )
    assert types.count(E.TASK_STARTED) == 2
    crash_after(db_path, eid, keep)
    before = rows(db_path, eid)
    bodies.clear()
    async with open_engine() as engine:
        with pytest.raises(NondeterminismError, match="different call"):
            await v2.arun(execution_id=eid, engine=engine)
    assert rows(db_path, eid) == before  # no TASK_CANCELLED, no rollback events
    assert bodies["rollback:a"] == 0 and bodies["other:b"] == 0
    # the original code resumes it
    async with open_engine() as engine:
        resumed = await v1.arun(execution_id=eid, engine=engine)
    assert resumed.state is ExecutionState.COMPLETED
    assert resumed.output == ["a", "b"]
    assert [e.id for e in resumed.events] == list(range(1, len(resumed.events) + 1))
    assert E.TASK_CANCELLED not in [e.type for e in resumed.events]


# --------------------------------------------------------------------------- children


@workflow.with_options(name="kid")
async def kid_v1(ctx: ExecutionContext):
    value = await pause("kid-wait")
    return f"kid:{await quick(value)}"


@workflow.with_options(name="kid")
async def kid_v2(ctx: ExecutionContext):
    await other("pre")  # where the history has the pause
    value = await pause("kid-wait")
    return f"kid:{await other(value)}"


@workflow.with_options(name="parent")
async def parent_v1(ctx: ExecutionContext):
    try:
        return await call(kid_v1, "in")
    except Exception as e:  # a child's stop must never land here
        return f"caught {type(e).__name__}"


@workflow.with_options(name="parent")
async def parent_v2(ctx: ExecutionContext):
    try:
        return await call(kid_v2, "in")
    except Exception as e:
        return f"caught {type(e).__name__}"


@pytest.mark.trio
async def test_a_childs_nondeterminism_stops_the_parent_which_stays_resumable(db_path):
    async with open_engine() as engine:
        paused = await parent_v1.arun(engine=engine)
        assert paused.state is ExecutionState.PAUSED
        children = await engine.store.list_executions(parent_id=paused.execution_id)
        assert len(children) == 1
        kid = children[0].execution_id
        before = (rows(db_path, paused.execution_id), rows(db_path, kid))
        with pytest.raises(NondeterminismError):
            await parent_v2.arun(execution_id=paused.execution_id, resume_value="x", engine=engine)
        assert (rows(db_path, paused.execution_id), rows(db_path, kid)) == before
        assert state_of(db_path, paused.execution_id) == "PAUSED"
        assert state_of(db_path, kid) == "PAUSED"
        done = await parent_v1.arun(
            execution_id=paused.execution_id, resume_value="x", engine=engine
        )
    assert done.state is ExecutionState.COMPLETED
    assert done.output == "kid:x"


# --------------------------------------------------------------------------- replay positions


@pytest.mark.trio
async def test_a_graph_in_place_of_a_call_is_caught_before_its_nodes_run(db_path):
    graph = Graph("g").add_node("n", quick).start_with("n").end_with("n")

    @workflow.with_options(name="gpos")
    async def v1(ctx: ExecutionContext):
        await quick("one")
        return await pause("p")

    @workflow.with_options(name="gpos")
    async def v2(ctx: ExecutionContext):
        await graph("node")
        return await pause("p")

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        before = rows(db_path, paused.execution_id)
        bodies.clear()
        with pytest.raises(NondeterminismError):
            await v2.arun(execution_id=paused.execution_id, resume_value=1, engine=engine)
        assert bodies == Counter()
        assert rows(db_path, paused.execution_id) == before
        done = await v1.arun(execution_id=paused.execution_id, resume_value=1, engine=engine)
    assert done.output == 1


def _graph(flip: bool) -> Graph:
    return (
        Graph("branch")
        .add_node("check", quick)
        .add_node("ship", quick)
        .add_node("refund", other)
        .add_edge("check", "ship", condition=lambda out: (out == "go") != flip)
        .add_edge("check", "refund", condition=lambda out: (out != "go") != flip)
        .start_with("check")
        .end_with("ship")
    )


@pytest.mark.trio
async def test_a_flipped_graph_condition_stops_before_the_other_branch_runs(db_path):
    @workflow.with_options(name="flip")
    async def v1(ctx: ExecutionContext):
        out = await _graph(False)("go")
        return [out, await pause("p")]

    @workflow.with_options(name="flip")
    async def v2(ctx: ExecutionContext):
        out = await _graph(True)("go")
        return [out, await pause("p")]

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        before = rows(db_path, paused.execution_id)
        bodies.clear()
        with pytest.raises(NondeterminismError, match="skips node 'ship'"):
            await v2.arun(execution_id=paused.execution_id, resume_value=2, engine=engine)
        assert bodies["other:go"] == 0  # the refund branch never ran
        assert rows(db_path, paused.execution_id) == before
        done = await v1.arun(execution_id=paused.execution_id, resume_value=2, engine=engine)
    assert done.output == ["go", 2]


@pytest.mark.trio
async def test_an_extra_map_item_before_recorded_calls_is_an_insertion(db_path):
    @workflow.with_options(name="mapins")
    async def v1(ctx: ExecutionContext):
        out = await quick.map(["x", "y"])
        await other("after")
        return [out, await pause("p")]

    @workflow.with_options(name="mapins")
    async def v2(ctx: ExecutionContext):
        out = await quick.map(["x", "y", "z"])
        await other("after")
        return [out, await pause("p")]

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        before = rows(db_path, paused.execution_id)
        bodies.clear()
        with pytest.raises(NondeterminismError, match="inserted"):
            await v2.arun(execution_id=paused.execution_id, resume_value=3, engine=engine)
        assert bodies["z"] == 0
        assert rows(db_path, paused.execution_id) == before


@pytest.mark.trio
async def test_a_removed_call_is_caught_when_the_edited_code_raises(db_path):
    @workflow.with_options(name="removal")
    async def v1(ctx: ExecutionContext):
        await quick("a")
        await quick("b")
        return await pause("p")

    @workflow.with_options(name="removal")
    async def v2(ctx: ExecutionContext):
        await quick("a")
        raise ValueError("the edited code gives up")

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        crash_after(db_path, paused.execution_id, paused.events[-1].id - 2)  # before the pause
        before = rows(db_path, paused.execution_id)
        with pytest.raises(NondeterminismError, match="did not make"):
            await v2.arun(execution_id=paused.execution_id, engine=engine)
        assert rows(db_path, paused.execution_id) == before
        assert state_of(db_path, paused.execution_id) == "RUNNING"  # not FAILED for good
        done = await v1.arun(execution_id=paused.execution_id, engine=engine)
        assert done.state is ExecutionState.PAUSED


@pytest.mark.trio
async def test_a_renamed_pause_is_nondeterminism(db_path):
    @workflow.with_options(name="renamed")
    async def v1(ctx: ExecutionContext):
        return await pause("approve")

    @workflow.with_options(name="renamed")
    async def v2(ctx: ExecutionContext):
        return await pause("review")

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        before = rows(db_path, paused.execution_id)
        with pytest.raises(NondeterminismError, match="pause\\('approve'\\)"):
            await v2.arun(execution_id=paused.execution_id, resume_value="ok", engine=engine)
        assert rows(db_path, paused.execution_id) == before
        done = await v1.arun(execution_id=paused.execution_id, resume_value="ok", engine=engine)
    assert done.output == "ok"


# --------------------------------------------------------------------------- rollbacks


async def _slow_undo(key: str) -> None:
    bodies[f"rollback-start:{key}"] += 1
    await anyio.sleep(1)
    bodies[f"rollback-end:{key}"] += 1


@task.with_options(rollback=_slow_undo)
async def fails_first(key: str) -> str:
    raise ValueError(f"{key} failed")


@task
async def fails_later(key: str) -> str:
    await anyio.sleep(0.5)
    raise KeyError(key)


@pytest.mark.trio
async def test_a_failed_tasks_rollback_runs_once_through_a_siblings_failure(autojump_clock):
    @workflow
    async def saga(ctx: ExecutionContext):
        await parallel(fails_first("a"), fails_later("b"))

    async with open_engine(cancel_poll=None) as engine:
        ctx = await saga.arun(engine=engine)
    types = [e.type for e in ctx.events if e.source_id.endswith("fails_first#0")]
    assert types == [
        E.TASK_STARTED,
        E.TASK_ROLLBACK_STARTED,
        E.TASK_ROLLBACK_COMPLETED,
        E.TASK_FAILED,
    ]
    failed = next(
        e for e in ctx.events if e.type is E.TASK_FAILED and e.source_id.endswith("first#0")
    )
    assert isinstance(failed.value, ValueError) and str(failed.value) == "a failed"
    assert bodies["rollback-start:a"] == bodies["rollback-end:a"] == 1
    assert ctx.state is ExecutionState.FAILED


@pytest.mark.trio
async def test_a_failed_tasks_rollback_runs_once_through_the_embedding_scopes_cancel(
    settled_clock,
):
    @workflow
    async def saga(ctx: ExecutionContext):
        await fails_first("c")

    async with open_engine(cancel_poll=None) as engine:
        with anyio.move_on_after(0.5):
            await saga.arun(execution_id="cancelled-saga", engine=engine)
        ctx = await engine.get("cancelled-saga")
    types = [e.type for e in ctx.events]
    assert types.count(E.TASK_ROLLBACK_STARTED) == 1
    assert E.TASK_CANCELLED not in types
    assert E.TASK_FAILED in types and E.TASK_ROLLBACK_COMPLETED in types
    assert bodies["rollback-end:c"] == 1
    failed = next(e for e in ctx.events if e.type is E.TASK_FAILED)
    assert isinstance(failed.value, ValueError) and str(failed.value) == "c failed"
    # the task's own error, raised once its shielded rollback and TASK_FAILED were done, ends
    # the workflow before the pending cancellation is seen
    assert ctx.state is ExecutionState.FAILED


# --------------------------------------------------------------------------- store faults


def _hold_write_lock(db: str, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def _locker(db: str, seconds: float) -> threading.Thread:
    started = threading.Event()
    thread = threading.Thread(target=_hold_write_lock, args=(db, seconds, started), daemon=True)
    thread.start()
    started.wait()
    return thread


@task
async def step(key: str) -> str:
    bodies[key] += 1
    return key


@pytest.mark.trio
@pytest.mark.parametrize("busy, retry_for, hold", [(0.2, 5.0, 1.0), (5.0, 30.0, 5.5)])
async def test_a_write_lock_held_past_the_busy_timeout_is_retried(db_path, busy, retry_for, hold):
    """Another connection holds BEGIN IMMEDIATE past the busy timeout (the last case is the
    default settings and a 5.5 s lock): the commit is retried and the run completes."""
    thread: list[threading.Thread] = []

    @task
    async def lock_then_return(key: str) -> str:
        bodies[key] += 1
        thread.append(_locker(db_path, hold))
        return key

    @workflow
    async def locked(ctx: ExecutionContext):
        return [await step("s1"), await lock_then_return("s2"), await step("s3")]

    settings = Settings(db_path=db_path, busy_timeout=busy, store_retry_for=retry_for)
    async with open_engine(settings) as engine:
        ctx = await locked.arun(engine=engine)
        retries = engine.store.statistics().retries
    thread[0].join()
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == ["s1", "s2", "s3"]
    assert retries >= 1
    assert bodies == Counter({"s1": 1, "s2": 1, "s3": 1})


@pytest.mark.trio
async def test_a_store_that_keeps_failing_stops_the_run_resumable_without_holes(db_path):
    thread: list[threading.Thread] = []
    caught: list[BaseException] = []

    @task
    async def lock_then_return(key: str) -> str:
        bodies[key] += 1
        if not thread:
            thread.append(_locker(db_path, 2.0))
        return key

    @workflow.with_options(name="faulty")
    async def faulty(ctx: ExecutionContext):
        out = [await step("s1")]
        try:
            out.append(await lock_then_return("s2"))
        except Exception as e:  # the store's fault must not land here
            caught.append(e)
        out.append(await step("s3"))
        return out

    settings = Settings(db_path=db_path, busy_timeout=0.1, store_retry_for=0.5)
    async with open_engine(settings) as engine:
        with pytest.raises(StoreUnavailableError, match="kept failing"):
            await faulty.arun(execution_id="faulty-1", engine=engine)
        thread[0].join()
        assert caught == []
        history = rows(db_path, "faulty-1")
        assert [r[0] for r in history] == list(range(1, len(history) + 1))  # dense
        assert E.WORKFLOW_FAILED.value not in [r[1] for r in history]
        assert state_of(db_path, "faulty-1") == "RUNNING"
        # the store is back: the same runner runs it on, s1 is not run again
        done = await faulty.arun(execution_id="faulty-1", engine=engine)
    assert done.state is ExecutionState.COMPLETED
    assert done.output == ["s1", "s2", "s3"]
    assert bodies["s1"] == 1
    assert [e.id for e in done.events] == list(range(1, len(done.events) + 1))


# --------------------------------------------------------------------------- the value rule


@task
async def set_total(order: dict) -> str:
    order["total"] = 42  # mutates its own copy only
    return "set"


@task
async def charge(order: dict) -> dict:
    return dict(order)


class Point(NamedTuple):
    x: int
    y: int


@task
async def make_point() -> Point:
    return Point(1, 2)


@workflow.with_options(name="values")
async def values_wf(ctx: ExecutionContext):
    order = {"id": 7}
    await set_total(order)
    seen_after_task = dict(order)
    point = await make_point()
    await pause("p")
    charged = await charge(order)
    return [seen_after_task, charged, type(point).__name__, list(point)]


@pytest.mark.trio
async def test_the_first_run_sees_what_a_replay_sees():
    async with open_engine() as engine:
        paused = await values_wf.arun(engine=engine)
    # a fresh engine (a new process, as after a crash) resumes it: no nondeterminism
    async with open_engine() as engine:
        done = await values_wf.arun(execution_id=paused.execution_id, resume_value=1, engine=engine)
    assert done.state is ExecutionState.COMPLETED, done.output
    seen, charged, point_type, point = done.output
    assert seen == {"id": 7} and charged == {"id": 7}
    assert point == [1, 2]
    assert point_type == "Point"  # a named tuple comes back as itself, so p.x works after a crash
    # the same type on the first run as on replay
    async with open_engine() as engine:
        first = await values_wf.arun(engine=engine)
        again = await values_wf.arun(execution_id=first.execution_id, resume_value=1, engine=engine)
    assert again.output[2] == point_type


@pytest.mark.trio
async def test_an_error_quoting_a_secret_is_redacted_on_the_first_run_too(monkeypatch):
    from flux.runtime.secrets import SecretStore

    @task.with_options(secret_requests=["API_KEY"])
    async def leaky(secrets: dict) -> str:
        raise PermissionError(f"key {secrets['API_KEY']} was refused")

    @workflow.with_options(name="leaky")
    async def leaky_wf(ctx: ExecutionContext):
        try:
            await leaky()
        except PermissionError as e:
            return str(e)

    async with open_engine() as engine:
        await SecretStore(engine.store, engine.settings).set("API_KEY", "s3cr3t-value-42")
        first = await leaky_wf.arun(engine=engine)
    assert "s3cr3t-value-42" not in first.output
    assert "***" in first.output


@pytest.mark.trio
@pytest.mark.parametrize("wait", ["yes", -1, float("nan"), None])
async def test_a_bad_wait_is_refused_before_anything_is_stored(db_path, wait):
    @workflow.with_options(name="waits")
    async def waits(ctx: ExecutionContext):
        return await quick("w")

    async with open_engine() as engine:
        with pytest.raises(ValueError, match="wait must be True, False or seconds >= 0"):
            await waits.arun(execution_id="w-1", wait=wait, engine=engine)
        assert await engine.store.get_execution("w-1") is None
    assert bodies["w"] == 0


@pytest.mark.trio
@pytest.mark.parametrize("where", ["secrets", "cache"])
async def test_a_host_service_failing_for_the_store_is_a_stop_not_a_task_failure(
    db_path, monkeypatch, where
):
    """A secret or cache lookup the store cannot answer (here: I/O error) stops the run: the
    workflow's `except Exception` never sees it and nothing is recorded as failed."""
    from flux.runtime.errors import StoreError

    caught: list[BaseException] = []

    @task.with_options(secret_requests=["K"])
    async def needs_secret(secrets: dict) -> str:
        bodies["needs_secret"] += 1
        return "ok"

    @task.with_options(cache=True)
    async def cached(x: int) -> int:
        bodies["cached"] += 1
        return x

    @workflow.with_options(name=f"service-{where}")
    async def uses_service(ctx: ExecutionContext):
        try:
            return await (needs_secret() if where == "secrets" else cached(1))
        except Exception as e:
            caught.append(e)
            return "compensated"

    async def broken(*args, **kwargs):
        raise StoreError("store 'x': disk I/O error")

    async with open_engine() as engine:
        monkeypatch.setattr(engine, "get_secrets" if where == "secrets" else "cache_get", broken)
        with pytest.raises(StoreUnavailableError, match="disk I/O error"):
            await uses_service.arun(execution_id=f"svc-{where}", engine=engine)
        types = [r[1] for r in rows(db_path, f"svc-{where}")]
    assert caught == []
    assert "TASK_FAILED" not in types and "WORKFLOW_FAILED" not in types
    assert bodies["needs_secret"] == bodies["cached"] == 0


@pytest.mark.trio
async def test_a_resume_value_reaches_pause_as_a_replay_would_give_it():
    """pause() returns a decoded copy of the resume value: mutating the caller's object after
    the resume, or the returned one, changes nothing recorded; a tuple stays a tuple."""

    @workflow.with_options(name="resumed-copy")
    async def resumed(ctx: ExecutionContext):
        got = await pause("p")
        same = got is ctx.input  # never the caller's object
        got["seen"] = True  # mutating what pause returned changes nothing recorded
        return [same, await charge(got)]

    value = {"order": (1, 2)}
    async with open_engine() as engine:
        paused = await resumed.arun(engine=engine)
        done = await resumed.arun(
            execution_id=paused.execution_id, resume_value=value, engine=engine
        )
    assert value == {"order": (1, 2)}  # the caller's object is untouched
    assert done.output == [False, {"order": (1, 2), "seen": True}]
    recorded = next(e for e in done.events if e.type is E.TASK_RESUMED)
    assert recorded.value == {"order": (1, 2)}
