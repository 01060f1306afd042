"""The lease queries several servers on one database share: due timers and expired leases
taken once (:func:`reserve_due`), and ready executions found oldest first
(:func:`ready_executions`). One SQL text for both stores, in their worker threads.

A *reservation* is a lease held by a server itself, not by one of its workers: its owner is the
server's prefix, ``"<server id>/"``, with nothing after the slash. Taking a reservation bumps the
epoch, so whatever a lost runner still writes under the old epoch is refused, and it expires like
any lease, so a server killed between reserving and granting delays the execution by one lease
ttl, never loses it. On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED``: two
servers polling at once each take different rows, neither waits for the other. On SQLite the
``BEGIN IMMEDIATE`` transaction of the one writer does the same job.
"""

from __future__ import annotations

import time
from typing import Any

from flux.runtime.events import ExecutionState
from flux.runtime.records import EXECUTION_COLUMNS, ExecutionRecord

__all__ = ["RESERVATION_SUFFIX", "is_reservation", "ready_executions", "reserve_due"]

S = ExecutionState

#: The owner of a reservation ends with this (a worker lease has the worker id after it).
RESERVATION_SUFFIX = "/"

_QUEUED = (S.CREATED.value, S.SCHEDULED.value)
_LEASED = (S.CLAIMED.value, S.RUNNING.value, S.CANCELLING.value)
_COLUMNS = ", ".join(EXECUTION_COLUMNS)


def is_reservation(owner: str | None) -> bool:
    """Whether a lease owner is a server's reservation (no worker holds it)."""
    return owner is not None and owner.endswith(RESERVATION_SUFFIX)


def _escape_like(text: str) -> str:
    """``text`` as a literal LIKE prefix (both stores: backslash is the default escape in
    PostgreSQL; SQLite has none by default, and server ids are plain hex anyway)."""
    return text.replace("%", "").replace("_", "")


def _due_where(mark: str) -> str:
    """Executions some server must act on now: a durable sleep that is due (and not reserved by
    a live server), or a lease (of a worker or a reservation) that expired."""
    queued = ", ".join([mark] * len(_QUEUED))
    leased = ", ".join([mark] * len(_LEASED))
    return (
        f"((state IN ({queued}) AND wake_at IS NOT NULL AND wake_at <= {mark} "
        f"AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {mark})) "
        f"OR (state IN ({leased}) "
        f"AND (lease_expires_at IS NULL OR lease_expires_at <= {mark})))"
    )


def _due_params(now: float) -> list[Any]:
    return [*_QUEUED, now, now, *_LEASED, now]


def reserve_due(
    conn: Any,
    mark: str,
    owner: str,
    now: float,
    expires_at: float,
    limit: int,
    skip_locked: bool,
) -> list[ExecutionRecord]:
    """Reserve up to ``limit`` due executions for ``owner`` (a server's prefix) until
    ``expires_at``, oldest deadline first, inside the caller's transaction; returns them as
    they are after the reservation (epoch bumped, owner and expiry set, state unchanged).
    Leases of ``owner``'s own workers (``owner`` followed by a worker id) are left alone: that
    server expires them itself, and a renewal of its that failed must not make it take its own
    running executions from its workers."""
    lock = " FOR UPDATE SKIP LOCKED" if skip_locked else ""
    # one statement: the rows are picked (and on PostgreSQL locked, skipping those another
    # server holds) by the subquery, and updated and returned at once
    rows = conn.execute(
        f"UPDATE executions SET lease_owner = {mark}, lease_expires_at = {mark}, "
        f"lease_epoch = lease_epoch + 1, updated_at = {mark} "
        f"WHERE execution_id IN (SELECT execution_id FROM executions WHERE {_due_where(mark)} "
        f"AND (lease_owner IS NULL OR lease_owner NOT LIKE {mark}) "
        f"ORDER BY COALESCE(lease_expires_at, wake_at) LIMIT {mark}{lock}) "
        f"RETURNING {_COLUMNS}",
        [owner, expires_at, time.time(), *_due_params(now), _escape_like(owner) + "_%", limit],
    ).fetchall()
    out = [ExecutionRecord(**dict(zip(EXECUTION_COLUMNS, row, strict=True))) for row in rows]
    # RETURNING keeps no order: sleeps by wake time, then expired leases
    out.sort(key=lambda r: (r.wake_at is None, r.wake_at or 0.0, r.execution_id))
    return out


def ready_executions(conn: Any, mark: str, now: float, limit: int) -> list[ExecutionRecord]:
    """Up to ``limit`` queued executions with no wake time and no live lease, oldest first
    (new, resumed, or waiting for subworkflows: the caller tells these apart)."""
    queued = ", ".join([mark] * len(_QUEUED))
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM executions WHERE state IN ({queued}) AND wake_at IS NULL "
        f"AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {mark}) "
        f"ORDER BY updated_at LIMIT {mark}",
        [*_QUEUED, now, limit],
    ).fetchall()
    return [ExecutionRecord(**dict(zip(EXECUTION_COLUMNS, row, strict=True))) for row in rows]
