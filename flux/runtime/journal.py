"""How the embedded engine reads and writes one execution's history: stored events decoded
into its context, and the journal a run writes through (queued or committed writes, fenced by
the run's lease epoch)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import codec, executions
from .context import ExecutionContext
from .events import ExecutionEvent, ExecutionEventType, ExecutionState
from .records import ExecutionRecord, StoredEvent, Write

if TYPE_CHECKING:
    from .logs import LogSink
    from .store import WriteTicket
    from .store_api import StoreAPI

__all__ = ["StoreJournal", "build_context", "decode_event", "event_of", "resume_events"]


def decode_event(stored: StoredEvent) -> ExecutionEvent:
    return ExecutionEvent(
        stored.seq,
        ExecutionEventType(stored.type),
        stored.call_id,
        stored.name,
        codec.decode(stored.value) if stored.value is not None else None,
        datetime.fromtimestamp(stored.time, UTC),
    )


def build_context(record: ExecutionRecord, events: list[StoredEvent]) -> ExecutionContext:
    decoded = [decode_event(e) for e in events]
    return ExecutionContext(
        record.execution_id,
        record.workflow_name,
        codec.decode(record.input),
        codec.decode(record.output) if record.output is not None else None,
        record.state,
        decoded,
        parent_id=record.parent_id,
        workflow_version=record.workflow_version,
        retry_of=record.retry_of,
    )


def _columns(update: dict[str, Any] | None) -> dict[str, Any] | None:
    if update is None:
        return None
    return {k: (v.value if isinstance(v, ExecutionState) else v) for k, v in update.items()}


class StoreJournal:
    """Journal of one execution in the local store, fenced by the lease epoch it claimed.

    ``held`` events (the resume of a paused execution) are written with the first event the run
    records, so that a run stopped by nondeterminism before recording anything leaves the
    history exactly as it was. A write the store refused (even a queued one nobody awaited) makes
    every later write of this journal raise, so a history never gets a hole. A write that ends
    the run (a state other than RUNNING) releases the lease with it."""

    __slots__ = ("store", "execution_id", "expect", "held", "tickets", "wrote", "log_sink")

    def __init__(
        self,
        store: StoreAPI,
        execution_id: str,
        epoch: int,
        held: list[StoredEvent] | None = None,
        log_sink: LogSink | None = None,
    ):
        self.store = store
        #: the run's task log lines are written before the write that ends (or suspends) it
        self.log_sink = log_sink
        self.execution_id = execution_id
        self.expect = {"lease_epoch": epoch}
        self.held = held or []
        self.tickets: list[WriteTicket] = []
        #: whether anything was handed to the store (False: the history is as it was)
        self.wrote = False

    def _check(self) -> None:
        open_: list[WriteTicket] = []
        for ticket in self.tickets:
            if not ticket.done:
                open_.append(ticket)
            elif ticket.error is not None:
                self.tickets = []
                raise ticket.error
        self.tickets = open_

    def _write(
        self,
        events: list[StoredEvent],
        update: dict[str, Any] | None,
        signals: tuple[int, ...] = (),
    ) -> Write:
        self._check()
        if self.held:
            events, self.held = self.held + events, []
        columns = _columns(update)
        if columns is not None and columns.get("state", ExecutionState.RUNNING.value) != (
            ExecutionState.RUNNING.value
        ):
            columns["lease_owner"] = None
            columns["lease_expires_at"] = None
        self.wrote = True
        return Write(
            self.execution_id, events, update=columns, expect=self.expect, signals=signals
        )

    def enqueue(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None:
        self.tickets.extend(self.store.enqueue(self._write(events, update)))

    async def commit(
        self,
        events: list[StoredEvent],
        update: dict[str, Any] | None = None,
        signals: tuple[int, ...] = (),
    ) -> None:
        sink = self.log_sink
        if sink is not None and update and sink.has(self.execution_id):
            if update.get("state", ExecutionState.RUNNING) != ExecutionState.RUNNING:
                await sink.flush(self.execution_id)
        await self.store.commit(self._write(events, update, signals))
        self._check()

    def discard(self) -> None:
        """The run stopped: drop what it queued and did not reach a transaction yet."""
        self.held = []
        self.store.discard_queued(self.execution_id)




def resume_events(ctx: ExecutionContext, value: Any) -> list[StoredEvent]:
    """Events that resume a paused execution: WORKFLOW_RESUMED, then TASK_RESUMED carrying
    ``value`` for every pause point still waiting. Appended to ``ctx.events`` too, with the
    value decoded, so ``pause()`` returns what a replay will (the first run sees what a replay
    sees)."""
    data = codec.encode(value)
    seen = codec.decode(data)
    last = ctx.events[-1].id if ctx.events else 0
    events = executions.resumption_events(
        ctx.execution_id, ctx.workflow_name, ctx.events, last, data, time.time()
    )
    ctx._events.extend(event_of(e, seen) for e in events)
    return events


def event_of(stored: StoredEvent, value: Any) -> ExecutionEvent:
    """The context's form of an event just built for the store (``value`` decoded)."""
    return ExecutionEvent(
        stored.seq,
        ExecutionEventType(stored.type),
        stored.call_id,
        stored.name,
        value,
        datetime.fromtimestamp(stored.time, UTC),
    )


