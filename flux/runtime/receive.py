"""``receive`` and ``send_signal`` inside a running execution (a mixin of Execution).

A receive is one recorded call (``receive#N``): TASK_STARTED carries its topic and the engine-
clock time its timeout passes (``due_at``), its outcome is TASK_COMPLETED (the signal's value,
after a SIGNAL_RECEIVED event, or the ``default`` on timeout) or TASK_FAILED
(SignalTimeoutError). Replay returns the recorded outcome; a receive recorded as started and
still open waits on, for what is left of its timeout.

While it waits, the run *pumps* the execution's signal queue (through its host: the embedded
engine reads the store; a worker has none, and the server delivers at the next grant instead):
when a receive starts, and whenever the host says signals may have come. The pump hands the
queued signals to the waiting receives in call order per topic and records each delivery in one
write that also takes the signal out of the queue, fenced by the lease (see
flux.runtime.signals). A run blocked on nothing but receives, pauses and sleeps suspends like a
pause: stored SCHEDULED with ``wake_at`` at the earliest timeout (None: none), its runner freed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import attrs

from . import codec, frames
from .errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    FluxError,
    SerializationError,
    SignalTimeoutError,
)
from .events import ExecutionEventType as E
from .history import CallRecord
from .signals import (
    RECEIVE,
    SEND_SIGNAL,
    SignalRecord,
    call_order,
    check_topic,
    receive_args,
)
from .workflow import MISSING

if TYPE_CHECKING:
    from .executor import Execution


@attrs.define(eq=False)
class _Receiver:
    call_id: str
    topic: str
    due_at: float | None
    seq: int
    value: Any = MISSING


class Receives:
    """receive / send_signal (mixed into Execution)."""

    receivers: dict[str, _Receiver]

    def _signal_state(self: Execution) -> None:
        if not hasattr(self, "receivers"):
            self.receivers = {}
            self._signal_lock = anyio.Lock()
            self._signal_kick = anyio.Event()

    def signals_arrived(self: Execution) -> None:
        """Called by the host when signals may have been queued for this execution: the
        waiting receives look at the queue again."""
        self._signal_state()
        if self.receivers:
            self._signal_kick.set()

    def receive_dues(self: Execution) -> list[float]:
        """The timeouts (engine clock) of the receives waiting now."""
        if not hasattr(self, "receivers"):
            return []
        return [r.due_at for r in self.receivers.values() if r.due_at is not None]

    # ------------------------------------------------------------------ receive

    async def receive(
        self: Execution, frame: frames.Frame, topic: str, timeout: float | None, default: Any
    ) -> Any:
        self._signal_state()
        call_id = frame.next_id(RECEIVE)
        rec = self._lookup(call_id, RECEIVE, None, [[topic], {}])
        if rec is not None and rec.started is not None:
            recorded = receive_args(rec.started.value)
            if recorded is None or recorded[0] != topic:
                shown = CallRecord(call_id, RECEIVE, args=[recorded[0] if recorded else None])
                self._halt(self.replay.mismatch(call_id, shown, RECEIVE, [[topic], {}]))
        if rec is not None and rec.outcome is not None:
            return await self._replay(rec)
        if rec is not None and rec.started is not None:
            due = receive_args(rec.started.value)[1]  # type: ignore[index]
            seq = rec.started.id
        else:
            due = None if timeout is None else self.clock() + timeout
            args = {"topic": topic, "timeout": timeout, "due_at": due}
            await self.commit(E.TASK_STARTED, call_id, RECEIVE, {"args": args, "kwargs": {}})
            seq = self.seq
        me = _Receiver(call_id, topic, due, seq)
        self.receivers[call_id] = me
        try:
            await self._pump_signals()  # a signal already queued is taken at once
            if me.value is not MISSING:
                return me.value
            return await self._wait_signal(frame, me, timeout, default)
        finally:
            self.receivers.pop(call_id, None)

    async def _wait_signal(
        self: Execution, frame: frames.Frame, me: _Receiver, timeout: float | None, default: Any
    ) -> Any:
        held = self._release(frame)
        try:
            while me.value is MISSING:
                kick = self._signal_kick
                left = None if me.due_at is None else me.due_at - self.clock()
                if left is not None and left <= 0:
                    async with self._signal_lock:
                        if me.value is MISSING:
                            return await self._time_out(me, timeout, default)
                    break
                if me.call_id not in self.blocked:  # due later: may suspend the run now
                    self.blocked[me.call_id] = "signal"
                    self._maybe_suspend()
                with anyio.move_on_after(left if left is not None else float("inf")):
                    await kick.wait()
                if kick.is_set():
                    if self._signal_kick is kick:
                        self._signal_kick = anyio.Event()
                    await self._pump_signals()
        finally:
            self.blocked.pop(me.call_id, None)
            self._acquire(held)
        return me.value

    async def _time_out(self: Execution, me: _Receiver, timeout: float | None, default: Any) -> Any:
        if default is not MISSING:
            seen = await self.commit(E.TASK_COMPLETED, me.call_id, RECEIVE, default)
            self._answered_while_suspending()
            return seen
        shown = "" if timeout is None else f" in {timeout:g}s"
        error = SignalTimeoutError(
            f"no signal on topic {me.topic!r} came{shown} "
            f"(execution {self.ctx.execution_id}, {me.call_id})",
            topic=me.topic,
            timeout=timeout,
        )
        recorded = await self.commit(E.TASK_FAILED, me.call_id, RECEIVE, error)
        self._answered_while_suspending()
        raise recorded

    async def _pump_signals(self: Execution) -> None:
        """Deliver queued signals to the waiting receives (call order per topic)."""
        pending_of = getattr(self.host, "pending_signals", None)
        if pending_of is None or not self.receivers:
            return
        async with self._signal_lock:
            waiting = sorted(
                (r for r in self.receivers.values() if r.value is MISSING),
                key=lambda r: call_order(r.call_id),
            )
            if not waiting:
                return
            wanted: dict[str, int] = {}
            for me in waiting:
                wanted[me.topic] = wanted.get(me.topic, 0) + 1
            by_topic: dict[str, list[SignalRecord]] = {}
            for topic, count in wanted.items():
                queued: list[SignalRecord] = await self._service(pending_of(self, topic, count))
                by_topic[topic] = [s for s in queued if s.topic == topic]
            delivered = False
            for me in waiting:
                mine = by_topic.get(me.topic)
                if not mine or me.value is not MISSING:
                    continue
                signal = mine.pop(0)
                me.value = await self._deliver(me, signal)
                delivered = True
            if delivered:
                self._signal_kick.set()  # wake the receives just served

    async def _deliver(self: Execution, me: _Receiver, signal: SignalRecord) -> Any:
        value = codec.decode(signal.value)
        self._check()
        first, _ = self._event(E.SIGNAL_RECEIVED, me.call_id, signal.topic, value)
        outcome, seen = self._event(E.TASK_COMPLETED, me.call_id, RECEIVE, value)
        await self._write([first, outcome], None, signals=(signal.id,))
        self._answered_while_suspending()
        return seen

    def _answered_while_suspending(self: Execution) -> None:
        """A receive's outcome was committed while the run was already suspending (the write
        had begun): the run must be woken at once, not wait for what has happened."""
        if self.stop_reason == "suspend":
            self.wake_at = self.clock()

    # ------------------------------------------------------------------ send_signal

    async def send_signal(
        self: Execution, frame: frames.Frame, target: str, topic: str, value: Any
    ) -> None:
        call_id = frame.next_id(SEND_SIGNAL)
        try:
            data = codec.encode(value, max_size=getattr(self.host, "max_value_size", None))
        except SerializationError as e:
            raise SerializationError(f"send_signal ({call_id}): value {e}") from None
        args = [[target, topic, value], {}]
        digest = codec.digest(args)
        rec = self._lookup(call_id, SEND_SIGNAL, digest, args)
        if rec is not None and rec.outcome is not None:
            await self._replay(rec)
            return None
        if rec is None:
            await self.commit(
                E.TASK_STARTED,
                call_id,
                SEND_SIGNAL,
                {"args": [target, topic], "kwargs": {}, "digest": digest},
            )
        send = getattr(self.host, "send_signal_from", None)
        if send is None:
            error: Exception = FluxError(
                f"send_signal ({call_id}): this runner cannot send signals"
            )
            raise await self.commit(E.TASK_FAILED, call_id, SEND_SIGNAL, error)
        key = f"{self.ctx.execution_id}/{call_id}"
        try:
            await self._gate()
            await self._service(send(target, topic, data, key))
        except (ExecutionNotFoundError, ExecutionConflictError) as e:
            raise await self.commit(E.TASK_FAILED, call_id, SEND_SIGNAL, e) from None
        await self.commit(E.TASK_COMPLETED, call_id, SEND_SIGNAL, None)
        return None


def check_receive(topic: Any, timeout: Any) -> float | None:
    """Validate receive()'s arguments; the timeout in seconds (None: for ever)."""
    from datetime import timedelta

    check_topic(topic)
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"receive() timeout is seconds or a timedelta, got {timeout!r}")
    if not timeout >= 0 or timeout == float("inf"):
        raise ValueError(f"receive() needs a finite timeout >= 0 (or None), got {timeout!r}")
    return float(timeout)


__all__ = ["Receives", "check_receive"]
