"""After a lease ends, and subworkflows: waking waiters and parents, creating children, handing
their outcomes to the parent, pausing a parent whose children paused (a part of
:class:`flux.net.dispatch.Dispatcher`).
"""

from __future__ import annotations

import logging

from flux.net import dispatch_signals
from flux.net.dispatch_types import (
    _SETTLED,
    ExecutionConflictError,
    _open_calls,
)
from flux.runtime import codec
from flux.runtime.errors import (
    ExecutionNotFoundError,
    FluxError,
    StoreError,
)
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.history import child_failure
from flux.runtime.patterns import child_execution_id
from flux.runtime.store import ExecutionRecord, StoredEvent, Write

log = logging.getLogger("flux.dispatch")

E = ExecutionEventType
S = ExecutionState


class Children:
    """What happens after a lease ends, and subworkflows (a part of
    :class:`~flux.net.dispatch.Dispatcher`)."""

    # ------------------------------------------------------------------ after a lease ends

    async def _after_end(self, rec: ExecutionRecord | None, state: S) -> None:
        if rec is None:
            return
        eid = rec.execution_id
        if state in _SETTLED:
            for event in self._settled.pop(eid, ()):
                event.set()
            for hook in self.on_end:
                hook(rec)
            if self.peers is not None:
                self.peers.announce("s", eid)
        if state is S.CANCELLED:
            # its subworkflows go too (embedded, they run inside the parent's scope)
            for child in await self.store.list_executions(parent_id=eid, limit=None):
                if not child.state.is_terminal:
                    try:
                        await self.cancel(child.execution_id)
                    except (ExecutionConflictError, ExecutionNotFoundError):
                        pass
        if state.is_terminal and rec.parent_id is not None:
            await self._wake_parent(rec.parent_id)
        elif state is S.PAUSED and rec.parent_id is not None:
            await self._wake_parent(rec.parent_id)
        elif state is S.SCHEDULED:
            # waiting for children: maybe one ended (or paused) while this one was running
            await self._check_waiting(eid)
            await dispatch_signals.wake_if_ready(self, eid)  # or for a signal that came
            await dispatch_signals.settle_if_waiting(self, rec)

    async def _wake_parent(self, parent_id: str) -> None:
        if parent_id in self._leases or parent_id in self._queued:
            return  # it looks at its children when it releases or is granted
        await self._check_waiting(parent_id)

    async def _check_waiting(self, execution_id: str) -> None:
        """An execution released to wait for its subworkflows (SCHEDULED, no wake time): run it
        again if one of them ended; pause it if every one it waits for is paused (what the
        embedded engine does: ``call`` of a paused child pauses the parent)."""
        if execution_id in self._leases or execution_id in self._queued:
            return
        rec = await self.store.get_execution(execution_id)
        if rec is None or rec.state is not S.SCHEDULED or rec.wake_at is not None:
            return
        events = await self.store.load_events(execution_id)
        seq = events[-1].seq if events else 0
        if await self._child_outcomes(rec, events, seq):
            self.submit(execution_id)
            return
        waiting = await self._open_children(rec, events)
        if not waiting or any(c.state is not S.PAUSED for _, c in waiting):
            return
        calls = [call_id for call_id, _ in waiting]
        paused = StoredEvent(
            execution_id,
            seq + 1,
            E.WORKFLOW_PAUSED.value,
            rec.workflow_name,
            rec.workflow_name,
            codec.encode(calls[0] if len(calls) == 1 else calls),
            self.wall(),
        )
        try:
            await self._commit(
                Write(
                    execution_id,
                    [paused],
                    update={"state": S.PAUSED.value},
                    expect={"lease_epoch": rec.lease_epoch, "state": S.SCHEDULED.value},
                )
            )
        except StoreError as exc:  # it changed meanwhile (resumed, cancelled, leased)
            log.info("not pausing %s after its subworkflows paused: %s", execution_id, exc)
            return
        log.info("execution %s paused: its subworkflow(s) %s paused", execution_id, calls)
        await self._after_end(rec, S.PAUSED)

    async def waiting_for_children(self, rec: ExecutionRecord) -> bool:
        """Whether the queued execution ``rec`` (no wake time) was released to wait for its
        subworkflows; if so it is looked at as when a child ends (run again if one ended,
        paused if every one it waits for is paused)."""
        events = await self.store.load_events(rec.execution_id)
        if not any(
            e.value is not None and b"child_id" in e.value for e in _open_calls(events).values()
        ):
            return False
        await self._check_waiting(rec.execution_id)
        return True

    async def _open_children(
        self, rec: ExecutionRecord, events: list[StoredEvent]
    ) -> list[tuple[str, ExecutionRecord]]:
        """``(call_id, child)`` for each subworkflow call of ``rec`` with no outcome yet."""
        open_calls = _open_calls(events)
        if not open_calls:
            return []
        eid = rec.execution_id
        children = {
            c.execution_id: c for c in await self.store.list_executions(parent_id=eid, limit=None)
        }
        out = []
        for call_id in open_calls:
            child = children.get(child_execution_id(eid, call_id))
            if child is not None:
                out.append((call_id, child))
        return out

    async def _child_outcomes(
        self, rec: ExecutionRecord, events: list[StoredEvent], seq: int
    ) -> list[StoredEvent]:
        """Outcome events for the parent's open child calls whose child ended, numbered from
        ``seq + 1``; children missing from the store are created on the way."""
        open_calls = _open_calls(events)
        if not open_calls:
            return []
        eid = rec.execution_id
        children = {
            c.execution_id: c for c in await self.store.list_executions(parent_id=eid, limit=None)
        }
        out: list[StoredEvent] = []
        now = self.wall()
        for call_id, started in open_calls.items():
            child_id = child_execution_id(eid, call_id)
            child = children.get(child_id)
            if child is None:
                if started.value is not None and b"child_id" in started.value:
                    await self._start_child(rec, started)
                continue
            if not child.state.is_terminal:
                continue
            if child.state is S.COMPLETED:
                type_, value = E.TASK_COMPLETED, child.output
            elif child.state is S.FAILED and child.output is not None:
                type_, value = E.TASK_FAILED, child.output
            else:  # the same error the embedded engine records (flux.runtime.history)
                error = child_failure(started.name, child_id, child.state is S.CANCELLED)
                type_, value = E.TASK_FAILED, codec.encode(error)
            seq += 1
            out.append(StoredEvent(eid, seq, type_.value, call_id, started.name, value, now))
        return out

    async def _start_child(self, parent: ExecutionRecord | None, started: StoredEvent) -> None:
        """Create the child execution a TASK_STARTED event announces (idempotent)."""
        if parent is None or started.value is None:
            return
        try:
            raw = codec.decode_opaque(started.value)
            child_id = raw["child_id"]
            args = raw.get("args") or [None]
            input_data = codec.encode_opaque(args[0])
        except Exception as exc:
            log.warning("bad subworkflow start in %s: %s", parent.execution_id, exc)
            return
        if not isinstance(child_id, str):
            return
        if await self.store.get_execution(child_id) is not None:
            return
        name = started.name
        try:
            version = await self._child_version(parent, name)
        except FluxError as exc:
            log.error("cannot start subworkflow %s of %s: %s", name, parent.execution_id, exc)
            return
        try:
            await self._create(child_id, name, version, input_data, parent.execution_id)
        except StoreError as exc:
            if "already exists" not in str(exc):
                log.error("cannot create subworkflow %s: %s", child_id, exc)

    async def _child_version(self, parent: ExecutionRecord, name: str) -> int:
        """The version of workflow ``name`` with the same source as the parent's pinned one
        (saved as a new version if there is none): a child runs the code its parent ran."""
        source, source_hash = await self._source(parent.workflow_name, parent.workflow_version)
        version = await self.store.workflow_version_by_hash(name, source_hash)
        if version is None:
            saved = await self.store.save_workflow(name, source.decode("utf-8"), source_hash)
            version = saved.version
        return version
