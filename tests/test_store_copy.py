"""``flux store copy``: every row moved between stores, SQLite -> PostgreSQL -> SQLite, and the
copy serving (a paused execution resumed, a secret read, a cache hit) on the other store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flux import ExecutionContext, task, workflow
from flux.runtime.engine import open_engine
from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.records import CacheRecord, SecretRecord
from flux.runtime.settings import Settings
from flux.runtime.store import open_store
from flux.runtime.store_bulk import TABLES
from flux.runtime.store_copy import CopyResult, copy_store, copy_store_locations, key_file_note
from flux.tasks import pause

runs: list[str] = []


@task.with_options(cache=True)
async def price(order: int) -> int:
    runs.append(f"price {order}")
    print(f"pricing order {order}")  # a task log line, copied with the rest
    return order * 10


@task.with_options(secret_requests=["API_KEY"])
async def charge(amount: int, secrets: dict[str, str] = {}) -> str:  # noqa: B006
    runs.append(f"charge {amount}")
    return f"charged {amount} with key {secrets['API_KEY'][:3]}"


@workflow
async def order_flow(ctx: ExecutionContext[int]):
    amount = await price(ctx.input)
    approver = await pause("approval")
    return f"{approver}: {await charge(amount)}"


def settings_for(store: str, key_file: str) -> Settings:
    return Settings.from_env(environ={}, store=store, secret_key_file=key_file)


async def everything(location: str) -> dict[str, list]:
    out = {}
    async with open_store(location) as store:
        for table in TABLES:
            rows, after = [], None
            while True:
                batch, after = await store.export_rows(table, after=after, limit=3)
                if not batch:
                    break
                rows.extend(batch)
            out[table] = rows
    return out


async def fill_sqlite(path: str, key_file: str) -> str:
    """An embedded engine's store with every kind of row; returns the paused execution's id."""
    async with open_engine(settings_for(path, key_file), cancel_poll=None) as engine:
        await engine.secrets.set("API_KEY", "sk-live-123")
        done = await order_flow.arun(4, engine=engine)  # pauses
        assert done.state == ExecutionState.PAUSED
        finished = await engine.run(order_flow, None, execution_id=done.execution_id,
                                    resume_value="ada")
        assert finished.state == ExecutionState.COMPLETED
        paused = await order_flow.arun(5, engine=engine)
        assert paused.state == ExecutionState.PAUSED
        await engine.store.save_workflow("order_flow", "source v1", "h1")
        await engine.store.save_workflow("order_flow", "source v2", "h2")
        await engine.store.cache_put("expired", b"\xc0", expires_at=1.0)
        await engine.send_signal(paused.execution_id, "note", {"queued": True}, key="k1")
        await engine.schedules.create("hourly", order_flow, every="1h", input=7, paused=True)
        await engine.schedules.trigger("hourly")  # a schedule and one recorded decision
        await engine.store.claim_due_schedules(engine.clock())
        return paused.execution_id


@pytest.mark.trio
async def test_round_trip_sqlite_postgres_sqlite_keeps_every_row(tmp_path, pg_url):
    runs.clear()
    key = str(tmp_path / "secret.key")
    first, back = str(tmp_path / "a" / "flux.db"), f"sqlite:///{tmp_path}/b/flux.db"
    await fill_sqlite(first, key)
    original = await everything(first)
    assert all(original[t] for t in TABLES), {t: len(v) for t, v in original.items()}
    seen: list[tuple[str, int, int]] = []
    to_pg = await copy_store_locations(
        first, pg_url, batch_size=2, progress=lambda *args: seen.append(args)
    )
    assert to_pg.counts == {t: len(original[t]) for t in TABLES}
    events = len(original["events"])
    assert ("events", 2, events) in seen and ("events", 4, events) in seen  # batch by batch
    last = TABLES[-1]
    assert seen[-1] == (last, len(original[last]), len(original[last]))
    assert await everything(pg_url) == original
    to_sqlite = await copy_store_locations(pg_url, back, batch_size=1000)
    assert to_sqlite.counts == to_pg.counts
    assert await everything(back) == original
    assert "execution" in to_pg.summary() and "cache entr" in to_pg.summary()


@pytest.mark.trio
async def test_copied_store_resumes_a_paused_execution(tmp_path, pg_url):
    runs.clear()
    key = str(tmp_path / "secret.key")
    source = str(tmp_path / "flux.db")
    paused_id = await fill_sqlite(source, key)
    await copy_store_locations(source, pg_url)
    runs.clear()
    async with open_engine(settings_for(pg_url, key), cancel_poll=None) as engine:
        queued = await engine.store.pending_signals(paused_id)
        assert [(s.topic, s.key) for s in queued] == [("note", "k1")]  # queued signals came too
        _, fresh = await engine.store.add_signal(paused_id, "note", b"\xc0", 1.0)
        assert fresh.id > queued[0].id  # numbered after the copied ones
        resumed = await engine.run(order_flow, None, execution_id=paused_id, resume_value="bob")
        assert resumed.state == ExecutionState.COMPLETED
        assert resumed.output == "bob: charged 50 with key sk-"
        assert runs == ["charge 50"]  # price ran before the copy: not again
        again = await order_flow.arun(4, engine=engine)  # the cache entry came along
        assert again.state == ExecutionState.PAUSED
        assert runs == ["charge 50"]
        assert await engine.secrets.get("API_KEY") == "sk-live-123"
        history = await engine.store.load_events(paused_id)
        assert [e.seq for e in history] == list(range(1, len(history) + 1))


@pytest.mark.trio
async def test_non_empty_target_is_refused_and_left_alone(tmp_path, pg_url):
    source = str(tmp_path / "flux.db")
    async with open_store(source) as store:
        await store.import_rows("secrets", [SecretRecord("s", b"c", 1.0)])
    async with open_store(pg_url) as store:
        await store.import_rows("cache", [CacheRecord("k", b"v", 1.0)])
        await store.import_rows("cache", [CacheRecord("k2", b"v", 1.0)])
        await store.save_workflow("w", "src", "h")
    with pytest.raises(StoreError) as info:
        await copy_store_locations(source, pg_url)
    message = str(info.value)
    assert message.startswith("target postgresql://")
    assert "is not empty: it holds 1 workflow version, 2 cache entries;" in message
    assert "\n" not in message
    assert (await everything(pg_url))["secrets"] == []
    other = str(tmp_path / "other.db")
    async with open_store(other) as store:
        await store.put_secret("x", b"y")
    with pytest.raises(StoreError, match="other.db is not empty: it holds 1 secret;"):
        await copy_store_locations(pg_url, other)


@pytest.mark.trio
async def test_bad_locations_are_refused_before_anything_is_written(tmp_path):
    missing = str(tmp_path / "missing.db")
    with pytest.raises(StoreError, match="no Flux database at .*missing.db"):
        await copy_store_locations(missing, str(tmp_path / "to.db"))
    assert not os.path.exists(missing) and not os.path.exists(tmp_path / "to.db")
    db = str(tmp_path / "flux.db")
    async with open_store(db):
        pass
    with pytest.raises(StoreError, match="FROM and TO are the same store"):
        await copy_store_locations(db, f"sqlite:///{db}")
    with pytest.raises(StoreError, match="unknown store URL scheme 'mysql'"):
        await copy_store_locations(db, "mysql://x/y")
    async with open_store(db) as a, open_store(str(tmp_path / "b.db")) as b:
        with pytest.raises(ValueError, match="batch_size"):
            await copy_store(a, b, batch_size=0)


@pytest.mark.trio
async def test_a_source_changing_during_the_copy_fails_the_check(tmp_path):
    source, target = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    async with open_store(source) as src, open_store(target) as dst:
        await src.import_rows("secrets", [SecretRecord("s1", b"c", 1.0)])
        real_export = src.export_rows

        async def export_then_write(table, **kwargs):  # another writer, mid-copy
            if table == "secrets" and kwargs.get("after") is not None:
                await src.put_secret("late", b"c")
            return await real_export(table, **kwargs)

        src.export_rows = export_then_write
        with pytest.raises(StoreError, match="it was in use during the copy"):
            await copy_store(src, dst, batch_size=1, source_name="source a.db")


def test_key_file_note_names_the_source_key(tmp_path):
    result = CopyResult(str(tmp_path / "flux.db"), "postgresql://u@h/d", {"secrets": 2})
    note = key_file_note(result, environ={})
    assert note is not None and str(tmp_path / "secret.key") in note
    assert key_file_note(result, environ={"FLUX_SECRET_KEY_FILE": "/k"}) is None
    assert key_file_note(CopyResult("a.db", "b.db", {"secrets": 0}), environ={}) is None


def flux_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flux.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_store_copy(tmp_path, pg_url):
    source = str(tmp_path / "flux.db")
    done = flux_cli("run", "examples/hello_world.py", '"copy"', "--db", source)
    assert done.returncode == 0, done.stderr
    result = flux_cli("store", "copy", source, pg_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("copied 0 workflow versions, 1 execution, ")
    assert "  executions: 1 of 1\n" in result.stderr
    again = flux_cli("store", "copy", source, pg_url)
    assert again.returncode != 0
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not empty: it holds 1 execution, " in lines[0], lines
    listed = flux_cli("executions", "list", "--store", pg_url)
    assert listed.returncode == 0 and "COMPLETED" in listed.stdout, listed


def test_example_moves_a_paused_execution_to_postgres(tmp_path, pg_url):
    from tests.conftest import PYTHON, ROOT, subprocess_env

    out = subprocess.run(
        [PYTHON, os.path.join(ROOT, "examples", "store_copy.py"), pg_url],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        "copied 0 workflow versions, 1 execution, 5 events, 1 secret, 0 cache entries, "
        "1 log line, 0 signals, 0 schedules" in lines
    )
    assert "resumed in the copy: COMPLETED reserved a lamp, approved by Grace" in lines
    assert "secret readable in the copy: tok-1234567890" in lines
    assert out.stdout.count("reserving a lamp") == 1


@pytest.mark.trio
async def test_a_row_the_target_cannot_hold_fails_with_one_clear_error(tmp_path, pg_url):
    source = str(tmp_path / "a.db")
    async with open_store(source) as store:  # SQLite text may hold NUL; PostgreSQL's may not
        await store.import_rows("secrets", [SecretRecord("bad\x00name", b"c", 1.0)])
    with pytest.raises(StoreError) as info:
        await copy_store_locations(source, pg_url)
    message = str(info.value)
    assert message.startswith(f"copying secrets from source {source} to target postgresql://")
    assert "cannot import 1 secret into secrets: PostgreSQL text fields cannot" in message
    assert "now holds a partial copy" in message
    assert (await everything(pg_url))["secrets"] == []  # the refused batch stored nothing
