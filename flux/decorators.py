"""0.2.7 import path: ``from flux.decorators import task, workflow, TaskMetadata``."""

from .runtime.task import TaskMetadata as TaskMetadata
from .runtime.task import task as task
from .runtime.workflow import workflow as workflow

__all__ = ["TaskMetadata", "task", "workflow"]
