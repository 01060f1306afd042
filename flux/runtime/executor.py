"""The executor: runs one execution of a workflow, recording every call and replaying the history.

One :class:`Execution` drives one run of a workflow function. Every task call goes through
:meth:`Execution.run_task` (in attempts.py), which returns/raises the outcome recorded at the call's
structural id (replay) or runs the task with its options and records what happened. An outcome is
committed to the journal *before* the workflow sees it, and what the workflow (or a task body)
receives is always the decoded copy of what was recorded: the first run sees what a replay sees.

A run ends in one of three ways. It *finishes* (COMPLETED, FAILED, CANCELLED), it *suspends*
(PAUSED, or SCHEDULED for a long sleep), or it *stops*: lease lost, nondeterminism, a store
that keeps failing, shutdown. A stop cancels the run's scope, starts nothing more and writes
nothing more: no rollback, no TASK_CANCELLED, no WORKFLOW_FAILED. Inside the workflow it is
raised as :class:`ExecutionStopped` (not an ``Exception``), to the runner as the
:class:`StoppedError` that caused it.

The executor knows nothing of where the history lives: a :class:`Journal` takes the new events (the
SQLite store when embedded, the server session on a worker) and a :class:`Host` provides secrets,
cache, child workflows, the lease check and the policy for suspending.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import anyio

from . import codec, frames
from .attempts import TaskRuns, _stand_in
from .context import ExecutionContext
from .errors import (
    ExecutionStopped,
    FluxError,
    LeaseLostError,
    SerializationError,
    StoppedError,
    StoreError,
    StoreUnavailableError,
    TaskTimeoutError,
)
from .events import ExecutionEvent, ExecutionState
from .events import ExecutionEventType as E
from .history import CallRecord, index_calls
from .receive import Receives
from .replay import Replay
from .secrets import redact_value
from .store import StaleWriteError, StoredEvent
from .waits import Waits
from .workflow import MISSING

if TYPE_CHECKING:
    from .workflow import workflow

log = logging.getLogger("flux.executor")

T = TypeVar("T")

_MISSING = object()


class Journal(Protocol):
    """Where new events of one execution go.

    ``enqueue`` queues events (and an optional update of the execution row) without waiting;
    ``commit`` returns once they and everything queued before are durable. A refused write
    raises StaleWriteError (the lease moved on) or another StoreError (the store failed).
    """

    def enqueue(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None: ...

    async def commit(
        self, events: list[StoredEvent], update: dict[str, Any] | None = None
    ) -> None: ...


class Host(Protocol):
    """Services an execution needs from where it runs (embedded engine or worker)."""

    #: Suspend the execution (release it) on a durable sleep longer than this; None: never.
    suspend_sleep_after: float | None

    #: True where any BaseException raised by user code (SystemExit, KeyboardInterrupt...) is
    #: that code's failure, recorded like an Exception (a worker); False where it leaves the
    #: process as it would without Flux (embedded: the process is the user's own).
    base_exceptions_fail: bool

    async def ensure_lease(self, execution: Execution) -> None:
        """Return when this runner may start user code (a task body, retry, fallback, rollback)
        for ``execution``; call ``execution.stop(...)`` when its lease is known lost."""
        ...

    async def get_secrets(self, names: tuple[str, ...], call_id: str = "") -> dict[str, str]:
        """Exactly the secrets ``names`` for the task call ``call_id``; raises
        SecretNotFoundError naming any that is missing (or refused)."""
        ...

    async def cache_get(self, key: str) -> bytes | None: ...

    async def cache_put(self, key: str, value: bytes, ttl: float | None) -> None: ...

    async def run_child(
        self, execution: Execution, call_id: str, child: workflow, child_id: str, input: Any
    ) -> ExecutionContext: ...

    def secret_values(self) -> list[str]: ...


def _wall() -> float:
    return time.time()


class Execution(Waits, Receives, TaskRuns):
    """One run of a workflow over a history."""

    def __init__(
        self,
        workflow: workflow,
        ctx: ExecutionContext,
        journal: Journal,
        host: Host,
        *,
        clock: Callable[[], float] = _wall,
    ):
        self.workflow = workflow
        self.ctx = ctx
        self.journal = journal
        self.host = host
        self.clock = clock
        self.calls: dict[str, CallRecord] = index_calls(ctx.events)
        self.replay = Replay(ctx.execution_id, ctx.workflow_name, self.calls)
        self.seq = ctx.events[-1].id if ctx.events else 0
        #: why this run stopped (None: it did not); see the module docstring
        self.stopped: StoppedError | None = None
        self._shields: set[anyio.CancelScope] = set()
        self.root_scope: anyio.CancelScope | None = None
        #: why the root scope was cancelled by us: "suspend" or "cancel"
        self.stop_reason: str | None = None
        self.busy = 0
        #: durable waits that may suspend the execution: call id -> "pause" | "child"
        self.blocked: dict[str, str] = {}
        self.suspended_on: dict[str, str] = {}
        #: the value a resume gave this run, for a paused child it resumes (MISSING: none)
        self.resume_value: Any = MISSING
        self.waiting_sleeps: dict[str, float] = {}
        self.wake_at: float | None = None
        self._cancelled_exc = anyio.get_cancelled_exc_class()
        self._base_fail = bool(getattr(host, "base_exceptions_fail", False))

    # ------------------------------------------------------------------ stops

    def stop(self, reason: StoppedError) -> None:
        """Stop this run now: cancel its scope (rollbacks in flight included), start and write
        nothing more. The first reason wins. Safe to call from anywhere on the run's loop."""
        if self.stopped is not None:
            return
        self.stopped = reason
        discard = getattr(self.journal, "discard", None)
        if discard is not None:
            discard()
        if self.root_scope is not None:
            self.root_scope.cancel()
        for scope in list(self._shields):
            scope.cancel()

    def abandon(self, reason: StoppedError | None = None) -> None:
        """Stop because this runner lost the execution (lease lost, process leaving)."""
        self.stop(
            reason
            or LeaseLostError(f"execution {self.ctx.execution_id}: this runner lost its lease")
        )

    def request_cancel(self) -> None:
        """Cancel this execution: running tasks are cancelled (children first), their rollbacks
        run, and the execution ends CANCELLED."""
        if self.root_scope is not None and self.stop_reason is None and self.stopped is None:
            self.stop_reason = "cancel"
            self.root_scope.cancel()

    def _check(self) -> None:
        if self.stopped is not None:
            raise ExecutionStopped(self.stopped)

    def _halt(self, reason: StoppedError) -> NoReturn:
        self.stop(reason)
        assert self.stopped is not None
        raise ExecutionStopped(self.stopped)

    def _failure(self, exc: BaseException) -> bool:
        """Is ``exc``, raised by user code, that code's failure (rather than a cancellation, a
        stop, or a BaseException that leaves the process)?"""
        if self.stopped is not None or isinstance(exc, self._cancelled_exc | ExecutionStopped):
            return False
        if isinstance(exc, Exception):
            return True
        if not self._base_fail:
            return False
        if isinstance(exc, BaseExceptionGroup):
            inner = exc.subgroup(lambda e: isinstance(e, self._cancelled_exc | ExecutionStopped))
            return inner is None
        return True

    @contextlib.contextmanager
    def _shielded(self) -> Iterator[None]:
        """A scope outer cancellation cannot interrupt (a rollback, the record of an outcome);
        only a stop can, and then ExecutionStopped is raised after it."""
        scope = anyio.CancelScope(shield=True)
        self._shields.add(scope)
        try:
            with scope:
                yield
        finally:
            self._shields.discard(scope)
        self._check()

    async def _service(self, call: Awaitable[T]) -> T:
        """Await a host service (secrets, cache, a child) for this run. Its failures that are
        stops (the run stopped meanwhile, the lease moved, the store failed) are raised as the
        stop, never as an ordinary exception the workflow could catch; others (a missing
        secret) are raised as they are."""
        try:
            return await call
        except StoppedError as e:
            self._halt(e)
        except StaleWriteError as e:
            self._check()
            self._halt(LeaseLostError(f"execution {self.ctx.execution_id}: {e}"))
        except StoreError as e:
            self._check()
            self._halt(
                StoreUnavailableError(f"execution {self.ctx.execution_id}: the store failed: {e}")
            )
        except BaseException:
            self._check()
            raise

    async def _gate(self) -> None:
        """Before user code starts: the run has not stopped and the lease is still ours."""
        self._check()
        await self.host.ensure_lease(self)
        self._check()

    # ------------------------------------------------------------------ recording

    def _event(
        self, type: E, call_id: str, name: str, value: Any = None
    ) -> tuple[StoredEvent, Any]:
        """The next event, encoded; and its value as a replay will see it (decoded). A value
        holding a secret this run was given is recorded (and seen) with the secret masked; a
        host that sends values elsewhere (a worker) bounds them: a value over the limit raises
        SerializationError here, before anything is recorded, and fails its task."""
        secrets = self.host.secret_values()
        if secrets and value is not None:
            value = redact_value(value, secrets)
        data = codec.encode(value, max_size=getattr(self.host, "max_value_size", None))
        seen = None if value is None else codec.decode(data)
        # the workflow gets its own copy: mutating it never changes what ctx.events shows
        recorded = seen if _immutable(seen) else codec.decode(data)
        now = self.clock()
        self.seq += 1
        ev = ExecutionEvent(
            self.seq, type, call_id, name, recorded, datetime.fromtimestamp(now, UTC)
        )
        self.ctx._events.append(ev)
        stored = StoredEvent(self.ctx.execution_id, self.seq, type.value, call_id, name, data, now)
        return stored, seen

    def record(self, type: E, call_id: str, name: str, value: Any = None) -> Any:
        """Append an event without waiting for it to be durable; returns its recorded value."""
        self._check()
        stored, seen = self._event(type, call_id, name, value)
        self.journal.enqueue([stored])
        return seen

    async def commit(
        self, type: E, call_id: str, name: str, value: Any = None, update: dict | None = None
    ) -> Any:
        """Append an event and wait until it (and all before it) is durable; returns its recorded
        value. Never interrupted by cancellation: an outcome is either committed before the
        caller goes on, or the run stops."""
        self._check()
        stored, seen = self._event(type, call_id, name, value)
        await self._write([stored], update)
        return seen

    async def _write(
        self, events: list[StoredEvent], update: dict | None, signals: tuple[int, ...] = ()
    ) -> None:
        """Commit ``events`` (and the queued ``signals`` they deliver); a refusal stops the run."""
        eid = self.ctx.execution_id
        with anyio.CancelScope(shield=True):
            try:
                if signals:
                    await self.journal.commit(events, update, signals=signals)  # type: ignore[call-arg]
                else:
                    await self.journal.commit(events, update)
                return
            except StoppedError as e:
                reason: StoppedError = e
            except StaleWriteError as e:
                reason = LeaseLostError(
                    f"execution {eid}: another runner took it over, so this run stopped ({e})"
                )
            except StoreError as e:
                reason = StoreUnavailableError(f"execution {eid}: the store failed: {e}")
        self._halt(reason)

    def _recorded(self, error: BaseException) -> BaseException:
        """The error as it goes into the history: itself, or a same-type copy with every secret
        value masked when what would be recorded of it holds one (see :func:`redact_error`)."""
        return redact_error(error, self.host.secret_values())

    # ------------------------------------------------------------------ replay

    def _lookup(self, call_id: str, name: str, digest: str | None, args: Any) -> CallRecord | None:
        self._check()
        rec = self.calls.get(call_id)
        if rec is None:
            error = self.replay.check_new(call_id, name, args)
            if error is not None:
                self._halt(error)
            return None
        self.replay.visited.add(call_id)
        if rec.name != name or (rec.digest is not None and digest != rec.digest):
            self._halt(self.replay.mismatch(call_id, rec, name, args))
        return rec

    def check_position(
        self, call_id: str, name: str, args: Any = None, *, concurrent: bool = False
    ) -> None:
        """For a combinator frame (parallel, map, pipeline, a graph) at ``call_id``: stop with
        NondeterminismError if the history records something else at its place or calls made
        after it (an insertion). ``concurrent``: its children run concurrently."""
        self._check()
        if concurrent:
            self.replay.concurrent.add(call_id)
        error = self.replay.check_new(call_id, name, args)
        if error is not None:
            self._halt(error)

    def recorded_under(self, call_id: str) -> bool:
        """Does the history hold anything at ``call_id`` or below it?"""
        return call_id in self.replay.known

    def nondeterministic(self, call_id: str, recorded: str, current: str, why: str) -> NoReturn:
        """Stop the run: the code took another path than the history (used by Graph)."""
        self._halt(self.replay.error(call_id, recorded, current, why))

    async def _replay(self, rec: CallRecord) -> Any:
        ev = rec.outcome
        assert ev is not None
        self.replay.replayed.add(rec.call_id)
        if ev.type is E.TASK_COMPLETED or ev.type is E.TASK_RESUMED:
            return _copy_of(ev.value)
        if ev.type is E.TASK_FAILED:
            error = _copy_of(ev.value)
            if isinstance(error, BaseException):
                raise error
            raise FluxError(f"task {rec.name!r} ({rec.call_id}) failed: {error!r}")
        # recorded as cancelled: its body never runs again; it waits for the cancellation
        # that ended it in the original run (a failing sibling replays and cancels it).
        await anyio.sleep_forever()

    # ------------------------------------------------------------------ the workflow

    async def run(self) -> ExecutionContext:
        """Run (or replay) the workflow to its end, a pause, a suspension or a cancellation.

        Raises the :class:`StoppedError` that stopped the run, if one did."""
        try:
            return await self._run()
        except ExecutionStopped as stop:  # raised by a write after the workflow returned
            raise stop.reason from None

    async def _run(self) -> ExecutionContext:
        ctx = self.ctx
        wf = self.workflow
        token = frames.enter(frames.Frame(self, ""))
        output: Any = _MISSING
        failure: BaseException | None = None
        try:
            with anyio.CancelScope() as root:
                self.root_scope = root
                if self.stopped is not None:
                    root.cancel()
                if wf.timeout is not None:
                    started = next(
                        (e.time for e in ctx.events if e.type is E.WORKFLOW_STARTED), None
                    )
                    elapsed = (self.clock() - started.timestamp()) if started else 0.0
                    root.deadline = anyio.current_time() + max(0.0, wf.timeout - elapsed)
                try:
                    await self._gate()
                    output = await wf.func(ctx)
                except BaseException as e:
                    if self._failure(e):
                        failure = e
                    elif self.stopped is None:
                        raise
        except self._cancelled_exc:
            # the code that runs this execution was cancelled (an embedding app's scope)
            if self.stopped is None:
                with self._shielded():
                    await self._finish(ExecutionState.CANCELLED, E.WORKFLOW_CANCELLED, None)
            raise
        finally:
            frames.leave(token)
            self.root_scope = None

        if self.stopped is not None:
            raise self.stopped
        timed_out = False
        if root.cancelled_caught or (output is _MISSING and failure is None):
            if self.stop_reason == "suspend":
                return await self._suspend()
            if self.stop_reason == "cancel":
                await self._finish(ExecutionState.CANCELLED, E.WORKFLOW_CANCELLED, None)
                return ctx
            timed_out = True
            failure = TaskTimeoutError(
                f"workflow {ctx.workflow_name!r} ({ctx.execution_id}) timed out after "
                f"{wf.timeout:g}s"
            )
        if not timed_out:
            self._check_removed()
        if failure is not None:
            await self._fail(failure)
            return ctx
        try:
            await self._finish(ExecutionState.COMPLETED, E.WORKFLOW_COMPLETED, output)
        except SerializationError as e:
            await self._fail(
                SerializationError(
                    f"workflow {ctx.workflow_name!r} returned a value the codec cannot carry: {e}"
                )
            )
        return ctx

    def _check_removed(self) -> None:
        """On the way out of the workflow: every recorded call must have been reached."""
        if self.replay:
            missing = self.replay.unvisited()
            if missing:
                self.stop(self.replay.removal(missing))
                assert self.stopped is not None
                raise self.stopped

    async def _fail(self, error: BaseException) -> None:
        shown = self._recorded(error)
        try:
            await self._finish(ExecutionState.FAILED, E.WORKFLOW_FAILED, shown)
        except SerializationError:
            await self._finish(ExecutionState.FAILED, E.WORKFLOW_FAILED, _stand_in(shown))

    async def _finish(self, state: ExecutionState, type: E, value: Any) -> None:
        ctx = self.ctx
        data = codec.encode(value)
        seen = await self.commit(
            type,
            ctx.workflow_name,
            ctx.workflow_name,
            value,
            {"state": state, "output": data, "wake_at": None},
        )
        ctx.state = state
        ctx.output = seen


def redact_error(error: BaseException, secrets: list[str]) -> BaseException:
    """Return ``error``, or a copy of the same type (its traceback kept) with every secret value
    masked in what the codec records of it: message, arguments, attributes, notes, causes (see
    :func:`flux.runtime.secrets.redact_value`). An error whose text cannot be rebuilt from its
    parts becomes a TaskFailedError naming the original type."""
    if not secrets:
        return error
    return redact_value(error, secrets)


__all__ = ["Execution", "Journal", "Host", "redact_error"]


_SCALARS = (str, int, float, bool, bytes, type(None))


def _immutable(value: Any) -> bool:
    return isinstance(value, _SCALARS)


def _copy_of(value: Any) -> Any:
    """A recorded value as the workflow gets it: its own copy (scalars as they are)."""
    return value if _immutable(value) else codec.decode(codec.encode(value))
