"""Tests of flux.runtime.store (and flux.runtime.settings)."""

from __future__ import annotations

import os
import sqlite3
import threading

import anyio
import pytest
import trio
import trio.testing

from flux.runtime import store as store_module
from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.settings import Settings
from flux.runtime.store import (
    SCHEMA_VERSION,
    ExecutionRecord,
    StaleWriteError,
    Store,
    StoredEvent,
    WorkflowRecord,
    Write,
    open_store,
)

# -- helpers ------------------------------------------------------------------------------------


def record(execution_id: str = "e1", **fields) -> ExecutionRecord:
    fields.setdefault("workflow_name", "hello")
    fields.setdefault("input", b"\xc0")
    return ExecutionRecord(execution_id=execution_id, **fields)


def event(execution_id: str, seq: int, value: bytes | None = b"\x01") -> StoredEvent:
    return StoredEvent(
        execution_id, seq, "TASK_COMPLETED", f"say_hi#{seq}", "say_hi", value, 1000.0 + seq
    )


def append(execution_id: str, *seqs: int) -> Write:
    return Write(execution_id, events=[event(execution_id, seq) for seq in seqs])


async def pragma(store: Store, name: str):
    return await store._run(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])


def raw_query(path, sql, params=()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "nested" / "flux.db")


# -- settings -----------------------------------------------------------------------------------


def test_settings_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env(environ={})
    assert settings.db_path == os.path.join(str(tmp_path), ".flux", "flux.db")
    assert settings.durability == "full"
    assert settings.secret_key_file == os.path.join(str(tmp_path), ".flux", "secret.key")


def test_settings_from_env_and_overrides(tmp_path):
    env = {
        "FLUX_DB": str(tmp_path / "x.db"),
        "FLUX_DURABILITY": "NORMAL",
        "FLUX_SECRET_KEY_FILE": "/keys/k",
    }
    settings = Settings.from_env(environ=env)
    assert settings == Settings(str(tmp_path / "x.db"), "normal", "/keys/k")
    settings = Settings.from_env(environ=env, durability="full", secret_key_file=None)
    assert settings.durability == "full"
    assert settings.secret_key_file == "/keys/k"
    env = {"FLUX_DB": str(tmp_path / "y" / "z.db")}
    assert Settings.from_env(environ=env).secret_key_file == str(tmp_path / "y" / "secret.key")


def test_settings_reject_unknown_durability():
    with pytest.raises(ValueError, match="'fast'"):
        Settings.from_env(environ={"FLUX_DURABILITY": "fast"})
    with pytest.raises(ValueError, match="'off'"):
        Settings(durability="off")
    with pytest.raises(ValueError, match="'sometimes'"):
        open_store("x.db", durability="sometimes")


# -- schema and migrations ----------------------------------------------------------------------


@pytest.mark.trio
async def test_schema_created_and_version_recorded(db_path):
    async with open_store(db_path) as store:
        assert await store.get_execution("nope") is None
    tables = {row[0] for row in raw_query(db_path, "SELECT name FROM sqlite_master")}
    assert {"flux_meta", "workflows", "executions", "events", "secrets", "cache"} <= tables
    assert {"executions_state", "executions_workflow_name", "executions_parent_id"} <= tables
    version = raw_query(db_path, "SELECT value FROM flux_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    assert SCHEMA_VERSION == len(store_module.MIGRATIONS) == 1


@pytest.mark.trio
async def test_newer_schema_version_is_refused(db_path):
    async with open_store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE flux_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    store = open_store(db_path)
    with pytest.raises(StoreError, match=f"schema version 99.*version {SCHEMA_VERSION}"):
        await store.get_execution("e1")
    await store.aclose()


@pytest.mark.trio
async def test_older_schema_is_migrated_in_one_transaction(db_path, monkeypatch):
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record()))

    def add_priority(db):
        db.table("executions").add_column("priority", int)

    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, add_priority))
    async with open_store(db_path) as store:
        assert (await store.get_execution("e1")).execution_id == "e1"
    assert raw_query(db_path, "SELECT value FROM flux_meta") == [("2",)]
    assert raw_query(db_path, "SELECT priority FROM executions") == [(None,)]


@pytest.mark.trio
async def test_failing_migration_leaves_database_as_it_was(db_path, monkeypatch):
    async with open_store(db_path):
        pass

    def half_done(db):
        db.create_table("half", {"x": int})
        raise RuntimeError("boom")

    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, half_done))
    store = open_store(db_path)
    with pytest.raises(StoreError, match="schema version 2 failed: boom"):
        await store.list_executions()
    await store.aclose()
    assert raw_query(db_path, "SELECT value FROM flux_meta") == [("1",)]
    assert raw_query(db_path, "SELECT name FROM sqlite_master WHERE name = 'half'") == []


@pytest.mark.trio
async def test_version_0_file_is_migrated(tmp_path):
    path = str(tmp_path / "empty.db")
    sqlite3.connect(path).close()  # an empty file: schema version 0
    async with open_store(path) as store:
        assert await store.count_executions() == 0
    assert raw_query(path, "SELECT value FROM flux_meta") == [(str(SCHEMA_VERSION),)]


@pytest.mark.trio
async def test_foreign_database_is_refused_untouched(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    with conn:  # e.g. a flux-core 0.2.7 database: tables, but no flux_meta
        conn.execute("CREATE TABLE executions (id TEXT PRIMARY KEY, blob BLOB)")
    conn.close()
    store = open_store(path)
    with pytest.raises(StoreError, match="schema version 1 failed"):
        await store.get_execution("e1")
    await store.aclose()
    assert raw_query(path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [
        ("executions",)
    ]


@pytest.mark.trio
async def test_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    store = open_store(path)
    with pytest.raises(StoreError, match="junk.db"):
        await store.get_execution("e1")
    await store.aclose()


@pytest.mark.trio
@pytest.mark.parametrize("durability, synchronous", [("full", 2), ("normal", 1)])
async def test_pragmas(db_path, durability, synchronous):
    async with open_store(db_path, durability=durability) as store:
        assert await pragma(store, "synchronous") == synchronous
        assert await pragma(store, "journal_mode") == "wal"
        assert await pragma(store, "busy_timeout") == 5000
        assert await pragma(store, "foreign_keys") == 1
    assert os.path.isdir(os.path.dirname(db_path))


# -- writes -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_insert_update_events_roundtrip(db_path):
    async with open_store(db_path) as store:
        rec = record(workflow_version=3, parent_id="p", created_at=10.0)
        await store.commit(Write("e1", events=[event("e1", 1)], insert=rec))
        assert await store.get_execution("e1") == rec
        assert rec.updated_at == 10.0 and rec.state is ExecutionState.CREATED

        await store.commit(
            Write(
                "e1",
                events=[event("e1", 2, None), event("e1", 3)],
                update={
                    "state": ExecutionState.RUNNING,
                    "lease_owner": "w1",
                    "lease_epoch": 1,
                    "cancel_requested": True,
                    "output": b"out",
                },
            )
        )
        got = await store.get_execution("e1")
        assert got.state is ExecutionState.RUNNING
        assert (got.lease_owner, got.lease_epoch, got.output) == ("w1", 1, b"out")
        assert got.cancel_requested is True
        assert got.updated_at > 10.0

        await store.commit(Write("e1", update={"updated_at": 42.0, "wake_at": 50.0}))
        got = await store.get_execution("e1")
        assert (got.updated_at, got.wake_at) == (42.0, 50.0)

        events = await store.load_events("e1")
        assert events == [event("e1", 1), event("e1", 2, None), event("e1", 3)]
        assert await store.load_events("e1", after_seq=2) == [event("e1", 3)]
        assert await store.last_seq("e1") == 3
        assert await store.last_seq("other") == 0
        assert await store.load_events("other") == []


@pytest.mark.trio
async def test_refused_writes(db_path):
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record()))
        with pytest.raises(StoreError, match="execution 'e1' already exists"):
            await store.commit(Write("e1", insert=record()))
        with pytest.raises(StoreError, match="'bogus'"):
            await store.commit(Write("e1", update={"bogus": 1}))
        with pytest.raises(StoreError, match="'execution_id'"):
            await store.commit(Write("e1", update={"execution_id": "e2"}))
        with pytest.raises(StoreError, match="'nope'"):
            await store.commit(Write("e1", expect={"nope": 1}))
        with pytest.raises(StoreError, match="no such execution"):
            await store.commit(Write("e9", update={"state": "RUNNING"}))
        with pytest.raises(StoreError, match="no execution 'e9'"):
            await store.commit(append("e9", 1))
        with pytest.raises(StoreError, match="in a write to execution 'e1'"):
            await store.commit(Write("e1", events=[event("e2", 1)]))
        with pytest.raises(StoreError, match="seq 1 of execution 'e1' already stored"):
            await store.commit(Write("e1", events=[event("e1", 1), event("e1", 1)]))
        with pytest.raises(StoreError, match="cannot store write"):
            await store.commit(Write("e1", update={"output": object()}))
        with pytest.raises(TypeError):
            await store.commit("not a write")
        assert await store.load_events("e1") == []
        assert await store.get_execution("e9") is None
        assert (await store.get_execution("e1")).state is ExecutionState.CREATED


@pytest.mark.trio
async def test_expect_mismatch_is_stale_and_stores_nothing(db_path):
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record(lease_epoch=3)))
        stale = Write(
            "e1", events=[event("e1", 1)], update={"state": "FAILED"}, expect={"lease_epoch": 2}
        )
        with pytest.raises(StaleWriteError, match="expected lease_epoch=2, found lease_epoch=3"):
            await store.commit(stale)
        assert await store.load_events("e1") == []
        assert (await store.get_execution("e1")).state is ExecutionState.CREATED

        with pytest.raises(StaleWriteError, match="no such execution"):
            await store.commit(Write("e2", expect={"lease_epoch": 0}))

        fresh = Write(
            "e1",
            events=[event("e1", 1)],
            update={"lease_epoch": 4},
            expect={"lease_epoch": 3, "lease_owner": None, "state": ExecutionState.CREATED},
        )
        await store.commit(fresh)
        assert await store.last_seq("e1") == 1
        assert (await store.get_execution("e1")).lease_epoch == 4


@pytest.mark.trio
async def test_writes_apply_in_queue_order(db_path):
    async with open_store(db_path) as store:
        store.enqueue(Write("e1", insert=record()))
        store.enqueue(append("e1", 1))
        assert store.statistics().queued == 2
        await store.commit(Write("e1", events=[event("e1", 2)], update={"state": "COMPLETED"}))
        assert store.statistics().queued == 0
        assert [e.seq for e in await store.load_events("e1")] == [1, 2]
        assert (await store.get_execution("e1")).state is ExecutionState.COMPLETED
        assert store.statistics().largest_batch == 3
        store.enqueue(append("e1", 3))
        await store.flush()
        assert await store.last_seq("e1") == 3
        await store.flush()  # nothing queued: returns at once


@pytest.mark.trio
async def test_refused_enqueued_write_is_logged(db_path, caplog):
    async with open_store(db_path) as store:
        store.enqueue(append("e9", 1))
        await store.flush()
    assert "no execution 'e9'" in caplog.text
    assert store.statistics().writes_failed == 1


# -- group commit -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_group_commit_merges_concurrent_commits(db_path):
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record()))
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for seq in range(1, 51):
                nursery.start_soon(store.commit, append("e1", seq))
        after = store.statistics()
        assert after.commits - before.commits <= 5
        assert after.writes_committed - before.writes_committed == 50
        assert after.largest_batch >= 25
        assert [e.seq for e in await store.load_events("e1")] == list(range(1, 51))


async def _hold_writer(store: Store):
    """Open the store and return a function that releases its connection lock, taken now, so
    that the next commit's leader waits in its thread and everything else queues behind it."""
    await store.get_execution("warm-up")
    store._lock.acquire()  # a test hook, not an SQLite call
    return store._lock.release


@pytest.mark.trio
async def test_failing_write_fails_only_its_caller(db_path):
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record()), append("e1", 1))
        release = await _hold_writer(store)
        outcomes = {}

        async def commit(name, write):
            try:
                await store.commit(write)
            except StoreError as exc:
                outcomes[name] = exc
            else:
                outcomes[name] = "ok"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, "leader", append("e1", 2))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(commit, "before", append("e1", 3))
            nursery.start_soon(commit, "dup", append("e1", 1, 4))
            nursery.start_soon(
                commit, "stale", Write("e1", events=[event("e1", 5)], expect={"lease_epoch": 7})
            )
            nursery.start_soon(commit, "after", append("e1", 6))
            await trio.testing.wait_all_tasks_blocked()
            assert store.statistics().queued == 4
            release()

        assert outcomes["leader"] == outcomes["before"] == outcomes["after"] == "ok"
        assert "seq 1 of execution 'e1' already stored" in str(outcomes["dup"])
        assert isinstance(outcomes["stale"], StaleWriteError)
        assert [e.seq for e in await store.load_events("e1")] == [1, 2, 3, 6]
        stats = store.statistics()
        assert stats.largest_batch == 4
        assert stats.writes_failed == 2


@pytest.mark.trio
async def test_cancelled_committers_writes_are_still_committed(db_path):
    """A write handed to commit() is committed even if its caller is cancelled meanwhile, whether
    that caller was the leader (shielded, it finishes) or a waiter (it stops waiting)."""
    async with open_store(db_path) as store:
        await store.commit(Write("e1", insert=record()))
        release = await _hold_writer(store)
        reached = []

        async def commit(scope_box, write):
            with trio.CancelScope() as scope:
                scope_box.append(scope)
                await store.commit(write)
                reached.append(write.events[0].seq)
                await trio.sleep(0)  # the cancelled leader sees its cancellation here

        async with trio.open_nursery() as nursery:
            leader, waiter, other = [], [], []
            nursery.start_soon(commit, leader, append("e1", 1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(commit, waiter, append("e1", 2))
            nursery.start_soon(commit, other, append("e1", 3))
            await trio.testing.wait_all_tasks_blocked()
            leader[0].cancel()
            waiter[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            release()

        assert leader[0].cancelled_caught and waiter[0].cancelled_caught
        assert sorted(reached) == [1, 3]  # the leader returned; the waiter stopped waiting
        await store.flush()
        assert [e.seq for e in await store.load_events("e1")] == [1, 2, 3]


@pytest.mark.trio
async def test_no_sqlite_call_on_the_event_loop_thread(db_path, monkeypatch):
    await _exercise_off_loop(db_path, monkeypatch)


def test_no_sqlite_call_on_the_event_loop_thread_asyncio(db_path, monkeypatch):
    anyio.run(_exercise_off_loop, db_path, monkeypatch, backend="asyncio")


async def _exercise_off_loop(db_path, monkeypatch):
    threads: set[int] = set()
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        threads.add(threading.get_ident())
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda _sql: threads.add(threading.get_ident()))
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    loop_thread = threading.get_ident()
    store = open_store(db_path)
    await store.commit(Write("e1", insert=record()))
    async with anyio.create_task_group() as tg:
        for seq in range(1, 11):
            tg.start_soon(store.commit, append("e1", seq))
    await store.get_execution("e1")
    await store.load_events("e1")
    await store.list_executions(state="CREATED")
    await store.save_workflow("w", "src", "hash")
    await store.list_workflows()
    await store.put_secret("s", b"c")
    await store.cache_put("k", b"v", None)
    await store.cache_get("k", 0.0)
    await store.aclose()
    assert threads and loop_thread not in threads


def test_group_commit_on_asyncio(db_path):
    async def main():
        async with open_store(db_path) as store:
            await store.commit(Write("e1", insert=record()))
            async with anyio.create_task_group() as tg:
                for seq in range(1, 51):
                    tg.start_soon(store.commit, append("e1", seq))
            assert store.statistics().commits <= 6
            return await store.load_events("e1")

    events = anyio.run(main, backend="asyncio")
    assert [e.seq for e in events] == list(range(1, 51))


@pytest.mark.trio
async def test_reopen_after_close(db_path):
    store = open_store(db_path)
    await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))
    store.enqueue(append("e1", 2))  # committed by aclose
    await store.save_workflow("w", "src", "h")
    await store.put_secret("s", b"cipher")
    await store.cache_put("k", b"v", None)
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.commit(append("e1", 3))
    with pytest.raises(StoreError, match="closed"):
        await store.get_execution("e1")

    async with open_store(db_path) as store:
        assert (await store.get_execution("e1")).workflow_name == "hello"
        assert [e.seq for e in await store.load_events("e1")] == [1, 2]
        assert (await store.get_workflow("w")).source == "src"
        assert await store.get_secret("s") == b"cipher"
        assert await store.cache_get("k", 0.0) == b"v"


def test_reopen_on_another_backend(db_path):
    async def write():
        async with open_store(db_path) as store:
            await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))

    async def read():
        async with open_store(db_path) as store:
            return await store.load_events("e1")

    anyio.run(write, backend="trio")
    assert anyio.run(read, backend="asyncio") == [event("e1", 1)]


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_list_and_count_filters_and_paging(db_path):
    async with open_store(db_path) as store:
        writes = []
        for i in range(10):
            writes.append(
                Write(
                    f"e{i}",
                    insert=record(
                        f"e{i}",
                        workflow_name="a" if i % 2 else "b",
                        state=ExecutionState.COMPLETED if i < 4 else ExecutionState.RUNNING,
                        parent_id="e0" if i in (1, 2, 3) else None,
                        created_at=100.0 + i,
                    ),
                )
            )
        await store.commit(*writes)

        def ids(records):
            return [r.execution_id for r in records]

        assert ids(await store.list_executions()) == [f"e{i}" for i in range(9, -1, -1)]
        assert ids(await store.list_executions(limit=3)) == ["e9", "e8", "e7"]
        assert ids(await store.list_executions(limit=3, offset=8)) == ["e1", "e0"]
        assert ids(await store.list_executions(workflow_name="a")) == ["e9", "e7", "e5", "e3", "e1"]
        assert ids(await store.list_executions(state="COMPLETED")) == ["e3", "e2", "e1", "e0"]
        assert ids(await store.list_executions(parent_id="e0")) == ["e3", "e2", "e1"]
        assert ids(
            await store.list_executions(workflow_name="a", state=ExecutionState.RUNNING, limit=2)
        ) == ["e9", "e7"]
        states = [ExecutionState.COMPLETED, "RUNNING"]
        assert len(await store.list_executions(state=states, limit=None)) == 10
        assert await store.count_executions() == 10
        assert await store.count_executions(workflow_name="b") == 5
        assert await store.count_executions(state=ExecutionState.RUNNING, workflow_name="b") == 3
        assert await store.count_executions(parent_id="e0", state="RUNNING") == 0
        assert await store.count_executions(workflow_name="zzz") == 0
        with pytest.raises(ValueError):
            await store.list_executions(state="NOT_A_STATE")


# -- workflows, secrets, cache ------------------------------------------------------------------


@pytest.mark.trio
async def test_workflow_versions(db_path):
    async with open_store(db_path) as store:
        assert await store.get_workflow("w") is None
        assert await store.list_workflows() == []
        v1 = await store.save_workflow("w", "source 1", "h1")
        assert isinstance(v1, WorkflowRecord)
        assert (v1.name, v1.version, v1.source, v1.source_hash) == ("w", 1, "source 1", "h1")
        v2 = await store.save_workflow("w", "source 2", "h2")
        assert v2.version == 2
        assert (await store.save_workflow("other", "o", "ho")).version == 1
        assert await store.get_workflow("w") == v2
        assert await store.get_workflow("w", 1) == v1
        assert await store.get_workflow("w", 3) is None
        assert [(r.name, r.version) for r in await store.list_workflows()] == [
            ("other", 1),
            ("w", 2),
        ]
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(store.save_workflow, "w", "same", "h")
        assert (await store.get_workflow("w")).version == 12


@pytest.mark.trio
async def test_secrets(db_path):
    async with open_store(db_path) as store:
        assert await store.get_secret("api") is None
        await store.put_secret("api", b"c1")
        await store.put_secret("db", b"c2")
        await store.put_secret("api", b"c3")
        assert await store.get_secret("api") == b"c3"
        assert await store.list_secret_names() == ["api", "db"]
        assert await store.delete_secret("api") is True
        assert await store.delete_secret("api") is False
        assert await store.list_secret_names() == ["db"]


@pytest.mark.trio
async def test_cache_with_expiry(db_path):
    async with open_store(db_path) as store:
        assert await store.cache_get("k", 0.0) is None
        await store.cache_put("k", b"\xc2", expires_at=100.0)  # a falsy value, encoded
        await store.cache_put("forever", b"v", None)
        assert await store.cache_get("k", 99.9) == b"\xc2"
        assert await store.cache_get("k", 100.0) is None
        assert await store.cache_get("forever", 1e12) == b"v"
        await store.cache_put("k", b"new", expires_at=200.0)
        assert await store.cache_get("k", 150.0) == b"new"
        assert await store.cache_evict_expired(250.0) == 1
        assert await store.cache_get("forever", 1e12) == b"v"


@pytest.mark.trio
async def test_cancel_requested_lists_only_flagged_executions(db_path):
    async with open_store(db_path) as store:
        await store.commit(*(Write(f"e{i}", insert=record(f"e{i}")) for i in range(3)))
        await store.commit(Write("e1", update={"cancel_requested": 1}))
        assert await store.cancel_requested(["e0", "e1", "e2", "unknown"]) == ["e1"]
        assert await store.cancel_requested([]) == []
