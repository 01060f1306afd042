"""Following an execution in the local store as it goes: one line per task outcome.

The embedded engine commits each task outcome before the workflow goes on, and flushes the
events it queued within 50 ms, so reading the store's events after the last one seen, every
``interval`` seconds, shows a run's progress without any hook in the engine. The reads run off
the event loop like every store call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from .failures import error_summary
from .store import Store, StoredEvent

#: The events that are a task's outcome (or an attempt's), and how a line names them.
OUTCOMES = {
    "TASK_COMPLETED": "completed",
    "TASK_FAILED": "failed",
    "TASK_CANCELLED": "cancelled",
    "TASK_PAUSED": "paused",
    "TASK_RESUMED": "resumed",
    "TASK_RETRY_FAILED": "retry failed",
    "TASK_RETRY_STARTED": "retrying",
    "TASK_FALLBACK_STARTED": "falling back",
    "TASK_ROLLBACK_COMPLETED": "rolled back",
    "TASK_ROLLBACK_FAILED": "rollback failed",
}
_ERROR_EVENTS = frozenset({"TASK_FAILED", "TASK_RETRY_FAILED", "TASK_ROLLBACK_FAILED"})


def _shown(value: Any, room: int) -> str:
    text = value if isinstance(value, str) and value.isprintable() else json.dumps(value)
    return text if len(text) <= room else text[: max(room - 3, 0)] + "..."


def outcome_line(event: dict[str, Any], width: int = 120) -> str | None:
    """``HH:MM:SS  CALL_ID  OUTCOME  VALUE`` for a task outcome (a JSON event), else None."""
    label = OUTCOMES.get(str(event.get("type")))
    if label is None:
        return None
    when = event.get("time")
    try:
        clock = datetime.fromisoformat(when).astimezone(UTC).strftime("%H:%M:%S")
    except (TypeError, ValueError):
        clock = "--:--:--"
    value = _value_text(str(event.get("type")), event.get("value"))
    head = f"  {clock}  {str(event.get('source_id')):28}  {label:15}"
    if value is None:
        return head.rstrip()
    return f"{head}  {_shown(value, max(width - len(head) - 2, 20))}"


def _value_text(kind: str, value: Any) -> Any:
    """What a line shows of an event's value: errors as ``Type: message``, a retry as which
    one, after how long and why."""
    if kind in _ERROR_EVENTS or kind == "TASK_FALLBACK_STARTED":
        summary = error_summary(value)
        return value if summary is None else summary
    if kind == "TASK_RETRY_STARTED" and isinstance(value, dict) and "attempt" in value:
        why = error_summary(value.get("error"))
        delay = value.get("delay")
        after = f" after {delay:g}s" if isinstance(delay, int | float) else ""
        return f"retry {value['attempt']}{after}" + (f" ({why})" if why else "")
    return value


class StoreFollower:
    """Reads an execution's new events from a store, after the last one it has seen."""

    def __init__(
        self,
        store: Store,
        execution_id: str,
        emit: Callable[[StoredEvent], None],
        *,
        after_seq: int = 0,
    ):
        self.store = store
        self.execution_id = execution_id
        self.emit = emit
        self.last_seq = after_seq
        self._lock = anyio.Lock()

    async def poll(self) -> None:
        """Emit every event committed since the last poll (each once, even when two tasks
        poll at the same time)."""
        async with self._lock:
            for event in await self.store.load_events(self.execution_id, self.last_seq):
                if event.seq > self.last_seq:
                    self.last_seq = event.seq
                    self.emit(event)

    async def follow(self, interval: float = 0.2) -> None:
        """Poll every ``interval`` seconds until cancelled."""
        while True:
            await self.poll()
            await anyio.sleep(interval)
