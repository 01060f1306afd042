"""Running a task call: replay or attempts, retries, fallback, rollback, and the record of each.

A mixin of :class:`~flux.runtime.executor.Execution` (see there for stops, recording and the
history). Every body (an attempt, the fallback, the rollback) gets its own decoded copy of the
call's arguments, and starts only after :meth:`Execution._gate` said the run still owns the
execution; a rollback that runs because its task failed runs shielded, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from . import codec, frames, logs
from .errors import FluxError, SerializationError, TaskFailedError, TaskTimeoutError
from .events import ExecutionEventType as E
from .history import CallRecord
from .task import TaskMetadata, call_plain

if TYPE_CHECKING:
    from .executor import Execution
    from .task import TaskCall, task


class TaskRuns:
    """Task calls (mixed into Execution)."""

    async def run_task(
        self: Execution, frame: frames.Frame, call: TaskCall, call_id: str | None
    ) -> Any:
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
        self: Execution,
        t: task,
        args: tuple,
        kwargs: dict,
        call_id: str,
        name: str,
        digest: str,
        rec: CallRecord | None,
    ) -> Any:
        opts = t.options
        # every body (attempt, fallback, rollback) gets its own decoded copy of the arguments
        payload = codec.encode([list(args), kwargs])
        if rec is None:
            self.record(
                E.TASK_STARTED,
                call_id,
                name,
                {"args": list(args), "kwargs": kwargs, "digest": digest},
            )
            rec = CallRecord(call_id, name, digest)
        try:
            cache_key = None
            if opts.cache and (cache_key := t.cache_key(args, kwargs)) is not None:
                hit = await self._service(self.host.cache_get(cache_key))
                if hit is not None:
                    return await self.commit(E.TASK_COMPLETED, call_id, name, codec.decode(hit))
            failure: BaseException | None = None
            try:
                value = await self._attempts(t, payload, call_id, name, rec)
            except BaseException as error:
                if not self._failure(error):
                    raise
                failure = error
            if failure is not None:
                cache_key = None  # a fallback's value is not the task's: never cached
                value = await self._recover(t, payload, call_id, name, rec, failure)
            try:
                seen = await self.commit(E.TASK_COMPLETED, call_id, name, value)
            except SerializationError as e:
                error = SerializationError(
                    f"task {name!r} ({call_id}) returned a value the codec cannot carry: {e}"
                )
                raise await self.commit(E.TASK_FAILED, call_id, name, error) from None
            if cache_key is not None:
                ttl = opts.cache if not isinstance(opts.cache, bool) else None
                await self._service(self.host.cache_put(cache_key, codec.encode(seen), ttl))
            return seen
        except self._cancelled_exc:
            if self.stopped is None and self.stop_reason != "suspend":
                with self._shielded():
                    await self._rollback(t, payload, call_id, name, None)
                    await self.commit(E.TASK_CANCELLED, call_id, name)
            raise

    async def _attempts(
        self: Execution, t: task, payload: bytes, call_id: str, name: str, rec: CallRecord
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
                await self._gate()
                shown = self._recorded(error) if error is not None else None
                self.record(
                    E.TASK_RETRY_STARTED,
                    call_id,
                    name,
                    {"attempt": k, "delay": opts.retry_wait(k), "error": shown},
                )
            rec.retry_open = None
            try:
                value = await self._attempt(t, payload, call_id, k)
            except BaseException as e:
                if not self._failure(e) or isinstance(e, SerializationError):
                    raise
                error = e
                if k > 0:  # durable: a crash never repeats a retry that was seen failing
                    await self.commit(E.TASK_RETRY_FAILED, call_id, name, self._recorded(e))
            else:
                if k > 0:
                    self.record(E.TASK_RETRY_COMPLETED, call_id, name, {"attempt": k})
                return value
            k += 1

    def _copy(self: Execution, payload: bytes) -> tuple[tuple, dict]:
        args, kwargs = codec.decode(payload)
        return tuple(args), kwargs

    async def _attempt(self: Execution, t: task, payload: bytes, call_id: str, attempt: int) -> Any:
        opts = t.options
        await self._gate()
        args, kwargs = self._copy(payload)
        if opts.secret_requests or opts.metadata:
            if opts.secret_requests:
                kwargs["secrets"] = await self._service(
                    self.host.get_secrets(opts.secret_requests, call_id)
                )
            if opts.metadata:
                kwargs["metadata"] = TaskMetadata(
                    call_id, t.display_name(args, kwargs), self.ctx.execution_id, attempt + 1
                )
            self._check()
        path = call_id if attempt == 0 else f"{call_id}@{attempt}"
        token = frames.enter(frames.Frame(self, path, is_body=True))
        self.busy += 1
        try:
            if opts.timeout is None:
                with logs.capture(self, call_id, attempt + 1):
                    return await _invoke(t, args, kwargs)
            with anyio.CancelScope(deadline=anyio.current_time() + opts.timeout) as scope:
                with logs.capture(self, call_id, attempt + 1):
                    return await _invoke(t, args, kwargs)
            self._check()
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
        self: Execution,
        t: task,
        payload: bytes,
        call_id: str,
        name: str,
        rec: CallRecord,
        error: BaseException,
    ) -> Any:
        """After the last attempt failed: fallback (returns its value), else rollback and
        TASK_FAILED, shielded so that a sibling's failure or a cancellation cannot cut them
        short, then raise the error as recorded."""
        opts = t.options
        shown = self._recorded(error)
        if opts.fallback is not None and not rec.fallback_failed and not rec.rollback_started:
            if not rec.fallback_started:
                self.record(E.TASK_FALLBACK_STARTED, call_id, name, shown)
            fallback_error: BaseException | None = None
            try:
                value = await self._guarded(opts.fallback, payload, call_id, "fallback")
            except BaseException as fb_error:
                if not self._failure(fb_error):
                    raise
                fallback_error = fb_error
            if fallback_error is None:
                self.record(E.TASK_FALLBACK_COMPLETED, call_id, name, None)
                return value
            self.record(E.TASK_FALLBACK_FAILED, call_id, name, self._recorded(fallback_error))
        with self._shielded():
            await self._rollback(t, payload, call_id, name, shown, rec)
            try:
                seen = await self.commit(E.TASK_FAILED, call_id, name, shown)
            except SerializationError:
                seen = await self.commit(E.TASK_FAILED, call_id, name, _stand_in(shown))
        raise seen

    async def _rollback(
        self: Execution,
        t: task,
        payload: bytes,
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
        rollback_error: BaseException | None = None
        with anyio.move_on_after(t.options.rollback_timeout) as scope:
            try:
                await self._guarded(rollback, payload, call_id, "rollback")
            except BaseException as rb_error:
                if not self._failure(rb_error):
                    raise
                rollback_error = rb_error
        self._check()
        if rollback_error is not None:
            self.record(E.TASK_ROLLBACK_FAILED, call_id, name, self._recorded(rollback_error))
        elif scope.cancelled_caught:
            self.record(
                E.TASK_ROLLBACK_FAILED,
                call_id,
                name,
                TaskTimeoutError(
                    f"rollback of task {name!r} ({call_id}) timed out after "
                    f"{t.options.rollback_timeout:g}s"
                ),
            )
        else:
            self.record(E.TASK_ROLLBACK_COMPLETED, call_id, name, None)

    async def _guarded(
        self: Execution, fn: Callable[..., Any], payload: bytes, call_id: str, role: str
    ) -> Any:
        await self._gate()
        args, kwargs = self._copy(payload)
        token = frames.enter(frames.Frame(self, f"{call_id}@{role}", is_body=True))
        self.busy += 1
        try:
            with logs.capture(self, call_id, 0):
                return await call_plain(fn, args, kwargs)
        finally:
            self.busy -= 1
            frames.leave(token)


async def _invoke(t: task, args: tuple, kwargs: dict) -> Any:
    if t.is_async:
        return await t.func(*args, **kwargs)
    return await call_plain(t.func, args, kwargs)


def _stand_in(error: BaseException) -> BaseException:
    return TaskFailedError(f"{type(error).__module__}.{type(error).__qualname__}", str(error))


__all__ = ["TaskRuns"]
