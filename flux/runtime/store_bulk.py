"""Whole tables in batches, for moving a store to another one (``flux store copy``).

Both stores implement three methods of :class:`~flux.runtime.store_api.StoreAPI` with the SQL
built here, each store with its own placeholder and its own insertion-order column:

- ``count_rows(table)``: how many rows a table holds;
- ``export_rows(table, after=cursor, limit=n)``: the next ``n`` rows after ``cursor`` as records,
  in a stable order (keyset pagination, so each batch is one indexed range read and memory stays
  bounded whatever the table's size), and the cursor to pass for the batch after them;
- ``import_rows(table, records)``: insert records as they are, all of them in one transaction
  or none; a row whose key is already stored refuses the whole batch.

Executions are exported in insertion order (SQLite's ``rowid``, PostgreSQL's ``row_id``) so that
a copy lists executions created in the same instant in the same order as the original; the other
tables in their primary key's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import attrs

from flux.runtime.errors import StoreError
from flux.runtime.records import (
    EVENT_COLUMNS,
    EXECUTION_COLUMNS,
    WORKFLOW_COLUMNS,
    CacheRecord,
    ExecutionRecord,
    SecretRecord,
    SignalRecord,
    StoredEvent,
    WorkflowRecord,
)
from flux.runtime.schedules import (
    FIRE_COLUMNS,
    SCHEDULE_COLUMNS,
    ScheduleFireRecord,
    ScheduleRecord,
)
from flux.runtime.store_logs import LOG_COLUMNS, TOTALS_COLUMNS, LogRecord, LogTotals

__all__ = [
    "TABLES",
    "Table",
    "count_sql",
    "export_sql",
    "import_error",
    "import_sql",
    "import_values",
    "records_and_cursor",
    "table",
]


@attrs.frozen
class Table:
    """One table that a copy moves: its record type, its columns and its keyset columns."""

    name: str
    record: type
    columns: tuple[str, ...]
    #: The columns of the export order; None: the store's insertion-order column.
    key: tuple[str, ...] | None
    #: How the CLI names its rows: (one, several).
    nouns: tuple[str, str]
    #: Named in a copy's summary (bookkeeping tables are not).
    shown: bool = True

    def noun(self, count: int) -> str:
        return f"{count} {self.nouns[0] if count == 1 else self.nouns[1]}"


_TABLES = (
    Table(
        "workflows",
        WorkflowRecord,
        WORKFLOW_COLUMNS,
        ("name", "version"),
        ("workflow version", "workflow versions"),
    ),
    Table("executions", ExecutionRecord, EXECUTION_COLUMNS, None, ("execution", "executions")),
    Table("events", StoredEvent, EVENT_COLUMNS, ("execution_id", "seq"), ("event", "events")),
    Table(
        "secrets",
        SecretRecord,
        tuple(a.name for a in attrs.fields(SecretRecord)),
        ("name",),
        ("secret", "secrets"),
    ),
    Table(
        "cache",
        CacheRecord,
        tuple(a.name for a in attrs.fields(CacheRecord)),
        ("key",),
        ("cache entry", "cache entries"),
    ),
    Table("logs", LogRecord, LOG_COLUMNS, ("execution_id", "seq"), ("log line", "log lines")),
    Table(
        "log_totals",
        LogTotals,
        TOTALS_COLUMNS,
        ("execution_id",),
        ("log total", "log totals"),
        shown=False,
    ),
    Table(
        "signals",
        SignalRecord,
        tuple(a.name for a in attrs.fields(SignalRecord)),
        ("id",),
        ("signal", "signals"),
    ),
)
# schedules (their decisions are bookkeeping: not named in a copy's summary)
_TABLES += (
    Table("schedules", ScheduleRecord, SCHEDULE_COLUMNS, ("name",), ("schedule", "schedules")),
    Table(
        "schedule_fires",
        ScheduleFireRecord,
        FIRE_COLUMNS,
        ("schedule_name", "seq"),
        ("schedule decision", "schedule decisions"),
        shown=False,
    ),
)
_BY_NAME = {t.name: t for t in _TABLES}

#: Every table a copy moves, in the order it moves them (an event's execution comes first).
TABLES: tuple[str, ...] = tuple(t.name for t in _TABLES)


def table(name: str) -> Table:
    """The table called ``name``, or StoreError naming the tables there are."""
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise StoreError(f"unknown table {name!r}: expected one of {', '.join(TABLES)}")
    return found


def _key(t: Table, insertion_order: str) -> tuple[str, ...]:
    return t.key if t.key is not None else (insertion_order,)


def count_sql(name: str) -> str:
    return f"SELECT COUNT(*) FROM {table(name).name}"


def export_sql(
    name: str, *, placeholder: str, insertion_order: str, after: Any, limit: int
) -> tuple[str, list[Any]]:
    """The query reading the batch of ``name`` after cursor ``after`` (None: from the start),
    and its parameters. Each row is the key columns, then the record's columns."""
    t = table(name)
    key = _key(t, insertion_order)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StoreError(f"export of {name}: limit must be a positive integer, not {limit!r}")
    params: list[Any] = []
    where = ""
    if after is not None:
        if not isinstance(after, tuple | list) or len(after) != len(key):
            raise StoreError(
                f"export of {name}: cursor {after!r} is not one returned by export_rows"
            )
        marks = ", ".join([placeholder] * len(key))
        where = f" WHERE ({', '.join(key)}) > ({marks})"
        params.extend(after)
    params.append(limit)
    sql = (
        f"SELECT {', '.join((*key, *t.columns))} FROM {t.name}{where} "
        f"ORDER BY {', '.join(key)} LIMIT {placeholder}"
    )
    return sql, params


def records_and_cursor(
    name: str, rows: Sequence[Sequence[Any]], insertion_order: str
) -> tuple[list[Any], tuple[Any, ...] | None]:
    """The records of rows read by :func:`export_sql`, and the cursor after the last one (None
    when there are no rows)."""
    t = table(name)
    width = len(_key(t, insertion_order))
    if t.record is ExecutionRecord:
        records = [ExecutionRecord(**dict(zip(t.columns, r[width:], strict=True))) for r in rows]
    elif t.record is ScheduleRecord:
        records = [
            ScheduleRecord(
                **{
                    c: bytes(v) if isinstance(v, memoryview) else v
                    for c, v in zip(t.columns, r[width:], strict=True)
                }
            )
            for r in rows
        ]
    else:
        records = [
            t.record(*(bytes(v) if isinstance(v, memoryview) else v for v in r[width:]))
            for r in rows
        ]
    cursor = tuple(rows[-1][:width]) if rows else None
    return records, cursor


def import_sql(name: str, placeholder: str) -> str:
    t = table(name)
    marks = ", ".join([placeholder] * len(t.columns))
    return f"INSERT INTO {t.name} ({', '.join(t.columns)}) VALUES ({marks})"


def import_values(name: str, records: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The column values of each record, as both databases bind them; TypeError for a record
    of another type than the table's."""
    t = table(name)
    rows = []
    for record in records:
        if type(record) is not t.record:
            raise TypeError(
                f"import into {name}: expected {t.record.__name__} records, "
                f"got {type(record).__name__}"
            )
        rows.append(
            tuple(
                v.value if isinstance(v, Enum) else v
                for v in attrs.astuple(record, recurse=False)
            )
        )
    return rows


def import_error(name: str, count: int, exc: BaseException) -> StoreError:
    """The StoreError for a batch the database refused (nothing of it was stored)."""
    detail = " ".join(str(exc).split())
    return StoreError(f"cannot import {table(name).noun(count)} into {name}: {detail}")
