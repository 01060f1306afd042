"""What the HTTP API asks of the dispatcher: start, resume, cancel, watch (a part of
:class:`flux.net.dispatch.Dispatcher`). Several servers on one database: a cancel of an
execution a worker of another server holds is stored and announced (see :mod:`flux.net.peers`).
"""

from __future__ import annotations

import logging
import uuid

import attrs
import trio

from flux.net import protocol as p
from flux.net.dispatch_types import (
    _LEASED,
    ExecutionConflictError,
    _view,
)
from flux.runtime import executions
from flux.runtime.errors import (
    ExecutionNotFoundError,
    StoreError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.retry import create_retry, latest_version
from flux.runtime.store import ExecutionRecord, StaleWriteError, Write

log = logging.getLogger("flux.dispatch")

E = ExecutionEventType
S = ExecutionState


class Operations:
    """Start, resume, cancel and watch executions (a part of
    :class:`~flux.net.dispatch.Dispatcher`)."""

    # ------------------------------------------------------------------ API operations

    async def start(
        self, name: str, input_data: bytes, *, version: int | None = None
    ) -> ExecutionRecord:
        """Create an execution of the latest (or given) version of workflow ``name`` and queue
        it. ``input_data`` is the codec-encoded input."""
        wf = await self.store.get_workflow(name, version)
        if wf is None:
            raise WorkflowNotFoundError(name)
        self._sources.setdefault((wf.name, wf.version), (wf.source.encode(), wf.source_hash))
        return await self._create(uuid.uuid4().hex, name, wf.version, input_data, None)

    async def _create(
        self,
        execution_id: str,
        name: str,
        version: int,
        input_data: bytes,
        parent_id: str | None,
    ) -> ExecutionRecord:
        """Store a new execution (its row and WORKFLOW_STARTED) and queue it."""
        write = executions.creation(
            execution_id, name, input_data, self.wall(), version=version, parent_id=parent_id
        )
        await self._commit(write)
        self.submit(execution_id)
        assert write.insert is not None
        return write.insert

    async def retry(self, execution_id: str, *, latest: bool = False) -> list[ExecutionRecord]:
        """Retry a FAILED execution (flux.runtime.retry): store the new execution with the
        original's history up to its failure, and queue it (and its failed children's retries,
        listed after it) like a recovered one. ``latest``: run the workflow's latest version."""
        versions = latest_version(self.store) if latest else None
        plan = await create_retry(self.store, execution_id, version_for=versions, clock=self.wall)
        for rec in plan.records:
            self.submit(rec.execution_id)
        return plan.records

    def watch(self, execution_id: str) -> trio.Event:
        """An event set when the execution completes, fails, is cancelled or pauses."""
        event = trio.Event()
        self._settled.setdefault(execution_id, []).append(event)
        return event

    def unwatch(self, execution_id: str, event: trio.Event) -> None:
        waiters = self._settled.get(execution_id)
        if waiters and event in waiters:
            waiters.remove(event)
            if not waiters:
                del self._settled[execution_id]

    async def resume(self, execution_id: str, value_data: bytes) -> ExecutionRecord:
        """Resume a paused execution: append WORKFLOW_RESUMED and TASK_RESUMED (carrying the
        codec-encoded ``value_data``) for each waiting pause, and queue it."""

        rec = await self.store.get_execution(execution_id)
        if rec is None:
            raise ExecutionNotFoundError(execution_id)
        if rec.state is not S.PAUSED or execution_id in self._leases:
            raise ExecutionConflictError(
                f"execution {execution_id} is {rec.state.value}, not PAUSED: nothing to resume"
            )
        events = await self.store.load_events(execution_id)
        # subworkflows it waits for that are paused get the value too (as embedded)
        for _, child in await self._open_children(rec, events):
            if child.state is S.PAUSED:
                try:
                    await self.resume(child.execution_id, value_data)
                except ExecutionConflictError:
                    pass
        seq = events[-1].seq if events else 0
        new = executions.resumption_events(
            execution_id, rec.workflow_name, _view(events), seq, value_data, self.wall()
        )
        try:
            await self._commit(
                Write(
                    execution_id,
                    new,
                    update={"state": S.SCHEDULED.value},
                    expect={"lease_epoch": rec.lease_epoch, "state": S.PAUSED.value},
                )
            )
        except StaleWriteError:
            raise ExecutionConflictError(
                f"execution {execution_id} changed while being resumed; it is not PAUSED"
            ) from None
        self.submit(execution_id)
        return attrs.evolve(rec, state=S.SCHEDULED)

    async def cancel(self, execution_id: str) -> ExecutionRecord:
        """Cancel an execution; returns its record as it is now.

        Running (leased): the worker holding the lease gets ``cancel`` at once; its running tasks
        are cancelled (innermost first), their rollbacks run, and it records WORKFLOW_CANCELLED.
        Meanwhile the state is CANCELLING; the request is stored, so a lease granted later (after
        an expiry or a restart) carries it too. Queued, sleeping, waiting or paused: it ends
        CANCELLED here and now. Raises :class:`ExecutionNotFoundError`, or
        :class:`ExecutionConflictError` when it has already ended."""
        for _ in range(10):
            rec = await self.store.get_execution(execution_id)
            if rec is None:
                raise ExecutionNotFoundError(execution_id)
            if rec.state.is_terminal:
                raise ExecutionConflictError(
                    f"execution {execution_id} is {rec.state.value}: nothing to cancel"
                )
            lease = self._leases.get(execution_id)
            # several servers: a worker of another one may hold it; the store and a
            # notification get the request there
            elsewhere = lease is None and self.shared and rec.state in _LEASED
            if lease is not None or elsewhere:
                if lease is not None:
                    lease.cancel_requested = True
                try:
                    await self._commit(
                        Write(
                            execution_id,
                            update={"state": S.CANCELLING.value, "cancel_requested": 1},
                            expect={"lease_epoch": rec.lease_epoch, "state": rec.state.value},
                        )
                    )
                except StaleWriteError:
                    continue  # a grant or a write got in between: look again
                if self.peers is not None:
                    self.peers.announce("c", execution_id)
                if lease is not None and lease.epoch is not None and lease.epoch == rec.lease_epoch:
                    # not waited for here: a worker slow to read must not hold up the API
                    assert self._nursery is not None
                    self._nursery.start_soon(
                        self._send,
                        lease.worker,
                        p.Cancel(execution_id=execution_id, epoch=lease.epoch),
                    )
                log.info("cancel of %s sent to %s", execution_id, self.lease_of(execution_id))
                return attrs.evolve(rec, state=S.CANCELLING, cancel_requested=True)
            done = await self._cancel_idle(execution_id, rec)
            if done is not None:
                return done
        raise ExecutionConflictError(f"execution {execution_id} keeps changing; try again")

    async def _cancel_idle(
        self, execution_id: str, rec: ExecutionRecord | None = None
    ) -> ExecutionRecord | None:
        """Cancel an execution nobody runs: WORKFLOW_CANCELLED and state CANCELLED in one write
        fenced on its epoch and state. None if it changed meanwhile (the caller looks again)."""
        if rec is None:
            rec = await self.store.get_execution(execution_id)
            if rec is None or rec.state.is_terminal:
                return rec
        if execution_id in self._leases:
            return None
        seq = await self.store.last_seq(execution_id)
        expect = {"lease_epoch": rec.lease_epoch, "state": rec.state.value}
        try:
            await self._commit(
                executions.cancellation(
                    execution_id, rec.workflow_name, seq, self.wall(), expect
                )
            )
        except StoreError as exc:
            log.info("cancel of %s raced with a change: %s", execution_id, exc)
            return None
        done = attrs.evolve(
            rec,
            state=S.CANCELLED,
            output=executions.CANCELLED_OUTPUT,
            wake_at=None,
            lease_owner=None,
            lease_expires_at=None,
            cancel_requested=True,
        )
        await self._after_end(done, S.CANCELLED)
        return done
