"""Reading a recorded history: what each call id did, and what is still pending.

Pure functions over decoded events; used by the executor (replay), the embedded engine and the
server (resume without running code).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .events import ExecutionEvent
from .events import ExecutionEventType as E

PAUSE = "pause"
SLEEP = "sleep"


@attrs.define
class CallRecord:
    """Everything the history says about one call id."""

    call_id: str
    name: str
    digest: str | None = None
    args: Any = None
    kwargs: Any = None
    started: ExecutionEvent | None = None
    outcome: ExecutionEvent | None = None  # TASK_COMPLETED / FAILED / CANCELLED / RESUMED
    paused: ExecutionEvent | None = None
    retries_failed: int = 0
    retry_open: int | None = None  # attempt number started but not ended
    last_error: BaseException | None = None
    fallback_started: bool = False
    fallback_failed: bool = False
    rollback_started: bool = False
    rollback_done: bool = False

    @property
    def phase(self) -> str:
        if self.rollback_started:
            return "rollback"
        if self.fallback_started and not self.fallback_failed:
            return "fallback"
        if self.fallback_failed:
            return "rollback"
        return "attempts"


def index_calls(events: Iterable[ExecutionEvent]) -> dict[str, CallRecord]:
    calls: dict[str, CallRecord] = {}
    for ev in events:
        t = ev.type
        if not t.value.startswith("TASK_"):
            continue
        rec = calls.get(ev.source_id)
        if rec is None:
            rec = calls[ev.source_id] = CallRecord(ev.source_id, ev.name)
        value = ev.value
        if t is E.TASK_STARTED:
            rec.started = ev
            rec.name = ev.name
            if isinstance(value, dict):
                rec.digest = value.get("digest")
                rec.args = value.get("args")
                rec.kwargs = value.get("kwargs")
        elif t in (E.TASK_COMPLETED, E.TASK_FAILED, E.TASK_CANCELLED, E.TASK_RESUMED):
            rec.outcome = ev
        elif t is E.TASK_PAUSED:
            rec.paused = ev
            if rec.started is None:
                rec.started = ev
        elif t is E.TASK_RETRY_STARTED:
            rec.retry_open = value.get("attempt") if isinstance(value, dict) else None
            if isinstance(value, dict) and isinstance(value.get("error"), BaseException):
                rec.last_error = value["error"]
        elif t is E.TASK_RETRY_COMPLETED:
            rec.retry_open = None
        elif t is E.TASK_RETRY_FAILED:
            rec.retry_open = None
            rec.retries_failed += 1
            if isinstance(value, BaseException):
                rec.last_error = value
        elif t is E.TASK_FALLBACK_STARTED:
            rec.fallback_started = True
            if isinstance(value, BaseException):
                rec.last_error = value
        elif t is E.TASK_FALLBACK_FAILED:
            rec.fallback_failed = True
        elif t is E.TASK_ROLLBACK_STARTED:
            rec.rollback_started = True
            if isinstance(value, BaseException):
                rec.last_error = value
        elif t in (E.TASK_ROLLBACK_COMPLETED, E.TASK_ROLLBACK_FAILED):
            rec.rollback_done = True
    return calls


def pending_pauses(events: Iterable[ExecutionEvent]) -> list[ExecutionEvent]:
    """TASK_PAUSED events not yet answered by a TASK_RESUMED, in recorded order."""
    open_: dict[str, ExecutionEvent] = {}
    for ev in events:
        if ev.type is E.TASK_PAUSED:
            open_[ev.source_id] = ev
        elif ev.type is E.TASK_RESUMED:
            open_.pop(ev.source_id, None)
    return list(open_.values())


def resume_targets(
    workflow_name: str, events: Iterable[ExecutionEvent]
) -> list[tuple[E, str, str]]:
    """``(type, source id, name)`` of the events that resume a paused execution, each carrying
    the resume value: WORKFLOW_RESUMED, then TASK_RESUMED for every pause still waiting. One
    definition for the embedded engine and the server, so both record the same history."""
    return [(E.WORKFLOW_RESUMED, workflow_name, workflow_name)] + [
        (E.TASK_RESUMED, p.source_id, p.name) for p in pending_pauses(events)
    ]


def child_failure(name: str, child_id: str, cancelled: bool) -> Exception:
    """The error a parent records for its subworkflow call ``name`` when the child ``child_id``
    was cancelled, or failed without a recorded error of its own (embedded and server alike)."""
    from .errors import ExecutionCancelledError, FluxError

    if cancelled:
        return ExecutionCancelledError(f"subworkflow {name!r} ({child_id}) was cancelled")
    return FluxError(f"subworkflow {name!r} ({child_id}) failed")
