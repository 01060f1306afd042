"""The signal queue's SQL, shared by the SQLite and PostgreSQL stores (see flux.runtime.signals).

Each function takes a DB-API connection inside a transaction the caller opened, and the
placeholder of its driver (``?`` or ``%s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flux.runtime.events import ExecutionState
from flux.runtime.records import SignalRecord, StaleWriteError

__all__ = ["SIGNAL_COLUMNS", "add_signal", "consume", "pending"]

SIGNAL_COLUMNS = ("id", "execution_id", "topic", "value", "sent_at", "key", "delivered_at")
_SELECT = f"SELECT {', '.join(SIGNAL_COLUMNS)} FROM signals"


def _record(row: Sequence[Any]) -> SignalRecord:
    values = [bytes(v) if isinstance(v, memoryview) else v for v in row]
    values[4] = float(values[4])
    return SignalRecord(*values)


def add_signal(
    conn: Any,
    mark: str,
    execution_id: str,
    topic: str,
    value: bytes,
    sent_at: float,
    key: str | None,
    lock: str = "",
) -> tuple[ExecutionState | None, SignalRecord | None]:
    """Queue a signal unless the execution is unknown (``(None, None)``) or finished (``(state,
    None)``); a ``key`` already queued for it returns the signal stored first. ``lock``: the
    row-lock clause of the driver (``FOR UPDATE``), so a signal and the end of the execution
    are ordered."""
    row = conn.execute(
        f"SELECT state FROM executions WHERE execution_id = {mark}{lock}", (execution_id,)
    ).fetchone()
    if row is None:
        return None, None
    state = ExecutionState(row[0])
    if state.is_terminal:
        return state, None
    if key is not None:
        found = conn.execute(
            f"{_SELECT} WHERE execution_id = {mark} AND key = {mark}", (execution_id, key)
        ).fetchone()
        if found is not None:
            return state, _record(found)
    cur = conn.execute(
        f"INSERT INTO signals (execution_id, topic, value, sent_at, key) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) RETURNING {', '.join(SIGNAL_COLUMNS)}",
        (execution_id, topic, value, sent_at, key),
    )
    return state, _record(cur.fetchone())


def pending(
    conn: Any, mark: str, execution_id: str, topic: str | None = None, limit: int | None = None
) -> list[SignalRecord]:
    """The queued (undelivered) signals of an execution, in the order accepted; only those on
    ``topic`` if given, at most ``limit`` if given."""
    sql = f"{_SELECT} WHERE execution_id = {mark} AND delivered_at IS NULL"
    params: list[Any] = [execution_id]
    if topic is not None:
        sql += f" AND topic = {mark}"
        params.append(topic)
    sql += " ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {mark}"
        params.append(max(0, int(limit)))
    return [_record(r) for r in conn.execute(sql, params).fetchall()]


def consume(conn: Any, mark: str, execution_id: str, ids: Sequence[int], now: float) -> None:
    """Mark signals ``ids`` of ``execution_id`` delivered; StaleWriteError (the caller's write
    is refused whole) if one of them is not queued any more."""
    taken = 0
    for signal_id in ids:
        cur = conn.execute(
            f"UPDATE signals SET delivered_at = {mark} WHERE id = {mark} "
            f"AND execution_id = {mark} AND delivered_at IS NULL",
            (now, signal_id, execution_id),
        )
        taken += cur.rowcount
    if taken != len(ids):
        raise StaleWriteError(
            f"stale write to execution {execution_id!r} refused: signal(s) "
            f"{', '.join(map(str, ids))} are not queued any more (delivered by another write)"
        )
