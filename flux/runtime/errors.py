"""The one error tree of Flux.

Every error Flux raises on purpose derives from :class:`FluxError`. Each class says when it is
raised; each message names the execution, task or value involved.
"""

from __future__ import annotations


class FluxError(Exception):
    """Base class of every error Flux raises on purpose.

    Every Flux error has 0.2.7's two properties: ``message`` (its text) and ``inner_exception``
    (the error it wraps: the one given to :class:`ExecutionError`, else ``__cause__``).
    """

    @property
    def inner_exception(self) -> BaseException | None:
        inner = self.__dict__.get("_inner_exception")
        return inner if inner is not None else self.__cause__

    @property
    def message(self) -> str:
        text = self.__dict__.get("_message")
        return text if isinstance(text, str) else str(self)

    @message.setter
    def message(self, value: str | None) -> None:
        self.__dict__["_message"] = value


class ExecutionError(FluxError):
    """0.2.7's base of the errors of an execution: ``ExecutionError(inner_exception, message)``.

    Flux's task and workflow errors derive from it. A Flux subclass passes its text as the only
    positional argument, which is taken as the message.
    """

    def __init__(
        self, inner_exception: BaseException | str | None = None, message: str | None = None
    ):
        if isinstance(inner_exception, str) and message is None:
            inner_exception, message = None, inner_exception
        text = message
        if text is None and inner_exception is not None:
            text = f"{type(inner_exception).__name__}: {inner_exception}"
        super().__init__(*(() if text is None else (text,)))
        self.__dict__["_inner_exception"] = inner_exception
        self.__dict__["_message"] = message


class ExecutionTimeoutError(ExecutionError, TimeoutError):
    """Something ran longer than its timeout (0.2.7's name; :class:`TaskTimeoutError` is one).

    Built either with a message, or as in 0.2.7: ``ExecutionTimeoutError("Task", name, id, 5)``.
    """

    def __init__(
        self,
        type: str | None = None,
        name: str | None = None,
        id: str | None = None,
        timeout: float | None = None,
    ):
        if name is None and id is None and timeout is None:
            super().__init__(message=type)
        else:
            super().__init__(message=f"{type} {name} ({id}) timed out ({timeout}s).")
        self.timeout = timeout


class WorkflowError(ExecutionError):
    """A workflow could not be defined, found or run (bad definition, unknown name or id)."""


class ExecutionNotFoundError(WorkflowError):
    """An execution id was given that the store does not hold."""

    def __init__(self, execution_id: str):
        super().__init__(f"no execution with id {execution_id!r}")
        self.execution_id = execution_id


class WorkflowNotFoundError(WorkflowError):
    """A workflow name was given that is not registered."""

    def __init__(self, name: str, module_name: str | None = None):
        where = f" in module {module_name}" if module_name else ""
        super().__init__(f"no workflow named {name!r}{where}")
        self.name = name


class TaskError(ExecutionError):
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


class TaskTimeoutError(TaskError, ExecutionTimeoutError):
    """A task attempt (or a workflow) ran longer than its ``timeout``; retryable like any error."""


class SerializationError(FluxError):
    """A value cannot be carried by the codec (raised by the codec naming the type; the runtime
    re-raises it naming the task too)."""


class StoppedError(FluxError):
    """A run stopped without failing: its history is exactly as it was and the execution stays
    resumable. Raised to the code that ran the execution (``wf.run``, ``engine.run``), never
    inside the workflow: there the run's scope is cancelled and :class:`ExecutionStopped`
    (not an ``Exception``) is raised at the call that noticed it, so ``except Exception`` in
    workflow code cannot catch a stop, record it, or compensate for it."""


class NondeterminismError(StoppedError):
    """Replay found the workflow making a different call than the one recorded at the same id
    (another call at a recorded place, a call inserted before recorded ones, a recorded call the
    code no longer makes).

    The execution is left as it was, so that running it again with the original code continues it.
    """


class LeaseLostError(StoppedError):
    """This runner no longer owns the execution: its lease expired (the process stalled past the
    lease ttl) and another runner took it over, so every write it tries is refused by the lease
    epoch. The run stopped at once; the new owner continues the execution by replay."""


class StoreUnavailableError(StoppedError):
    """The store kept refusing a commit (locked past the busy timeout, disk full, I/O error) for
    longer than the store's retry window; the run stopped with nothing half-written. Run the
    execution again once the store is back."""


class ExecutionLeasedError(WorkflowError):
    """The execution is being run by another live runner (its lease has not expired); running it
    here too would run its tasks twice. ``owner`` names that runner, ``expires_at`` (UTC
    seconds) is when its lease ends unless renewed. Pass ``wait=True`` to wait for it instead."""

    def __init__(self, execution_id: str, owner: str | None, expires_at: float | None):
        from datetime import UTC, datetime

        until = (
            datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="milliseconds")
            if expires_at is not None
            else "unknown"
        )
        super().__init__(
            f"execution {execution_id!r} is being run by {owner or 'another runner'} "
            f"(lease valid until {until} unless renewed); refusing to run it here too. "
            "Wait for it (wait=True) or read its state with engine.get()."
        )
        self.execution_id = execution_id
        self.owner = owner
        self.expires_at = expires_at


class ExecutionConflictError(WorkflowError):
    """The execution is not in a state that allows what was asked (resuming one that is not
    paused, retrying one that did not fail, or one whose retry is live); the HTTP API answers
    409. ``state`` is the execution's state, ``retried_by`` the retry that stands in the way."""

    def __init__(self, message: str, *, state: str | None = None, retried_by: str | None = None):
        super().__init__(message)
        self.state = state
        self.retried_by = retried_by


class ExecutionStopped(BaseException):  # noqa: N818 - a control-flow signal, like Cancelled
    """Raised inside a workflow at the call that found its run must stop (see
    :class:`StoppedError`); the run's scope is cancelled at the same time. Not an
    ``Exception``: ordinary ``except Exception`` handlers never see it. ``reason`` is the
    StoppedError that the runner raises to its caller."""

    def __init__(self, reason: StoppedError):
        super().__init__(str(reason))
        self.reason = reason


class SecretNotFoundError(TaskError, ValueError):
    """A task asked for a secret the secret store does not hold."""


class StoreError(FluxError):
    """The store cannot do what was asked (corrupt file, unknown schema, bad state change)."""


class ExecutionCancelledError(ExecutionError):
    """Raised to code awaiting an execution that was cancelled."""


__all__ = [
    "ExecutionCancelledError",
    "ExecutionConflictError",
    "ExecutionError",
    "ExecutionLeasedError",
    "ExecutionNotFoundError",
    "ExecutionStopped",
    "ExecutionTimeoutError",
    "FluxError",
    "LeaseLostError",
    "NondeterminismError",
    "SecretNotFoundError",
    "SerializationError",
    "StoppedError",
    "StoreError",
    "StoreUnavailableError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "WorkflowError",
    "WorkflowNotFoundError",
]
