"""Task logs in the store: the records, the schema and the SQL both stores share.

Two tables (added by a migration of each store):

- ``logs``: one row per line, keyed ``(execution_id, seq)``; ``seq`` counts the lines of one
  execution from 1, whichever process wrote them;
- ``log_totals``: one row per execution that has lines: the last seq, the bytes kept, what was
  cut past the execution's limit and the seq of the one marker line that says so.

:func:`append` runs inside one transaction with the execution's ``log_totals`` row locked (SQLite:
the store's single writer; PostgreSQL: ``SELECT ... FOR UPDATE``), so two processes appending to
one execution get consecutive seqs and one limit. Past the limit nothing more is kept: the first
batch that crosses it adds a marker line, later batches rewrite that marker's counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

__all__ = [
    "LOG_COLUMNS",
    "LogEntry",
    "LogRecord",
    "LogTotals",
    "TOTALS_COLUMNS",
    "append",
    "load_sql",
    "clean",
]


#: The logger name of the lines Flux itself adds (markers).
MARKER_LOGGER = "flux.logs"


def size_text(n: int) -> str:
    """A byte count as people read it: ``512 bytes``, ``3.4 KiB``, ``1.0 MiB``."""
    if n < 1024:
        return f"{n} byte{'s' if n != 1 else ''}"
    for unit in ("KiB", "MiB", "GiB"):
        n_ = n / 1024
        if n_ < 1024 or unit == "GiB":
            return f"{n_:.1f} {unit}"
        n = int(n_)
    raise AssertionError  # pragma: no cover


@attrs.frozen
class LogEntry:
    """One captured line, before the store gives it a seq. ``attempt`` is 1 for a task's first
    attempt, 2 for its first retry...; 0 for a fallback or a rollback body and for the lines
    Flux adds itself (markers, whose ``call_id`` is empty)."""

    call_id: str
    attempt: int
    level: str
    logger: str
    time: float
    message: str

    @property
    def size(self) -> int:
        return len(self.message.encode("utf-8", "surrogatepass"))


@attrs.frozen
class LogRecord:
    """One stored line of an execution's logs (see :class:`flux.runtime.logs.LogEntry`)."""

    execution_id: str
    seq: int
    call_id: str
    attempt: int
    level: str
    logger: str
    time: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (the HTTP API's ``lines``): every field but the execution id."""
        return {
            "seq": self.seq,
            "call_id": self.call_id,
            "attempt": self.attempt,
            "level": self.level,
            "logger": self.logger,
            "time": self.time,
            "message": self.message,
        }


@attrs.frozen
class LogTotals:
    """The log bookkeeping of one execution."""

    execution_id: str
    last_seq: int
    bytes: int
    cut_lines: int
    cut_bytes: int
    marker_seq: int | None


LOG_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(LogRecord))
TOTALS_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(LogTotals))

#: What a field of a line may hold at most, past the message's own limit (a worker's logger
#: names and call ids are not trusted to be short).
_FIELD_LIMIT = 1000


def clean(text: Any, limit: int | None = None) -> str:
    """Text both databases store: str, no NUL (PostgreSQL refuses it), no lone surrogate."""
    if not isinstance(text, str):
        text = str(text)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


def marker_text(limit: int, cut_lines: int, cut_bytes: int) -> str:
    return (
        f"[flux] log limit of {size_text(limit)} reached: {cut_lines} later line(s) "
        f"({size_text(cut_bytes)}) cut"
    )


def append(
    conn: Any,
    *,
    ph: str,
    for_update: str,
    many: Callable[[Any, str, list[tuple[Any, ...]]], None],
    execution_id: str,
    entries: Sequence[LogEntry],
    limit: int,
    cut_lines: int = 0,
    cut_bytes: int = 0,
) -> int:
    """Append ``entries`` to the logs of ``execution_id`` within ``limit`` bytes (inside the
    caller's transaction); ``cut_lines``/``cut_bytes`` were cut by the capture already. Returns
    how many of ``entries`` were kept."""
    conn.execute(
        f"INSERT INTO log_totals ({', '.join(TOTALS_COLUMNS)}) "
        f"VALUES ({ph}, 0, 0, 0, 0, NULL) ON CONFLICT (execution_id) DO NOTHING",
        (execution_id,),
    )
    row = conn.execute(
        "SELECT last_seq, bytes, cut_lines, cut_bytes, marker_seq FROM log_totals "
        f"WHERE execution_id = {ph}{for_update}",
        (execution_id,),
    ).fetchone()
    last, used, total_cut, total_cut_bytes, marker_seq = row
    had_marker = marker_seq is not None
    cutting = had_marker
    rows: list[tuple[Any, ...]] = []
    for e in entries:
        message = clean(e.message)
        size = len(message.encode("utf-8"))
        if not cutting and used + size <= limit:
            last += 1
            used += size
            rows.append(
                (
                    execution_id,
                    last,
                    clean(e.call_id, _FIELD_LIMIT),
                    int(e.attempt),
                    clean(e.level, 40),
                    clean(e.logger, _FIELD_LIMIT),
                    float(e.time),
                    message,
                )
            )
        else:
            cutting = True
            total_cut += 1
            total_cut_bytes += size
    kept = len(rows)
    total_cut += cut_lines
    total_cut_bytes += cut_bytes
    text = marker_text(limit, total_cut, total_cut_bytes)
    if total_cut and not had_marker:
        last += 1
        marker_seq = last
        rows.append((execution_id, last, "", 0, "WARNING", MARKER_LOGGER, time.time(), text))
    if rows:
        many(
            conn,
            f"INSERT INTO logs ({', '.join(LOG_COLUMNS)}) "
            f"VALUES ({', '.join([ph] * len(LOG_COLUMNS))})",
            rows,
        )
    if had_marker and (cut_lines or kept < len(entries)):
        conn.execute(
            f"UPDATE logs SET message = {ph} WHERE execution_id = {ph} AND seq = {ph}",
            (text, execution_id, marker_seq),
        )
    conn.execute(
        f"UPDATE log_totals SET last_seq = {ph}, bytes = {ph}, cut_lines = {ph}, "
        f"cut_bytes = {ph}, marker_seq = {ph} WHERE execution_id = {ph}",
        (last, used, total_cut, total_cut_bytes, marker_seq, execution_id),
    )
    return kept


def load_sql(
    ph: str,
    execution_id: str,
    after: int = 0,
    limit: int | None = None,
    call_id: str | None = None,
) -> tuple[str, list[Any]]:
    """The query of :meth:`load_logs`: lines after seq ``after``, in order, at most ``limit``,
    of ``call_id`` and the calls below it only when given."""
    sql = f"SELECT {', '.join(LOG_COLUMNS)} FROM logs WHERE execution_id = {ph} AND seq > {ph}"
    params: list[Any] = [execution_id, int(after)]
    if call_id is not None:
        prefix = call_id + "/"
        sql += f" AND (call_id = {ph} OR substr(call_id, 1, {len(prefix)}) = {ph})"
        params += [call_id, prefix]
    sql += " ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {ph}"
        params.append(int(limit))
    return sql, params


def check_query(after: Any, limit: Any) -> None:
    """ValueError naming a bad ``after`` or ``limit`` of :meth:`load_logs`."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a seq >= 0, got {after!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of lines, got {limit!r}")


SQLITE_SCHEMA = (
    """CREATE TABLE logs (
        execution_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        call_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        level TEXT NOT NULL,
        logger TEXT NOT NULL,
        time REAL NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    )""",
    """CREATE TABLE log_totals (
        execution_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        cut_lines INTEGER NOT NULL,
        cut_bytes INTEGER NOT NULL,
        marker_seq INTEGER
    )""",
)

POSTGRES_SCHEMA = """
    CREATE TABLE logs (
        execution_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        call_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        level TEXT NOT NULL,
        logger TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    );
    CREATE TABLE log_totals (
        execution_id TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        cut_lines BIGINT NOT NULL,
        cut_bytes BIGINT NOT NULL,
        marker_seq BIGINT
    );
"""
