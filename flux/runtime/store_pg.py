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
from enum import Enum
from typing import Any, TypeVar

import anyio
import attrs

from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.group_commit import GroupCommit
from flux.runtime.records import (
    EVENT_COLUMNS,
    EXECUTION_COLUMNS,
    WORKFLOW_COLUMNS,
    ExecutionRecord,
    StaleWriteError,
    StoredEvent,
    StoreStatistics,
    WorkflowRecord,
    Write,
)
from flux.runtime.settings import check_durability, redact_url

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
_MIGRATION_LOCK = 0x464C5558  # "FLUX": the advisory lock held while migrating


# ---------------------------------------------------------------------------------------------
# Schema


def _migrate_1(conn: Any) -> None:
    """initial schema"""
    conn.execute(
        """
        CREATE TABLE flux_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE flux_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE workflows (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            source TEXT NOT NULL,
            source_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE executions (
            execution_id TEXT PRIMARY KEY,
            workflow_name TEXT NOT NULL,
            workflow_version BIGINT,
            parent_id TEXT,
            input BYTEA NOT NULL,
            output BYTEA,
            state TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            lease_owner TEXT,
            lease_epoch BIGINT NOT NULL DEFAULT 0,
            lease_expires_at DOUBLE PRECISION,
            wake_at DOUBLE PRECISION,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            -- insertion order, the tie-break of listings (SQLite's rowid)
            row_id BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
        );
        CREATE INDEX executions_created_at ON executions (created_at DESC, row_id DESC);
        CREATE INDEX executions_state ON executions (state, created_at DESC, row_id DESC);
        CREATE INDEX executions_workflow_name
            ON executions (workflow_name, created_at DESC, row_id DESC);
        CREATE INDEX executions_parent_id ON executions (parent_id, created_at DESC, row_id DESC);
        CREATE TABLE events (
            execution_id TEXT NOT NULL REFERENCES executions (execution_id),
            seq BIGINT NOT NULL,
            type TEXT NOT NULL,
            call_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value BYTEA,
            time DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (execution_id, seq)
        );
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            ciphertext BYTEA NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            value BYTEA,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION
        );
        """
    )


#: Migration ``i`` (0-based) brings a database from schema version ``i`` to ``i + 1``; version 0
#: is an empty database. Append, never edit: all that are due run in the opening transaction,
#: and each is recorded in ``flux_migrations`` (its docstring's first line is its name).
MIGRATIONS: tuple[Callable[[Any], None], ...] = (_migrate_1,)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_KEY = "schema_version"

_SQL_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})"
)
_SQL_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(EXECUTION_COLUMNS))})"
)
_SQL_SELECT_EXECUTION = f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM executions"
_SQL_SELECT_EVENTS = (
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events "
    "WHERE execution_id = %s AND seq > %s ORDER BY seq"
)
_SQL_SELECT_WORKFLOW = f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows"


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


def _one_line(exc: BaseException, *secrets: str) -> str:
    """An error's message on one line, with every secret given replaced by ``***``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _Refused(Exception):
    """A write refused by the database; ``explain`` builds its StoreError once the transaction
    (or savepoint) is rolled back, since PostgreSQL answers no query in a failed transaction."""

    def __init__(self, explain: Callable[[Any], StoreError]):
        super().__init__("refused")
        self.explain = explain


class PostgresStore:
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
        # prepared SQL per set of columns (built in worker threads: dict writes are atomic)
        self._update_sql: dict[tuple[str, ...], str] = {}
        self._expect_sql: dict[tuple[str, ...], str] = {}
        self._fenced_sql: dict[tuple[str, ...], str] = {}

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
                    f"{_one_line(exc, self._password)}"
                ) from None
            try:
                self._migrate(conn)
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
                    f"{_one_line(exc, self._password)}"
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

    def _migrate(self, conn: Any) -> None:
        where = self.location
        latest = len(MIGRATIONS)  # not SCHEMA_VERSION: tests substitute MIGRATIONS
        try:
            with conn.transaction():
                # two processes opening a new database at once: the second waits, then sees
                # the schema the first created
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                version = _schema_version(conn)
                if version > latest:
                    raise StoreError(
                        f"database {where!r} has schema version {version}, newer than version "
                        f"{latest} that this Flux knows; upgrade Flux to open it"
                    )
                for target, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                    try:
                        with conn.transaction():
                            migrate(conn)
                    except Exception as exc:
                        raise StoreError(
                            f"migrating database {where!r} to schema version {target} failed: "
                            f"{_one_line(exc, self._password)}"
                        ) from exc
                    name = (migrate.__doc__ or migrate.__name__).strip().splitlines()[0]
                    conn.execute(
                        "INSERT INTO flux_migrations (version, name, applied_at) "
                        "VALUES (%s, %s, %s)",
                        (target, name, time.time()),
                    )
                if version < latest:
                    conn.execute(
                        "INSERT INTO flux_meta (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (_VERSION_KEY, str(latest)),
                    )
        except psycopg.Error as exc:
            raise StoreError(f"store {where!r}: {_one_line(exc, self._password)}") from exc

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

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.location!r}: {_one_line(exc, self._password)}")

    # -- group commit ---------------------------------------------------------------------------

    def enqueue(self, *writes: Write) -> None:
        """Queue writes without waiting; they go with the next commit (or :meth:`flush`).

        Raises StoreError at once, queueing none of them, if one names an unknown column.
        """
        self._writer.enqueue(writes)

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
                    return self._apply_writes(conn, writes, sent)
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
                        f"{_one_line(exc, self._password)}"
                    ) from exc
                if attempt == 1 and conn is not None and conn.broken:
                    logger.info("store %s: retrying a batch on a new connection", self.location)
                    pool.check()  # the others may be broken too (a server restart)
                    continue
                raise self._error(exc) from exc
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def _apply_writes(
        self, conn: Any, writes: list[Write], sent: list[bool]
    ) -> list[StoreError | None]:
        execute = conn.execute
        execute("BEGIN")  # its own round trip: proves the connection alive before COMMIT is sent
        try:
            errors = self._apply_pipelined(conn, writes, sent)
            if errors is not None:
                return errors
            # something in the batch was refused: again, one write at a time, each in its own
            # savepoint, to tell the refused writes from the others
            execute("BEGIN")
            if len(writes) == 1:  # no savepoint needed: a refusal rolls everything back
                error = self._apply_one(conn, writes[0], savepoint=False)
                if error is not None:
                    return [error]
                sent[0] = True
                execute("COMMIT")
                return [None]
            errors = []
            for write in writes:
                execute("SAVEPOINT flux_write")
                errors.append(self._apply_one(conn, write, savepoint=True))
                execute("RELEASE SAVEPOINT flux_write")
            sent[0] = True
            execute("COMMIT")
            return errors
        except BaseException:
            if not conn.broken and conn.info.transaction_status != _IDLE:
                try:
                    execute("ROLLBACK")
                except psycopg.Error:
                    pass
            raise

    def _apply_pipelined(
        self, conn: Any, writes: list[Write], sent: list[bool]
    ) -> list[StoreError | None] | None:
        """The whole batch and its COMMIT in one round trip (psycopg's pipeline mode), for when
        every write goes through; None (rolled back) when the database refused something.

        In a pipeline nothing waits for a statement's outcome, so an ``expect`` that does not
        hold must fail by itself: its statement divides by the number of matching rows, and
        the error skips every statement after it, the COMMIT included. An ``update`` of an
        execution that does not exist matches no row; such a write holds nothing else that
        could have been stored (an insert would have created the row, events would have
        failed on the foreign key), so it is reported as refused after the commit.
        """
        if not psycopg.Pipeline.is_supported():  # a libpq older than 14
            return None
        updates: list[Any] = []
        refused: BaseException | None = None
        try:
            with conn.pipeline():
                try:
                    updates = self._queue_batch(conn, writes)
                    sent[0] = True
                    conn.execute("COMMIT")
                except (psycopg.Error, TypeError, ValueError, OverflowError) as exc:
                    refused = exc  # the pipeline still ends cleanly (its Sync is sent)
        except psycopg.Error as exc:
            refused = exc
        if refused is not None:
            if conn.broken:
                raise refused
            sent[0] = False  # the error skipped the COMMIT: nothing was committed
            if conn.info.transaction_status != _IDLE:
                conn.execute("ROLLBACK")
            return None
        return [
            StoreError(f"cannot update execution {write.execution_id!r}: no such execution")
            if cursor is not None and cursor.rowcount == 0
            else None
            for write, cursor in zip(writes, updates, strict=True)
        ]

    def _queue_batch(self, conn: Any, writes: list[Write]) -> list[Any]:
        """Queue a batch's statements in the pipeline; each write's update cursor (or None).

        Since any refusal sends the batch down the careful path, the fast path may merge: the
        events of the whole batch go in the fewest INSERTs, after the writes' other statements
        (nothing reads events meanwhile, and every execution they need exists by then), and an
        ``expect`` already checked for the same execution, with no insert or update of it
        since, is not checked again (its outcome cannot have changed).
        """
        updates: list[Any] = []
        checked: dict[str, set[tuple[tuple[str, Any], ...]]] = {}
        rows: list[tuple[Any, ...]] = []
        for write in writes:
            eid = write.execution_id
            if write.expect:
                signature = tuple(write.expect.items())
                done = checked.setdefault(eid, set())
                if signature not in done:
                    self._queue_expect(conn, eid, write.expect)
                    done.add(signature)
            if write.insert is not None:
                conn.execute(_SQL_INSERT_EXECUTION, _insert_values(write.insert))
                checked.pop(eid, None)
            cursor = None
            if write.update:
                sql, values = self._update_statement(write.update)
                cursor = conn.execute(sql, (*values, eid))
                checked.pop(eid, None)
            updates.append(cursor)
            rows += [(eid, e.seq, e.type, e.call_id, e.name, e.value, e.time) for e in write.events]
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            conn.execute(_insert_events_sql(len(chunk)), [v for row in chunk for v in row])
        return updates

    def _queue_expect(self, conn: Any, eid: str, expect: dict[str, Any]) -> None:
        keys = tuple(expect)
        sql = self._fenced_sql.get(keys)
        if sql is None:
            conditions = "".join(f" AND {k} IS NOT DISTINCT FROM %s" for k in keys)
            sql = (
                "SELECT 1 / count(*) FROM (SELECT 1 FROM executions "
                f"WHERE execution_id = %s{conditions} FOR UPDATE) AS locked"
            )
            self._fenced_sql[keys] = sql
        conn.execute(sql, (eid, *(_column_value(k, v) for k, v in expect.items())))

    def _apply_one(self, conn: Any, write: Write, *, savepoint: bool) -> StoreError | None:
        try:
            self._apply_write(conn, write)
        except (StoreError, _Refused) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT flux_write" if savepoint else "ROLLBACK")
            return exc.explain(conn) if isinstance(exc, _Refused) else exc
        return None

    def _apply_write(self, conn: Any, write: Write) -> None:
        """Apply one write, raising StoreError (or _Refused) for anything the caller did wrong."""
        eid = write.execution_id
        execute = conn.execute
        try:
            if write.expect:
                keys = tuple(write.expect)
                sql = self._expect_sql.get(keys)
                if sql is None:
                    conditions = "".join(f" AND {k} IS NOT DISTINCT FROM %s" for k in keys)
                    sql = (
                        f"SELECT 1 FROM executions WHERE execution_id = %s{conditions} FOR UPDATE"
                    )
                    self._expect_sql[keys] = sql
                values = [_column_value(k, v) for k, v in write.expect.items()]
                if execute(sql, (eid, *values)).fetchone() is None:
                    raise _stale_error(conn, write)
            if write.insert is not None:
                try:
                    execute(_SQL_INSERT_EXECUTION, _insert_values(write.insert))
                except pg_errors.UniqueViolation as exc:
                    raise StoreError(f"execution {eid!r} already exists") from exc
                except psycopg.IntegrityError as exc:
                    raise StoreError(f"cannot insert execution {eid!r}: {_one_line(exc)}") from exc
            if write.update:
                self._apply_update(conn, eid, write.update)
            if write.events:
                try:
                    conn.cursor().executemany(
                        _SQL_INSERT_EVENTS,
                        [
                            (eid, e.seq, e.type, e.call_id, e.name, e.value, e.time)
                            for e in write.events
                        ],
                    )
                except pg_errors.ForeignKeyViolation as exc:
                    raise StoreError(f"cannot append events: no execution {eid!r}") from exc
                except pg_errors.UniqueViolation as exc:
                    raise _Refused(lambda c: _events_clash(c, write)) from exc
                except psycopg.IntegrityError as exc:
                    raise StoreError(
                        f"cannot append events to execution {eid!r}: {_one_line(exc)}"
                    ) from exc
        except (
            psycopg.DataError,
            psycopg.ProgrammingError,
            TypeError,
            OverflowError,
            ValueError,
        ) as exc:  # a value PostgreSQL cannot take
            raise StoreError(f"cannot store write to execution {eid!r}: {_one_line(exc)}") from exc

    def _update_statement(self, update: dict[str, Any]) -> tuple[str, list[Any]]:
        keys = tuple(update)
        sql = self._update_sql.get(keys)
        if sql is None:
            assignments = [f"{k} = %s" for k in keys]
            if "updated_at" not in update:
                assignments.append("updated_at = %s")
            sql = f"UPDATE executions SET {', '.join(assignments)} WHERE execution_id = %s"
            self._update_sql[keys] = sql
        values = [_column_value(k, v) for k, v in update.items()]
        if "updated_at" not in update:
            values.append(time.time())
        return sql, values

    def _apply_update(self, conn: Any, eid: str, update: dict[str, Any]) -> None:
        sql, values = self._update_statement(update)
        try:
            cursor = conn.execute(sql, (*values, eid))
        except psycopg.IntegrityError as exc:
            raise StoreError(f"cannot update execution {eid!r}: {_one_line(exc)}") from exc
        if cursor.rowcount == 0:
            raise StoreError(f"cannot update execution {eid!r}: no such execution")

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
            f"{_SQL_SELECT_EXECUTION}{where} ORDER BY created_at DESC, row_id DESC "
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


# ---------------------------------------------------------------------------------------------
# Helpers running in worker threads

_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, without importing psycopg.pq at module level


_ROW = f"({', '.join(['%s'] * len(EVENT_COLUMNS))})"
_ROWS_PER_INSERT = 60_000 // len(EVENT_COLUMNS)  # PostgreSQL takes at most 65,535 parameters


def _insert_events_sql(rows: int) -> str:
    """One INSERT of ``rows`` events."""
    return f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([_ROW] * rows)}"


def _noop(conn: Any) -> None:
    pass


def _schema_version(conn: Any) -> int:
    if conn.execute("SELECT to_regclass('flux_meta')").fetchone()[0] is None:
        return 0
    row = conn.execute("SELECT value FROM flux_meta WHERE key = %s", (_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def _column_value(column: str, value: Any) -> Any:
    """A Python value as the column's PostgreSQL type wants it (SQLite takes either form)."""
    if isinstance(value, Enum):
        return value.value
    if column == "cancel_requested" and isinstance(value, int):
        return bool(value)
    return value


def _insert_values(record: ExecutionRecord) -> tuple[Any, ...]:
    return tuple(
        _column_value(name, value)
        for name, value in zip(
            EXECUTION_COLUMNS, attrs.astuple(record, recurse=False), strict=True
        )
    )


def _execute(conn: Any, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).rowcount


def _scalar(conn: Any, sql: str, params: Sequence[Any]) -> Any:
    row = conn.execute(sql, params, binary=True).fetchone()
    return None if row is None else row[0]


def _column(conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    return [row[0] for row in conn.execute(sql, params, binary=True)]


def _execution(row: Sequence[Any]) -> ExecutionRecord:
    return ExecutionRecord(**dict(zip(EXECUTION_COLUMNS, row, strict=True)))


def _get_execution(conn: Any, execution_id: str) -> ExecutionRecord | None:
    row = conn.execute(
        f"{_SQL_SELECT_EXECUTION} WHERE execution_id = %s", (execution_id,), binary=True
    ).fetchone()
    return None if row is None else _execution(row)


def _list_executions(conn: Any, sql: str, params: Sequence[Any]) -> list[ExecutionRecord]:
    return [_execution(row) for row in conn.execute(sql, params, binary=True)]


def _load_events(conn: Any, execution_id: str, after_seq: int) -> list[StoredEvent]:
    rows = conn.execute(_SQL_SELECT_EVENTS, (execution_id, after_seq), binary=True)
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
        sql = f"{_SQL_SELECT_WORKFLOW} WHERE name = %s ORDER BY version DESC LIMIT 1"
        row = conn.execute(sql, (name,)).fetchone()
    else:
        sql = f"{_SQL_SELECT_WORKFLOW} WHERE name = %s AND version = %s"
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


def _stale_error(conn: Any, write: Write) -> StaleWriteError:
    eid = write.execution_id
    expect = write.expect or {}
    row = conn.execute(
        f"SELECT {', '.join(expect)} FROM executions WHERE execution_id = %s", (eid,)
    ).fetchone()
    expected = ", ".join(f"{k}={v!r}" for k, v in expect.items())
    if row is None:
        return StaleWriteError(
            f"stale write to execution {eid!r} refused: expected {expected}, "
            "but there is no such execution"
        )
    found = ", ".join(f"{k}={v!r}" for k, v in zip(expect, row, strict=True))
    return StaleWriteError(
        f"stale write to execution {eid!r} refused: expected {expected}, found {found}"
    )


def _events_clash(conn: Any, write: Write) -> StoreError:
    """The message for a write whose event seqs are already stored (after the rollback)."""
    eid = write.execution_id
    seqs = [e.seq for e in write.events]
    stored = {
        row[0]
        for row in conn.execute(
            "SELECT seq FROM events WHERE execution_id = %s AND seq = ANY(%s)", (eid, seqs)
        )
    }
    repeated = {s for s in seqs if seqs.count(s) > 1}
    clashes = sorted(stored | repeated)
    return StoreError(
        f"event seq {', '.join(map(str, clashes))} of execution {eid!r} already stored"
    )


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
