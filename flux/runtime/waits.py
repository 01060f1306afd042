"""Durable waits of an execution: sleeps, pauses, child workflows, and suspending the run.

A mixin of :class:`~flux.runtime.executor.Execution`: everything here waits for something
outside the run (time, a resume value, another execution). When nothing but such waits is left,
the run *suspends*: its root scope is cancelled (``stop_reason = "suspend"``, which is neither a
cancellation nor a stop), and the execution is stored PAUSED or SCHEDULED to be resumed later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from . import codec, frames
from .errors import SerializationError
from .events import ExecutionEventType as E
from .events import ExecutionState
from .history import PAUSE, SLEEP, CallRecord, child_failure

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .executor import Execution
    from .workflow import workflow


class Waits:
    """Sleeps, pauses, children and suspension (mixed into Execution)."""

    # ------------------------------------------------------------------ bodies and suspension

    def _release(self: Execution, frame: frames.Frame) -> bool:
        if frame.is_body:
            self.busy -= 1
            self._maybe_suspend()
            return True
        return False

    def _acquire(self: Execution, held: bool) -> None:
        if held:
            self.busy += 1

    def _maybe_suspend(self: Execution) -> None:
        if (
            self.busy > 0
            or self.stop_reason is not None
            or self.stopped is not None
            or self.root_scope is None
        ):
            return
        if self.blocked:
            self.suspended_on = dict(self.blocked)
            # a durable sleep or a receive's timeout pending: wake for the first in any case
            wakes = [*self.waiting_sleeps.values(), *self.receive_dues()]
            if wakes:
                self.wake_at = min(wakes)
            self.stop_reason = "suspend"
            self.root_scope.cancel()
            return
        if self.waiting_sleeps and self.host.suspend_sleep_after is not None:
            wake = min(self.waiting_sleeps.values())
            if wake - self.clock() > self.host.suspend_sleep_after:
                self.wake_at = wake
                self.stop_reason = "suspend"
                self.root_scope.cancel()

    # ------------------------------------------------------------------ builtins

    async def sleep(self: Execution, frame: frames.Frame, seconds: float) -> None:
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

    async def pause(self: Execution, frame: frames.Frame, name: str) -> Any:
        call_id = frame.next_id(PAUSE)
        rec = self._lookup(call_id, PAUSE, None, [[name], {}])
        if rec is not None and rec.paused is not None and rec.paused.value != name:
            recorded = CallRecord(call_id, PAUSE, args=[rec.paused.value], kwargs={})
            self._halt(self.replay.mismatch(call_id, recorded, PAUSE, [[name], {}]))
        if rec is not None and rec.outcome is not None:
            return await self._replay(rec)
        if rec is None:
            await self.commit(E.TASK_PAUSED, call_id, PAUSE, name)
        await self._block(frame, call_id, "pause")

    async def _block(self: Execution, frame: frames.Frame, call_id: str, kind: str) -> None:
        """Wait until the execution suspends (it never returns normally)."""
        held = self._release(frame)
        self.blocked[call_id] = kind
        try:
            self._maybe_suspend()
            await anyio.sleep_forever()
        finally:
            self.blocked.pop(call_id, None)
            self._acquire(held)

    # ------------------------------------------------------------------ children

    async def call_child(self: Execution, frame: frames.Frame, child: workflow, input: Any) -> Any:
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
            await self._gate()
            # the child gets the input as the history holds it, like a task body
            seen = codec.decode(codec.encode(input))
            # a child's stop stops its parent, which stays resumable too
            result = await self._service(
                self.host.run_child(self, call_id, child, child_id, seen)
            )
        except self._cancelled_exc:
            if self.stopped is None and self.stop_reason != "suspend":
                with self._shielded():
                    await self.commit(E.TASK_CANCELLED, call_id, name)
            raise
        finally:
            self._acquire(held)
        return await self._child_outcome(frame, call_id, name, child_id, result)

    async def _child_outcome(
        self: Execution,
        frame: frames.Frame,
        call_id: str,
        name: str,
        child_id: str,
        result: ExecutionContext,
    ) -> Any:
        state = result.state
        if state is ExecutionState.COMPLETED:
            return await self.commit(E.TASK_COMPLETED, call_id, name, result.output)
        if state is ExecutionState.FAILED or state is ExecutionState.CANCELLED:
            error = result.output
            if state is ExecutionState.CANCELLED or not isinstance(error, BaseException):
                error = child_failure(name, child_id, state is ExecutionState.CANCELLED)
            raise await self.commit(E.TASK_FAILED, call_id, name, error)
        # paused (or, on a worker, still running elsewhere): this execution waits for it
        await self._block(frame, call_id, "pause" if state is ExecutionState.PAUSED else "child")

    # ------------------------------------------------------------------ suspending

    async def _suspend(self: Execution) -> ExecutionContext:
        ctx = self.ctx
        blocked = self.suspended_on
        if "pause" in blocked.values():
            paused_ids = {e.source_id for e in ctx.events if e.type is E.TASK_PAUSED}
            pauses = [
                e.value
                for e in ctx.events
                if e.type is E.TASK_PAUSED and blocked.get(e.source_id) == "pause"
            ]
            children = [c for c, kind in blocked.items() if kind == "pause" and c not in paused_ids]
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
            await self._write([], {"state": ExecutionState.SCHEDULED, "wake_at": self.wake_at})
            ctx.state = ExecutionState.SCHEDULED
        return ctx


__all__ = ["Waits"]
