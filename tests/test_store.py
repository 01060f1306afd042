"""The store contract suite: every test taking ``location`` runs on SQLite and on PostgreSQL.

Tests of what only one store has (SQLite pragmas, PostgreSQL pools and concurrent processes)
say so in their name. ``tests/conftest_pg.py`` starts the PostgreSQL server.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading

import anyio
import psycopg
import pytest
import trio
import trio.testing

from flux.runtime import store as store_module
from flux.runtime import store_pg, store_pg_schema
from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.settings import Settings, parse_store
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
from flux.runtime.store_api import StoreAPI
from flux.runtime.store_pg import PostgresStore

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
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []
    finally:
        conn.close()


def pg_query(url, sql, params=()):
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "nested" / "flux.db")


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    """Where the store of a contract test lives: a SQLite path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "nested" / "flux.db")
    return request.getfixturevalue("pg_url")


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
    assert SCHEMA_VERSION == len(store_module.MIGRATIONS) >= 1


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
    assert raw_query(db_path, "SELECT value FROM flux_meta") == [(str(SCHEMA_VERSION + 1),)]
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
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} failed: boom"):
        await store.list_executions()
    await store.aclose()
    assert raw_query(db_path, "SELECT value FROM flux_meta") == [(str(SCHEMA_VERSION),)]
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
async def test_insert_update_events_roundtrip(location):
    async with open_store(location) as store:
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
async def test_refused_writes(location):
    async with open_store(location) as store:
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
        await store.commit(Write("e1", events=[event("e1", 5)]))
        with pytest.raises(StoreError, match="event seq 5 of execution 'e1' already stored$"):
            await store.commit(Write("e1", events=[event("e1", 6), event("e1", 5)]))
        await store.commit(Write("e1", events=[], update={"output": None}))
        with pytest.raises(StoreError, match="cannot store write"):
            await store.commit(Write("e1", update={"output": object()}))
        with pytest.raises(TypeError):
            await store.commit("not a write")
        assert await store.load_events("e1") == [event("e1", 5)]
        assert await store.get_execution("e9") is None
        assert (await store.get_execution("e1")).state is ExecutionState.CREATED


@pytest.mark.trio
async def test_expect_mismatch_is_stale_and_stores_nothing(location):
    async with open_store(location) as store:
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
async def test_writes_apply_in_queue_order(location):
    async with open_store(location) as store:
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
async def test_refused_enqueued_write_is_logged(location, caplog):
    async with open_store(location) as store:
        store.enqueue(append("e9", 1))
        await store.flush()
    assert "no execution 'e9'" in caplog.text
    assert store.statistics().writes_failed == 1


# -- group commit -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_group_commit_merges_concurrent_commits(location):
    async with open_store(location) as store:
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


async def _hold_writer(store):
    """Open the store and return a function that releases its writer, held from now on, so
    that the next commit's leader waits in its thread and everything else queues behind it."""
    await store.get_execution("warm-up")
    if isinstance(store, Store):
        store._lock.acquire()  # a test hook, not an SQLite call
        return store._lock.release
    gate = threading.Event()
    write_batch = store._write_batch

    def held(writes):
        gate.wait(10)
        return write_batch(writes)

    store._write_batch = held
    return gate.set


@pytest.mark.trio
async def test_failing_write_fails_only_its_caller(location):
    async with open_store(location) as store:
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
async def test_cancelled_committers_writes_are_still_committed(location):
    """A write handed to commit() is committed even if its caller is cancelled meanwhile, whether
    that caller was the leader (shielded, it finishes) or a waiter (it stops waiting)."""
    async with open_store(location) as store:
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


def test_group_commit_on_asyncio(location):
    async def main():
        async with open_store(location) as store:
            await store.commit(Write("e1", insert=record()))
            async with anyio.create_task_group() as tg:
                for seq in range(1, 51):
                    tg.start_soon(store.commit, append("e1", seq))
            assert store.statistics().commits <= 6
            return await store.load_events("e1")

    events = anyio.run(main, backend="asyncio")
    assert [e.seq for e in events] == list(range(1, 51))


@pytest.mark.trio
async def test_reopen_after_close(location):
    store = open_store(location)
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

    async with open_store(location) as store:
        assert (await store.get_execution("e1")).workflow_name == "hello"
        assert [e.seq for e in await store.load_events("e1")] == [1, 2]
        assert (await store.get_workflow("w")).source == "src"
        assert await store.get_secret("s") == b"cipher"
        assert await store.cache_get("k", 0.0) == b"v"


def test_reopen_on_another_backend(location):
    async def write():
        async with open_store(location) as store:
            await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))

    async def read():
        async with open_store(location) as store:
            return await store.load_events("e1")

    anyio.run(write, backend="trio")
    assert anyio.run(read, backend="asyncio") == [event("e1", 1)]


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_list_and_count_filters_and_paging(location):
    async with open_store(location) as store:
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
async def test_workflow_versions(location):
    async with open_store(location) as store:
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
async def test_secrets(location):
    async with open_store(location) as store:
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
async def test_cache_with_expiry(location):
    async with open_store(location) as store:
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
async def test_cancel_requested_lists_only_flagged_executions(location):
    async with open_store(location) as store:
        await store.commit(*(Write(f"e{i}", insert=record(f"e{i}")) for i in range(3)))
        await store.commit(Write("e1", update={"cancel_requested": 1}))
        assert await store.cancel_requested(["e0", "e1", "e2", "unknown"]) == ["e1"]
        assert await store.cancel_requested([]) == []


# -- opening by location ------------------------------------------------------------------------


def test_store_locations_are_parsed(tmp_path):
    assert parse_store("flux.db").kind == "sqlite"
    assert parse_store("sqlite:///rel/flux.db").target == "rel/flux.db"
    assert parse_store("sqlite:////abs/flux.db").target == "/abs/flux.db"
    assert parse_store("postgresql://u:p@h:5432/d").kind == "postgresql"
    assert parse_store("postgres://h/d").kind == "postgresql"
    with pytest.raises(ValueError, match="names no file"):
        parse_store("sqlite://")
    with pytest.raises(ValueError, match="unknown store URL scheme 'mysql'") as info:
        parse_store("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        parse_store("")
    assert isinstance(open_store("sqlite:///" + str(tmp_path / "a.db")), Store)
    assert isinstance(open_store("postgresql://u@127.0.0.1:1/d"), PostgresStore)
    with pytest.raises(StoreError, match="unknown store URL scheme"):
        open_store("redis://localhost")


def test_settings_store_from_env_and_overrides(tmp_path):
    url = "postgresql://flux:pw@db:5432/flux"
    settings = Settings.from_env(environ={"FLUX_STORE": url, "FLUX_DB": "x.db"})
    assert settings.store == url
    assert "pw" not in repr(settings)
    env = {"FLUX_STORE": f"sqlite:///{tmp_path}/s.db", "FLUX_DB": "ignored.db"}
    settings = Settings.from_env(environ=env)
    assert settings.db_path == f"{tmp_path}/s.db"
    assert settings.secret_key_file == str(tmp_path / "secret.key")
    assert Settings.from_env(environ={"FLUX_STORE": url}, db_path="o.db").store == "o.db"
    assert Settings.from_env(environ={"FLUX_DB": "d.db"}).store == "d.db"
    assert Settings.from_env(environ={}, store=url).store == url
    with pytest.raises(ValueError, match="unknown store URL scheme"):
        Settings.from_env(environ={"FLUX_STORE": "ftp://x"})


@pytest.mark.trio
async def test_both_stores_implement_the_interface(location):
    store = open_store(location)
    assert isinstance(store, StoreAPI)
    for name in dir(StoreAPI):
        if not name.startswith("_") or name in ("__aenter__", "__aexit__"):
            assert hasattr(store, name), name
    await store.aclose()


@pytest.mark.trio
async def test_open_engine_takes_a_store_url(pg_url):
    from flux.runtime.engine import open_engine

    async with open_engine(store=pg_url, cancel_poll=None) as engine:
        assert isinstance(engine.store, PostgresStore)
        assert engine.settings.store == pg_url


@pytest.mark.trio
async def test_postgres_unreachable_url_is_one_clear_line(pg_cluster):
    store = open_store("postgresql://flux:s3cr3t-pw@127.0.0.1:1/nowhere?connect_timeout=2")
    with pytest.raises(StoreError) as info:
        await store.get_execution("e1")
    message = str(info.value)
    assert message.startswith("cannot connect to the PostgreSQL store postgresql://flux:***@")
    assert "s3cr3t-pw" not in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    await store.aclose()
    store = open_store(pg_cluster.url("no_such_database"))
    with pytest.raises(StoreError, match='database "no_such_database" does not exist'):
        async with store:
            pass


def test_postgres_missing_extra_names_it(monkeypatch):
    monkeypatch.setattr(store_pg, "psycopg", None)
    with pytest.raises(StoreError, match=r"'postgres' extra \(pip install 'flux-core\[postgres\]"):
        open_store("postgresql://u@h/d")


def test_postgres_pool_parameters():
    url, pool = store_pg.split_pool_parameters(
        "postgresql://u@h/d?sslmode=disable&pool_max_size=3&pool_timeout=2.5"
    )
    assert url == "postgresql://u@h/d?sslmode=disable"
    assert pool == {"pool_min_size": 1, "pool_max_size": 3, "pool_timeout": 2.5}
    with pytest.raises(StoreError, match="pool_max_size='0'"):
        open_store("postgresql://u@h/d?pool_max_size=0")
    with pytest.raises(StoreError, match="pool_min_size=5 is larger"):
        open_store("postgresql://u@h/d?pool_min_size=5&pool_max_size=2")


# -- PostgreSQL schema and migrations -----------------------------------------------------------


@pytest.mark.trio
async def test_postgres_schema_created_and_version_recorded(pg_url):
    async with open_store(pg_url) as store:
        assert await store.get_execution("nope") is None
    tables = {row[0] for row in pg_query(pg_url, "SELECT tablename FROM pg_tables")}
    assert {"flux_meta", "workflows", "executions", "events", "secrets", "cache"} <= tables
    indexes = {row[0] for row in pg_query(pg_url, "SELECT indexname FROM pg_indexes")}
    assert {"executions_state", "executions_workflow_name", "executions_parent_id"} <= indexes
    version = pg_query(pg_url, "SELECT value FROM flux_meta WHERE key = 'schema_version'")
    assert version == [(str(store_pg.SCHEMA_VERSION),)]
    migrations = pg_query(pg_url, "SELECT version, name FROM flux_migrations ORDER BY version")
    assert migrations[0] == (1, "initial schema")
    assert [v for v, _ in migrations] == list(range(1, store_pg.SCHEMA_VERSION + 1))
    types = dict(
        pg_query(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'events'",
        )
    )
    assert types["value"] == "bytea"


@pytest.mark.trio
async def test_postgres_newer_schema_version_is_refused(pg_url):
    async with open_store(pg_url):
        pass
    pg_query(pg_url, "UPDATE flux_meta SET value = '99' WHERE key = 'schema_version'")
    store = open_store(pg_url)
    with pytest.raises(StoreError, match=f"schema version 99.*version {store_pg.SCHEMA_VERSION}"):
        await store.get_execution("e1")
    await store.aclose()


@pytest.mark.trio
async def test_postgres_older_schema_is_migrated_and_recorded(pg_url, monkeypatch):
    async with open_store(pg_url) as store:
        await store.commit(Write("e1", insert=record()))

    def add_priority(conn):
        """executions.priority"""
        conn.execute("ALTER TABLE executions ADD COLUMN priority INTEGER")

    monkeypatch.setattr(store_pg_schema, "MIGRATIONS", (*store_pg_schema.MIGRATIONS, add_priority))
    async with open_store(pg_url) as store:
        assert (await store.get_execution("e1")).execution_id == "e1"
    assert pg_query(pg_url, "SELECT value FROM flux_meta") == [(str(store_pg.SCHEMA_VERSION + 1),)]
    assert pg_query(pg_url, "SELECT priority FROM executions") == [(None,)]
    names = pg_query(pg_url, "SELECT name FROM flux_migrations ORDER BY version")
    assert names[0] == ("initial schema",) and names[-1] == ("executions.priority",)
    assert len(names) == store_pg.SCHEMA_VERSION + 1


@pytest.mark.trio
async def test_postgres_failing_migration_leaves_database_as_it_was(pg_url, monkeypatch):
    async with open_store(pg_url):
        pass

    def half_done(conn):
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_pg_schema, "MIGRATIONS", (*store_pg_schema.MIGRATIONS, half_done))
    store = open_store(pg_url)
    with pytest.raises(
        StoreError, match=f"schema version {store_pg.SCHEMA_VERSION + 1} failed: boom"
    ):
        await store.list_executions()
    await store.aclose()
    assert pg_query(pg_url, "SELECT value FROM flux_meta") == [(str(store_pg.SCHEMA_VERSION),)]
    assert pg_query(pg_url, "SELECT to_regclass('half')") == [(None,)]


@pytest.mark.trio
async def test_postgres_foreign_database_is_refused_untouched(pg_url):
    pg_query(pg_url, "CREATE TABLE executions (id TEXT PRIMARY KEY, blob BYTEA)")
    store = open_store(pg_url)
    with pytest.raises(StoreError, match="schema version 1 failed.*already exists"):
        await store.get_execution("e1")
    await store.aclose()
    assert pg_query(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == [
        ("executions",)
    ]


@pytest.mark.trio
async def test_postgres_stores_opening_a_new_database_together_migrate_once(pg_url):
    stores = [open_store(pg_url) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(store.__aenter__)
    for store in stores:
        await store.aclose()
    assert pg_query(pg_url, "SELECT count(*) FROM flux_migrations") == [
        (store_pg.SCHEMA_VERSION,)
    ]


@pytest.mark.trio
@pytest.mark.parametrize("durability, setting", [("full", "on"), ("normal", "off")])
async def test_postgres_durability_sets_synchronous_commit(pg_url, durability, setting):
    async with open_store(pg_url, durability=durability) as store:
        shown = await store._run(
            lambda conn: conn.execute("SHOW synchronous_commit").fetchone()[0]
        )
        assert shown == setting
        assert await store._run(
            lambda conn: conn.execute("SHOW application_name").fetchone()[0]
        ) == "flux"


@pytest.mark.trio
async def test_postgres_no_database_call_on_the_event_loop_thread(pg_url, monkeypatch):
    await _exercise_pg_off_loop(pg_url, monkeypatch)


def test_postgres_no_database_call_on_the_event_loop_thread_asyncio(pg_url, monkeypatch):
    anyio.run(_exercise_pg_off_loop, pg_url, monkeypatch, backend="asyncio")


async def _exercise_pg_off_loop(url, monkeypatch):
    threads: set[int] = set()
    for cls, name in (
        (psycopg.Cursor, "execute"),
        (psycopg.Cursor, "executemany"),
        (psycopg.Connection, "execute"),
    ):
        real = getattr(cls, name)

        def spy(self, *args, _real=real, **kwargs):
            threads.add(threading.get_ident())
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    loop_thread = threading.get_ident()
    store = open_store(url)
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


# -- PostgreSQL: values and several stores on one database --------------------------------------


@pytest.mark.trio
async def test_postgres_hostile_values_are_refused_cleanly(pg_url):
    async with open_store(pg_url) as store:
        await store.commit(Write("e1", insert=record(input=bytes(range(256)) * 100)))
        assert (await store.get_execution("e1")).input == bytes(range(256)) * 100
        with pytest.raises(StoreError, match="cannot store write to execution 'e\\\\x00'"):
            await store.commit(Write("e\x00", insert=record("e\x00")))
        with pytest.raises(StoreError, match="cannot store write"):
            await store.commit(Write("e1", update={"lease_epoch": 2**70}))
        with pytest.raises(StoreError, match="cannot update execution 'e1'"):
            await store.commit(Write("e1", update={"state": None}))
        with pytest.raises(StoreError):
            await store.get_execution("nul\x00id")
        await store.commit(Write("e1", update={"cancel_requested": True}))
        await store.commit(Write("e1", expect={"cancel_requested": 1}, events=[event("e1", 1)]))
        assert (await store.get_execution("e1")).lease_epoch == 0
        assert await store.last_seq("e1") == 1
        # a store still works after each refusal
        assert await store.cancel_requested(["e1"]) == ["e1"]


@pytest.mark.trio
async def test_postgres_fenced_writes_from_two_stores_one_winner_per_epoch(pg_url):
    """Two stores (two pools, as two servers would have) race to move one execution's epoch
    on: each round both expect epoch k and set k + 1; exactly one wins. Their events have
    distinct seqs, so only the fencing can stop the loser."""
    rounds = 30
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        await a.commit(Write("e1", insert=record(lease_epoch=1)))
        outcomes: dict[tuple[int, str], str] = {}

        async def attempt(store, name, epoch, seq):
            try:
                await store.commit(
                    Write(
                        "e1",
                        events=[event("e1", seq)],
                        update={"lease_epoch": epoch + 1, "lease_owner": name},
                        expect={"lease_epoch": epoch},
                    )
                )
            except StaleWriteError:
                outcomes[epoch, name] = "stale"
            else:
                outcomes[epoch, name] = "won"

        for epoch in range(1, rounds + 1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, a, "a", epoch, 1000 + epoch)
                nursery.start_soon(attempt, b, "b", epoch, 2000 + epoch)
        for epoch in range(1, rounds + 1):
            assert sorted([outcomes[epoch, "a"], outcomes[epoch, "b"]]) == ["stale", "won"]
        seqs = [e.seq for e in await b.load_events("e1")]
        assert len(seqs) == rounds
        for epoch in range(1, rounds + 1):
            winner = "a" if outcomes[epoch, "a"] == "won" else "b"
            assert (1000 if winner == "a" else 2000) + epoch in seqs
        assert (await a.get_execution("e1")).lease_epoch == rounds + 1


@pytest.mark.trio
async def test_postgres_fenced_append_racing_a_takeover_never_lands_after_it(pg_url):
    """A worker appends with epoch 1 while another store takes the lease (epoch 1 -> 2) and
    then appends with epoch 2: whatever the interleaving, an epoch-1 event never follows an
    epoch-2 one, and the takeover always succeeds."""
    async with open_store(pg_url) as old, open_store(pg_url) as new:
        for round_ in range(20):
            eid = f"e{round_}"
            await old.commit(Write(eid, insert=record(eid, lease_epoch=1)))
            results = {}

            async def stale_worker(eid=eid, results=results):
                for seq in range(1, 6):
                    try:
                        await old.commit(
                            Write(eid, events=[event(eid, seq)], expect={"lease_epoch": 1})
                        )
                    except StaleWriteError:
                        results["old_stopped_at"] = seq
                        return

            async def takeover(eid=eid):
                await new.commit(Write(eid, update={"lease_epoch": 2}, expect={"lease_epoch": 1}))
                await new.commit(Write(eid, events=[event(eid, 100)], expect={"lease_epoch": 2}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stale_worker)
                nursery.start_soon(takeover)
            seqs = [e.seq for e in await new.load_events(eid)]
            assert seqs[-1] == 100
            old_seqs = seqs[:-1]
            assert old_seqs == list(range(1, len(old_seqs) + 1))
            if "old_stopped_at" in results:
                assert results["old_stopped_at"] == len(old_seqs) + 1


@pytest.mark.trio
async def test_postgres_concurrent_group_commits_from_many_tasks(pg_url):
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        await a.commit(*(Write(f"e{i}", insert=record(f"e{i}")) for i in range(20)))

        async def appender(store, eid, first):
            for seq in range(first, first + 10):
                await store.commit(append(eid, seq))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(appender, a, f"e{i}", 1)
                nursery.start_soon(appender, b, f"e{i}", 11)
        for i in range(20):
            assert sorted(e.seq for e in await a.load_events(f"e{i}")) == list(range(1, 21))
        for store in (a, b):
            stats = store.statistics()
            assert stats.writes_committed >= 200 and stats.writes_failed == 0
            assert stats.commits < stats.writes_committed  # merged into fewer transactions
            assert stats.largest_batch > 1


@pytest.mark.trio
async def test_postgres_listing_under_concurrent_writes(pg_url):
    async with open_store(pg_url) as writer, open_store(pg_url) as reader:
        done = trio.Event()
        total = 300

        async def write():
            for i in range(total):
                rec = record(f"e{i:04}", created_at=1000.0 + i // 3, state="RUNNING")
                await writer.commit(Write(rec.execution_id, insert=rec))
                if i % 2:
                    await writer.commit(
                        Write(f"e{i - 1:04}", update={"state": "COMPLETED"}, events=[])
                    )
            done.set()

        async def read():
            seen = 0
            while not done.is_set():
                completed = await reader.count_executions(state="COMPLETED")
                listed = await reader.list_executions(limit=None)
                ids = [r.execution_id for r in listed]
                assert len(ids) == len(set(ids)) >= seen
                keys = [(r.created_at, r.execution_id) for r in listed]
                assert keys == sorted(keys, reverse=True)  # ties: insertion order, newest first
                seen = len(ids)
                assert completed <= sum(r.state is ExecutionState.COMPLETED for r in listed)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(read)
        assert await reader.count_executions() == total
        assert await reader.count_executions(state="COMPLETED") == total // 2


@pytest.mark.trio
async def test_postgres_reads_survive_a_server_side_disconnect(pg_url):
    async with open_store(pg_url) as store:
        await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))
        pg_query(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'flux' AND pid <> pg_backend_pid()",
        )
        assert (await store.get_execution("e1")).execution_id == "e1"
        pg_query(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'flux' AND pid <> pg_backend_pid()",
        )
        await store.commit(append("e1", 2))  # nothing was sent: retried on a fresh connection
        assert [e.seq for e in await store.load_events("e1")] == [1, 2]


@pytest.mark.trio
async def test_one_batch_applies_writes_in_order(location):
    """Expectations see the writes queued before them in the same batch (on PostgreSQL, the
    one-round-trip path and the savepoint path must agree)."""
    async with open_store(location) as store:
        store.enqueue(Write("e1", insert=record(), events=[event("e1", 1)]))
        store.enqueue(Write("e1", events=[event("e1", 2)], expect={"lease_epoch": 0}))
        store.enqueue(Write("e1", update={"lease_epoch": 1}, expect={"lease_epoch": 0}))
        store.enqueue(Write("e1", events=[event("e1", 3)], expect={"lease_epoch": 1}))
        store.enqueue(Write("e2", update={"state": "RUNNING"}))  # no such execution yet
        await store.commit(Write("e2", insert=record("e2"), events=[event("e2", 1)]))
        assert [e.seq for e in await store.load_events("e1")] == [1, 2, 3]
        assert (await store.get_execution("e1")).lease_epoch == 1
        assert (await store.get_execution("e2")).state is ExecutionState.CREATED
        assert store.statistics().writes_failed == 1  # the update of e2 before its insert

        outcomes = {}

        async def commit(index, write):
            try:
                await store.commit(write)
            except StoreError as exc:
                outcomes[index] = type(exc).__name__
            else:
                outcomes[index] = "ok"

        release = await _hold_writer(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, 0, Write("e1", events=[event("e1", 4)]))
            await trio.testing.wait_all_tasks_blocked()
            for index, write in enumerate(
                (
                    Write("e1", events=[event("e1", 5)], expect={"lease_epoch": 1}),
                    Write("e1", update={"lease_epoch": 2}, expect={"lease_epoch": 1}),
                    Write("e1", events=[event("e1", 6)], expect={"lease_epoch": 1}),  # stale now
                    Write("e1", events=[event("e1", 7)], expect={"lease_epoch": 2}),
                ),
                start=1,
            ):
                nursery.start_soon(commit, index, write)
                await trio.testing.wait_all_tasks_blocked()
            release()
        assert [outcomes[i] for i in range(5)] == ["ok", "ok", "ok", "StaleWriteError", "ok"]
        assert [e.seq for e in await store.load_events("e1")] == [1, 2, 3, 4, 5, 7]


@pytest.mark.trio
async def test_postgres_batches_that_go_through_take_one_pipeline(pg_url):
    async with open_store(pg_url) as store:
        careful = []
        apply_one = store._batches.apply_one

        def spy(conn, write, *, savepoint):
            careful.append(write.execution_id)
            return apply_one(conn, write, savepoint=savepoint)

        store._batches.apply_one = spy
        await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))
        async with trio.open_nursery() as nursery:
            for seq in range(2, 40):
                nursery.start_soon(
                    store.commit, Write("e1", events=[event("e1", seq)], expect={"lease_epoch": 0})
                )
        assert careful == []  # every batch went through in one round trip
        with pytest.raises(StaleWriteError):
            await store.commit(Write("e1", events=[event("e1", 99)], expect={"lease_epoch": 5}))
        assert careful == ["e1"]
        assert await store.last_seq("e1") == 39


@pytest.mark.trio
async def test_postgres_tables_in_a_schema_of_their_own(pg_url):
    pg_query(pg_url, "CREATE SCHEMA flux")
    async with open_store(pg_url + "?options=-csearch_path%3Dflux&pool_max_size=2") as store:
        await store.commit(Write("e1", insert=record()))
        assert (await store.get_execution("e1")).execution_id == "e1"
    tables = pg_query(pg_url, "SELECT schemaname FROM pg_tables WHERE tablename = 'executions'")
    assert tables == [("flux",)]


def test_postgres_example_runs(pg_url, tmp_path):
    from tests.conftest import PYTHON, ROOT, subprocess_env

    env = subprocess_env(tmp_path)
    env["FLUX_STORE"] = pg_url
    out = subprocess.run(
        [PYTHON, os.path.join(ROOT, "examples", "postgres_store.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "first engine: PAUSED",
        "second engine: COMPLETED reserved a book, approved by Grace",
        "first engine reads it back: COMPLETED True",
    ]
    assert not os.path.exists(tmp_path / "flux.db")  # nothing went to SQLite
    env.pop("FLUX_STORE")
    out = subprocess.run(
        [PYTHON, os.path.join(ROOT, "examples", "postgres_store.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "set FLUX_STORE=postgresql://" in out.stderr


@pytest.mark.trio
async def test_postgres_store_survives_a_server_restart(pg_cluster, pg_url):
    """Every pooled connection dies with the server; once it is back, the first commit and the
    first read find their connection dead before anything was sent, and are retried."""
    async with open_store(pg_url + "?pool_min_size=3&pool_max_size=3") as store:
        await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))
        async with trio.open_nursery() as nursery:  # check out all three connections once
            for _ in range(6):
                nursery.start_soon(store.load_events, "e1")
        await trio.to_thread.run_sync(pg_cluster.restart)
        await store.commit(append("e1", 2))  # on a dead connection first: checked, retried
        await trio.to_thread.run_sync(pg_cluster.restart)
        assert [e.seq for e in await store.load_events("e1")] == [1, 2]
        await store.commit(append("e1", 3))
        assert await store.last_seq("e1") == 3


@pytest.mark.trio
async def test_postgres_unencodable_text_is_a_store_error(pg_url):
    async with open_store(pg_url) as store:
        with pytest.raises(StoreError, match="store 'postgresql://"):
            await store.get_execution("lone \ud800 surrogate")
        with pytest.raises(StoreError, match="cannot store write"):
            await store.commit(Write("e\ud800", insert=record("e\ud800")))
        assert await store.count_executions() == 0


def test_postgres_store_reused_across_event_loops(pg_url):
    store = open_store(pg_url)

    async def write():
        await store.commit(Write("e1", insert=record(), events=[event("e1", 1)]))

    async def read():
        return await store.load_events("e1")

    anyio.run(write, backend="trio")
    assert anyio.run(read, backend="asyncio") == [event("e1", 1)]
    assert anyio.run(read, backend="trio") == [event("e1", 1)]
    anyio.run(store.aclose, backend="trio")


@pytest.mark.trio
async def test_postgres_without_pipeline_mode_takes_the_careful_path(pg_url, monkeypatch):
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    async with open_store(pg_url) as store:
        await store.commit(Write("e1", insert=record()), append("e1", 1, 2))
        with pytest.raises(StaleWriteError):
            await store.commit(Write("e1", events=[event("e1", 3)], expect={"lease_epoch": 9}))
        await store.commit(Write("e1", events=[event("e1", 3)], expect={"lease_epoch": 0}))
        assert [e.seq for e in await store.load_events("e1")] == [1, 2, 3]


def _random_write(rng, eids):
    """A write that may or may not go through: inserts, updates, fences and appends mixed."""
    eid = rng.choice(eids)
    kind = rng.random()
    events = [event(eid, rng.randint(1, 6)) for _ in range(rng.randint(0, 2))]
    expect = {"lease_epoch": rng.randint(0, 2)} if rng.random() < 0.5 else None
    if kind < 0.2:
        return Write(eid, events=events, insert=record(eid, created_at=1.0), expect=expect)
    if kind < 0.5:
        update = {"lease_epoch": rng.randint(0, 2), "updated_at": 2.0}
        return Write(eid, events=events, update=update, expect=expect)
    return Write(eid, events=events, expect=expect)


async def _apply_rounds(store, rounds):
    """Apply each round as one batch (behind a held writer); outcomes and the final state."""
    outcomes = []
    for writes in rounds:
        got = {}

        async def commit(index, write, got=got):
            try:
                await store.commit(write)
            except StaleWriteError:
                got[index] = "stale"
            except StoreError as exc:
                got[index] = str(exc).split(":")[0][:40]
            else:
                got[index] = "ok"

        release = await _hold_writer(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, 0, Write("anchor", update={"wake_at": 1.0}))
            await trio.testing.wait_all_tasks_blocked()
            for index, write in enumerate(writes, start=1):
                nursery.start_soon(commit, index, write)
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
            release()
        if isinstance(store, Store):
            store._lock = threading.Lock()  # the hold above left it released; start afresh
        else:
            store._write_batch = type(store)._write_batch.__get__(store)
        outcomes.append([got[i] for i in range(1, len(writes) + 1)])
    state = []
    for eid in ("e1", "e2", "e3"):
        rec = await store.get_execution(eid)
        state.append((eid, rec and rec.lease_epoch, [e.seq for e in await store.load_events(eid)]))
    return outcomes, state


@pytest.mark.trio
async def test_random_batches_give_the_same_outcomes_on_every_path(
    db_path, pg_url, pg_cluster, monkeypatch
):
    """SQLite, PostgreSQL's one-pipeline path and its savepoint path, fed the same random
    batches, refuse the same writes and end in the same state."""
    import random

    rng = random.Random(11)
    rounds = [[_random_write(rng, ["e1", "e2", "e3"]) for _ in range(6)] for _ in range(25)]
    careful_url = pg_cluster.url(pg_cluster.create_database())
    results = []
    for location in (db_path, pg_url):
        async with open_store(location) as store:
            results.append(await _apply_rounds(store, rounds))
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    async with open_store(careful_url) as store:
        results.append(await _apply_rounds(store, rounds))
    sqlite, fast, careful = results
    assert fast == sqlite
    assert careful == sqlite
    flat = [o for round_ in sqlite[0] for o in round_]
    assert "ok" in flat and "stale" in flat and len(set(flat)) >= 4  # a real mixture


# -- whole tables (count_rows, export_rows, import_rows: what flux store copy uses) -------------


def _bulk_rows():
    """One record of every kind and shape a table holds (NULLs, flags, leases, equal times)."""
    from flux.runtime.records import CacheRecord, SecretRecord, SignalRecord

    executions = [
        record("zz-first", created_at=5.0, updated_at=6.0),
        record(
            "aa-second",
            created_at=5.0,  # same instant: insertion order decides
            workflow_version=3,
            parent_id="zz-first",
            output=b"\x93\x01\x02\x03",
            state=ExecutionState.PAUSED,
            lease_owner="owner-1",
            lease_epoch=7,
            lease_expires_at=99.5,
            wake_at=123.25,
            cancel_requested=True,
        ),
        record("mm-third", input=b"", state=ExecutionState.COMPLETED, created_at=1.0),
    ]
    events = [
        event("aa-second", 1, None),
        event("aa-second", 2, b"\x00" * 70_000),  # large values go through as they are
        event("zz-first", 1),
    ]
    workflows = [
        WorkflowRecord("w", 1, "source 1 \u00e9", "h1", 1.5),
        WorkflowRecord("w", 2, "source 2", "h2", 2.5),
        WorkflowRecord("a", 1, "", "h", 3.5),
    ]
    secrets = [SecretRecord("api", b"\x00cipher", 4.0), SecretRecord("db", b"c2", 4.5)]
    cache = [CacheRecord("k1", b"\xc2", 8.0, 100.0), CacheRecord("k0", None, 9.0, None)]
    from flux.runtime.schedules import ScheduleFireRecord, ScheduleRecord

    schedules = [
        ScheduleRecord(
            name="nightly", workflow="w", cron="0 2 * * *", timezone="Europe/Berlin",
            input=b"\xc0", overlap="buffer-one", catch_up="all", paused=1, created_at=1.0,
            updated_at=2.0, next_due_at=3.0, last_due_at=2.5, last_execution_id="aa-second",
            buffered_at=2.75, trigger_at=None, fire_count=2,
        ),
        ScheduleRecord(name="often", workflow="a", every=30, input=b"", created_at=5.0,
                       updated_at=5.0),
    ]
    fires = [
        ScheduleFireRecord("nightly", 1, 2.0, "started", "aa-second", "", 2.0),
        ScheduleFireRecord("nightly", 2, 2.5, "skipped", None, "still running", 2.5),
        ScheduleFireRecord("often", 1, 30.0, "missed", None, "1 due time(s) missed", 31.0),
    ]
    from flux.runtime.store_logs import LogRecord, LogTotals

    logs = [
        LogRecord("aa-second", 1, "t#0", 1, "INFO", "stdout", 5.5, "hello \u00e9"),
        LogRecord("aa-second", 2, "", 0, "WARNING", "flux.logs", 5.75, "[flux] cut"),
        LogRecord("zz-first", 1, "t#0/u#1", 2, "ERROR", "app", 6.0, ""),
    ]
    totals = [LogTotals("aa-second", 2, 7, 3, 90, 2), LogTotals("zz-first", 1, 0, 0, 0, None)]
    signals = [
        SignalRecord(3, "aa-second", "go", b"\x01", 5.0),
        SignalRecord(9, "aa-second", "go", b"\x02", 6.0, "aa/send_signal#0", 7.0),
    ]
    return {
        "logs": logs,
        "log_totals": totals,
        "workflows": workflows,
        "executions": executions,
        "events": events,
        "secrets": secrets,
        "schedules": schedules,
        "schedule_fires": fires,
        "cache": cache,
        "signals": signals,
    }


async def _export_all(store, table, limit):
    out, after, batches = [], None, 0
    while True:
        records, after = await store.export_rows(table, after=after, limit=limit)
        if not records:
            assert after is None
            return out, batches
        assert len(records) <= limit
        batches += 1
        out.extend(records)


@pytest.mark.trio
async def test_bulk_import_then_export_keeps_every_row_as_it_was(location):
    from flux.runtime.store_bulk import TABLES

    rows = _bulk_rows()
    async with open_store(location) as store:
        for table in TABLES:
            assert await store.count_rows(table) == 0
            assert await store.export_rows(table) == ([], None)
        for table in TABLES:
            assert await store.import_rows(table, rows[table]) == len(rows[table])
            assert await store.count_rows(table) == len(rows[table])
        for table in TABLES:
            exported, batches = await _export_all(store, table, limit=2)
            assert batches == (len(rows[table]) + 1) // 2
            if table == "executions":  # insertion order, not key order
                assert exported == rows[table]
            else:
                assert sorted(exported, key=repr) == sorted(rows[table], key=repr)
        # what was imported serves through the ordinary methods
        paused = await store.get_execution("aa-second")
        assert paused == rows["executions"][1] and paused.cancel_requested is True
        assert [e.value for e in await store.load_events("aa-second")] == [None, b"\x00" * 70_000]
        assert await store.last_seq("aa-second") == 2
        listed = await store.list_executions(limit=None)
        assert [r.execution_id for r in listed] == ["aa-second", "zz-first", "mm-third"]
        assert (await store.get_workflow("w")).source == "source 2"
        assert (await store.get_workflow("w", 1)).created_at == 1.5
        assert await store.get_secret("api") == b"\x00cipher"
        assert await store.cache_get("k1", 50.0) == b"\xc2"
        assert await store.cache_get("k1", 100.0) is None
        assert await store.get_schedule("nightly") == rows["schedules"][0]
        fires = await store.schedule_fires("nightly")
        assert [(f.seq, state) for f, state in fires] == [(2, None), (1, "PAUSED")]
        await store.commit(append("zz-first", 2))  # the history goes on after the import
        assert await store.last_seq("zz-first") == 2


@pytest.mark.trio
async def test_bulk_import_refuses_a_batch_whole(location):
    from flux.runtime.records import SecretRecord

    rows = _bulk_rows()
    async with open_store(location) as store:
        await store.import_rows("executions", rows["executions"][:1])
        # one key already stored: nothing of the batch is stored
        with pytest.raises(StoreError, match="cannot import 2 executions into executions"):
            await store.import_rows("executions", rows["executions"][1:2] + rows["executions"][:1])
        assert await store.count_rows("executions") == 1
        # an event of an execution that is not stored
        with pytest.raises(StoreError, match="cannot import 3 events into events"):
            await store.import_rows("events", rows["events"])
        assert await store.count_rows("events") == 0
        with pytest.raises(TypeError, match="expected SecretRecord records, got ExecutionRecord"):
            await store.import_rows("secrets", rows["executions"][:1])
        with pytest.raises(StoreError, match="unknown table 'users'"):
            await store.count_rows("users")
        with pytest.raises(StoreError, match="unknown table 'flux_meta'"):
            await store.export_rows("flux_meta")
        with pytest.raises(StoreError, match="not one returned by export_rows"):
            await store.export_rows("events", after=("x",))
        with pytest.raises(StoreError, match="limit must be a positive integer"):
            await store.export_rows("events", limit=0)
        assert await store.import_rows("secrets", []) == 0
        await store.import_rows("secrets", [SecretRecord("s", b"c", 1.0)])
        assert await store.list_secret_names() == ["s"]
