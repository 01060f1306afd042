"""0.2.7 import path: ``from flux.task import task, TaskMetadata``."""

from .runtime.task import TaskMetadata as TaskMetadata
from .runtime.task import TaskOptions as TaskOptions
from .runtime.task import task as task

__all__ = ["TaskMetadata", "TaskOptions", "task"]
