"""The PostgreSQL store: the SQLite store's contract on a database several processes share.

Built on psycopg 3's synchronous API and a ``psycopg_pool.ConnectionPool``. Every database call
runs in a worker thread (``anyio.to_thread.run_sync``, at most one thread per pooled connection),
one thread hop per transaction, so the event loop never blocks, on trio as on asyncio.
(psycopg's async API and asyncpg need asyncio; Flux's server runs on trio.)

Writes go through the same group commit as the SQLite store (:mod:`flux.runtime.group_commit`):
concurrent commits are merged into one transaction, each write inside its own SAVEPOINT so one
refused write fails only its caller. A write's ``expect`` is checked with ``SELECT ... FOR
UPDATE``: the row stays locked until the batch commits, so a fenced write and a concurrent epoch
change from another process cannot both succeed.

Durability: ``full`` commits with ``synchronous_commit = on`` (the commit is flushed to the
server's WAL on disk before it returns), ``normal`` with ``synchronous_commit = off`` (a server
crash may lose the last commits; never a half of one).

Values arrive already encoded as bytes (``bytea`` columns); the store never encodes or decodes
them. See :mod:`flux.runtime.store_api` for the contract.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio

from flux.runtime import (
    store_bulk,
    store_leases,
    store_logs,
    store_pg_lease,
    store_pg_notify,
    store_signals,
)
from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.group_commit import GroupCommit
from flux.runtime.records import (
    EXECUTION_COLUMNS,
    WORKFLOW_COLUMNS,
    Claim,
    ExecutionRecord,
    SignalRecord,
    StoredEvent,
    StoreStatistics,
    WorkflowRecord,
    Write,
)
from flux.runtime.schedule_store import ScheduleMethods, pg_dialect
from flux.runtime.settings import check_durability, redact_url
from flux.runtime.store_pg_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQL_SELECT_EVENTS,
    SQL_SELECT_EXECUTION,
    SQL_SELECT_WORKFLOW,
    migrate,
    one_line,
)
from flux.runtime.store_pg_write import BatchWriter, _insert_values

try:
    import psycopg
    import psycopg.conninfo
    import psycopg_pool
    from psycopg import errors as pg_errors
except ImportError:  # the extra is not installed: PostgresStore() says so
    psycopg = None  # type: ignore[assignment]
    psycopg_pool = None  # type: ignore[assignment]
    pg_errors = None  # type: ignore[assignment]

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: What to install when psycopg is missing.
EXTRA_HINT = "pip install 'flux-core[postgres]'"

#: Query parameters of a store URL that Flux reads itself (libpq never sees them).
POOL_PARAMETERS = ("pool_min_size", "pool_max_size", "pool_timeout")

_DEFAULT_POOL = {"pool_min_size": 1, "pool_max_size": 10, "pool_timeout": 30.0}
_CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
_DEADLOCK_RETRIES = 3  # attempts at a batch PostgreSQL rolled back for a deadlock


# ---------------------------------------------------------------------------------------------
# The store


def _require_driver() -> None:
    if psycopg is None or psycopg_pool is None:
        raise StoreError(
            f"the PostgreSQL store needs psycopg and psycopg_pool: install the 'postgres' extra "
            f"({EXTRA_HINT})"
        )


def split_pool_parameters(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without Flux's ``pool_*`` query parameters, and their values (defaults filled).

    Raises StoreError naming a parameter whose value is not a positive number.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    pool = dict(_DEFAULT_POOL)
    kept = []
    for key, value in query:
        if key not in POOL_PARAMETERS:
            kept.append((key, value))
            continue
        kind = float if key == "pool_timeout" else int
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if number <= 0:
            raise StoreError(
                f"store URL parameter {key}={value!r} is not a positive {kind.__name__}"
            )
        pool[key] = number
    if pool["pool_min_size"] > pool["pool_max_size"]:
        raise StoreError(
            f"store URL: pool_min_size={pool['pool_min_size']} is larger than "
            f"pool_max_size={pool['pool_max_size']}"
        )
    rest = parts._replace(query=urllib.parse.urlencode(kept))
    return urllib.parse.urlunsplit(rest), pool


class PostgresStore(ScheduleMethods):
    """The writer and reader of a Flux database on a PostgreSQL server; see the module docstring.

    ``url`` is a libpq URL, ``postgresql://user:password@host:port/database``, with any libpq
    parameter after ``?`` and Flux's pool settings ``pool_min_size`` (default 1),
    ``pool_max_size`` (default 10, the most connections and worker threads this store uses)
    and ``pool_timeout`` (seconds to wait for a free connection, default 30). Several stores,
    in one process or many, may share one database. A store serves one event loop at a time.
    """

    def __init__(self, url: str, *, durability: str = "full"):
        _require_driver()
        self.durability = check_durability(durability)
        self.url = url
        #: the URL without its password, for messages and logs
        self.location = redact_url(url)
        self._conninfo, self._pool_settings = split_pool_parameters(url)
        password = psycopg.conninfo.conninfo_to_dict(self._conninfo).get("password")
        self._password = password if isinstance(password, str) else ""
        self._lock = threading.Lock()  # guards opening and closing the pool
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._limiter_loop: object = None
        self._closed = False
        self._writer = GroupCommit(self._apply_batch, f"store {self.location!r} is closed")
        self._batches = BatchWriter()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._pool is not None else "unopened"
        return f"<PostgresStore {self.location!r} {self.durability} {state}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> PostgresStore:
        await self._run(_noop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit whatever is queued, then close the pool. Idempotent."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            await self._writer.drain()
            self._closed = True
            await anyio.to_thread.run_sync(self._close_pool)

    def _close_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5.0)

    def _open(self) -> psycopg_pool.ConnectionPool:
        """Connect, migrate the schema and open the pool (worker thread)."""
        with self._lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise StoreError(f"store {self.location!r} is closed")
            kwargs = self._connection_kwargs()
            try:
                conn = psycopg.connect(self._conninfo, **kwargs)
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot connect to the PostgreSQL store {self.location}: "
                    f"{one_line(exc, self._password)}"
                ) from None
            try:
                migrate(conn, self.location, self._password)
            finally:
                conn.close()
            settings = self._pool_settings
            pool = psycopg_pool.ConnectionPool(
                self._conninfo,
                min_size=settings["pool_min_size"],
                max_size=settings["pool_max_size"],
                timeout=settings["pool_timeout"],
                kwargs=kwargs,
                configure=self._configure,
                name=f"flux {self.location}",
                open=False,
            )
            try:
                pool.open(wait=True, timeout=settings["pool_timeout"])
            except psycopg_pool.PoolTimeout as exc:
                pool.close(timeout=1.0)
                raise StoreError(
                    f"cannot open connections to the PostgreSQL store {self.location}: "
                    f"{one_line(exc, self._password)}"
                ) from None
            self._pool = pool
            return pool

    def _connection_kwargs(self) -> dict[str, Any]:
        given = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            kwargs["connect_timeout"] = _CONNECT_TIMEOUT
        if "application_name" not in given:
            kwargs["application_name"] = "flux"
        return kwargs

    def _configure(self, conn: Any) -> None:
        # No server-side prepared statements: psycopg believes a statement prepared when an
        # aborted pipeline (a refused write) made the server skip its PREPARE.
        conn.prepare_threshold = None
        synchronous = "on" if self.durability == "full" else "off"
        conn.execute(f"SET synchronous_commit TO {synchronous}")

    # -- running SQL in worker threads ----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, retry: bool = False) -> T:
        """``fn(conn, *args)`` on a pooled connection in autocommit mode, in a worker thread.
        ``retry``: once more on a fresh connection if the first one turns out broken (only for
        calls that may safely run twice, e.g. reads)."""
        return await self._to_thread(self._call, fn, args, False, retry)

    async def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` inside one transaction (committed if ``fn`` returns, rolled back
        if it raises), in one worker-thread hop. The way to add a method running several
        statements atomically, e.g. ``SELECT ... FOR UPDATE``, then ``UPDATE``, then a read."""
        return await self._to_thread(self._call, fn, args, True, False)

    async def _to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"store {self.location!r} is closed")
        loop = anyio.lowlevel.current_token()
        if self._limiter is None or self._limiter_loop is not loop:  # one limiter per loop
            self._limiter = anyio.CapacityLimiter(self._pool_settings["pool_max_size"])
            self._limiter_loop = loop
        # not abandoned on cancellation: a cancelled caller waits for its call to finish
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _call(
        self, fn: Callable[..., T], args: tuple[Any, ...], transaction: bool, retry: bool
    ) -> T:
        pool = self._pool or self._open()
        for attempt in range(2):
            conn = None
            try:
                with pool.connection() as conn:
                    if not transaction:
                        return fn(conn, *args)
                    with conn.transaction():
                        return fn(conn, *args)
            except psycopg.OperationalError as exc:
                if retry and attempt == 0 and conn is not None and conn.broken:
                    logger.info("store %s: retrying on a new connection: %s", self.location, exc)
                    pool.check()  # the others may be broken too (a server restart)
                    continue
                raise self._error(exc) from exc
            except (psycopg.Error, UnicodeError) as exc:  # e.g. a lone surrogate in an id
                raise self._error(exc) from exc
        raise AssertionError("unreachable")

    async def _schedule_call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, dialect, *args)`` in one transaction (schedules)."""
        return await self._transaction(fn, _PG, *args)

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.location!r}: {one_line(exc, self._password)}")

    # -- group commit ---------------------------------------------------------------------------

    def enqueue(self, *writes: Write) -> list[Any]:
        """Queue writes without waiting; they go with the next commit (or :meth:`flush`).
        Returns one ticket per write (``done``, ``error``), as the SQLite store does.

        Raises StoreError at once, queueing none of them, if one names an unknown column.
        """
        return self._writer.enqueue(writes)

    def discard_queued(self, execution_id: str) -> int:
        """Drop the writes to ``execution_id`` still waiting in the queue (see the SQLite
        store's ``discard_queued``)."""
        return self._writer.discard(execution_id)

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
        """Take the lease of ``execution_id`` and read its history in one transaction that
        locks its row (see ``Store.claim`` for the decisions)."""
        from flux.runtime.records import check_write

        if create is not None:
            check_write(create)
        return await self._transaction(
            store_pg_lease.claim,
            execution_id,
            owner,
            expires_at,
            now,
            create,
            owner_gone,
            workflow_name,
        )

    async def renew_leases(
        self, leases: Sequence[tuple[str, int]], *, owner: str, expires_at: float
    ) -> list[str]:
        """Extend ``owner``'s leases ``(execution_id, epoch)``; returns the ids it lost. Each
        lease is its own statement (one round trip for all): a renewal never deadlocks with
        writes of the same executions."""
        if not leases:
            return []
        return await self._run(store_pg_lease.renew, list(leases), owner, expires_at)

    async def reserve_due(
        self, *, owner: str, now: float, expires_at: float, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Reserve for server ``owner`` the executions due at ``now`` (a durable sleep due, a
        lease expired), at most ``limit``, in one transaction with ``FOR UPDATE SKIP LOCKED``:
        servers polling at once take different rows; see :mod:`flux.runtime.store_leases`."""
        return await self._transaction(
            store_leases.reserve_due, "%s", owner, now, expires_at, limit, True
        )

    async def ready_executions(self, *, now: float, limit: int = 100) -> list[ExecutionRecord]:
        """Queued executions with no wake time and no live lease, oldest first."""
        return await self._run(store_leases.ready_executions, "%s", now, limit, retry=True)

    #: Several servers may serve one PostgreSQL database: they wake each other with
    #: LISTEN/NOTIFY (:meth:`notify`, :meth:`listen`).
    shared = True

    async def notify(self, payloads: Sequence[str]) -> None:
        """Send each payload (< 8000 bytes) to every process in :meth:`listen` on this
        database, in one round trip (``pg_notify``; delivered once this call commits)."""
        if payloads:
            await self._run(store_pg_notify.notify, list(payloads))

    async def listen(self, deliver: Callable[[list[str]], None]) -> None:
        """Hand the payloads sent by :meth:`notify` (of any process, this one included) to
        ``deliver`` on the event loop, in batches, until cancelled. A dedicated connection
        (not one of the pool's); when it breaks it reconnects, and ``deliver(["*"])`` says so
        each time it (re)starts listening: what was sent meanwhile was lost."""
        await self._run(_noop)  # connect and migrate first: a bad URL fails here
        await store_pg_notify.listen(
            self._conninfo, self._connection_kwargs(), deliver, self.location, self._password
        )

    async def commit(self, *writes: Write) -> None:
        """Store ``writes`` and return once they are durably committed (see
        :meth:`flux.runtime.store_api.StoreAPI.commit`)."""
        await self._writer.commit(writes)

    async def flush(self) -> None:
        """Return once every write queued or being committed when called is committed."""
        await self._writer.flush()

    def statistics(self) -> StoreStatistics:
        """A snapshot of the group-commit counters."""
        return self._writer.statistics()

    async def _apply_batch(self, writes: list[Write]) -> list[StoreError | None]:
        return await self._to_thread(self._write_batch, writes)

    def _write_batch(self, writes: list[Write]) -> list[StoreError | None]:
        """One transaction for the whole batch (worker thread). Retried on a fresh connection
        when the one it got is found broken before COMMIT was sent (nothing of it was
        committed), and when PostgreSQL rolled it back for a deadlock with another process."""
        pool = self._pool or self._open()
        attempt = 0
        while True:
            attempt += 1
            sent: list[bool] = [False]  # COMMIT sent: from then on the outcome is unknown
            conn = None
            try:
                with pool.connection() as conn:
                    return self._batches.apply(conn, writes, sent)
            except (pg_errors.TransactionRollback, pg_errors.DeadlockDetected) as exc:
                if attempt < _DEADLOCK_RETRIES and conn is not None and not conn.broken:
                    logger.info("store %s: batch rolled back (%s), retrying", self.location, exc)
                    continue
                raise self._error(exc) from exc
            except psycopg.OperationalError as exc:
                if sent[0]:
                    raise StoreError(
                        f"store {self.location!r}: the connection failed while committing "
                        f"{len(writes)} write(s), whose outcome is unknown: "
                        f"{one_line(exc, self._password)}"
                    ) from exc
                if attempt == 1 and conn is not None and conn.broken:
                    logger.info("store %s: retrying a batch on a new connection", self.location)
                    pool.check()  # the others may be broken too (a server restart)
                    continue
                raise self._error(exc) from exc
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    # -- executions and events ------------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution row, or None."""
        return await self._run(_get_execution, execution_id, retry=True)

    async def load_events(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        """The events of an execution with ``seq > after_seq``, ordered by seq."""
        return await self._run(_load_events, execution_id, after_seq, retry=True)

    async def cancel_requested(self, execution_ids: Sequence[str]) -> list[str]:
        """Which of ``execution_ids`` have a cancel request recorded."""
        ids = list(execution_ids)
        if not ids:
            return []
        return await self._run(
            _column,
            "SELECT execution_id FROM executions "
            "WHERE cancel_requested AND execution_id = ANY(%s) ORDER BY execution_id",
            (ids,),
            retry=True,
        )

    async def retries_of(self, execution_id: str) -> list[str]:
        """The ids of the executions made by retrying ``execution_id``, oldest first."""
        return await self._run(
            _column,
            "SELECT execution_id FROM executions WHERE retry_of = %s ORDER BY created_at, row_id",
            (execution_id,),
            retry=True,
        )

    async def last_seq(self, execution_id: str) -> int:
        """The highest event seq of an execution, 0 if it has none."""
        return await self._run(
            _scalar,
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE execution_id = %s",
            (execution_id,),
            retry=True,
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
            f"{SQL_SELECT_EXECUTION}{where} ORDER BY created_at DESC, row_id DESC "
            "LIMIT %s OFFSET %s"
        )
        params.extend((None if limit is None or limit < 0 else limit, max(offset, 0)))
        return await self._run(_list_executions, sql, params, retry=True)

    async def count_executions(
        self,
        *,
        workflow_name: str | None = None,
        state: ExecutionState | str | Iterable[ExecutionState | str] | None = None,
        parent_id: str | None = None,
    ) -> int:
        """How many executions match the filters of :meth:`list_executions`."""
        where, params = _execution_filters(workflow_name, state, parent_id)
        return await self._run(
            _scalar, f"SELECT COUNT(*) FROM executions{where}", params, retry=True
        )

    # -- workflows ------------------------------------------------------------------------------

    async def save_workflow(self, name: str, source: str, source_hash: str) -> WorkflowRecord:
        """Store a new version of a workflow's source: the previous highest version + 1, or 1."""
        return await self._transaction(_save_workflow, name, source, source_hash, time.time())

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowRecord | None:
        """That version of the workflow (the latest when ``version`` is None), or None."""
        return await self._run(_get_workflow, name, version, retry=True)

    async def list_workflows(self) -> list[WorkflowRecord]:
        """The latest version of each workflow, by name."""
        return await self._run(_list_workflows, retry=True)

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        """Every version of workflow ``name``, oldest first, without their source text."""
        return await self._run(_workflow_versions, name, retry=True)

    async def workflow_version_by_hash(self, name: str, source_hash: str) -> int | None:
        """The newest version of workflow ``name`` whose source has ``source_hash``, or None."""
        return await self._run(
            _scalar,
            "SELECT MAX(version) FROM workflows WHERE name = %s AND source_hash = %s",
            (name, source_hash),
            retry=True,
        )

    # -- secrets (ciphertext only) --------------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> None:
        """Create or replace a secret's ciphertext."""
        await self._run(
            _execute,
            "INSERT INTO secrets (name, ciphertext, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET "
            "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            (name, ciphertext, time.time()),
        )

    async def get_secret(self, name: str) -> bytes | None:
        """A secret's ciphertext, or None."""
        return await self._run(
            _scalar, "SELECT ciphertext FROM secrets WHERE name = %s", (name,), retry=True
        )

    async def delete_secret(self, name: str) -> bool:
        """Delete a secret; True if there was one."""
        count = await self._run(_execute, "DELETE FROM secrets WHERE name = %s", (name,))
        return count > 0

    async def list_secret_names(self) -> list[str]:
        """The names of the secrets, sorted."""
        return await self._run(
            _column, "SELECT name FROM secrets ORDER BY name COLLATE \"C\"", (), retry=True
        )

    # -- cache ----------------------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        """The cached value, or None when absent or expired at ``now`` (``expires_at <= now``)."""
        return await self._run(
            _scalar,
            "SELECT value FROM cache WHERE key = %s AND (expires_at IS NULL OR expires_at > %s)",
            (key, now),
            retry=True,
        )

    async def cache_put(self, key: str, value: bytes, expires_at: float | None = None) -> None:
        """Create or replace a cache entry (``expires_at`` None: never expires)."""
        await self._run(
            _execute,
            "INSERT INTO cache (key, value, created_at, expires_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at",
            (key, value, time.time(), expires_at),
        )

    async def cache_evict_expired(self, now: float) -> int:
        """Delete the entries expired at ``now``; returns how many."""
        return await self._run(
            _execute, "DELETE FROM cache WHERE expires_at IS NOT NULL AND expires_at <= %s", (now,)
        )

    # -- task logs (see flux.runtime.store_logs) ------------------------------------------------

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
        return await self._transaction(
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
        sql, params = store_logs.load_sql("%s", execution_id, after, limit, call_id)
        rows = await self._run(_rows, sql, params, retry=True)
        return [store_logs.LogRecord(*row) for row in rows]

    # -- whole tables, for moving a store (see flux.runtime.store_bulk) -------------------------

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
        that check (the execution row locked); see :meth:`StoreAPI.add_signal`."""
        return await self._transaction(
            store_signals.add_signal,
            "%s",
            execution_id,
            topic,
            value,
            sent_at,
            key,
            " FOR UPDATE",
        )

    async def pending_signals(
        self, execution_id: str, *, topic: str | None = None, limit: int | None = None
    ) -> list[SignalRecord]:
        """The queued signals of an execution, in the order accepted (only ``topic``'s, at
        most ``limit``, when given)."""
        return await self._run(
            store_signals.pending, "%s", execution_id, topic, limit, retry=True
        )

    async def count_rows(self, table: str) -> int:
        """How many rows ``table`` (one of :data:`~flux.runtime.store_bulk.TABLES`) holds."""
        return await self._run(_scalar, store_bulk.count_sql(table), (), retry=True)

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 500
    ) -> tuple[list[Any], Any]:
        """Up to ``limit`` records of ``table`` after cursor ``after`` (None: from the start),
        and the cursor for the next batch (None when this one is empty)."""
        sql, params = store_bulk.export_sql(
            table, placeholder="%s", insertion_order="row_id", after=after, limit=limit
        )
        rows = await self._run(_rows, sql, params, retry=True)
        return store_bulk.records_and_cursor(table, rows, "row_id")

    async def import_rows(self, table: str, records: Sequence[Any]) -> int:
        """Insert ``records`` into ``table`` as they are, in one transaction (one ``COPY``):
        all of them, or none and a StoreError (e.g. a key already stored). Returns how many
        were inserted."""
        rows = store_bulk.import_values(table, records)
        if not rows:
            return 0
        return await self._transaction(_copy_rows, table, rows)


# ---------------------------------------------------------------------------------------------
# Helpers running in worker threads

def _noop(conn: Any) -> None:
    pass


_PG = pg_dialect(_insert_values)


def _execute(conn: Any, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).rowcount


def _scalar(conn: Any, sql: str, params: Sequence[Any]) -> Any:
    row = conn.execute(sql, params, binary=True).fetchone()
    return None if row is None else row[0]


def _column(conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    return [row[0] for row in conn.execute(sql, params, binary=True)]


def _rows(conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params, binary=True).fetchall()


def _many(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cursor:
        cursor.executemany(sql, rows)


def _append_logs(
    conn: Any,
    execution_id: str,
    entries: list[store_logs.LogEntry],
    limit: int,
    cut_lines: int,
    cut_bytes: int,
) -> int:
    return store_logs.append(
        conn,
        ph="%s",
        for_update=" FOR UPDATE",
        many=_many,
        execution_id=execution_id,
        entries=entries,
        limit=limit,
        cut_lines=cut_lines,
        cut_bytes=cut_bytes,
    )


def _copy_rows(conn: Any, table: str, rows: list[tuple[Any, ...]]) -> int:
    columns = ", ".join(store_bulk.table(table).columns)
    try:
        with conn.cursor() as cursor, cursor.copy(
            f"COPY {table} ({columns}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
    except (psycopg.errors.IntegrityError, psycopg.DataError) as exc:
        raise store_bulk.import_error(table, len(rows), exc) from exc
    if table == "signals":  # ids copied as they are: new signals are numbered after them
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('signals', 'id'), "
            "(SELECT COALESCE(MAX(id), 0) + 1 FROM signals), false)"
        )
    return len(rows)


def _execution(row: Sequence[Any]) -> ExecutionRecord:
    return ExecutionRecord(**dict(zip(EXECUTION_COLUMNS, row, strict=True)))


def _get_execution(conn: Any, execution_id: str) -> ExecutionRecord | None:
    row = conn.execute(
        f"{SQL_SELECT_EXECUTION} WHERE execution_id = %s", (execution_id,), binary=True
    ).fetchone()
    return None if row is None else _execution(row)


def _list_executions(conn: Any, sql: str, params: Sequence[Any]) -> list[ExecutionRecord]:
    return [_execution(row) for row in conn.execute(sql, params, binary=True)]


def _load_events(conn: Any, execution_id: str, after_seq: int) -> list[StoredEvent]:
    rows = conn.execute(SQL_SELECT_EVENTS, (execution_id, after_seq), binary=True)
    return [StoredEvent(*row) for row in rows]


def _save_workflow(
    conn: Any, name: str, source: str, source_hash: str, now: float
) -> WorkflowRecord:
    # Concurrent saves of one name, from any process, wait for each other here, so the max
    # and the insert cannot interleave.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"flux.wf:{name}",))
    row = conn.execute(
        "INSERT INTO workflows (name, version, source, source_hash, created_at) "
        "SELECT %s, COALESCE(MAX(version), 0) + 1, %s, %s, %s FROM workflows WHERE name = %s "
        f"RETURNING {', '.join(WORKFLOW_COLUMNS)}",
        (name, source, source_hash, now, name),
    ).fetchone()
    return WorkflowRecord(*row)


def _get_workflow(conn: Any, name: str, version: int | None) -> WorkflowRecord | None:
    if version is None:
        sql = f"{SQL_SELECT_WORKFLOW} WHERE name = %s ORDER BY version DESC LIMIT 1"
        row = conn.execute(sql, (name,)).fetchone()
    else:
        sql = f"{SQL_SELECT_WORKFLOW} WHERE name = %s AND version = %s"
        row = conn.execute(sql, (name, version)).fetchone()
    return None if row is None else WorkflowRecord(*row)


def _workflow_versions(conn: Any, name: str) -> list[WorkflowRecord]:
    rows = conn.execute(
        "SELECT name, version, '' AS source, source_hash, created_at FROM workflows "
        "WHERE name = %s ORDER BY version",
        (name,),
    )
    return [WorkflowRecord(*row) for row in rows]


def _list_workflows(conn: Any) -> list[WorkflowRecord]:
    sql = (
        f"SELECT DISTINCT ON (name COLLATE \"C\") {', '.join(WORKFLOW_COLUMNS)} FROM workflows "
        "ORDER BY name COLLATE \"C\", version DESC"
    )
    return [WorkflowRecord(*row) for row in conn.execute(sql)]


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
        clauses.append("workflow_name = %s")
        params.append(workflow_name)
    if state is not None:
        if isinstance(state, str):
            clauses.append("state = %s")
            params.append(ExecutionState(state).value)
        else:
            clauses.append("state = ANY(%s)")
            params.append([ExecutionState(s).value for s in state])
    if parent_id is not None:
        clauses.append("parent_id = %s")
        params.append(parent_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
