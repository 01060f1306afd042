"""How the PostgreSQL store writes a batch: one pipeline when everything goes through, one
write at a time in savepoints when something is refused (see :class:`BatchWriter`).

Runs in the store's worker threads, on a pooled connection in autocommit mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import attrs

from flux.runtime import store_signals
from flux.runtime.errors import StoreError
from flux.runtime.records import (
    EVENT_COLUMNS,
    EXECUTION_COLUMNS,
    ExecutionRecord,
    StaleWriteError,
    Write,
    stale_error,
)
from flux.runtime.store_pg_schema import (
    SQL_INSERT_EXECUTION,
    one_line,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # the extra is not installed: PostgresStore() says so
    psycopg = None  # type: ignore[assignment]
    pg_errors = None  # type: ignore[assignment]

__all__ = ["BatchWriter", "column_value"]

IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, without importing psycopg.pq at module level

_ROW = f"({', '.join(['%s'] * len(EVENT_COLUMNS))})"
_ROWS_PER_INSERT = 60_000 // len(EVENT_COLUMNS)  # PostgreSQL takes at most 65,535 parameters


def _insert_events_sql(rows: int) -> str:
    """One INSERT of ``rows`` events."""
    return f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([_ROW] * rows)}"


def _event_rows(write: Write) -> list[tuple[Any, ...]]:
    eid = write.execution_id
    return [(eid, e.seq, e.type, e.call_id, e.name, e.value, e.time) for e in write.events]


def _insert_events(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        conn.execute(_insert_events_sql(len(chunk)), [v for row in chunk for v in row])


class _Refused(Exception):
    """A write refused by the database; ``explain`` builds its StoreError once the transaction
    (or savepoint) is rolled back, since PostgreSQL answers no query in a failed transaction."""

    def __init__(self, explain: Callable[[Any], StoreError]):
        super().__init__("refused")
        self.explain = explain


class BatchWriter:
    """Applies batches of writes with exactly the SQLite store's semantics; holds the SQL it
    builds per set of columns (built in worker threads: dict writes are atomic)."""

    def __init__(self) -> None:
        self._update_sql: dict[tuple[str, ...], str] = {}
        self._expect_sql: dict[tuple[str, ...], str] = {}
        self._fenced_sql: dict[tuple[str, ...], str] = {}

    def apply(
        self, conn: Any, writes: list[Write], sent: list[bool]
    ) -> list[StoreError | None]:
        """Store ``writes`` in one transaction; one outcome per write. ``sent[0]`` becomes
        True once the COMMIT may have reached the server (a failure after that leaves the
        outcome unknown)."""
        execute = conn.execute
        execute("BEGIN")  # its own round trip: proves the connection alive before COMMIT is sent
        try:
            errors = self._apply_pipelined(conn, writes, sent)
            if errors is not None:
                return errors
            # something in the batch was refused: again, one write at a time, each in its own
            # savepoint, to tell the refused writes from the others
            if conn.info.transaction_status == IDLE:  # the fast path rolled back
                execute("BEGIN")
            if len(writes) == 1:  # no savepoint needed: a refusal rolls everything back
                error = self.apply_one(conn, writes[0], savepoint=False)
                if error is not None:
                    return [error]
                sent[0] = True
                execute("COMMIT")
                return [None]
            errors = []
            for write in writes:
                execute("SAVEPOINT flux_write")
                errors.append(self.apply_one(conn, write, savepoint=True))
                execute("RELEASE SAVEPOINT flux_write")
            sent[0] = True
            execute("COMMIT")
            return errors
        except BaseException:
            if not conn.broken and conn.info.transaction_status != IDLE:
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
            if conn.info.transaction_status != IDLE:
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
                conn.execute(SQL_INSERT_EXECUTION, _insert_values(write.insert))
                checked.pop(eid, None)
            cursor = None
            if write.update:
                sql, values = self._update_statement(write.update)
                cursor = conn.execute(sql, (*values, eid))
                checked.pop(eid, None)
            updates.append(cursor)
            if write.signals:  # fails the pipeline (division by zero) unless all were queued
                conn.execute(
                    "WITH taken AS (UPDATE signals SET delivered_at = %s WHERE execution_id = %s "
                    "AND id = ANY(%s) AND delivered_at IS NULL RETURNING 1) "
                    "SELECT 1 / (CASE WHEN count(*) = %s THEN 1 ELSE 0 END) FROM taken",
                    (time.time(), eid, list(write.signals), len(set(write.signals))),
                )
            rows += _event_rows(write)
        _insert_events(conn, rows)
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
        conn.execute(sql, (eid, *(column_value(k, v) for k, v in expect.items())))

    def apply_one(self, conn: Any, write: Write, *, savepoint: bool) -> StoreError | None:
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
                values = [column_value(k, v) for k, v in write.expect.items()]
                if execute(sql, (eid, *values)).fetchone() is None:
                    raise _stale_error(conn, write)
            if write.insert is not None:
                try:
                    execute(SQL_INSERT_EXECUTION, _insert_values(write.insert))
                except pg_errors.UniqueViolation as exc:
                    raise StoreError(f"execution {eid!r} already exists") from exc
                except psycopg.IntegrityError as exc:
                    raise StoreError(f"cannot insert execution {eid!r}: {one_line(exc)}") from exc
            if write.update:
                self._apply_update(conn, eid, write.update)
            if write.events:
                try:  # multi-row INSERTs, not executemany (whose own pipeline logs refusals)
                    _insert_events(conn, _event_rows(write))
                except pg_errors.ForeignKeyViolation as exc:
                    raise StoreError(f"cannot append events: no execution {eid!r}") from exc
                except pg_errors.UniqueViolation as exc:
                    raise _Refused(lambda c: _events_clash(c, write)) from exc
                except psycopg.IntegrityError as exc:
                    raise StoreError(
                        f"cannot append events to execution {eid!r}: {one_line(exc)}"
                    ) from exc
            if write.signals:
                store_signals.consume(conn, "%s", eid, write.signals, time.time())
        except (
            psycopg.DataError,
            psycopg.ProgrammingError,
            TypeError,
            OverflowError,
            ValueError,
        ) as exc:  # a value PostgreSQL cannot take
            raise StoreError(f"cannot store write to execution {eid!r}: {one_line(exc)}") from exc

    def _update_statement(self, update: dict[str, Any]) -> tuple[str, list[Any]]:
        keys = tuple(update)
        sql = self._update_sql.get(keys)
        if sql is None:
            assignments = [f"{k} = %s" for k in keys]
            if "updated_at" not in update:
                assignments.append("updated_at = %s")
            sql = f"UPDATE executions SET {', '.join(assignments)} WHERE execution_id = %s"
            self._update_sql[keys] = sql
        values = [column_value(k, v) for k, v in update.items()]
        if "updated_at" not in update:
            values.append(time.time())
        return sql, values

    def _apply_update(self, conn: Any, eid: str, update: dict[str, Any]) -> None:
        sql, values = self._update_statement(update)
        try:
            cursor = conn.execute(sql, (*values, eid))
        except psycopg.IntegrityError as exc:
            raise StoreError(f"cannot update execution {eid!r}: {one_line(exc)}") from exc
        if cursor.rowcount == 0:
            raise StoreError(f"cannot update execution {eid!r}: no such execution")


def column_value(column: str, value: Any) -> Any:
    """A Python value as the column's PostgreSQL type wants it (SQLite takes either form)."""
    if isinstance(value, Enum):
        return value.value
    if column == "cancel_requested" and isinstance(value, int):
        return bool(value)
    return value


def _insert_values(record: ExecutionRecord) -> tuple[Any, ...]:
    return tuple(
        column_value(name, value)
        for name, value in zip(
            EXECUTION_COLUMNS, attrs.astuple(record, recurse=False), strict=True
        )
    )


def _stale_error(conn: Any, write: Write) -> StaleWriteError:
    return stale_error(conn, write, "%s")


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
