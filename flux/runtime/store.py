"""The SQLite store: workflows, executions, event histories, secrets and cache in one file.

Everything goes through one connection owned by a :class:`Store`. Every SQLite call runs in a worker
thread (``anyio.to_thread.run_sync``) while holding a ``threading.Lock`` around the connection, so
the event loop never blocks on the disk, on trio as on asyncio.

Writes to executions and histories go through **group commit**: :meth:`Store.commit` queues
:class:`Write` objects and returns once they are durably committed. When many tasks commit at once,
the first one that finds no transaction running becomes the *leader*: it takes everything queued,
applies it in one SQLite transaction (each write inside its own SAVEPOINT, so one bad write fails
only its own caller), wakes the others, and goes on while more is queued. The leader works inside a
shielded cancel scope, so a cancelled leader still finishes and wakes everybody.

Values arrive already encoded as bytes; the store never encodes or decodes them.

Cancellation: a write handed to :meth:`Store.commit` or :meth:`Store.enqueue` is committed even if
the task that handed it is cancelled while waiting; that task only stops waiting for the outcome.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import sqlite_utils

from flux.runtime import store_bulk, store_leases, store_logs, store_signals
from flux.runtime.errors import StoreError, StoreUnavailableError
from flux.runtime.events import ExecutionState
from flux.runtime.group_commit import GroupCommit, _Pending
from flux.runtime.records import (
    EVENT_COLUMNS,
    EXECUTION_COLUMNS,
    WORKFLOW_COLUMNS,
    Claim,
    ExecutionRecord,
    SignalRecord,
    StaleWriteError,
    StoredEvent,
    StoreStatistics,
    WorkflowRecord,
    Write,
    decide_claim,
    stale_error,
)
from flux.runtime.records import check_write as _check_write
from flux.runtime.schedule_store import (
    SQLITE_SCHEDULE_TABLES,
    ScheduleMethods,
    sqlite_dialect,
)
from flux.runtime.settings import check_durability, parse_store

if TYPE_CHECKING:
    from flux.runtime.store_api import StoreAPI

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Claim",
    "ExecutionRecord",
    "SignalRecord",
    "StaleWriteError",
    "Store",
    "StoreStatistics",
    "StoredEvent",
    "WorkflowRecord",
    "Write",
    "open_store",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class _TransientStoreError(StoreError):
    """A transaction failed as a whole for a reason that may pass (SQLite's OperationalError:
    locked past the busy timeout, disk full, I/O error); retried by the store."""


# ---------------------------------------------------------------------------------------------
# Schema



def _migrate_1(db: sqlite_utils.Database) -> None:
    """The initial schema."""
    db.create_table("flux_meta", {"key": str, "value": str}, pk="key", not_null=["value"])
    db.create_table(
        "workflows",
        {"name": str, "version": int, "source": str, "source_hash": str, "created_at": float},
        pk=("name", "version"),
        not_null=["source", "source_hash", "created_at"],
    )
    db.create_table(
        "executions",
        {
            "execution_id": str,
            "workflow_name": str,
            "workflow_version": int,
            "parent_id": str,
            "input": bytes,
            "output": bytes,
            "state": str,
            "created_at": float,
            "updated_at": float,
            "lease_owner": str,
            "lease_epoch": int,
            "lease_expires_at": float,
            "wake_at": float,
            "cancel_requested": int,
        },
        pk="execution_id",
        not_null=[
            "workflow_name",
            "input",
            "state",
            "created_at",
            "updated_at",
            "lease_epoch",
            "cancel_requested",
        ],
        defaults={"lease_epoch": 0, "cancel_requested": 0},
    )
    executions = db.table("executions")
    for column in ("state", "workflow_name", "parent_id", "created_at"):
        executions.create_index([column], index_name=f"executions_{column}")
    # A rowid table (not WITHOUT ROWID): values may be large, and SQLite keeps large rows out of
    # the primary key's B-tree only in rowid tables.
    db.create_table(
        "events",
        {
            "execution_id": str,
            "seq": int,
            "type": str,
            "call_id": str,
            "name": str,
            "value": bytes,
            "time": float,
        },
        pk=("execution_id", "seq"),
        not_null=["type", "call_id", "name", "time"],
        foreign_keys=[("execution_id", "executions", "execution_id")],
    )
    db.create_table(
        "secrets",
        {"name": str, "ciphertext": bytes, "updated_at": float},
        pk="name",
        not_null=["ciphertext", "updated_at"],
    )
    db.create_table(
        "cache",
        {"key": str, "value": bytes, "created_at": float, "expires_at": float},
        pk="key",
        not_null=["created_at"],
    )


def _migrate_schedules(db: sqlite_utils.Database) -> None:
    """Schedules (flux.runtime.schedules) and the decisions each one recorded."""
    for statement in SQLITE_SCHEDULE_TABLES:
        db.execute(statement)


def _migrate_task_logs(db: sqlite_utils.Database) -> None:
    """Task logs: the lines task bodies print and log, and their per-execution totals."""
    for statement in store_logs.SQLITE_SCHEMA:
        db.execute(statement)


def _migrate_retry_of(db: sqlite_utils.Database) -> None:
    """executions.retry_of: the failed execution a retry was made from (flux.runtime.retry)"""
    db.execute("ALTER TABLE executions ADD COLUMN retry_of TEXT")
    db.execute("CREATE INDEX executions_retry_of ON executions (retry_of)")


def _migrate_lease_indexes(db: sqlite_utils.Database) -> None:
    """indexes for due timers and expired leases"""
    db.execute(
        "CREATE INDEX IF NOT EXISTS executions_wake_at ON executions (wake_at) "
        "WHERE wake_at IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS executions_lease_expires_at "
        "ON executions (lease_expires_at) WHERE lease_expires_at IS NOT NULL"
    )


def _migrate_signals(db: sqlite_utils.Database) -> None:
    """The signal queue (flux.runtime.signals): accepted signals, kept once delivered so that a
    keyed send is never stored twice."""
    db.execute(
        "CREATE TABLE signals (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "execution_id TEXT NOT NULL REFERENCES executions (execution_id), topic TEXT NOT NULL, "
        "value BLOB NOT NULL, sent_at REAL NOT NULL, key TEXT, delivered_at REAL)"
    )
    db.execute("CREATE INDEX signals_execution ON signals (execution_id, delivered_at, id)")
    db.execute("CREATE UNIQUE INDEX signals_key ON signals (execution_id, key)")


#: Migration ``i`` (0-based) brings a database from schema version ``i`` to ``i + 1``; version 0
#: is an empty file. Append, never edit: each runs inside the opening transaction.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_task_logs,
    _migrate_retry_of,
    _migrate_lease_indexes,
    _migrate_signals,
    _migrate_schedules,
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_KEY = "schema_version"

# Prepared SQL, built once.
_SQL_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)
_SQL_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EXECUTION_COLUMNS))})"
)
_SQL_SELECT_EXECUTION = f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM executions"
_SQL_SELECT_EVENTS = (
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE execution_id = ? AND seq > ? ORDER BY seq"
)
_SQL_SELECT_WORKFLOW = f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows"


# ---------------------------------------------------------------------------------------------
# The store


#: What :meth:`Store.enqueue` returns per write: ``done`` once its transaction ran, ``error``
#: the StoreError that refused it (None: stored).
WriteTicket = _Pending


class _SQLiteThread:
    """The one thread that runs this store's SQLite calls.

    A dedicated thread rather than ``anyio.to_thread``: it keeps the connection on one thread
    and saves the capacity limiter and thread-cache bookkeeping on every commit (measured: about
    60 µs per round trip against 84 µs here). The result comes back through the event loop's
    own thread-safe callback (trio token or asyncio loop), so it works on both backends.
    """

    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, box, wake = job
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:  # handed to the caller, re-raised there
                box.append((False, exc))
            try:
                wake()
            except Exception:  # the loop is gone (closed without closing the store)
                pass

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        token = anyio.lowlevel.current_token()
        native = token.native_token
        done = anyio.Event()
        if hasattr(native, "run_sync_soon"):  # trio

            def wake() -> None:
                native.run_sync_soon(done.set)
        else:  # asyncio: the running loop

            def wake() -> None:
                native.call_soon_threadsafe(done.set)

        box: list[tuple[bool, Any]] = []
        self._jobs.put((fn, args, box, wake))
        # like to_thread.run_sync: a cancelled caller still waits for the call to finish
        with anyio.CancelScope(shield=True):
            await done.wait()
        await anyio.lowlevel.checkpoint_if_cancelled()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


def open_store(
    location: str | os.PathLike[str],
    *,
    durability: str = "full",
    busy_timeout: float = 5.0,
    retry_for: float = 30.0,
) -> StoreAPI:
    """Return the store at ``location``: a SQLite :class:`Store` for a path or a
    ``sqlite:///path`` URL (the file is created with its directory if need be), a
    :class:`~flux.runtime.store_pg.PostgresStore` for a ``postgresql://user:password@host:port/db``
    URL (it needs the ``postgres`` extra: ``pip install 'flux-core[postgres]'``).

    Nothing is opened here: the store connects lazily, in a worker thread, on first use (or on
    ``async with``), and a store that cannot be opened raises StoreError then.
    ``durability="full"`` makes each commit durable before it returns (survives power loss);
    ``"normal"`` may lose the last commits on power loss, never on a process crash. Use as
    ``async with open_store(p) as store:`` or call ``await store.aclose()``. A location that is
    neither a path nor a known URL raises StoreError naming it.

    SQLite only: ``busy_timeout`` (seconds) is how long SQLite waits for another connection's
    write lock; ``retry_for`` (seconds) is how long a transaction that failed as a whole
    (database locked past the busy timeout, disk full, I/O error) is retried, with backoff,
    before its writers get :class:`~flux.runtime.errors.StoreUnavailableError`.
    """
    durability = check_durability(durability)
    try:
        where = parse_store(os.fspath(location))
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if where.kind == "postgresql":
        from flux.runtime.store_pg import PostgresStore

        return PostgresStore(where.target, durability=durability)
    return Store(
        where.target, durability=durability, busy_timeout=busy_timeout, retry_for=retry_for
    )


class Store(ScheduleMethods):
    """The one writer and reader of a Flux database file; see the module docstring.

    A store serves one event loop at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        retry_for: float = 30.0,
    ):
        self.path = os.fspath(path)
        self.durability = check_durability(durability)
        self.busy_timeout = float(busy_timeout)
        self.retry_for = float(retry_for)
        self._retries = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._db: sqlite_utils.Database | None = None
        self._thread = _SQLiteThread(f"flux-store {os.path.basename(str(path))}")
        self._closed = False
        self._closing = False
        # group commit, touched only on the event loop thread
        self._writer = GroupCommit(self._apply_batch, f"store {self.path!r} is closed")
        # prepared SQL per set of columns, touched only under the lock
        self._update_sql: dict[tuple[str, ...], str] = {}
        self._expect_sql: dict[tuple[str, ...], str] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._conn is not None else "unopened"
        return f"<Store {self.path!r} {self.durability} {state}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        await self._run(_noop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit whatever is queued, then close the connection. Idempotent."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            self._closing = True
            await self._writer.drain()
            self._closed = True
            await self._thread.call(self._close_connection)
            self._thread.stop()

    def _close_connection(self) -> None:
        with self._lock:
            conn, self._conn, self._db = self._conn, None, None
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        """Open the file, set the pragmas and migrate the schema (worker thread, lock held)."""
        if self.path != ":memory:" and not self.path.startswith("file:"):
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            synchronous = "FULL" if self.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._migrate(conn, db)
        except BaseException:
            conn.close()
            raise
        self._conn, self._db = conn, db
        return conn

    def _migrate(self, conn: sqlite3.Connection, db: sqlite_utils.Database) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(db)
            latest = len(MIGRATIONS)  # not SCHEMA_VERSION: tests substitute MIGRATIONS
            if version > latest:
                raise StoreError(
                    f"database {self.path!r} has schema version {version}, newer than version "
                    f"{latest} that this Flux knows; upgrade Flux to open it"
                )
            for target, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                try:
                    migrate(db)
                except Exception as exc:
                    raise StoreError(
                        f"migrating database {self.path!r} to schema version {target} failed: {exc}"
                    ) from exc
            if version < latest:
                conn.execute(
                    "INSERT INTO flux_meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_VERSION_KEY, str(latest)),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- running SQLite in the worker thread ----------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"store {self.path!r} is closed")
        return await self._thread.call(self._locked, fn, args)

    def _locked(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            try:
                conn = self._conn
                if conn is None:
                    if self._closed:
                        raise StoreError(f"store {self.path!r} is closed")
                    conn = self._connect()
                return fn(conn, *args)
            except sqlite3.OperationalError as exc:  # locked, busy, full, I/O: worth retrying
                raise _TransientStoreError(f"store {self.path!r}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path!r}: {exc}") from exc

    # -- group commit ---------------------------------------------------------------------------

    def enqueue(self, *writes: Write) -> list[WriteTicket]:
        """Queue writes without waiting; they go with the next commit (or :meth:`flush`).

        Returns one ticket per write: ``ticket.done`` and ``ticket.error`` tell, once the write's
        transaction ran, whether it was stored. Raises StoreError at once, queueing none of
        them, if one names an unknown column.
        """
        return self._writer.enqueue(writes)

    def discard_queued(self, execution_id: str) -> int:
        """Drop the writes to ``execution_id`` still waiting in the queue (not those already
        in a transaction), so that a run that stopped leaves nothing more behind. Dropping
        only a suffix of one execution's writes never leaves a hole in its sequence numbers:
        everything in a transaction was queued before anything still queued. Awaited writes
        are kept. Returns how many were dropped."""
        return self._writer.discard(execution_id)

    async def commit(self, *writes: Write) -> None:
        """Store ``writes`` and return once they are durably committed.

        Each write is atomic and independent: if one is refused, this raises its StoreError (or
        :class:`StaleWriteError`), and the other writes, this caller's included, still commit.
        Writes are applied in the order they were queued. ``commit()`` with no writes is
        :meth:`flush`. A transaction that fails as a whole is retried (see :func:`open_store`);
        past the retry window its writes, and every write queued behind them, get
        StoreUnavailableError.
        """
        await self._writer.commit(writes)

    async def flush(self) -> None:
        """Return once every write queued or being committed when called is committed."""
        await self._writer.flush()

    async def _apply_batch(self, writes: list[Write]) -> list[StoreError | None]:
        return await self._run_retrying(self._write_batch, writes)

    async def _run_retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the worker thread (one transaction); while it fails as a whole with a
        StoreError (locked, busy, full, I/O), retry with backoff from 50 ms up to 1 s for at
        most ``retry_for`` seconds, then raise StoreUnavailableError. ``fn`` must leave no
        transaction open when it raises (every helper here rolls back)."""
        delay = 0.05
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                return await self._run(fn, *args)
            except _TransientStoreError as exc:
                if self._closed:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailableError(
                        f"store {self.path!r} kept failing for {self.retry_for:g}s: {exc}"
                    ) from exc
                self._retries += 1
                logger.warning("%s; retrying in %.2fs", exc, delay)
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    def _write_batch(
        self, conn: sqlite3.Connection, batch: list[Write]
    ) -> list[StoreError | None]:
        """One transaction for the whole batch (worker thread, lock held)."""
        execute = conn.execute
        execute("BEGIN IMMEDIATE")
        try:
            if len(batch) == 1:  # no savepoint needed: a refusal rolls everything back
                try:
                    self._apply_write(conn, batch[0])
                except StoreError as exc:
                    if conn.in_transaction:
                        execute("ROLLBACK")
                    return [exc]
                execute("COMMIT")
                return [None]
            errors: list[StoreError | None] = []
            for write in batch:
                execute("SAVEPOINT flux_write")
                try:
                    self._apply_write(conn, write)
                except StoreError as exc:
                    execute("ROLLBACK TO flux_write")
                    errors.append(exc)
                else:
                    errors.append(None)
                execute("RELEASE flux_write")
            execute("COMMIT")
            return errors
        except BaseException:
            if conn.in_transaction:
                execute("ROLLBACK")
            raise

    def _apply_write(self, conn: sqlite3.Connection, write: Write) -> None:
        """Apply one write, raising StoreError for anything the caller did wrong."""
        eid = write.execution_id
        try:
            if write.expect:
                keys = tuple(write.expect)
                sql = self._expect_sql.get(keys)
                if sql is None:
                    conditions = "".join(f" AND {k} IS ?" for k in keys)
                    sql = f"SELECT 1 FROM executions WHERE execution_id = ?{conditions}"
                    self._expect_sql[keys] = sql
                if conn.execute(sql, (eid, *write.expect.values())).fetchone() is None:
                    raise _stale_error(conn, write)
            if write.insert is not None:
                try:
                    conn.execute(_SQL_INSERT_EXECUTION, attrs.astuple(write.insert, recurse=False))
                except sqlite3.IntegrityError as exc:
                    if "UNIQUE" in str(exc):
                        raise StoreError(f"execution {eid!r} already exists") from exc
                    raise StoreError(f"cannot insert execution {eid!r}: {exc}") from exc
            if write.update:
                update = write.update
                keys = tuple(update)
                sql = self._update_sql.get(keys)
                if sql is None:
                    assignments = [f"{k} = ?" for k in keys]
                    if "updated_at" not in update:
                        assignments.append("updated_at = ?")
                    sql = f"UPDATE executions SET {', '.join(assignments)} WHERE execution_id = ?"
                    self._update_sql[keys] = sql
                if "updated_at" in update:
                    params = (*update.values(), eid)
                else:
                    params = (*update.values(), time.time(), eid)
                try:
                    cursor = conn.execute(sql, params)
                except sqlite3.IntegrityError as exc:
                    raise StoreError(f"cannot update execution {eid!r}: {exc}") from exc
                if cursor.rowcount == 0:
                    raise StoreError(f"cannot update execution {eid!r}: no such execution")
            if write.events:
                changes = conn.total_changes
                try:
                    conn.executemany(
                        _SQL_INSERT_EVENTS,
                        [
                            (eid, e.seq, e.type, e.call_id, e.name, e.value, e.time)
                            for e in write.events
                        ],
                    )
                except sqlite3.IntegrityError as exc:
                    inserted = conn.total_changes - changes
                    raise _events_error(conn, write, exc, inserted) from exc
            if write.signals:
                store_signals.consume(conn, "?", eid, write.signals, time.time())
        except (
            sqlite3.ProgrammingError,
            sqlite3.InterfaceError,
            sqlite3.DataError,
            TypeError,
            OverflowError,
        ) as exc:  # a value SQLite cannot bind
            raise StoreError(f"cannot store write to execution {eid!r}: {exc}") from exc

    def statistics(self) -> StoreStatistics:
        """A snapshot of the group-commit counters."""
        return attrs.evolve(self._writer.statistics(), retries=self._retries)

    async def _schedule_call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, dialect, *args)`` in one ``BEGIN IMMEDIATE`` transaction (schedules)."""
        return await self._run_retrying(_schedule_transaction, fn, args)

    # -- ownership ------------------------------------------------------------------------------

    async def claim(
        self,
        execution_id: str,
        *,
        owner: str,
        expires_at: float,
        now: float,
        create: Write | None = None,
        owner_gone: Callable[[str], bool] | None = None,
        workflow_name: str | None = None,
    ) -> Claim:
        """Take the lease of ``execution_id`` for ``owner`` until ``expires_at`` and read its
        history, atomically (one ``BEGIN IMMEDIATE`` transaction): see :class:`Claim`.

        A lease held by another owner is taken only when it has expired at ``now``, or when
        ``owner_gone(lease_owner)`` says that owner no longer exists (called in the worker
        thread; it must be cheap). A claim bumps the lease epoch, sets state RUNNING and clears
        ``wake_at``; every later write of the claimer is fenced by that epoch. With ``create``
        (a Write inserting the execution and its first events), a missing execution is created
        in the same transaction, so two processes racing to start one id cannot both run it.
        With ``workflow_name``, an execution of another workflow is left alone (``"mismatch"``).
        """
        if create is not None:
            _check_write(create)
        return await self._run_retrying(
            _claim, execution_id, owner, expires_at, now, create, owner_gone, workflow_name, self
        )

    async def renew_leases(
        self, leases: Sequence[tuple[str, int]], *, owner: str, expires_at: float
    ) -> list[str]:
        """Extend the leases ``(execution_id, epoch)`` held by ``owner`` to ``expires_at``, in
        one transaction; returns the ids whose lease is no longer ``owner``'s at that epoch
        (taken over, or the execution ended): their runs must stop."""
        if not leases:
            return []
        return await self._run_retrying(_renew, list(leases), owner, expires_at)

    async def reserve_due(
        self, *, owner: str, now: float, expires_at: float, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Reserve for server ``owner`` the executions due at ``now`` (a durable sleep due, a
        lease expired), at most ``limit``, in one ``BEGIN IMMEDIATE`` transaction; see
        :mod:`flux.runtime.store_leases`."""
        return await self._run_retrying(_reserve_due, owner, now, expires_at, limit)

    async def ready_executions(self, *, now: float, limit: int = 100) -> list[ExecutionRecord]:
        """Queued executions with no wake time and no live lease, oldest first."""
        return await self._run(store_leases.ready_executions, "?", now, limit)

    #: SQLite has no notifications: one server per file, whose wake-ups stay in its process.
    shared = False

    async def notify(self, payloads: Sequence[str]) -> None:
        """Nothing to do: no other server listens to a SQLite file."""

    async def listen(self, deliver: Callable[[list[str]], None]) -> None:
        """Never delivers anything (see :meth:`notify`); returns when cancelled."""
        await anyio.sleep_forever()

    # -- executions and events --------------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution row, or None."""
        return await self._run(_get_execution, execution_id)

    async def load_events(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        """The events of an execution with ``seq > after_seq``, ordered by seq."""
        return await self._run(_load_events, execution_id, after_seq)

    async def cancel_requested(self, execution_ids: Sequence[str]) -> list[str]:
        """Which of ``execution_ids`` have a cancel request recorded."""
        ids = list(execution_ids)
        if not ids:
            return []
        return await self._run(_cancel_requested, ids)

    async def last_seq(self, execution_id: str) -> int:
        """The highest event seq of an execution, 0 if it has none."""
        return await self._run(_last_seq, execution_id)

    async def retries_of(self, execution_id: str) -> list[str]:
        """The ids of the executions made by retrying ``execution_id``, oldest first."""
        return await self._run(
            _column,
            "SELECT execution_id FROM executions WHERE retry_of = ? ORDER BY created_at, rowid",
            (execution_id,),
        )

    async def list_executions(
        self,
        *,
        workflow_name: str | None = None,
        state: ExecutionState | str | Iterable[ExecutionState | str] | None = None,
        parent_id: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Executions matching every filter given, newest first. ``state`` may be several."""
        where, params = _execution_filters(workflow_name, state, parent_id)
        sql = (
            f"{_SQL_SELECT_EXECUTION}{where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        )
        params.extend((-1 if limit is None else limit, offset))
        return await self._run(_list_executions, sql, params)

    async def count_executions(
        self,
        *,
        workflow_name: str | None = None,
        state: ExecutionState | str | Iterable[ExecutionState | str] | None = None,
        parent_id: str | None = None,
    ) -> int:
        """How many executions match the filters of :meth:`list_executions`."""
        where, params = _execution_filters(workflow_name, state, parent_id)
        return await self._run(_scalar, f"SELECT COUNT(*) FROM executions{where}", params)

    # -- workflows --------------------------------------------------------------------------------

    async def save_workflow(self, name: str, source: str, source_hash: str) -> WorkflowRecord:
        """Store a new version of a workflow's source: the previous highest version + 1, or 1."""
        return await self._run(_save_workflow, name, source, source_hash, time.time())

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowRecord | None:
        """That version of the workflow (the latest when ``version`` is None), or None."""
        return await self._run(_get_workflow, name, version)

    async def list_workflows(self) -> list[WorkflowRecord]:
        """The latest version of each workflow, by name."""
        return await self._run(_list_workflows)

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        """Every version of workflow ``name``, oldest first, without their source text."""
        return await self._run(_workflow_versions, name)

    async def workflow_version_by_hash(self, name: str, source_hash: str) -> int | None:
        """The newest version of workflow ``name`` whose source has ``source_hash``, or None."""
        return await self._run(_workflow_version_by_hash, name, source_hash)

    # -- secrets (ciphertext only) ----------------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> None:
        """Create or replace a secret's ciphertext."""
        await self._run(
            _execute,
            "INSERT INTO secrets (name, ciphertext, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            (name, ciphertext, time.time()),
        )

    async def get_secret(self, name: str) -> bytes | None:
        """A secret's ciphertext, or None."""
        return await self._run(_scalar, "SELECT ciphertext FROM secrets WHERE name = ?", (name,))

    async def delete_secret(self, name: str) -> bool:
        """Delete a secret; True if there was one."""
        count = await self._run(_execute, "DELETE FROM secrets WHERE name = ?", (name,))
        return count > 0

    async def list_secret_names(self) -> list[str]:
        """The names of the secrets, sorted."""
        return await self._run(_column, "SELECT name FROM secrets ORDER BY name", ())

    # -- cache ------------------------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        """The cached value, or None when absent or expired at ``now`` (``expires_at <= now``)."""
        return await self._run(
            _scalar,
            "SELECT value FROM cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (key, now),
        )

    async def cache_put(self, key: str, value: bytes, expires_at: float | None = None) -> None:
        """Create or replace a cache entry (``expires_at`` None: never expires)."""
        await self._run(
            _execute,
            "INSERT INTO cache (key, value, created_at, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at",
            (key, value, time.time(), expires_at),
        )

    async def cache_evict_expired(self, now: float) -> int:
        """Delete the entries expired at ``now``; returns how many."""
        return await self._run(
            _execute, "DELETE FROM cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        )

    # -- task logs (see flux.runtime.store_logs) --------------------------------------------------

    async def append_logs(
        self,
        execution_id: str,
        entries: Sequence[store_logs.LogEntry],
        *,
        limit: int,
        cut_lines: int = 0,
        cut_bytes: int = 0,
    ) -> int:
        """Append lines to the logs of ``execution_id`` within ``limit`` bytes in all; returns
        how many of ``entries`` were kept."""
        return await self._run(
            _append_logs, execution_id, list(entries), limit, cut_lines, cut_bytes
        )

    async def load_logs(
        self,
        execution_id: str,
        after: int = 0,
        limit: int | None = None,
        call_id: str | None = None,
    ) -> list[store_logs.LogRecord]:
        """The lines of ``execution_id`` with ``seq > after``, in order, at most ``limit``;
        with ``call_id``, only those of that call and the calls below it."""
        store_logs.check_query(after, limit)
        sql, params = store_logs.load_sql("?", execution_id, after, limit, call_id)
        rows = await self._run(_rows, sql, params)
        return [store_logs.LogRecord(*row) for row in rows]

    # -- signals (flux.runtime.signals) ----------------------------------------------------------

    async def add_signal(
        self,
        execution_id: str,
        topic: str,
        value: bytes,
        sent_at: float,
        key: str | None = None,
    ) -> tuple[ExecutionState | None, SignalRecord | None]:
        """Queue a signal for an execution that exists and has not finished, atomically with
        that check; see :meth:`StoreAPI.add_signal`."""
        return await self._run_retrying(
            _in_transaction, store_signals.add_signal, "?", execution_id, topic, value, sent_at, key
        )

    async def pending_signals(
        self, execution_id: str, *, topic: str | None = None, limit: int | None = None
    ) -> list[SignalRecord]:
        """The queued signals of an execution, in the order accepted (only ``topic``'s, at
        most ``limit``, when given)."""
        return await self._run(
            store_signals.pending, "?", execution_id, topic, limit
        )

    # -- whole tables, for moving a store (see flux.runtime.store_bulk) ---------------------------

    async def count_rows(self, table: str) -> int:
        """How many rows ``table`` (one of :data:`~flux.runtime.store_bulk.TABLES`) holds."""
        return await self._run(_scalar, store_bulk.count_sql(table), ())

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 500
    ) -> tuple[list[Any], Any]:
        """Up to ``limit`` records of ``table`` after cursor ``after`` (None: from the start),
        and the cursor for the next batch (None when this one is empty)."""
        sql, params = store_bulk.export_sql(
            table, placeholder="?", insertion_order="rowid", after=after, limit=limit
        )
        rows = await self._run(_rows, sql, params)
        return store_bulk.records_and_cursor(table, rows, "rowid")

    async def import_rows(self, table: str, records: Sequence[Any]) -> int:
        """Insert ``records`` into ``table`` as they are, in one transaction: all of them, or
        none and a StoreError (e.g. a key already stored). Returns how many were inserted."""
        rows = store_bulk.import_values(table, records)
        if not rows:
            return 0
        sql = store_bulk.import_sql(table, "?")
        return await self._run(_import_rows, table, sql, rows)


# ---------------------------------------------------------------------------------------------
# Helpers running in the worker thread (lock held)


def _noop(conn: sqlite3.Connection) -> None:
    pass


def _in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


_SQLITE = sqlite_dialect()


def _schedule_transaction(
    conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]
) -> T:
    """``fn(conn, dialect, *args)`` in one BEGIN IMMEDIATE transaction (the schedules' SQL is
    shared by both stores, written against a dialect)."""
    return _in_transaction(conn, fn, _SQLITE, *args)


def _claim(
    conn: sqlite3.Connection,
    execution_id: str,
    owner: str,
    expires_at: float,
    now: float,
    create: Write | None,
    owner_gone: Callable[[str], bool] | None,
    workflow_name: str | None,
    store: Store,
) -> Claim:
    conn.execute("BEGIN IMMEDIATE")
    try:
        record = _get_execution(conn, execution_id)
        if record is None:
            if create is None:
                conn.execute("ROLLBACK")
                return Claim("missing")
            store._apply_write(conn, create)
            conn.execute("COMMIT")
            return Claim("created", create.insert, create.events, 1)
        decided = decide_claim(record, owner, now, owner_gone, workflow_name)
        if decided is not None:
            events = _load_events(conn, execution_id, 0) if decided == "finished" else []
            conn.execute("ROLLBACK")
            return Claim(decided, record, events, record.lease_epoch)
        epoch = record.lease_epoch + 1
        conn.execute(
            "UPDATE executions SET lease_owner = ?, lease_epoch = ?, lease_expires_at = ?, "
            "state = ?, wake_at = NULL, updated_at = ? WHERE execution_id = ?",
            (owner, epoch, expires_at, ExecutionState.RUNNING.value, time.time(), execution_id),
        )
        events = _load_events(conn, execution_id, 0)
        conn.execute("COMMIT")
        return Claim("claimed", record, events, epoch)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _renew(
    conn: sqlite3.Connection, leases: list[tuple[str, int]], owner: str, expires_at: float
) -> list[str]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        lost = []
        for execution_id, epoch in leases:
            cursor = conn.execute(
                "UPDATE executions SET lease_expires_at = ? WHERE execution_id = ? "
                "AND lease_epoch = ? AND lease_owner = ?",
                (expires_at, execution_id, epoch, owner),
            )
            if cursor.rowcount == 0:
                lost.append(execution_id)
        conn.execute("COMMIT")
        return lost
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _reserve_due(
    conn: sqlite3.Connection, owner: str, now: float, expires_at: float, limit: int
) -> list[ExecutionRecord]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = store_leases.reserve_due(conn, "?", owner, now, expires_at, limit, False)
        conn.execute("COMMIT")
        return out
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _schema_version(db: sqlite_utils.Database) -> int:
    if not db.table("flux_meta").exists():
        return 0
    row = db.execute("SELECT value FROM flux_meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).rowcount


def _scalar(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _column(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return [row[0] for row in conn.execute(sql, params)]


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _many(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(sql, rows)


def _append_logs(
    conn: sqlite3.Connection,
    execution_id: str,
    entries: list[store_logs.LogEntry],
    limit: int,
    cut_lines: int,
    cut_bytes: int,
) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        kept = store_logs.append(
            conn,
            ph="?",
            for_update="",
            many=_many,
            execution_id=execution_id,
            entries=entries,
            limit=limit,
            cut_lines=cut_lines,
            cut_bytes=cut_bytes,
        )
        conn.execute("COMMIT")
        return kept
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _import_rows(
    conn: sqlite3.Connection, table: str, sql: str, rows: list[tuple[Any, ...]]
) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.InterfaceError | OverflowError):
            raise store_bulk.import_error(table, len(rows), exc) from exc
        raise
    return len(rows)


def _execution(row: Sequence[Any]) -> ExecutionRecord:
    return ExecutionRecord(**dict(zip(EXECUTION_COLUMNS, row, strict=True)))


def _get_execution(conn: sqlite3.Connection, execution_id: str) -> ExecutionRecord | None:
    row = conn.execute(
        f"{_SQL_SELECT_EXECUTION} WHERE execution_id = ?", (execution_id,)
    ).fetchone()
    return None if row is None else _execution(row)


def _list_executions(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any]
) -> list[ExecutionRecord]:
    return [_execution(row) for row in conn.execute(sql, params)]


def _load_events(conn: sqlite3.Connection, execution_id: str, after_seq: int) -> list[StoredEvent]:
    rows = conn.execute(_SQL_SELECT_EVENTS, (execution_id, after_seq))
    return [StoredEvent(*row) for row in rows]


def _last_seq(conn: sqlite3.Connection, execution_id: str) -> int:
    row = conn.execute(
        "SELECT MAX(seq) FROM events WHERE execution_id = ?", (execution_id,)
    ).fetchone()
    return row[0] or 0


def _save_workflow(
    conn: sqlite3.Connection, name: str, source: str, source_hash: str, now: float
) -> WorkflowRecord:
    # One statement, so one implicit transaction: the max and the insert cannot interleave.
    row = conn.execute(
        "INSERT INTO workflows (name, version, source, source_hash, created_at) "
        "SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ? FROM workflows WHERE name = ? "
        f"RETURNING {', '.join(WORKFLOW_COLUMNS)}",
        (name, source, source_hash, now, name),
    ).fetchone()
    return WorkflowRecord(*row)


def _get_workflow(
    conn: sqlite3.Connection, name: str, version: int | None
) -> WorkflowRecord | None:
    if version is None:
        sql = f"{_SQL_SELECT_WORKFLOW} WHERE name = ? ORDER BY version DESC LIMIT 1"
        row = conn.execute(sql, (name,)).fetchone()
    else:
        sql = f"{_SQL_SELECT_WORKFLOW} WHERE name = ? AND version = ?"
        row = conn.execute(sql, (name, version)).fetchone()
    return None if row is None else WorkflowRecord(*row)


def _cancel_requested(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    out: list[str] = []
    for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out += [
            row[0]
            for row in conn.execute(
                f"SELECT execution_id FROM executions WHERE cancel_requested = 1 "
                f"AND execution_id IN ({marks})",
                chunk,
            )
        ]
    return out


def _workflow_versions(conn: sqlite3.Connection, name: str) -> list[WorkflowRecord]:
    rows = conn.execute(
        "SELECT name, version, '' AS source, source_hash, created_at FROM workflows "
        "WHERE name = ? ORDER BY version",
        (name,),
    )
    return [WorkflowRecord(*row) for row in rows]


def _workflow_version_by_hash(conn: sqlite3.Connection, name: str, source_hash: str) -> int | None:
    row = conn.execute(
        "SELECT MAX(version) FROM workflows WHERE name = ? AND source_hash = ?",
        (name, source_hash),
    ).fetchone()
    return None if row is None else row[0]


def _list_workflows(conn: sqlite3.Connection) -> list[WorkflowRecord]:
    sql = (
        f"{_SQL_SELECT_WORKFLOW} WHERE (name, version) IN "
        "(SELECT name, MAX(version) FROM workflows GROUP BY name) ORDER BY name"
    )
    return [WorkflowRecord(*row) for row in conn.execute(sql)]


def _stale_error(conn: Any, write: Write) -> StaleWriteError:
    return stale_error(conn, write, "?")


def _events_error(
    conn: sqlite3.Connection, write: Write, exc: sqlite3.IntegrityError, inserted: int = 0
) -> StoreError:
    """The message for a refused append; ``inserted``: how many of its rows executemany had
    inserted (still in the transaction) before the one that failed."""
    eid = write.execution_id
    message = str(exc)
    if "FOREIGN KEY" in message:
        return StoreError(f"cannot append events: no execution {eid!r}")
    if "UNIQUE" in message:
        seqs = [e.seq for e in write.events]
        placeholders = ", ".join("?" * len(seqs))
        stored = {
            row[0]
            for row in conn.execute(
                f"SELECT seq FROM events WHERE execution_id = ? AND seq IN ({placeholders})",
                (eid, *seqs),
            )
        }
        mine = set(seqs[:inserted])  # stored by this very write: not clashes
        repeated = {s for s in seqs if seqs.count(s) > 1}
        clashes = sorted((stored - mine) | repeated)
        return StoreError(
            f"event seq {', '.join(map(str, clashes))} of execution {eid!r} already stored"
        )
    return StoreError(f"cannot append events to execution {eid!r}: {message}")


# ---------------------------------------------------------------------------------------------
# Helpers on the event loop


def _execution_filters(
    workflow_name: str | None,
    state: ExecutionState | str | Iterable[ExecutionState | str] | None,
    parent_id: str | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if workflow_name is not None:
        clauses.append("workflow_name = ?")
        params.append(workflow_name)
    if state is not None:
        if isinstance(state, str):
            clauses.append("state = ?")
            params.append(ExecutionState(state).value)
        else:
            states = [ExecutionState(s).value for s in state]
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
    if parent_id is not None:
        clauses.append("parent_id = ?")
        params.append(parent_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
