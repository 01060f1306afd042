"""Retrying a failed execution without redoing its work.

A retry is a NEW execution (its own id), linked to the failed one both ways (its record's
``retry_of`` names the original; the store's ``retries_of(original)`` lists the retries). Its
history is the original's up to the first failure, as if the process had crashed just before
that failure was recorded, so running it is a recovery: every call that had completed returns
its recorded outcome on replay, and the failed call runs again. The original is not touched (its
record and its history stay byte for byte as they were).

The cut, precisely (:func:`cut_history`):

- The history is copied up to, not including, the first *final* failure: the first
  ``TASK_FAILED`` (a call that failed after its retries, fallback and rollback) or the
  ``WORKFLOW_FAILED`` (the workflow's own code raised, or it timed out), whichever comes
  first, and without the cancellations and rollbacks recorded just before it (the unwinding
  of that failure: a workflow timeout cancels its running calls).
- Every call left without an outcome by the cut (the failed one, and siblings in flight with
  it) keeps its ``TASK_STARTED`` (its place and arguments, so replay finds it where it was) but
  not its attempt events (``TASK_RETRY_*``, ``TASK_FALLBACK_*``, ``TASK_ROLLBACK_*``): it runs
  again from its first attempt with its whole retry budget, and the new history records the new
  attempts (the original's stay in the original).
- Sequence numbers are renumbered from 1; times are the original's.

Subworkflows: a child call left open by the cut gets the child id the new parent derives for it
(``child_execution_id(new_id, call_id)``). When the child it had started is FAILED, that child
is retried too, under the new parent (same rule, recursively), so its completed work is not
redone either; a child in another state (still running or ended after the cut) is run again
from its start by the new parent.

Retrying twice: an execution is retried again only once every earlier retry of it has ended
FAILED or CANCELLED; while one is live (or once one completed) a retry is refused with
:class:`ExecutionConflictError` naming it. Retry ids are derived from the original's id and the
retry's ordinal, so of two retries made at once exactly one is created and the other is refused
(the store refuses the second insert of the same id), on any number of processes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from . import codec
from .errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    StoreError,
    WorkflowNotFoundError,
)
from .events import ExecutionEventType as E
from .events import ExecutionState as S
from .patterns import child_execution_id
from .records import ExecutionRecord, StoredEvent, Write

__all__ = [
    "RetryPlan",
    "create_retry",
    "cut_history",
    "latest_version",
    "retry_execution_id",
    "retry_links",
]

_RETRY_NAMESPACE = uuid.UUID("0c7b5e52-93a4-4c1e-8f51-3d4f2b7a9e21")

#: events of one call's attempts, fallback and rollback: not copied for a call left open
_ATTEMPT_EVENTS = frozenset(
    t.value
    for t in (
        E.TASK_RETRY_STARTED,
        E.TASK_RETRY_COMPLETED,
        E.TASK_RETRY_FAILED,
        E.TASK_FALLBACK_STARTED,
        E.TASK_FALLBACK_COMPLETED,
        E.TASK_FALLBACK_FAILED,
        E.TASK_ROLLBACK_STARTED,
        E.TASK_ROLLBACK_COMPLETED,
        E.TASK_ROLLBACK_FAILED,
    )
)
_OUTCOMES = frozenset(
    t.value for t in (E.TASK_COMPLETED, E.TASK_FAILED, E.TASK_CANCELLED, E.TASK_RESUMED)
)
_FAILURES = frozenset((E.TASK_FAILED.value, E.WORKFLOW_FAILED.value))
_UNWINDING = frozenset(
    t.value
    for t in (
        E.TASK_CANCELLED,
        E.TASK_ROLLBACK_STARTED,
        E.TASK_ROLLBACK_COMPLETED,
        E.TASK_ROLLBACK_FAILED,
    )
)
#: the states of an earlier retry that allow retrying the original again
_RETRYABLE_AGAIN = frozenset((S.FAILED, S.CANCELLED))

#: ``(workflow_name, original_version) -> version`` the retry runs (None: keep the original's)
VersionFor = Callable[[str, int | None], Awaitable[int | None]]


def latest_version(store: Any) -> VersionFor:
    """The ``version_for`` of ``--latest``: each workflow's latest stored version (a server's
    uploads); WorkflowNotFoundError if the store has none."""

    async def latest(name: str, version: int | None) -> int | None:
        record = await store.get_workflow(name)
        if record is None:
            raise WorkflowNotFoundError(name)
        return record.version

    return latest


def retry_execution_id(original_id: str, ordinal: int) -> str:
    """The id of retry number ``ordinal`` (0-based) of execution ``original_id`` (stable, so
    two processes making the same retry at once make the same id, and one of them wins)."""
    return uuid.uuid5(_RETRY_NAMESPACE, f"{original_id}/retry#{ordinal}").hex


def cut_history(
    events: Sequence[StoredEvent], new_id: str
) -> tuple[list[StoredEvent], dict[str, str]]:
    """The history of a retry of ``events`` under ``new_id`` (see the module docstring), and
    the child calls it leaves open: ``{call_id: child id the original had started}``."""
    end = next((i for i, e in enumerate(events) if e.type in _FAILURES), len(events))
    # the unwinding that led to the failure (a workflow timeout cancels its running calls,
    # which roll back): not copied, so those calls run again instead of replaying cancelled
    while end > 0 and events[end - 1].type in _UNWINDING:
        end -= 1
    prefix = events[:end]
    open_calls: set[str] = set()
    for e in prefix:
        if e.type == E.TASK_STARTED.value:
            open_calls.add(e.call_id)
        elif e.type in _OUTCOMES:
            open_calls.discard(e.call_id)
    out: list[StoredEvent] = []
    children: dict[str, str] = {}
    for e in prefix:
        if e.call_id in open_calls and e.type in _ATTEMPT_EVENTS:
            continue
        value = e.value
        if e.call_id in open_calls and e.type == E.TASK_STARTED.value and value is not None:
            value, old_child = _rehome_child(value, new_id, e.call_id)
            if old_child is not None:
                children[e.call_id] = old_child
        out.append(attrs.evolve(e, execution_id=new_id, seq=len(out) + 1, value=value))
    return out, children


def _rehome_child(value: bytes, new_id: str, call_id: str) -> tuple[bytes, str | None]:
    """A subworkflow call's TASK_STARTED value with the child id the new parent derives (the
    rest byte for byte), and the child id it had; other values unchanged, None."""
    if b"child_id" not in value:
        return value, None
    try:
        raw = codec.decode_opaque(value)
    except Exception:
        return value, None
    if not isinstance(raw, dict) or not isinstance(raw.get("child_id"), str):
        return value, None
    old = raw["child_id"]
    raw["child_id"] = child_execution_id(new_id, call_id)
    return codec.encode_opaque(raw), old


@attrs.frozen
class RetryPlan:
    """What a retry stores: one write per execution it creates, the retry first, then the
    retries of its failed children (each write inserts the record with its whole history)."""

    writes: tuple[Write, ...]

    @property
    def records(self) -> list[ExecutionRecord]:
        return [w.insert for w in self.writes if w.insert is not None]


async def _plan(
    store: Any,
    original: ExecutionRecord,
    new_id: str,
    parent_id: str | None,
    version_for: VersionFor | None,
    now: float,
    depth: int = 0,
) -> list[Write]:
    events = await store.load_events(original.execution_id)
    copied, children = cut_history(events, new_id)
    version = original.workflow_version
    if version_for is not None:
        version = await version_for(original.workflow_name, version)
    record = ExecutionRecord(
        execution_id=new_id,
        workflow_name=original.workflow_name,
        workflow_version=version,
        parent_id=parent_id,
        input=original.input,
        state=S.SCHEDULED,
        created_at=now,
        retry_of=original.execution_id,
    )
    writes = [Write(new_id, copied, insert=record)]
    if depth >= 32:  # a parent's history names its children: no cycle, but stay bounded
        return writes
    for call_id, old_child in children.items():
        child = await store.get_execution(old_child)
        if child is None or child.state is not S.FAILED:
            continue  # run again from its start by the new parent
        writes += await _plan(
            store,
            child,
            child_execution_id(new_id, call_id),
            new_id,
            version_for,
            now,
            depth + 1,
        )
    return writes


async def create_retry(
    store: Any,
    execution_id: str,
    *,
    version_for: VersionFor | None = None,
    clock: Callable[[], float] = time.time,
) -> RetryPlan:
    """Store a retry of the FAILED execution ``execution_id`` (state SCHEDULED, unleased: a
    runner recovers it) and the retries of its failed children; return what was stored.

    Raises ExecutionNotFoundError for an unknown id, ExecutionConflictError (naming the state)
    for an execution that did not fail, or one with a retry that is live or completed."""
    original = await store.get_execution(execution_id)
    if original is None:
        raise ExecutionNotFoundError(execution_id)
    if original.state is not S.FAILED:
        raise ExecutionConflictError(
            f"execution {execution_id} is {original.state.value}, not FAILED: "
            "only a failed execution can be retried",
            state=original.state.value,
        )
    earlier = await store.retries_of(execution_id)
    for retry_id in earlier:
        retry = await store.get_execution(retry_id)
        if retry is not None and retry.state not in _RETRYABLE_AGAIN:
            raise ExecutionConflictError(
                f"execution {execution_id} was already retried by {retry_id}, which is "
                f"{retry.state.value}; retry that one once it fails, or wait until it ends",
                state=original.state.value,
                retried_by=retry_id,
            )
    new_id = retry_execution_id(execution_id, len(earlier))
    writes = await _plan(store, original, new_id, None, version_for, clock())
    try:
        await store.commit(writes[0])
    except StoreError as exc:
        if "already exists" in str(exc):
            raise ExecutionConflictError(
                f"execution {execution_id} is being retried by another request ({new_id})",
                state=original.state.value,
                retried_by=new_id,
            ) from None
        raise
    done = [writes[0]]
    for write in writes[1:]:  # the failed children: without them they run from their start
        try:
            await store.commit(write)
        except StoreError:
            break
        done.append(write)
    return RetryPlan(tuple(done))


async def retry_links(store: Any, record: ExecutionRecord) -> dict[str, Any]:
    """The retry links of ``record`` as the API and the CLI show them: ``retry_of`` (the
    execution it retries) and ``retried_by`` (its retries, oldest first), each only when set."""
    out: dict[str, Any] = {}
    if record.retry_of is not None:
        out["retry_of"] = record.retry_of
    retried_by = await store.retries_of(record.execution_id)
    if retried_by:
        out["retried_by"] = retried_by
    return out
