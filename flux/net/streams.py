"""Following an execution's events: what the store holds first, then live ones, exactly once.

:func:`follow` serves both the Server-Sent Events of ``run/stream`` and the WebSocket stream
``/executions/{id}/events``. It registers a listener with the dispatcher *before* reading the
store, so an event committed while the catch-up is read is seen by one or both, never by
neither; events are then numbered by ``seq`` and anything at or below the last one sent is
dropped. A gap in what the listener got (it overflowed, or batches crossed) is filled from the
store. The stream ends after a terminal event (WORKFLOW_COMPLETED/FAILED/CANCELLED), or after a
WORKFLOW_PAUSED that is the latest event, or when ``stop`` is set (server shutdown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from flux.net.dispatch import Dispatcher
from flux.runtime.events import ExecutionState
from flux.runtime.store import Store, StoredEvent

__all__ = ["SETTLING_EVENTS", "TERMINAL_EVENTS", "follow"]

TERMINAL_EVENTS = frozenset({"WORKFLOW_COMPLETED", "WORKFLOW_FAILED", "WORKFLOW_CANCELLED"})
#: After one of these, if nothing follows it yet, the stream ends (paused: until resumed).
SETTLING_EVENTS = TERMINAL_EVENTS | {"WORKFLOW_PAUSED"}


async def follow(
    dispatcher: Dispatcher,
    store: Store,
    execution_id: str,
    after: int = 0,
    *,
    stop: trio.Event | None = None,
    keepalive: float | None = None,
) -> AsyncIterator[StoredEvent | None]:
    """Yield the events of ``execution_id`` with ``seq > after`` in order, each once, then live
    ones, until it settles (see the module docstring). With ``keepalive``, yield ``None`` after
    that many seconds without an event (a cue to send a keep-alive)."""
    listener = dispatcher.listen(execution_id)
    last = after
    try:
        batch: list[StoredEvent] = await store.load_events(execution_id, after)
        if not batch:
            rec = await store.get_execution(execution_id)
            settled = rec is None or rec.state.is_terminal or rec.state is ExecutionState.PAUSED
            if settled and not listener.events and not listener.overflowed:
                return
        while True:
            for event in batch:
                if event.seq <= last:
                    continue
                last = event.seq
                yield event
            if batch and batch[-1].type in SETTLING_EVENTS and batch[-1].seq == last:
                if batch[-1].type in TERMINAL_EVENTS:
                    return
                if not listener.events and not listener.overflowed:
                    return  # paused, and nothing since
            batch = []
            if stop is not None and stop.is_set():
                return
            with trio.move_on_after(keepalive if keepalive else float("inf")) as idle:
                await _wait(listener, stop)
            if idle.cancelled_caught:
                yield None
                continue
            if stop is not None and stop.is_set():
                return
            live, overflowed = listener.take()
            fresh = sorted((e for e in live if e.seq > last), key=lambda e: e.seq)
            if overflowed or (fresh and fresh[0].seq != last + 1):
                fresh = await store.load_events(execution_id, last)
            batch = fresh
    finally:
        dispatcher.unlisten(listener)


async def _wait(listener: Any, stop: trio.Event | None) -> None:
    if stop is None:
        await listener.wait()
        return
    async with trio.open_nursery() as nursery:

        async def one(fn: Any) -> None:
            await fn()
            nursery.cancel_scope.cancel()

        nursery.start_soon(one, listener.wait)
        nursery.start_soon(one, stop.wait)
