"""Retrying a failed execution (flux.runtime.retry), embedded, on SQLite and PostgreSQL."""

from __future__ import annotations

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.runtime.errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    NondeterminismError,
    WorkflowError,
)
from flux.runtime.patterns import call, child_execution_id, parallel
from flux.runtime.retry import cut_history, retry_execution_id
from flux.runtime.store import StoredEvent
from flux.tasks import pause

#: body starts, by task name
starts: dict[str, int] = {}
#: which task names fail when they run
broken: set[str] = set()


@pytest.fixture(autouse=True)
def _reset():
    starts.clear()
    broken.clear()


def _body(name: str, value: object) -> object:
    starts[name] = starts.get(name, 0) + 1
    if name in broken:
        raise ValueError(f"{name} is broken")
    return value


@task
async def step_one(x: int) -> int:
    return _body("one", x + 1)


@task
async def step_two(x: int) -> int:
    return _body("two", x * 10)


@task
async def step_three(x: int) -> int:
    return _body("three", x - 1)


@workflow
async def three_steps(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    b = await step_two(a)
    return await step_three(b)


@task.with_options(retry_max_attempts=2, retry_delay=0.01)
async def flaky(x: int) -> int:
    return _body("flaky", x)


@workflow
async def with_retries(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    return await flaky(a)


@task
async def slow_sibling(x: int) -> int:
    starts["slow"] = starts.get("slow", 0) + 1
    await anyio.sleep(5)
    return x


@task
async def late_two(x: int) -> int:
    await anyio.sleep(1)  # fails after step_three completed, whatever order trio runs them in
    return _body("two", x * 10)


@workflow
async def fan_out(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    done, b, c = await parallel(step_three(a), late_two(a), slow_sibling(a))
    return [done, b, c]


@workflow
async def child_flow(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    return await step_two(a)


@workflow
async def parent_flow(ctx: ExecutionContext[int]):
    first = await step_three(ctx.input)
    return await call(child_flow, first)


@workflow
async def paused_then_fails(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    extra = await pause("approve")
    return await step_two(a + extra)


def _history(ctx: ExecutionContext) -> list[tuple[str, str]]:
    return [(e.type.value, e.source_id) for e in ctx.events]


async def _raw(store, execution_id: str) -> list[tuple]:
    return [
        (e.seq, e.type, e.call_id, e.name, e.value, e.time)
        for e in await store.load_events(execution_id)
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, db_path):
    if request.param == "sqlite":
        return db_path
    return request.getfixturevalue("pg_url")


@pytest.mark.trio
async def test_retry_reruns_only_the_failed_call(store_url):
    async with open_engine(store=store_url, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
        assert failed.state is ExecutionState.FAILED
        assert starts == {"one": 1, "two": 1}
        record_before = await engine.store.get_execution(failed.execution_id)
        history_before = await _raw(engine.store, failed.execution_id)

        broken.clear()  # the source of task 2 is fixed
        retried = await engine.retry(failed.execution_id, three_steps)
        assert retried.state is ExecutionState.COMPLETED
        assert retried.output == (1 + 1) * 10 - 1
        assert starts == {"one": 1, "two": 2, "three": 1}  # task 1 did not run again
        assert retried.execution_id != failed.execution_id
        assert retried.execution_id == retry_execution_id(failed.execution_id, 0)
        assert _history(retried) == [
            ("WORKFLOW_STARTED", "three_steps"),
            ("TASK_STARTED", "step_one#0"),
            ("TASK_COMPLETED", "step_one#0"),
            ("TASK_STARTED", "step_two#1"),
            ("TASK_COMPLETED", "step_two#1"),
            ("TASK_STARTED", "step_three#2"),
            ("TASK_COMPLETED", "step_three#2"),
            ("WORKFLOW_COMPLETED", "three_steps"),
        ]
        # the copied events keep their recorded times and values
        copied = await _raw(engine.store, retried.execution_id)
        assert [row[1:] for row in copied[:4]] == [row[1:] for row in history_before[:4]]

        # linked both ways; the original exactly as it was
        assert await engine.store.get_execution(failed.execution_id) == record_before
        assert await _raw(engine.store, failed.execution_id) == history_before
        new = await engine.store.get_execution(retried.execution_id)
        assert new.retry_of == failed.execution_id
        assert await engine.store.retries_of(failed.execution_id) == [retried.execution_id]
        ctx = await engine.get(failed.execution_id)
        assert ctx.retried_by == [retried.execution_id]
        assert (await engine.get(retried.execution_id)).retry_of == failed.execution_id


@pytest.mark.trio
async def test_retry_without_workflow_is_scheduled_then_recovered(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("three")
        failed = await engine.run(three_steps, 2)
        queued = await engine.retry(failed.execution_id)
        assert queued.state is ExecutionState.SCHEDULED
        assert queued.retry_of == failed.execution_id
        assert [e.type for e in queued.events][-1] is E.TASK_STARTED  # step_three, open
        broken.clear()
        done = await engine.run(three_steps, execution_id=queued.execution_id)
        assert done.state is ExecutionState.COMPLETED and done.output == 29
        assert starts == {"one": 1, "two": 1, "three": 2}


@pytest.mark.trio
async def test_retry_with_retries_gets_a_fresh_budget(autojump_clock, db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("flaky")
        failed = await engine.run(with_retries, 1)
        assert starts["flaky"] == 3  # the first attempt and two retries
        types = [e.type for e in failed.events]
        assert types.count(E.TASK_RETRY_FAILED) == 2

        broken.clear()
        retried = await engine.retry(failed.execution_id, with_retries)
        assert retried.state is ExecutionState.COMPLETED and retried.output == 2
        assert starts == {"one": 1, "flaky": 4}  # ran once more, first attempt
        # the original's attempts stay in the original; none are copied
        assert [e.type for e in retried.events].count(E.TASK_RETRY_FAILED) == 0
        assert [e.type for e in failed.events].count(E.TASK_RETRY_FAILED) == 2

        # failing again, the attempts of the retry are recorded in the retry
        broken.add("flaky")
        failed_too = await engine.run(with_retries, 5)
        again = await engine.retry(failed_too.execution_id, with_retries)
        assert again.state is ExecutionState.FAILED
        assert [e.type for e in again.events].count(E.TASK_RETRY_FAILED) == 2


@pytest.mark.trio
async def test_failure_inside_parallel(autojump_clock, db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(fan_out, 1)
        assert failed.state is ExecutionState.FAILED
        # step_three completed, slow_sibling was cancelled by the failure
        assert starts == {"one": 1, "three": 1, "two": 1, "slow": 1}
        broken.clear()
        retried = await engine.retry(failed.execution_id, fan_out)
        assert retried.state is ExecutionState.COMPLETED
        assert retried.output == [1, 20, 2]
        # the completed sibling replays; the failed one and the cancelled one run again
        assert starts == {"one": 1, "three": 1, "two": 2, "slow": 2}
        assert E.TASK_CANCELLED not in [e.type for e in retried.events]


@pytest.mark.trio
async def test_failed_child_is_retried_too(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(parent_flow, 5)
        assert failed.state is ExecutionState.FAILED
        old_child_id = child_execution_id(failed.execution_id, "child_flow#1")
        old_child = await engine.get(old_child_id)
        assert old_child.state is ExecutionState.FAILED
        assert starts == {"three": 1, "one": 1, "two": 1}

        broken.clear()
        retried = await engine.retry(failed.execution_id, parent_flow)
        assert retried.state is ExecutionState.COMPLETED
        assert retried.output == (4 + 1) * 10
        # neither the parent's step_three nor the child's step_one ran again
        assert starts == {"three": 1, "one": 1, "two": 2}
        new_child = await engine.get(child_execution_id(retried.execution_id, "child_flow#1"))
        assert new_child.state is ExecutionState.COMPLETED
        assert new_child.retry_of == old_child_id
        assert new_child.parent_id == retried.execution_id
        assert (await engine.get(old_child_id)).retried_by == [new_child.execution_id]


@pytest.mark.trio
async def test_retry_after_a_pause_keeps_the_resume_value(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        paused = await engine.run(paused_then_fails, 1)
        assert paused.state is ExecutionState.PAUSED
        with pytest.raises(ExecutionConflictError, match="PAUSED, not FAILED") as info:
            await engine.retry(paused.execution_id)
        assert info.value.state == "PAUSED"
        broken.add("two")
        failed = await engine.run(
            paused_then_fails, execution_id=paused.execution_id, resume_value=3
        )
        assert failed.state is ExecutionState.FAILED
        broken.clear()
        retried = await engine.retry(failed.execution_id, paused_then_fails)
        assert retried.state is ExecutionState.COMPLETED and retried.output == 50


@pytest.mark.trio
async def test_what_did_not_fail_is_refused(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        done = await engine.run(three_steps, 1)
        with pytest.raises(ExecutionConflictError, match="COMPLETED, not FAILED"):
            await engine.retry(done.execution_id)
        with pytest.raises(ExecutionNotFoundError):
            await engine.retry("no-such-execution")
        broken.add("two")
        failed = await engine.run(three_steps, 1)
        with pytest.raises(WorkflowError, match="belongs to workflow 'three_steps'"):
            await engine.retry(failed.execution_id, with_retries)
        assert await engine.store.retries_of(failed.execution_id) == []


@pytest.mark.trio
async def test_retrying_twice(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
        first = await engine.retry(failed.execution_id)  # scheduled, not run: live
        live = f"already retried by {first.execution_id}"
        with pytest.raises(ExecutionConflictError, match=live):
            await engine.retry(failed.execution_id)
        ran = await engine.run(three_steps, execution_id=first.execution_id)
        assert ran.state is ExecutionState.FAILED  # still broken
        # its retry failed: the original may be retried again, and the retry too
        second = await engine.retry(failed.execution_id)
        third = await engine.retry(first.execution_id)
        assert await engine.store.retries_of(failed.execution_id) == [
            first.execution_id,
            second.execution_id,
        ]
        assert third.retry_of == first.execution_id
        assert (
            len({failed.execution_id, first.execution_id, second.execution_id, third.execution_id})
            == 4
        )


@pytest.mark.trio
async def test_two_engines_retry_at_once(store_url):
    async with open_engine(store=store_url, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
    outcomes: list[object] = []

    async def one() -> None:
        async with open_engine(store=store_url, cancel_poll=None) as other:
            try:
                outcomes.append(await other.retry(failed.execution_id))
            except ExecutionConflictError as exc:
                outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    made = [o for o in outcomes if isinstance(o, ExecutionContext)]
    refused = [o for o in outcomes if isinstance(o, ExecutionConflictError)]
    assert len(made) == 1 and len(refused) == 3
    async with open_engine(store=store_url, cancel_poll=None) as engine:
        assert await engine.store.retries_of(failed.execution_id) == [made[0].execution_id]
        events = await engine.store.load_events(made[0].execution_id)
        assert [e.seq for e in events] == [1, 2, 3, 4]  # one coherent history


@pytest.mark.trio
async def test_latest_code_that_changed_the_calls_is_nondeterministic(db_path):
    @workflow.with_options(name="three_steps")
    async def changed(ctx: ExecutionContext[int]):
        a = await step_two(ctx.input)  # where step_one was
        return await step_three(a)

    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
        broken.clear()
        with pytest.raises(NondeterminismError):
            await engine.retry(failed.execution_id, changed)


def _ev(seq: int, type_: E, call_id: str, value: bytes | None = None) -> StoredEvent:
    return StoredEvent("old", seq, type_.value, call_id, call_id.split("#")[0], value, 100.0 + seq)


def test_cut_history_rule():
    events = [
        _ev(1, E.WORKFLOW_STARTED, "wf"),
        _ev(2, E.TASK_STARTED, "a#0"),
        _ev(3, E.TASK_COMPLETED, "a#0"),
        _ev(4, E.TASK_STARTED, "parallel#1/b#0"),
        _ev(5, E.TASK_STARTED, "parallel#1/c#1"),
        _ev(6, E.TASK_RETRY_STARTED, "parallel#1/b#0"),
        _ev(7, E.TASK_RETRY_FAILED, "parallel#1/b#0"),
        _ev(8, E.TASK_ROLLBACK_STARTED, "parallel#1/b#0"),
        _ev(9, E.TASK_ROLLBACK_COMPLETED, "parallel#1/b#0"),
        _ev(10, E.TASK_FAILED, "parallel#1/b#0"),
        _ev(11, E.TASK_CANCELLED, "parallel#1/c#1"),
        _ev(12, E.WORKFLOW_FAILED, "wf"),
    ]
    copied, children = cut_history(events, "new")
    assert children == {}
    assert [(e.seq, e.type, e.call_id) for e in copied] == [
        (1, "WORKFLOW_STARTED", "wf"),
        (2, "TASK_STARTED", "a#0"),
        (3, "TASK_COMPLETED", "a#0"),
        (4, "TASK_STARTED", "parallel#1/b#0"),
        (5, "TASK_STARTED", "parallel#1/c#1"),
    ]
    assert {e.execution_id for e in copied} == {"new"}
    assert [e.time for e in copied] == [101.0, 102.0, 103.0, 104.0, 105.0]
    # a workflow that failed in its own code: everything but WORKFLOW_FAILED
    only = [events[0], events[1], events[2], _ev(4, E.WORKFLOW_FAILED, "wf")]
    assert [e.type for e in cut_history(only, "n")[0]] == [
        "WORKFLOW_STARTED",
        "TASK_STARTED",
        "TASK_COMPLETED",
    ]


@pytest.mark.trio
async def test_links_survive_store_copy(tmp_path, pg_url):
    from flux.runtime.store_copy import copy_store_locations

    source, back = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    async with open_engine(db=source, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
        first = await engine.retry(failed.execution_id, three_steps)
        second = await engine.retry(failed.execution_id, three_steps)
    await copy_store_locations(source, pg_url)
    await copy_store_locations(pg_url, back)
    for where in (pg_url, back):
        async with open_engine(store=where, cancel_poll=None) as engine:
            original = await engine.get(failed.execution_id)
            assert original.retried_by == [first.execution_id, second.execution_id]
            assert (await engine.get(second.execution_id)).retry_of == failed.execution_id
            assert await engine.store.retries_of("unknown") == []


@pytest.mark.trio
async def test_a_database_of_the_first_schema_is_migrated(tmp_path):
    """A store made before retries existed (schema 1) opens, keeps its rows, and its failed
    executions can be retried."""
    import sqlite3

    from flux.runtime import store as store_module
    from flux.runtime.store import open_store

    made, old = str(tmp_path / "made.db"), str(tmp_path / "old.db")
    async with open_engine(db=made, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(three_steps, 1)
    saved = store_module.MIGRATIONS
    store_module.MIGRATIONS = saved[:1]
    try:
        async with open_store(old) as store:  # an empty database of schema 1
            await store.flush()
    finally:
        store_module.MIGRATIONS = saved
    conn = sqlite3.connect(old)
    with conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(executions)")]
        assert "retry_of" not in columns
        conn.execute("ATTACH DATABASE ? AS made", (made,))
        listed = ", ".join(columns)
        conn.execute(f"INSERT INTO executions SELECT {listed} FROM made.executions")
        conn.execute("INSERT INTO events SELECT * FROM made.events")
    conn.close()
    broken.clear()
    async with open_engine(db=old, cancel_poll=None) as engine:
        assert (await engine.get(failed.execution_id)).retry_of is None
        retried = await engine.retry(failed.execution_id, three_steps)
        assert retried.state is ExecutionState.COMPLETED and retried.output == 19
        assert starts == {"one": 1, "two": 2, "three": 1}


CLI_FLOW = """
import os

from flux import task, workflow

HERE = os.path.dirname(os.path.abspath(__file__))


def note(name):
    with open(os.path.join(HERE, "starts.log"), "a") as f:
        f.write(name + "\\n")


@task
async def one(x):
    note("one")
    return x + 1


@task
async def two(x):
    note("two")
    if os.path.exists(os.path.join(HERE, "broken")):
        raise ValueError("two is broken")
    return x * 10


@workflow
async def cli_flow(ctx):
    return await two(await one(ctx.input))
"""


def test_cli_retry_embedded(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    flow = tmp_path / "cli_flow.py"
    flow.write_text(CLI_FLOW)
    (tmp_path / "broken").touch()
    env = subprocess_env(tmp_path)

    def flux(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flux.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )

    ran = flux("run", str(flow), "4")
    assert ran.returncode != 0 and "two is broken" in ran.stderr
    eid = ran.stderr.split("execution ", 1)[1].split(":", 1)[0]
    (tmp_path / "broken").unlink()
    assert flux("executions", "retry", eid, "--wait").returncode != 0  # no FILE to run
    assert "--latest needs --server-url" in flux("executions", "retry", eid, "--latest").stderr
    done = flux("executions", "retry", eid, str(flow))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "50"
    assert (tmp_path / "starts.log").read_text().split() == ["one", "two", "two"]
    shown = flux("executions", "show", eid)
    assert "retried by " in shown.stdout
    again = flux("executions", "retry", eid)
    assert again.returncode != 0 and "already retried by" in again.stderr
    completed = flux("executions", "show", eid, "--json")
    retry_id = __import__("json").loads(completed.stdout)["retried_by"][0]
    shown = flux("executions", "show", retry_id)
    assert f"retry of   {eid}" in shown.stdout and "COMPLETED" in shown.stdout
    refused = flux("executions", "retry", retry_id)
    assert refused.returncode != 0 and "COMPLETED, not FAILED" in refused.stderr
    missing = flux("executions", "retry", "nope")
    assert missing.returncode != 0 and "nope" in missing.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "contract.db")
    return request.getfixturevalue("pg_url")


@pytest.mark.trio
async def test_store_contract_retry_of_and_retries_of(location):
    """Both stores keep ``retry_of`` and list an execution's retries oldest first (creation
    time, then insertion order), and copy a retry's history in the same write as its row."""
    from flux.runtime.store import ExecutionRecord, Write, open_store

    def rec(eid: str, at: float, retry_of: str | None = None) -> ExecutionRecord:
        return ExecutionRecord(
            execution_id=eid, workflow_name="w", input=b"\xc0", created_at=at, retry_of=retry_of
        )

    async with open_store(location) as store:
        await store.commit(Write("orig", insert=rec("orig", 1.0)))
        for eid, at in (("r2", 3.0), ("r1", 2.0), ("r3", 3.0)):
            first = StoredEvent(eid, 1, "WORKFLOW_STARTED", "w", "w", b"\xc0", at)
            await store.commit(Write(eid, [first], insert=rec(eid, at, "orig")))
        assert await store.retries_of("orig") == ["r1", "r2", "r3"]
        assert await store.retries_of("r1") == []
        got = await store.get_execution("r2")
        assert got.retry_of == "orig" and (await store.get_execution("orig")).retry_of is None
        listed = await store.list_executions(limit=None)
        assert {r.execution_id: r.retry_of for r in listed}["r3"] == "orig"


@task
async def slow_step(x: int) -> int:
    starts["slow_step"] = starts.get("slow_step", 0) + 1
    await anyio.sleep(10 if "slow_step" in broken else 0.1)
    return x * 2


@task.with_options(rollback=lambda x: starts.__setitem__("undone", starts.get("undone", 0) + 1))
async def undoable(x: int) -> int:
    return _body("undoable", x)


@workflow.with_options(timeout=5)
async def timed(ctx: ExecutionContext[int]):
    a = await step_one(ctx.input)
    b, c = await parallel(slow_step(a), undoable(a))
    return a + b + c


@pytest.mark.trio
async def test_a_workflow_timeout_is_retried_with_the_cancelled_calls_run_again(
    autojump_clock, db_path
):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("slow_step")
        failed = await engine.run(timed, 1)
        assert failed.state is ExecutionState.FAILED
        assert E.TASK_CANCELLED in [e.type for e in failed.events]
        broken.clear()
        retried = await engine.retry(failed.execution_id, timed)
        assert retried.state is ExecutionState.COMPLETED, retried.output
        assert retried.output == 2 + 4 + 2
        assert starts["one"] == 1 and starts["slow_step"] == 2
        # undoable completed before the timeout: replayed, not run again nor rolled back
        assert starts["undoable"] == 1 and "undone" not in starts
        assert E.TASK_CANCELLED not in [e.type for e in retried.events]


@pytest.mark.trio
async def test_a_failed_child_retried_by_its_own_id_stands_alone(db_path):
    async with open_engine(db=db_path, cancel_poll=None) as engine:
        broken.add("two")
        failed = await engine.run(parent_flow, 5)
        child_id = child_execution_id(failed.execution_id, "child_flow#1")
        broken.clear()
        alone = await engine.retry(child_id, child_flow)
        assert alone.state is ExecutionState.COMPLETED and alone.output == 50
        assert alone.parent_id is None and alone.retry_of == child_id
        assert starts == {"three": 1, "one": 1, "two": 2}
        assert (await engine.get(failed.execution_id)).state is ExecutionState.FAILED
