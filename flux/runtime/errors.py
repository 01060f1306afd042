"""The one error tree of Flux.

Every error Flux raises on purpose derives from :class:`FluxError`. Each class says when it is
raised; each message names the execution, task or value involved.
"""

from __future__ import annotations


class FluxError(Exception):
    """Base class of every error Flux raises on purpose."""


class WorkflowError(FluxError):
    """A workflow could not be defined, found or run (bad definition, unknown name or id)."""


class ExecutionNotFoundError(WorkflowError):
    """An execution id was given that the store does not hold."""

    def __init__(self, execution_id: str):
        super().__init__(f"no execution with id {execution_id!r}")
        self.execution_id = execution_id


class WorkflowNotFoundError(WorkflowError):
    """A workflow name was given that is not registered."""

    def __init__(self, name: str):
        super().__init__(f"no workflow named {name!r}")
        self.name = name


class TaskError(FluxError):
    """Something went wrong running a task (as opposed to inside its body)."""


class TaskFailedError(TaskError):
    """Stands for a recorded exception whose original type cannot be rebuilt in this process.

    ``type_name`` holds the qualified name of the original type, ``message`` its message and
    ``remote_traceback`` the traceback text captured where it was raised.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class TaskTimeoutError(TaskError, TimeoutError):
    """A task attempt (or a workflow) ran longer than its ``timeout``; retryable like any error."""


class SerializationError(FluxError):
    """A value cannot be carried by the codec (raised by the codec naming the type; the runtime
    re-raises it naming the task too)."""


class NondeterminismError(FluxError):
    """Replay found the workflow making a different call than the one recorded at the same id.

    The execution is left as it was, so that running it again with the original code continues it.
    """


class SecretNotFoundError(TaskError, ValueError):
    """A task asked for a secret the secret store does not hold."""


class StoreError(FluxError):
    """The store cannot do what was asked (corrupt file, unknown schema, bad state change)."""


class ExecutionCancelledError(FluxError):
    """Raised to code awaiting an execution that was cancelled."""


__all__ = [
    "ExecutionCancelledError",
    "ExecutionNotFoundError",
    "FluxError",
    "NondeterminismError",
    "SecretNotFoundError",
    "SerializationError",
    "StoreError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "WorkflowError",
    "WorkflowNotFoundError",
]
