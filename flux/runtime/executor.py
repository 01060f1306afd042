"""The executor: runs one execution of a workflow, recording every call and replaying the history.

One :class:`Execution` drives one run of a workflow function. Every task call goes through
:meth:`Execution.run_task`, which either returns/raises the outcome recorded at the call's
structural id (replay) or runs the task with its options and records what happened. An outcome is
committed to the journal *before* the workflow sees it.

The executor knows nothing of where the history lives: a :class:`Journal` takes the new events (the
SQLite store when embedded, the server session on a worker) and a :class:`Host` provides secrets,
cache, child workflows and the policy for suspending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from . import codec, frames
from .context import ExecutionContext
from .errors import (
    FluxError,
    NondeterminismError,
    SerializationError,
    TaskTimeoutError,
)
from .events import ExecutionEvent, ExecutionState
from .events import ExecutionEventType as E
from .history import PAUSE, SLEEP, CallRecord, index_calls
from .store import StoredEvent
from .task import TaskMetadata, call_plain
from .workflow import MISSING

if TYPE_CHECKING:
    from .task import TaskCall, task
    from .workflow import workflow

log = logging.getLogger("flux.executor")

_MISSING = object()


class Journal(Protocol):
    """Where new events of one execution go.

    ``enqueue`` queues events (and an optional update of the execution row) without waiting;
    ``commit`` returns once they and everything queued before are durable.
    """

    def enqueue(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None: ...

    async def commit(
        self, events: list[StoredEvent], update: dict[str, Any] | None = None
    ) -> None: ...


class Host(Protocol):
    """Services an execution needs from where it runs (embedded engine or worker)."""

    #: Suspend the execution (release it) on a durable sleep longer than this; None: never.
    suspend_sleep_after: float | None

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


class _Suspend(Exception):
    """Internal: the root scope was cancelled to suspend (pause or long sleep), not to cancel."""


def _wall() -> float:
    return time.time()


class Execution:
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
        # every recorded id and its ancestors (combinator frames such as parallel#0), so that a
        # different call at a recorded place in the program is caught before it runs
        self.known: dict[str, str] = {}
        for call_id in self.calls:
            parts = call_id.split("/")
            for i in range(1, len(parts) + 1):
                self.known.setdefault("/".join(parts[:i]), parts[i - 1].rpartition("#")[0])
        self.positions: dict[str, str] = {_position(c): c for c in self.known}
        self.seq = ctx.events[-1].id if ctx.events else 0
        self._visited: set[str] = set()
        self._replayed: set[str] = set()
        self.nondeterminism: NondeterminismError | None = None
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

    # ------------------------------------------------------------------ recording

    def _event(self, type: E, call_id: str, name: str, value: Any = None) -> StoredEvent:
        data = codec.encode(value)
        now = self.clock()
        self.seq += 1
        ev = ExecutionEvent(self.seq, type, call_id, name, value, datetime.fromtimestamp(now, UTC))
        self.ctx._events.append(ev)
        return StoredEvent(self.ctx.execution_id, self.seq, type.value, call_id, name, data, now)

    def record(self, type: E, call_id: str, name: str, value: Any = None) -> None:
        """Append an event without waiting for it to be durable."""
        self.journal.enqueue([self._event(type, call_id, name, value)])

    async def commit(
        self, type: E, call_id: str, name: str, value: Any = None, update: dict | None = None
    ) -> None:
        """Append an event and wait until it (and all before it) is durable. Never interrupted:
        an outcome is either committed before the caller goes on, or the process is gone."""
        stored = self._event(type, call_id, name, value)
        with anyio.CancelScope(shield=True):
            await self.journal.commit([stored], update)

    def _recorded(self, error: BaseException) -> BaseException:
        """The error as it goes into the history: itself, or a same-type copy with every secret
        value masked when what would be recorded of it holds one (see :func:`redact_error`)."""
        return redact_error(error, self.host.secret_values())

    # ------------------------------------------------------------------ replay

    def _check(self) -> None:
        if self.nondeterminism is not None:
            raise self.nondeterminism

    def _mismatch(self, call_id: str, rec: CallRecord, name: str, args: Any) -> None:
        recorded = f"{rec.name}({_short([rec.args, rec.kwargs])})"
        current = f"{name}({_short(args)})"
        width = max(len(recorded), len("recorded"))
        err = NondeterminismError(
            f"execution {self.ctx.execution_id} of workflow {self.ctx.workflow_name!r}: "
            f"the code made a different call at {call_id!r} than the history records.\n"
            f"  {'recorded'.ljust(width)} | current\n"
            f"  {recorded.ljust(width)} | {current}\n"
            "A workflow must make the same calls in the same order on every run; "
            "run this execution with the code it was started with."
        )
        self.nondeterminism = err
        raise err

    def _lookup(self, call_id: str, name: str, digest: str | None, args: Any) -> CallRecord | None:
        self._check()
        rec = self.calls.get(call_id)
        if rec is None:
            self.check_position(call_id, name, args)
            return None
        self._visited.add(call_id)
        if rec.name != name or (rec.digest is not None and digest != rec.digest):
            self._mismatch(call_id, rec, name, args)
        return rec

    def check_position(self, call_id: str, name: str, args: Any = None) -> None:
        """Raise NondeterminismError if the history records another call where ``call_id`` is
        made now (same parent, same ordinal, other name). Combinators call this for their id."""
        self._check()
        if not self.positions or call_id in self.known:
            return
        other = self.positions.get(_position(call_id))
        if other is not None:
            rec = self.calls.get(other) or CallRecord(other, _unescape(self.known[other]))
            self._visited.add(other)
            self._mismatch(other, rec, name, args)

    async def _replay(self, rec: CallRecord) -> Any:
        ev = rec.outcome
        assert ev is not None
        self._replayed.add(rec.call_id)
        if ev.type is E.TASK_COMPLETED or ev.type is E.TASK_RESUMED:
            return ev.value
        if ev.type is E.TASK_FAILED:
            error = ev.value
            if isinstance(error, BaseException):
                raise error
            raise FluxError(f"task {rec.name!r} ({rec.call_id}) failed: {error!r}")
        # recorded as cancelled: its body never runs again; it waits for the cancellation
        # that ended it in the original run (a failing sibling replays and cancels it).
        await anyio.sleep_forever()

    def _unvisited(self) -> list[str]:
        """Recorded calls the current code never reached (a call was removed), ignoring calls
        nested under one replayed from its record and calls recorded as cancelled."""
        covered = self._replayed | self._visited
        missing = []
        for call_id, rec in self.calls.items():
            if call_id in covered or (rec.outcome is None and rec.started is None):
                continue
            if rec.outcome is not None and rec.outcome.type is E.TASK_CANCELLED:
                continue
            parts = call_id.split("/")
            ancestors = ("/".join(parts[:i]) for i in range(1, len(parts)))
            if any(a in covered or a.partition("@")[0] in covered for a in ancestors):
                continue
            missing.append(call_id)
        return missing

    # ------------------------------------------------------------------ bodies and suspension

    def _release(self, frame: frames.Frame) -> bool:
        if frame.is_body:
            self.busy -= 1
            self._maybe_suspend()
            return True
        return False

    def _acquire(self, held: bool) -> None:
        if held:
            self.busy += 1

    def _maybe_suspend(self) -> None:
        if self.busy > 0 or self.stop_reason is not None or self.root_scope is None:
            return
        if self.blocked:
            self.suspended_on = dict(self.blocked)
            if self.waiting_sleeps:  # a durable sleep also pending: wake for it in any case
                self.wake_at = min(self.waiting_sleeps.values())
            self.stop_reason = "suspend"
            self.root_scope.cancel()
            return
        if self.waiting_sleeps and self.host.suspend_sleep_after is not None:
            wake = min(self.waiting_sleeps.values())
            if wake - self.clock() > self.host.suspend_sleep_after:
                self.wake_at = wake
                self.stop_reason = "suspend"
                self.root_scope.cancel()

    def abandon(self) -> None:
        """Stop this run at once without recording anything more and without rollbacks: its
        lease was lost or its process is leaving. Whoever runs the execution next replays it."""
        if self.root_scope is not None and self.stop_reason is None:
            self.stop_reason = "suspend"
            self.root_scope.cancel()
        elif self.stop_reason is None:
            self.stop_reason = "suspend"

    def request_cancel(self) -> None:
        """Cancel this execution: running tasks are cancelled (children first), their rollbacks
        run, and the execution ends CANCELLED."""
        if self.root_scope is not None and self.stop_reason is None:
            self.stop_reason = "cancel"
            self.root_scope.cancel()

    # ------------------------------------------------------------------ tasks

    async def run_task(self, frame: frames.Frame, call: TaskCall, call_id: str | None) -> Any:
        t = call.task
        args, kwargs = call.args, call.kwargs
        name = t.display_name(args, kwargs)
        if call_id is None:
            call_id = frame.next_id(name)
        try:
            digest = codec.digest([args, kwargs])
        except SerializationError as e:
            raise SerializationError(f"task {name!r} ({call_id}): argument {e}") from None
        rec = self._lookup(call_id, name, digest, [list(args), kwargs])
        if rec is not None and rec.outcome is not None:
            return await self._replay(rec)
        held = self._release(frame)
        try:
            return await self._execute(t, args, kwargs, call_id, name, digest, rec)
        finally:
            self._acquire(held)

    async def _execute(
        self,
        t: task,
        args: tuple,
        kwargs: dict,
        call_id: str,
        name: str,
        digest: str,
        rec: CallRecord | None,
    ) -> Any:
        opts = t.options
        if rec is None:
            self.record(
                E.TASK_STARTED,
                call_id,
                name,
                {"args": list(args), "kwargs": kwargs, "digest": digest},
            )
            rec = CallRecord(call_id, name, digest)
        cache_key = None
        if opts.cache and (cache_key := t.cache_key(args, kwargs)) is not None:
            hit = await self.host.cache_get(cache_key)
            if hit is not None:
                value = codec.decode(hit)
                await self.commit(E.TASK_COMPLETED, call_id, name, value)
                return value
        try:
            try:
                value = await self._attempts(t, args, kwargs, call_id, name, rec)
            except Exception as error:
                if isinstance(error, NondeterminismError) or self.nondeterminism is not None:
                    raise
                cache_key = None  # a fallback's value is not the task's: never cached
                value = await self._recover(t, args, kwargs, call_id, name, rec, error)
            try:
                await self.commit(E.TASK_COMPLETED, call_id, name, value)
            except SerializationError as e:
                error = SerializationError(
                    f"task {name!r} ({call_id}) returned a value the codec cannot carry: {e}"
                )
                await self.commit(E.TASK_FAILED, call_id, name, error)
                raise error from None
            if cache_key is not None:
                ttl = opts.cache if not isinstance(opts.cache, bool) else None
                await self.host.cache_put(cache_key, codec.encode(value), ttl)
            return value
        except self._cancelled_exc:
            if self.stop_reason != "suspend":
                with anyio.CancelScope(shield=True):
                    await self._rollback(t, args, kwargs, call_id, name, None)
                    await self.commit(E.TASK_CANCELLED, call_id, name)
            raise

    async def _attempts(
        self, t: task, args: tuple, kwargs: dict, call_id: str, name: str, rec: CallRecord
    ) -> Any:
        opts = t.options
        if rec.phase != "attempts":
            raise rec.last_error or FluxError(f"task {name!r} ({call_id}) failed")
        if rec.retry_open is not None:
            k = rec.retry_open
        else:
            k = rec.retries_failed + 1 if rec.retries_failed else 0
        error: BaseException | None = rec.last_error
        while True:
            if k > opts.retry_max_attempts:
                assert error is not None
                raise error
            if k > 0 and rec.retry_open != k:
                await anyio.sleep(opts.retry_wait(k))
                shown = self._recorded(error) if error is not None else None
                self.record(
                    E.TASK_RETRY_STARTED,
                    call_id,
                    name,
                    {"attempt": k, "delay": opts.retry_wait(k), "error": shown},
                )
            rec.retry_open = None
            try:
                value = await self._attempt(t, args, kwargs, call_id, k)
            except Exception as e:
                if isinstance(e, NondeterminismError | SerializationError):
                    raise
                error = e
                if k > 0:  # durable: a crash never repeats a retry that was seen failing
                    await self.commit(E.TASK_RETRY_FAILED, call_id, name, self._recorded(e))
            else:
                if k > 0:
                    self.record(E.TASK_RETRY_COMPLETED, call_id, name, {"attempt": k})
                return value
            k += 1

    async def _attempt(self, t: task, args: tuple, kwargs: dict, call_id: str, attempt: int) -> Any:
        opts = t.options
        if opts.secret_requests or opts.metadata:
            kwargs = dict(kwargs)
            if opts.secret_requests:
                kwargs["secrets"] = await self.host.get_secrets(opts.secret_requests, call_id)
            if opts.metadata:
                kwargs["metadata"] = TaskMetadata(
                    call_id, t.display_name(args, kwargs), self.ctx.execution_id, attempt + 1
                )
        path = call_id if attempt == 0 else f"{call_id}@{attempt}"
        token = frames.enter(frames.Frame(self, path, is_body=True))
        self.busy += 1
        try:
            if opts.timeout is None:
                return await _invoke(t, args, kwargs)
            with anyio.CancelScope(deadline=anyio.current_time() + opts.timeout) as scope:
                return await _invoke(t, args, kwargs)
            if scope.cancelled_caught:
                raise TaskTimeoutError(
                    f"task {t.display_name(args, kwargs)!r} ({call_id}) timed out after "
                    f"{opts.timeout:g}s (attempt {attempt + 1})"
                )
            raise TaskTimeoutError(f"task {call_id} was cancelled by its timeout")
        finally:
            self.busy -= 1
            frames.leave(token)
            self._maybe_suspend()

    async def _recover(
        self,
        t: task,
        args: tuple,
        kwargs: dict,
        call_id: str,
        name: str,
        rec: CallRecord,
        error: BaseException,
    ) -> Any:
        """After the last attempt failed: fallback, then rollback and TASK_FAILED."""
        opts = t.options
        shown = self._recorded(error)
        if opts.fallback is not None and not rec.fallback_failed and not rec.rollback_started:
            if not rec.fallback_started:
                self.record(E.TASK_FALLBACK_STARTED, call_id, name, shown)
            try:
                value = await self._guarded(opts.fallback, args, kwargs, call_id, "fallback")
            except Exception as fb_error:
                self.record(E.TASK_FALLBACK_FAILED, call_id, name, self._recorded(fb_error))
            else:
                self.record(E.TASK_FALLBACK_COMPLETED, call_id, name, None)
                return value
        await self._rollback(t, args, kwargs, call_id, name, shown, rec)
        try:
            await self.commit(E.TASK_FAILED, call_id, name, shown)
        except SerializationError:
            await self.commit(E.TASK_FAILED, call_id, name, _stand_in(shown))
        raise error

    async def _rollback(
        self,
        t: task,
        args: tuple,
        kwargs: dict,
        call_id: str,
        name: str,
        error: BaseException | None,
        rec: CallRecord | None = None,
    ) -> None:
        rollback = t.options.rollback
        if rollback is None or (rec is not None and rec.rollback_done):
            return
        if rec is None or not rec.rollback_started:
            self.record(E.TASK_ROLLBACK_STARTED, call_id, name, error)
        with anyio.move_on_after(t.options.rollback_timeout) as scope:
            try:
                await self._guarded(rollback, args, kwargs, call_id, "rollback")
            except Exception as rb_error:
                self.record(E.TASK_ROLLBACK_FAILED, call_id, name, self._recorded(rb_error))
                return
        if scope.cancelled_caught:
            self.record(
                E.TASK_ROLLBACK_FAILED,
                call_id,
                name,
                TaskTimeoutError(
                    f"rollback of task {name!r} ({call_id}) timed out after "
                    f"{t.options.rollback_timeout:g}s"
                ),
            )
            return
        self.record(E.TASK_ROLLBACK_COMPLETED, call_id, name, None)

    async def _guarded(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, call_id: str, role: str
    ) -> Any:
        token = frames.enter(frames.Frame(self, f"{call_id}@{role}", is_body=True))
        self.busy += 1
        try:
            return await call_plain(fn, args, kwargs)
        finally:
            self.busy -= 1
            frames.leave(token)

    # ------------------------------------------------------------------ builtins

    async def sleep(self, frame: frames.Frame, seconds: float) -> None:
        call_id = frame.next_id(SLEEP)
        rec = self._lookup(call_id, SLEEP, None, [[seconds], {}])
        if rec is not None and rec.outcome is not None:
            await self._replay(rec)
            return
        if rec is not None and isinstance(rec.args, dict) and "wake_at" in rec.args:
            wake_at = rec.args["wake_at"]
        else:
            wake_at = self.clock() + seconds
            await self.commit(
                E.TASK_STARTED, call_id, SLEEP, {"args": {"seconds": seconds, "wake_at": wake_at}}
            )
        held = self._release(frame)
        self.waiting_sleeps[call_id] = wake_at
        try:
            self._maybe_suspend()
            remaining = wake_at - self.clock()
            if remaining > 0:
                await anyio.sleep(remaining)
        finally:
            self.waiting_sleeps.pop(call_id, None)
            self._acquire(held)
        self.record(E.TASK_COMPLETED, call_id, SLEEP, None)

    async def pause(self, frame: frames.Frame, name: str) -> Any:
        call_id = frame.next_id(PAUSE)
        rec = self._lookup(call_id, PAUSE, None, [[name], {}])
        if rec is not None and rec.outcome is not None:
            return await self._replay(rec)
        if rec is None:
            await self.commit(E.TASK_PAUSED, call_id, PAUSE, name)
        await self._block(frame, call_id, "pause")

    async def _block(self, frame: frames.Frame, call_id: str, kind: str) -> None:
        """Wait until the execution suspends (it never returns normally)."""
        held = self._release(frame)
        self.blocked[call_id] = kind
        try:
            self._maybe_suspend()
            await anyio.sleep_forever()
        finally:
            self.blocked.pop(call_id, None)
            self._acquire(held)

    async def call_child(self, frame: frames.Frame, child: workflow, input: Any) -> Any:
        """Run a subworkflow as an execution of its own, recorded as one call of the parent."""
        from .patterns import child_execution_id

        name = child.name
        call_id = frame.next_id(name)
        try:
            digest = codec.digest([[input], {}])
        except SerializationError as e:
            raise SerializationError(f"subworkflow {name!r} ({call_id}): input {e}") from None
        rec = self._lookup(call_id, name, digest, [[input], {}])
        if rec is not None and rec.outcome is not None:
            return await self._replay(rec)
        child_id = child_execution_id(self.ctx.execution_id, call_id)
        if rec is None:
            await self.commit(
                E.TASK_STARTED,
                call_id,
                name,
                {"args": [input], "kwargs": {}, "digest": digest, "child_id": child_id},
            )
        held = self._release(frame)
        try:
            result = await self.host.run_child(self, call_id, child, child_id, input)
        except self._cancelled_exc:
            if self.stop_reason != "suspend":
                with anyio.CancelScope(shield=True):
                    await self.commit(E.TASK_CANCELLED, call_id, name)
            raise
        finally:
            self._acquire(held)
        state = result.state
        if state is ExecutionState.COMPLETED:
            await self.commit(E.TASK_COMPLETED, call_id, name, result.output)
            return result.output
        if state is ExecutionState.FAILED:
            error = (
                result.output
                if isinstance(result.output, BaseException)
                else FluxError(f"subworkflow {name!r} ({child_id}) failed: {result.output!r}")
            )
            await self.commit(E.TASK_FAILED, call_id, name, error)
            raise error
        if state is ExecutionState.CANCELLED:
            from .errors import ExecutionCancelledError

            error = ExecutionCancelledError(f"subworkflow {name!r} ({child_id}) was cancelled")
            await self.commit(E.TASK_FAILED, call_id, name, error)
            raise error
        # paused (or, on a worker, still running elsewhere): this execution waits for it
        await self._block(frame, call_id, "pause" if state is ExecutionState.PAUSED else "child")

    # ------------------------------------------------------------------ the workflow

    async def run(self) -> ExecutionContext:
        """Run (or replay) the workflow to its end, a pause, a suspension or a cancellation."""
        ctx = self.ctx
        wf = self.workflow
        token = frames.enter(frames.Frame(self, ""))
        output: Any = _MISSING
        failure: BaseException | None = None
        try:
            with anyio.CancelScope() as root:
                self.root_scope = root
                if wf.timeout is not None:
                    started = next(
                        (e.time for e in ctx.events if e.type is E.WORKFLOW_STARTED), None
                    )
                    elapsed = (self.clock() - started.timestamp()) if started else 0.0
                    root.deadline = anyio.current_time() + max(0.0, wf.timeout - elapsed)
                try:
                    output = await wf.func(ctx)
                except Exception as e:
                    failure = e
        except self._cancelled_exc:
            with anyio.CancelScope(shield=True):
                await self._finish(ExecutionState.CANCELLED, E.WORKFLOW_CANCELLED, None)
            raise
        finally:
            frames.leave(token)
            self.root_scope = None

        if self.nondeterminism is not None:
            raise self.nondeterminism
        if isinstance(failure, BaseExceptionGroup):
            nd = failure.subgroup(lambda e: isinstance(e, NondeterminismError))
            if nd is not None:
                raise nd.exceptions[0]
        if root.cancelled_caught or (output is _MISSING and failure is None):
            if self.stop_reason == "suspend":
                return await self._suspend()
            if self.stop_reason == "cancel":
                await self._finish(ExecutionState.CANCELLED, E.WORKFLOW_CANCELLED, None)
                return ctx
            failure = TaskTimeoutError(
                f"workflow {ctx.workflow_name!r} ({ctx.execution_id}) timed out after "
                f"{wf.timeout:g}s"
            )
        if failure is not None:
            await self._fail(failure)
            return ctx
        if self.calls:
            missing = self._unvisited()
            if missing:
                self.nondeterminism = NondeterminismError(
                    f"execution {ctx.execution_id} of workflow {ctx.workflow_name!r}: the history "
                    f"records calls the current code did not make: {', '.join(missing[:5])}. "
                    "Run this execution with the code it was started with."
                )
                raise self.nondeterminism
        try:
            await self._finish(ExecutionState.COMPLETED, E.WORKFLOW_COMPLETED, output)
        except SerializationError as e:
            await self._fail(
                SerializationError(
                    f"workflow {ctx.workflow_name!r} returned a value the codec cannot carry: {e}"
                )
            )
        return ctx

    async def _fail(self, error: BaseException) -> None:
        shown = self._recorded(error)
        try:
            await self._finish(ExecutionState.FAILED, E.WORKFLOW_FAILED, shown)
        except SerializationError:
            await self._finish(ExecutionState.FAILED, E.WORKFLOW_FAILED, _stand_in(shown))

    async def _finish(self, state: ExecutionState, type: E, value: Any) -> None:
        ctx = self.ctx
        data = codec.encode(value)
        await self.commit(
            type,
            ctx.workflow_name,
            ctx.workflow_name,
            value,
            {"state": state, "output": data, "wake_at": None},
        )
        ctx.state = state
        ctx.output = value

    async def _suspend(self) -> ExecutionContext:
        ctx = self.ctx
        blocked = self.suspended_on
        if "pause" in blocked.values():
            pauses = [
                e.value
                for e in ctx.events
                if e.type is E.TASK_PAUSED and blocked.get(e.source_id) == "pause"
            ]
            children = [
                c
                for c, kind in blocked.items()
                if kind == "pause"
                and c not in {e.source_id for e in ctx.events if e.type is E.TASK_PAUSED}
            ]
            names = pauses + children
            await self.commit(
                E.WORKFLOW_PAUSED,
                ctx.workflow_name,
                ctx.workflow_name,
                names[0] if len(names) == 1 else names,
                {"state": ExecutionState.PAUSED},
            )
            ctx.state = ExecutionState.PAUSED
        else:
            # waiting for a long sleep or for a child running elsewhere: back in the queue
            with anyio.CancelScope(shield=True):
                await self.journal.commit(
                    [], {"state": ExecutionState.SCHEDULED, "wake_at": self.wake_at}
                )
            ctx.state = ExecutionState.SCHEDULED
        return ctx


async def _invoke(t: task, args: tuple, kwargs: dict) -> Any:
    if t.is_async:
        return await t.func(*args, **kwargs)
    return await call_plain(t.func, args, kwargs)


def _unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%23", "#").replace("%25", "%")


def _position(call_id: str) -> str:
    """Where a call sits in the program: its parent and ordinal, without its own name."""
    parent, _, leaf = call_id.rpartition("/")
    return f"{parent}/#{leaf.rpartition('#')[2]}"


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict | None):
        args = value[0] if isinstance(value[0], list | tuple) else [value[0]]
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (value[1] or {}).items()]
        text = ", ".join(parts)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stand_in(error: BaseException) -> BaseException:
    from .errors import TaskFailedError

    return TaskFailedError(f"{type(error).__module__}.{type(error).__qualname__}", str(error))


def redact_error(error: BaseException, secrets: list[str]) -> BaseException:
    """Return ``error``, or a stand-in with every secret value masked if anything the codec
    would record of it (message, arguments, attributes, traceback text) holds a secret."""
    if not secrets:
        return error
    try:
        recorded = codec.encode(error)
    except SerializationError:
        recorded = str(error).encode()
    if not any(s and s.encode() in recorded for s in secrets):
        return error
    from .errors import TaskFailedError

    text = str(error)
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    try:  # the same type, so `except PermissionError:` still matches on replay
        masked = type(error)(text)
        if str(masked) == text:
            return masked
    except Exception:
        pass
    return TaskFailedError(f"{type(error).__module__}.{type(error).__qualname__}", text)


__all__ = ["Execution", "Journal", "Host", "redact_error"]
