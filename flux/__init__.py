"""Flux: durable workflows on structured concurrency, with deterministic replay on SQLite.

The public menu; everything here is re-exported from the modules that define it.
"""

# The 0.2.7 modules flux.task and flux.workflow are imported first, so that the names `task` and
# `workflow` below (the decorators) win over the submodules of the same name.
from . import task as _task_module  # noqa: F401
from . import workflow as _workflow_module  # noqa: F401
from .runtime.context import ExecutionContext as ExecutionContext
from .runtime.engine import Engine as Engine
from .runtime.engine import open_engine as open_engine
from .runtime.errors import FluxError as FluxError
from .runtime.errors import NondeterminismError as NondeterminismError
from .runtime.errors import SerializationError as SerializationError
from .runtime.errors import TaskFailedError as TaskFailedError
from .runtime.errors import TaskTimeoutError as TaskTimeoutError
from .runtime.events import ExecutionEvent as ExecutionEvent
from .runtime.events import ExecutionEventType as ExecutionEventType
from .runtime.events import ExecutionState as ExecutionState
from .runtime.patterns import call as call
from .runtime.settings import Settings as Settings
from .runtime.task import TaskMetadata as TaskMetadata
from .runtime.task import task as task
from .runtime.workflow import workflow as workflow

__version__ = "0.3.0"

__all__ = [
    "Engine",
    "ExecutionContext",
    "ExecutionEvent",
    "ExecutionEventType",
    "ExecutionState",
    "FluxError",
    "NondeterminismError",
    "SerializationError",
    "Settings",
    "TaskFailedError",
    "TaskMetadata",
    "TaskTimeoutError",
    "call",
    "open_engine",
    "task",
    "workflow",
]
