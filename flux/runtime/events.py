"""Event and state vocabulary of an execution history (names kept from flux-core 0.2.7)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import attrs


class ExecutionState(StrEnum):
    CREATED = "CREATED"
    SCHEDULED = "SCHEDULED"
    CLAIMED = "CLAIMED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED}
)


class ExecutionEventType(StrEnum):
    WORKFLOW_SCHEDULED = "WORKFLOW_SCHEDULED"
    WORKFLOW_CLAIMED = "WORKFLOW_CLAIMED"
    WORKFLOW_STARTED = "WORKFLOW_STARTED"
    WORKFLOW_COMPLETED = "WORKFLOW_COMPLETED"
    WORKFLOW_FAILED = "WORKFLOW_FAILED"
    WORKFLOW_PAUSED = "WORKFLOW_PAUSED"
    WORKFLOW_RESUMED = "WORKFLOW_RESUMED"
    WORKFLOW_CANCELLED = "WORKFLOW_CANCELLED"
    TASK_STARTED = "TASK_STARTED"
    TASK_COMPLETED = "TASK_COMPLETED"
    TASK_FAILED = "TASK_FAILED"
    TASK_PAUSED = "TASK_PAUSED"
    TASK_RESUMED = "TASK_RESUMED"
    TASK_CANCELLED = "TASK_CANCELLED"
    TASK_RETRY_STARTED = "TASK_RETRY_STARTED"
    TASK_RETRY_COMPLETED = "TASK_RETRY_COMPLETED"
    TASK_RETRY_FAILED = "TASK_RETRY_FAILED"
    TASK_FALLBACK_STARTED = "TASK_FALLBACK_STARTED"
    TASK_FALLBACK_COMPLETED = "TASK_FALLBACK_COMPLETED"
    TASK_FALLBACK_FAILED = "TASK_FALLBACK_FAILED"
    TASK_ROLLBACK_STARTED = "TASK_ROLLBACK_STARTED"
    TASK_ROLLBACK_COMPLETED = "TASK_ROLLBACK_COMPLETED"
    TASK_ROLLBACK_FAILED = "TASK_ROLLBACK_FAILED"
    #: a Graph began: its shape (nodes with their call ids, edges with their conditions'
    #: names), for the console's DAG. Not a call: replay skips it (flux.runtime.graph)
    GRAPH_STARTED = "GRAPH_STARTED"

    def __str__(self) -> str:
        return self.value


#: Event types that end a task call: on replay the call returns or raises without running.
TASK_OUTCOMES = frozenset(
    {
        ExecutionEventType.TASK_COMPLETED,
        ExecutionEventType.TASK_FAILED,
        ExecutionEventType.TASK_CANCELLED,
        ExecutionEventType.TASK_RESUMED,
    }
)


@attrs.frozen
class ExecutionEvent:
    """One entry of an execution's history.

    ``id`` is the event's sequence number within its execution (1, 2, ...), ``source_id`` the
    structural call id of the task (``say_hi#0``, ``parallel#1/say_hi#0``) or the workflow name for
    workflow events, ``value`` the decoded payload and ``time`` an aware UTC datetime.
    """

    id: int
    type: ExecutionEventType
    source_id: str
    name: str
    value: Any = None
    time: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "source_id": self.source_id,
            "name": self.name,
            "value": self.value,
            "time": self.time.isoformat() if self.time else None,
        }
