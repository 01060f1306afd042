"""Signals on the server: accepting them, and delivering them when an execution is leased.

The dispatcher's side of :mod:`flux.runtime.signals`. A worker's run has no store to read, so
the server delivers: every grant of a lease appends SIGNAL_RECEIVED and the receive's
TASK_COMPLETED for each queued signal an open receive of the history waits for, in the grant's
own write (fenced on the epoch it replaces; the signals leave the queue in it), and the worker
replays them like any outcome. An execution released while it waits (SCHEDULED) is submitted
again as soon as a signal it waits for is queued: when the signal is accepted, when the run
releases (a signal accepted while it ran), and when the server starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from flux.net import protocol as p
from flux.runtime.errors import ExecutionConflictError, ExecutionNotFoundError, StoreError
from flux.runtime.events import ExecutionState as S
from flux.runtime.records import ExecutionRecord, SignalRecord, StoredEvent
from flux.runtime.signals import check_topic, open_receives, plan_deliveries, waiting_topics

_OUTCOMES = frozenset({"TASK_COMPLETED", "TASK_FAILED", "TASK_CANCELLED", "TASK_RESUMED"})

if TYPE_CHECKING:
    from flux.net.dispatch import Dispatcher, WorkerLink

__all__ = ["accept", "from_worker", "grant_deliveries", "notify", "wake_if_ready"]


async def accept(
    dispatcher: Dispatcher, execution_id: str, topic: str, data: bytes
) -> SignalRecord:
    """Queue an encoded signal (ExecutionNotFoundError, ExecutionConflictError when finished,
    ValueError/TypeError for a bad topic) and wake the execution if it waits for it."""
    check_topic(topic)
    state, record = await dispatcher.store.add_signal(execution_id, topic, data, dispatcher.wall())
    if state is None:
        raise ExecutionNotFoundError(execution_id)
    if record is None:
        raise ExecutionConflictError(
            f"execution {execution_id!r} is {state.value}: a finished execution takes no signals",
            state=state.value,
        )
    await notify(dispatcher, record)
    return record


async def notify(dispatcher: Dispatcher, record: SignalRecord) -> None:
    """A signal was queued: offer it to the worker running the execution (a receive waiting
    in the run takes it at once), else wake the execution if it was released to wait for it."""
    lease = dispatcher._leases.get(record.execution_id)
    if lease is not None and lease.worker is not None and lease.epoch is not None:
        offer = p.SignalsQueued(
            execution_id=record.execution_id,
            epoch=lease.epoch,
            signals=[[record.id, record.topic, record.value]],
        )
        await dispatcher._send(lease.worker, offer)
        return
    await wake_if_ready(dispatcher, record.execution_id)


async def wake_if_ready(dispatcher: Dispatcher, execution_id: str) -> None:
    """Submit a released execution (SCHEDULED, not leased or queued) if a queued signal is for
    one of its open receives."""
    if execution_id in dispatcher._leases or execution_id in dispatcher._queued:
        return
    rec = await dispatcher.store.get_execution(execution_id)
    if rec is None or rec.state is not S.SCHEDULED:
        return
    store = dispatcher.store
    if not await store.pending_signals(execution_id, limit=1):
        return
    for topic in waiting_topics(await store.load_events(execution_id)):
        if await store.pending_signals(execution_id, topic=topic, limit=1):
            dispatcher.submit(execution_id)
            return


async def grant_deliveries(
    dispatcher: Dispatcher, execution_id: str, events: Sequence[StoredEvent]
) -> tuple[list[StoredEvent], tuple[int, ...]]:
    """The delivery events a grant appends after ``events``, and the signals they take."""
    store = dispatcher.store
    if not await store.pending_signals(execution_id, limit=1):
        return [], ()
    wanted: dict[str, int] = {}
    for receive in open_receives(events):
        wanted[receive.topic] = wanted.get(receive.topic, 0) + 1
    pending: list[SignalRecord] = []
    for topic, count in wanted.items():  # only what the open receives can take
        pending += await store.pending_signals(execution_id, topic=topic, limit=count)
    return plan_deliveries(execution_id, events, pending, dispatcher.wall())


async def from_worker(
    dispatcher: Dispatcher, link: WorkerLink, msg: p.SignalSend, lease: object | None
) -> None:
    """A workflow on a worker sends a signal: queued only for the current lease of the sender
    (an old epoch's send is refused), under the call's key (a send the sender replays after a
    crash is not queued twice)."""
    error: str | None = None
    detail = ""
    if lease is None:
        error, detail = "refused", "the sending execution's lease is not current"
    else:
        try:
            check_topic(msg.topic)
            state, record = await dispatcher.store.add_signal(
                msg.target, msg.topic, msg.value, dispatcher.wall(), msg.key
            )
            if state is None:
                error, detail = "not-found", f"no execution with id {msg.target!r}"
            elif record is None:
                error = "conflict"
                detail = (
                    f"execution {msg.target!r} is {state.value}: a finished execution takes "
                    "no signals"
                )
            else:
                await notify(dispatcher, record)
        except (TypeError, ValueError) as exc:
            error, detail = "bad-topic", str(exc)
        except StoreError as exc:
            error, detail = "refused", f"the store failed: {exc}"
    await dispatcher._send(
        link, p.SignalSent(request_id=msg.request_id, error=error, detail=detail)
    )


async def waits_only_for_signals(dispatcher: Dispatcher, rec: ExecutionRecord) -> bool:
    """A released execution (SCHEDULED, no wake time) whose every open call is a receive with
    no signal queued for it: nothing to run until a signal comes (a restart does not replay
    every execution that waits for one)."""
    events = await dispatcher.store.load_events(rec.execution_id)
    receives = {r.call_id: r.topic for r in open_receives(events)}
    if not receives:
        return False
    open_ids: dict[str, None] = {}
    for e in events:
        if e.type == "TASK_STARTED":
            open_ids[e.call_id] = None
        elif e.type in _OUTCOMES:
            open_ids.pop(e.call_id, None)
    if set(open_ids) - set(receives):
        return False
    for topic in set(receives.values()):
        if await dispatcher.store.pending_signals(rec.execution_id, topic=topic, limit=1):
            return False
    return True


async def settle_if_waiting(dispatcher: Dispatcher, rec: ExecutionRecord | None) -> None:
    """An execution just released to wait only for signals (its timeouts aside) has gone as
    far as it can: what waits for it to settle (run/sync) is answered, as for a pause."""
    if rec is None or not dispatcher._settled.get(rec.execution_id):
        return
    eid = rec.execution_id
    if eid in dispatcher._queued or eid in dispatcher._leases:
        return
    if await waits_only_for_signals(dispatcher, rec):
        for event in dispatcher._settled.pop(eid, ()):
            event.set()
