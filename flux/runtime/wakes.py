"""Sending signals through the embedded engine, and waking the executions that can go on.

The functions behind :meth:`Engine.send_signal`, :meth:`Engine.wake_due` and
:meth:`Engine.serve_due` (flux.runtime.engine keeps only their one-line entry points). An
execution released while it waits (a receive, a sleep the host suspends) is stored SCHEDULED;
``wake_due`` is the one pass every loop runs (a long-running app, ``flux.testing``, a
scheduler) to run those whose signal came or whose wake time passed.

Other things that come due (schedules) plug into the same pass: an object in
``engine.due_sources`` with ``async def wake_due(engine) -> list[ExecutionContext]`` (start what
is due at ``engine.clock()``) and ``async def next_wake(engine) -> float | None`` (its next due
time, engine clock) is run by every ``wake_due`` and counted by :func:`next_wake`, so
``serve_due`` and ``flux.testing``'s ``advance`` drive it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from . import codec
from .context import ExecutionContext
from .errors import ExecutionConflictError, ExecutionLeasedError, ExecutionNotFoundError
from .events import ExecutionState
from .records import ExecutionRecord, SignalRecord
from .signals import check_topic, waiting_topics, waiting_topics_of

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("flux.engine")

__all__ = ["accept", "send", "serve_due", "signal_came", "wake_due"]


async def accept(
    engine: Engine, execution_id: str, topic: str, data: bytes, key: str | None
) -> SignalRecord:
    """Queue an encoded signal; tell a receive running here, and the wake loop."""
    state, record = await engine.store.add_signal(execution_id, topic, data, engine.clock(), key)
    if state is None:
        raise ExecutionNotFoundError(execution_id)
    if record is None:
        raise ExecutionConflictError(
            f"execution {execution_id!r} is {state.value}: a finished execution takes no signals",
            state=state.value,
        )
    running = engine._running.get(execution_id)
    if running is not None:
        running.signals_arrived()
    engine._due_kick.set()
    return record


async def send(
    engine: Engine, execution_id: str, topic: str, value: Any, key: str | None
) -> SignalRecord:
    if not isinstance(execution_id, str) or not execution_id:
        raise TypeError(f"send_signal() takes an execution id string, got {execution_id!r}")
    check_topic(topic)
    try:
        data = codec.encode(value)
    except Exception as e:
        raise type(e)(f"value of signal {topic!r} to execution {execution_id}: {e}") from None
    return await accept(engine, execution_id, topic, data, key)


async def signal_came(engine: Engine, ctx: ExecutionContext) -> bool:
    """Did a signal for one of the receives of ``ctx`` (just released, SCHEDULED) come while
    it was being released, or is it due already? Then it is run again at once."""
    if ctx.state is not ExecutionState.SCHEDULED:
        return False
    rec = await engine.store.get_execution(ctx.execution_id)
    if rec is not None and rec.wake_at is not None and rec.wake_at <= engine.clock():
        return True  # due already (a receive answered while the run was being released)
    return await _any_for(engine.store, ctx.execution_id, waiting_topics_of(ctx.events))


async def _ready(engine: Engine, rec: ExecutionRecord, now: float) -> bool:
    if rec.wake_at is not None and rec.wake_at <= now:
        return True
    if not await engine.store.pending_signals(rec.execution_id, limit=1):
        return False
    topics = waiting_topics(await engine.store.load_events(rec.execution_id))
    return await _any_for(engine.store, rec.execution_id, topics)


async def _any_for(store: Any, execution_id: str, topics: set[str]) -> bool:
    """Is a signal queued for ``execution_id`` on one of ``topics``?"""
    for topic in topics:
        if await store.pending_signals(execution_id, topic=topic, limit=1):
            return True
    return False


async def _top(engine: Engine, rec: ExecutionRecord) -> ExecutionRecord:
    """A child waits inside its parent (embedded): wake the topmost waiting ancestor."""
    while rec.parent_id is not None:
        parent = await engine.store.get_execution(rec.parent_id)
        if parent is None or parent.state is not ExecutionState.SCHEDULED:
            break
        rec = parent
    return rec


def _register(engine: Engine, workflows: Any) -> None:
    if workflows is None:
        return
    found = workflows.values() if isinstance(workflows, Mapping) else workflows
    engine.register(*found)


async def wake_due(engine: Engine, workflows: Any = None) -> list[ExecutionContext]:
    _register(engine, workflows)
    now = engine.clock()
    waiting = await engine.store.list_executions(state=ExecutionState.SCHEDULED, limit=None)
    done: list[ExecutionContext] = []
    seen: set[str] = set()
    for rec in reversed(waiting):  # oldest first
        if rec.execution_id in engine._running or not await _ready(engine, rec, now):
            continue
        top = await _top(engine, rec)
        wf = engine.workflows.get(top.workflow_name)
        if top.execution_id in seen or wf is None:
            if wf is None:
                log.debug(
                    "execution %s is due; workflow %r unknown here",
                    top.execution_id,
                    top.workflow_name,
                )
            continue
        seen.add(top.execution_id)
        try:
            done.append(await engine.run(wf, execution_id=top.execution_id))
        except ExecutionLeasedError:
            continue  # another process runs it
    for source in list(engine.due_sources):
        done.extend(await source.wake_due(engine))
    return done


async def next_wake(engine: Engine) -> float | None:
    """The earliest wake time of a released execution of a workflow this engine knows."""
    waiting = await engine.store.list_executions(state=ExecutionState.SCHEDULED, limit=None)
    times = [
        r.wake_at for r in waiting if r.wake_at is not None and r.workflow_name in engine.workflows
    ]
    for source in list(engine.due_sources):
        when = await source.next_wake(engine)
        if when is not None:
            times.append(when)
    return min(times) if times else None


async def serve_due(engine: Engine, workflows: Any, poll: float) -> None:
    if not poll > 0:
        raise ValueError(f"serve_due() needs poll > 0 seconds, got {poll!r}")
    _register(engine, workflows)
    while True:
        kick = engine._due_kick
        await wake_due(engine)
        when = await next_wake(engine)
        delay = poll if when is None else min(poll, max(0.0, when - engine.clock()))
        with anyio.move_on_after(delay):
            await kick.wait()
        if engine._due_kick is kick and kick.is_set():
            engine._due_kick = anyio.Event()
