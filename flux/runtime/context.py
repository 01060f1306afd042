"""ExecutionContext: what a workflow receives, and what a run returns."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Generic, TypeVar
from uuid import UUID

import attrs

from .events import ExecutionEvent, ExecutionEventType, ExecutionState

T = TypeVar("T")

_FINISHED = frozenset({ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED})


class ExecutionContext(Generic[T]):
    """The state of one execution: its id, input, output, state and event history.

    A workflow function receives one (``ctx.input`` is its input); ``wf.run()`` returns one.
    """

    __slots__ = (
        "execution_id",
        "workflow_name",
        "input",
        "output",
        "state",
        "_events",
        "parent_id",
        "workflow_version",
        "retry_of",
        "retried_by",
    )

    def __init__(
        self,
        execution_id: str,
        workflow_name: str,
        input: T | None = None,
        output: Any = None,
        state: ExecutionState = ExecutionState.CREATED,
        events: Sequence[ExecutionEvent] = (),
        parent_id: str | None = None,
        workflow_version: int | None = None,
        retry_of: str | None = None,
        retried_by: Sequence[str] = (),
    ):
        self.execution_id = execution_id
        self.workflow_name = workflow_name
        self.input = input
        self.output = output
        self.state = state
        self._events = list(events)
        self.parent_id = parent_id
        self.workflow_version = workflow_version
        #: the failed execution this one retries, and the retries of this one (oldest first)
        self.retry_of = retry_of
        self.retried_by = list(retried_by)

    # 0.2.7 called the workflow name `name`
    @property
    def name(self) -> str:
        return self.workflow_name

    @property
    def events(self) -> list[ExecutionEvent]:
        return self._events

    @property
    def has_started(self) -> bool:
        return any(e.type == ExecutionEventType.WORKFLOW_STARTED for e in self._events)

    @property
    def has_finished(self) -> bool:
        return self.state in _FINISHED

    @property
    def has_succeeded(self) -> bool:
        return self.state == ExecutionState.COMPLETED

    @property
    def has_failed(self) -> bool:
        return self.state == ExecutionState.FAILED

    @property
    def is_paused(self) -> bool:
        return self.state == ExecutionState.PAUSED

    @property
    def is_cancelled(self) -> bool:
        return self.state == ExecutionState.CANCELLED

    @property
    def is_running(self) -> bool:
        return self.state in (ExecutionState.RUNNING, ExecutionState.CLAIMED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "workflow_name": self.workflow_name,
            "input": self.input,
            "output": self.output,
            "state": self.state.value,
            "events": [e.to_dict() for e in self._events],
        }

    def summary(self) -> dict[str, Any]:
        """The API's summary shape: name, id, input, output and state (no events)."""
        return {
            "workflow_name": self.workflow_name,
            "execution_id": self.execution_id,
            "input": self.input,
            "output": self.output,
            "state": self.state.value,
        }

    def to_json(self, *, indent: int | None = None, events: bool = True) -> str:
        data = self.to_dict() if events else self.summary()
        return json.dumps(to_jsonable(data), indent=indent)

    def __repr__(self) -> str:
        return (
            f"ExecutionContext(execution_id={self.execution_id!r}, "
            f"workflow_name={self.workflow_name!r}, state={self.state.value}, "
            f"output={self.output!r})"
        )


def to_jsonable(value: Any) -> Any:
    """Turn any value the codec carries into plain JSON types (for APIs and ``to_json``).

    Exceptions become ``{"type", "message", "traceback"}`` (the traceback text recorded where
    the error was raised, ``""`` if none); bytes become base64 text; sets become lists.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if isinstance(value, dict):
        return {_json_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, BaseExceptionGroup):
        from .failures import traceback_text

        return {
            "type": f"{type(value).__module__}.{type(value).__qualname__}",
            "message": str(value),
            "traceback": traceback_text(value),
            "exceptions": [to_jsonable(e) for e in value.exceptions],
        }
    if isinstance(value, BaseException):
        type_name = getattr(value, "type_name", None) or (
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
        message = getattr(value, "message", None)
        if not isinstance(message, str):
            message = str(value)
        from .failures import traceback_text

        return {"type": type_name, "message": message, "traceback": traceback_text(value)}
    if isinstance(value, ExecutionEvent):
        return to_jsonable(value.to_dict())
    if attrs.has(type(value)):
        return to_jsonable(attrs.asdict(value, recurse=False))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return repr(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    converted = to_jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)
