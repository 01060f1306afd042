"""Claims and lease renewals on PostgreSQL: the same decisions as the SQLite store's, each in one
transaction that locks the execution row (``SELECT ... FOR UPDATE``) before it decides.

A new execution is inserted with ``ON CONFLICT DO NOTHING``: of two processes creating one id
at once, the second waits for the first's transaction, finds the row, and then decides on it like
any existing execution (leased, finished...). Runs in the store's worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flux.runtime.events import ExecutionState
from flux.runtime.records import Claim, Write, decide_claim
from flux.runtime.store_pg_schema import (
    SQL_INSERT_EXECUTION,
    SQL_SELECT_EVENTS,
    SQL_SELECT_EXECUTION,
)
from flux.runtime.store_pg_write import _event_rows, _insert_events, _insert_values

__all__ = ["claim", "renew"]

_SQL_CREATE = f"{SQL_INSERT_EXECUTION} ON CONFLICT (execution_id) DO NOTHING RETURNING 1"


def _record(conn: Any, execution_id: str) -> Any:
    from flux.runtime.store_pg import _execution

    row = conn.execute(
        f"{SQL_SELECT_EXECUTION} WHERE execution_id = %s FOR UPDATE",
        (execution_id,),
        binary=True,
    ).fetchone()
    return None if row is None else _execution(row)


def _events(conn: Any, execution_id: str) -> list[Any]:
    from flux.runtime.records import StoredEvent

    rows = conn.execute(SQL_SELECT_EVENTS, (execution_id, 0), binary=True)
    return [StoredEvent(*row) for row in rows]


def claim(
    conn: Any,
    execution_id: str,
    owner: str,
    expires_at: float,
    now: float,
    create: Write | None,
    owner_gone: Callable[[str], bool] | None,
    workflow_name: str | None,
) -> Claim:
    """See ``Store.claim``; runs inside one transaction."""
    record = _record(conn, execution_id)
    if record is None:
        if create is None or create.insert is None:
            return Claim("missing")
        if conn.execute(_SQL_CREATE, _insert_values(create.insert)).fetchone() is not None:
            _insert_events(conn, _event_rows(create))
            return Claim("created", create.insert, create.events, 1)
        record = _record(conn, execution_id)  # created meanwhile by another process
        assert record is not None
    decided = decide_claim(record, owner, now, owner_gone, workflow_name)
    if decided is not None:
        events = _events(conn, execution_id) if decided == "finished" else []
        return Claim(decided, record, events, record.lease_epoch)
    epoch = record.lease_epoch + 1
    conn.execute(
        "UPDATE executions SET lease_owner = %s, lease_epoch = %s, lease_expires_at = %s, "
        "state = %s, wake_at = NULL, updated_at = %s WHERE execution_id = %s",
        (owner, epoch, expires_at, ExecutionState.RUNNING.value, time.time(), execution_id),
    )
    return Claim("claimed", record, _events(conn, execution_id), epoch)


def renew(conn: Any, leases: list[tuple[str, int]], owner: str, expires_at: float) -> list[str]:
    """See ``Store.renew_leases``; on a connection in autocommit mode, one statement (its own
    transaction) per lease, pipelined into one round trip: a renewal never holds one row's lock
    while it waits for another's, so it cannot deadlock with a batch of writes locking the same
    rows in another order. Leases are taken in id order."""
    ordered = sorted(leases)
    with conn.pipeline():
        cursors = [
            conn.execute(
                "UPDATE executions SET lease_expires_at = %s WHERE execution_id = %s "
                "AND lease_epoch = %s AND lease_owner = %s",
                (expires_at, execution_id, epoch, owner),
            )
            for execution_id, epoch in ordered
        ]
    return [eid for (eid, _), cursor in zip(ordered, cursors, strict=True) if cursor.rowcount == 0]
