"""The records a store keeps and hands back, shared by every store implementation.

They hold values already encoded by the codec (``bytes``); a store never encodes or decodes them.
The protocol, the engine and the server use these types without knowing which store is behind
them (see :mod:`flux.runtime.store_api`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState

__all__ = [
    "CacheRecord",
    "Claim",
    "EVENT_COLUMNS",
    "EXECUTION_COLUMNS",
    "UPDATABLE_COLUMNS",
    "WORKFLOW_COLUMNS",
    "ExecutionRecord",
    "SecretRecord",
    "StaleWriteError",
    "StoreStatistics",
    "StoredEvent",
    "WorkflowRecord",
    "Write",
    "check_write",
]


class StaleWriteError(StoreError):
    """A write's ``expect`` did not hold: the execution row no longer has the expected values
    (typically another worker holds a newer lease epoch). Nothing of that write was stored."""


@attrs.frozen
class StoredEvent:
    """One row of an execution history, its value still encoded."""

    execution_id: str
    seq: int
    type: str
    call_id: str
    name: str
    value: bytes | None
    time: float


def _updated_at_default(record: ExecutionRecord) -> float:
    return record.created_at


@attrs.frozen(kw_only=True)
class ExecutionRecord:
    """One row of the ``executions`` table (keyword-only, so optional columns may be left out)."""

    execution_id: str
    workflow_name: str
    workflow_version: int | None = None
    parent_id: str | None = None
    input: bytes
    output: bytes | None = None
    state: ExecutionState = attrs.field(default=ExecutionState.CREATED, converter=ExecutionState)
    created_at: float = attrs.field(factory=time.time)
    updated_at: float = attrs.field(default=attrs.Factory(_updated_at_default, takes_self=True))
    lease_owner: str | None = None
    lease_epoch: int = 0
    lease_expires_at: float | None = None
    wake_at: float | None = None
    cancel_requested: bool = attrs.field(default=False, converter=bool)
    #: the failed execution this one retries (see flux.runtime.retry); its own retries are the
    #: executions whose ``retry_of`` names it (``StoreAPI.retries_of``)
    retry_of: str | None = None


@attrs.frozen
class WorkflowRecord:
    """One uploaded version of a workflow's source."""

    name: str
    version: int
    source: str
    source_hash: str
    created_at: float


@attrs.frozen
class SecretRecord:
    """One stored secret: its ciphertext as the secrets layer wrote it (never decrypted here)."""

    name: str
    ciphertext: bytes
    updated_at: float


@attrs.frozen
class CacheRecord:
    """One task-cache entry, its value still encoded (``expires_at`` None: never expires)."""

    key: str
    value: bytes | None
    created_at: float
    expires_at: float | None = None


def _tuple(events: Iterable[StoredEvent]) -> tuple[StoredEvent, ...]:
    return tuple(events)


@attrs.frozen
class Write:
    """What one caller wants stored about one execution, applied atomically.

    In order: ``expect`` (column values the execution row must have, else
    :class:`StaleWriteError`), ``insert`` (a new execution row), ``update`` (columns to set;
    ``updated_at`` is set too unless given), ``events`` (appended to the history).
    """

    execution_id: str
    events: tuple[StoredEvent, ...] = attrs.field(default=(), converter=_tuple)
    insert: ExecutionRecord | None = None
    update: dict[str, Any] | None = None
    expect: dict[str, Any] | None = None


@attrs.frozen
class StoreStatistics:
    """A snapshot of a store's group-commit writer (see ``statistics()``)."""

    #: Transactions run by the writer (one per batch).
    commits: int
    #: Writes stored.
    writes_committed: int
    #: Writes refused (their caller got a StoreError).
    writes_failed: int
    #: Most writes merged into one transaction.
    largest_batch: int
    #: Writes waiting for the next transaction.
    queued: int
    #: Transactions retried after failing as a whole (locked, busy, I/O).
    retries: int = 0


@attrs.frozen
class Claim:
    """What ``claim()`` found and did, in one transaction.

    ``outcome`` is one of:

    - ``"created"``: there was no such execution; ``create`` was inserted, epoch 1;
    - ``"claimed"``: the lease is now ours with ``epoch``; ``record`` is the row as it was
      before the claim (its ``state`` tells a paused execution from a crashed one) and
      ``events`` its whole history, read in the same transaction;
    - ``"finished"``: the execution is terminal; ``events`` is its history; nothing changed;
    - ``"leased"``: another live runner holds the lease (``record.lease_owner``,
      ``record.lease_expires_at``); nothing changed;
    - ``"missing"``: no such execution and nothing to create;
    - ``"mismatch"``: the execution belongs to another workflow than the one named; nothing
      changed.
    """

    outcome: str
    record: ExecutionRecord | None = None
    events: tuple[StoredEvent, ...] = attrs.field(default=(), converter=_tuple)
    epoch: int = 0


EXECUTION_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(ExecutionRecord))
EVENT_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(StoredEvent))
WORKFLOW_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(WorkflowRecord))
_EXECUTION_COLUMN_SET = frozenset(EXECUTION_COLUMNS)
#: The columns a :class:`Write` may ``update`` (every one but the key).
UPDATABLE_COLUMNS = _EXECUTION_COLUMN_SET - {"execution_id"}


def check_write(write: Write) -> None:
    """Refuse a malformed write before it is queued: ``TypeError`` if it is not a :class:`Write`,
    StoreError naming the execution if it mixes executions or names an unknown column."""
    if not isinstance(write, Write):
        raise TypeError(f"expected a Write, got {type(write).__name__}")
    eid = write.execution_id
    for event in write.events:
        if event.execution_id != eid:
            raise StoreError(
                f"event seq {event.seq} of execution {event.execution_id!r} "
                f"is in a write to execution {eid!r}"
            )
    if write.insert is not None and write.insert.execution_id != eid:
        raise StoreError(
            f"insert of execution {write.insert.execution_id!r} is in a write to execution {eid!r}"
        )
    for what, columns, allowed in (
        ("update", write.update, UPDATABLE_COLUMNS),
        ("expect", write.expect, _EXECUTION_COLUMN_SET),
    ):
        if columns:
            unknown = columns.keys() - allowed
            if unknown:
                raise StoreError(
                    f"{what} of execution {eid!r} names unknown or read-only column(s) "
                    f"{', '.join(sorted(map(repr, unknown)))}"
                )


def decide_claim(
    record: ExecutionRecord,
    owner: str,
    now: float,
    owner_gone: Callable[[str], bool] | None,
    workflow_name: str | None,
) -> str | None:
    """What a claim of the existing execution ``record`` by ``owner`` at ``now`` comes to:
    ``"mismatch"`` (another workflow's), ``"finished"``, ``"leased"`` (another live owner's
    lease: not expired, and ``owner_gone`` does not say it is gone), or None: take it. One rule
    for every store; each runs it on the row it locked."""
    if workflow_name is not None and record.workflow_name != workflow_name:
        return "mismatch"
    if record.state.is_terminal:
        return "finished"
    holder = record.lease_owner
    if (
        holder is not None
        and holder != owner
        and record.lease_expires_at is not None
        and record.lease_expires_at > now
        and not (owner_gone is not None and owner_gone(holder))
    ):
        return "leased"
    return None


def stale_error(conn: Any, write: Write, mark: str = "?") -> StaleWriteError:
    """The StaleWriteError for ``write`` whose ``expect`` did not hold, saying what the row
    holds instead (``conn``: a DB-API connection of either store; ``mark``: its placeholder)."""
    eid = write.execution_id
    expect = write.expect or {}
    row = conn.execute(
        f"SELECT {', '.join(expect)} FROM executions WHERE execution_id = {mark}", (eid,)
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
