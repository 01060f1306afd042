"""0.2.7 import path: ``from flux.domain.events import ExecutionEventType, ExecutionState``."""

from ..runtime.events import ExecutionEvent as ExecutionEvent
from ..runtime.events import ExecutionEventType as ExecutionEventType
from ..runtime.events import ExecutionState as ExecutionState

__all__ = ["ExecutionEvent", "ExecutionEventType", "ExecutionState"]
