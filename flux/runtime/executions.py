"""What creating, resuming and cancelling an execution writes: one builder per operation,
shared by the embedded engine (:mod:`flux.runtime.engine`) and the server's dispatcher
(:mod:`flux.net.dispatch_ops`), so both store the same rows and the same events. They differ
only in who runs the execution afterwards: the engine runs it in this process under its own
lease; the dispatcher queues it for a worker. A subworkflow's outcome, as its parent records it,
is :func:`flux.runtime.history.child_failure`; the events that resume a pause are
:func:`flux.runtime.history.resume_targets` (both shared the same way).

The builders do no I/O: the caller commits the :class:`~flux.runtime.records.Write` they return.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flux.runtime import codec
from flux.runtime.events import ExecutionEvent, ExecutionEventType, ExecutionState
from flux.runtime.history import resume_targets
from flux.runtime.records import ExecutionRecord, StoredEvent, Write

__all__ = ["cancellation", "creation", "resumption_events"]

E = ExecutionEventType
S = ExecutionState


def creation(
    execution_id: str,
    workflow_name: str,
    input_data: bytes,
    now: float,
    *,
    version: int | None = None,
    parent_id: str | None = None,
    owner: str | None = None,
    expires_at: float | None = None,
) -> Write:
    """A new execution: its row and WORKFLOW_STARTED carrying the encoded input. With an
    ``owner`` it is created RUNNING under that owner's lease (epoch 1, until ``expires_at``),
    as the embedded engine runs it at once; without, SCHEDULED, waiting to be leased."""
    record = ExecutionRecord(
        execution_id=execution_id,
        workflow_name=workflow_name,
        workflow_version=version,
        parent_id=parent_id,
        input=input_data,
        state=S.RUNNING if owner is not None else S.SCHEDULED,
        created_at=now,
        lease_owner=owner,
        lease_epoch=1 if owner is not None else 0,
        lease_expires_at=expires_at if owner is not None else None,
    )
    started = StoredEvent(
        execution_id, 1, E.WORKFLOW_STARTED.value, workflow_name, workflow_name, input_data, now
    )
    return Write(execution_id, [started], insert=record)


def resumption_events(
    execution_id: str,
    workflow_name: str,
    history: Iterable[ExecutionEvent],
    last_seq: int,
    value_data: bytes,
    now: float,
) -> list[StoredEvent]:
    """The events that resume a paused execution whose last event is ``last_seq``:
    WORKFLOW_RESUMED, then TASK_RESUMED for every pause still waiting, each carrying the
    encoded resume value."""
    targets = resume_targets(workflow_name, history)
    return [
        StoredEvent(execution_id, last_seq + i, type_.value, source, name, value_data, now)
        for i, (type_, source, name) in enumerate(targets, start=1)
    ]


#: The encoded output of a cancelled execution (None).
CANCELLED_OUTPUT = codec.encode(None)


def cancellation(
    execution_id: str,
    workflow_name: str,
    last_seq: int,
    now: float,
    expect: dict[str, Any],
) -> Write:
    """End an execution nobody runs CANCELLED: WORKFLOW_CANCELLED after ``last_seq`` and the
    row's final columns (no output, no wake time, no lease), fenced by ``expect`` (the epoch
    and state the caller read; a change meanwhile refuses the write)."""
    event = StoredEvent(
        execution_id,
        last_seq + 1,
        E.WORKFLOW_CANCELLED.value,
        workflow_name,
        workflow_name,
        CANCELLED_OUTPUT,
        now,
    )
    update = {
        "state": S.CANCELLED.value,
        "output": CANCELLED_OUTPUT,
        "wake_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "cancel_requested": 1,
    }
    return Write(execution_id, [event], update=update, expect=expect)
