"""The error tree of Flux, under flux-core 0.2.7's import path and names.

Flux's own errors are defined in ``flux.runtime.errors`` and re-exported here. 0.2.7's names map
onto them: :class:`ExecutionError` is the base of Flux's task and workflow errors, a task's
timeout (:class:`TaskTimeoutError`) is an :class:`ExecutionTimeoutError`, 0.2.7's
``ExecutionContextNotFoundError`` is :class:`ExecutionNotFoundError`, and every Flux error has
``message`` and ``inner_exception``.

Two differences are on purpose (docs/migration.md shows the before and after): a task's own error
reaches the workflow unwrapped, so ``except ValueError:`` catches it where 0.2.7 raised an
``ExecutionError`` (or, after retries, a :class:`RetryError`) around it; and ``pause()`` is
recorded, not raised, so Flux never raises :class:`PauseRequested` into user code. Both classes
are kept so that 0.2.7 code importing or raising them still runs.
"""

from __future__ import annotations

from typing import Any

from .runtime.errors import *  # noqa: F403
from .runtime.errors import (
    ExecutionError,
    ExecutionNotFoundError,
    StoreError,
    TaskError,
    WorkflowError,
)
from .runtime.errors import __all__ as _runtime_all

#: 0.2.7's name of the error for an unknown execution id.
ExecutionContextNotFoundError = ExecutionNotFoundError


class RetryError(ExecutionError):
    """0.2.7 raised this around a task's error once its retries ran out. Flux re-raises the
    task's own error instead; the class is kept for code that raises or names it."""

    def __init__(
        self,
        inner_exception: BaseException | None,
        attempts: int = 0,
        delay: float = 0,
        backoff: float = 0,
    ):
        super().__init__(
            inner_exception,
            f"gave up after {attempts} attempt{'' if attempts == 1 else 's'}: "
            f"{type(inner_exception).__name__}: {inner_exception}",
        )
        self.retry_attempts = attempts
        self.retry_delay = delay
        self.retry_backoff = backoff


class PauseRequested(ExecutionError):
    """0.2.7's signal of a pause. Flux records ``await pause(name)`` instead of raising this; the
    class is kept for code that names it."""

    def __init__(self, name: str, output: Any = None):
        super().__init__(message=f"pause requested: {name}")
        self.name = name
        self.output = output


class WorkflowCatalogError(WorkflowError):
    """The catalog of workflows cannot do what was asked (0.2.7's name)."""

    def __init__(self, message: str):
        super().__init__(message=message)


class WorkflowAlreadyExistError(WorkflowError):
    """A workflow of that name is already registered (0.2.7's name)."""

    def __init__(self, name: str):
        super().__init__(message=f"workflow {name!r} already exists")
        self.name = name


class TaskNotFoundError(TaskError):
    """A task that was asked for does not exist (0.2.7's name)."""

    def __init__(self, name: str | None = None):
        super().__init__(message=f"task {name!r} not found" if name else "task not found")
        self.name = name


class WorkerNotFoundError(ExecutionError):
    """A worker that was asked for is not connected (0.2.7's name)."""

    def __init__(self, name: str):
        super().__init__(message=f"worker {name!r} not found")
        self.name = name


class DatabaseConnectionError(StoreError):
    """The database cannot be reached (0.2.7's name; Flux itself raises :class:`StoreError`)."""

    def __init__(
        self, message: str, database_type: str, original_error: BaseException | None = None
    ):
        super().__init__(message)
        self.database_type = database_type
        self.original_error = original_error


class PostgreSQLConnectionError(DatabaseConnectionError):
    """PostgreSQL cannot be reached (0.2.7's name)."""

    def __init__(self, message: str, original_error: BaseException | None = None):
        super().__init__(message, "postgresql", original_error)


__all__ = sorted(
    [
        *_runtime_all,
        "DatabaseConnectionError",
        "ExecutionContextNotFoundError",
        "PauseRequested",
        "PostgreSQLConnectionError",
        "RetryError",
        "TaskNotFoundError",
        "WorkerNotFoundError",
        "WorkflowAlreadyExistError",
        "WorkflowCatalogError",
    ]
)
