"""How the dispatcher applies the frames of its workers (a part of
:class:`flux.net.dispatch.Dispatcher`, split out to keep modules small): fencing in memory,
per-lease order, heartbeats, event batches, releases, completions, secrets and the cache.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from flux.net import dispatch_signals, task_logs
from flux.net import protocol as p
from flux.net.dispatch_types import (
    _TERMINAL_EVENTS,
    WorkerLink,
    _Lease,
)
from flux.net.leases import (
    Cause,
    advance,
    fence,
)
from flux.net.security import declared_secrets, secrets_for_call, task_secret_declarations
from flux.runtime import codec
from flux.runtime.errors import (
    FluxError,
    StoreError,
)
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.secrets import redact_encoded
from flux.runtime.store import ExecutionRecord, StaleWriteError, StoredEvent, Write

log = logging.getLogger("flux.dispatch")

E = ExecutionEventType
S = ExecutionState


class WorkerFrames:
    """The dispatcher's handling of what workers send: heartbeats, event batches, releases,
    completions, secrets and cache requests (a part of :class:`~flux.net.dispatch.Dispatcher`)."""

    # ------------------------------------------------------------------ messages from workers

    async def _current(self, link: WorkerLink, execution_id: str, epoch: int) -> _Lease | None:
        lease = self._leases.get(execution_id)
        why = fence(
            None if lease is None else lease.phase,
            None if lease is None or lease.worker is None else lease.worker.worker_id,
            None if lease is None else lease.epoch,
            link.worker_id,
            epoch,
        )
        if why is not None or lease is None or lease.worker is not link:
            await self._reject(link, execution_id, epoch, why or "leased to another session")
            return None
        return lease

    async def on_message(self, link: WorkerLink, msg: p.Message) -> None:
        """Handle one message from a worker (the session state machine already checked it).
        Returns once it is queued; may wait for room (backpressure)."""
        if isinstance(msg, p.Heartbeat):
            await self.on_heartbeat(link, msg)
        elif isinstance(msg, p.Events | p.Release | p.Complete):
            lease = await self._current(link, msg.execution_id, msg.epoch)
            if lease is None:
                return
            link.blocked += 1
            try:
                await link.limiter.acquire()
            finally:
                link.blocked -= 1
            lease.expires = trio.current_time() + self.settings.lease_ttl
            lease.queue.append((link, msg))
            if not lease.draining:
                lease.draining = True
                assert self._nursery is not None
                self._nursery.start_soon(self._drain, lease)
        elif isinstance(msg, p.SecretsRequest):
            lease = await self._current(link, msg.execution_id, msg.epoch)
            if lease is not None:
                assert self._nursery is not None
                self._nursery.start_soon(self._answer_secrets, link, msg, lease)
        elif isinstance(msg, p.CacheGet | p.CachePut):
            lease = await self._current(link, msg.execution_id, msg.epoch)
            if lease is not None:
                if isinstance(msg, p.CachePut) and lease.secrets:
                    masked = redact_encoded(msg.value, lease.secrets)
                    if masked is not msg.value:
                        msg = attrs.evolve(msg, value=masked)
                assert self._nursery is not None
                self._nursery.start_soon(self._cache, link, msg)
        elif isinstance(msg, p.SignalSend):
            lease = await self._current(link, msg.execution_id, msg.epoch)
            assert self._nursery is not None
            self._nursery.start_soon(dispatch_signals.from_worker, self, link, msg, lease)
        elif isinstance(msg, p.Logs):
            await task_logs.receive(self, link, msg)
        else:  # pragma: no cover - the session state machine lets nothing else through
            log.warning("unexpected %s from %s", msg.TYPE, link.worker_id)

    #: At most this many leases named by one heartbeat are answered with a Reject (a heartbeat
    #: naming more than the worker can hold is not from a well-behaved worker).
    MAX_REJECTS_PER_HEARTBEAT = 1000

    async def on_heartbeat(self, link: WorkerLink, msg: p.Heartbeat) -> None:
        deadline = trio.current_time() + self.settings.lease_ttl
        link.last_heartbeat = self.wall()
        if link.zombies:
            link.zombies &= {execution_id for execution_id, _ in msg.leases}
            self._dispatch()
        lost: list[tuple[str, int]] = []
        cancels: list[tuple[str, int]] = []
        held: list[tuple[str, int]] = []
        for execution_id, epoch in msg.leases:
            lease = self._leases.get(execution_id)
            if lease is not None and lease.worker is link and lease.epoch == epoch:
                lease.expires = deadline
                lease.phase = advance(lease.phase, Cause.EXTENDED)
                held.append((execution_id, epoch))
                if lease.cancel_requested:  # in case the first Cancel came too early
                    cancels.append((execution_id, epoch))
            elif link.ended.get(execution_id) != epoch:  # not one it just ended itself
                lost.append((execution_id, epoch))
        if held and self.peers is not None:  # the other servers read the expiry in the store
            self.peers.renew(link, held)
        for execution_id, epoch in cancels:
            await self._send(link, p.Cancel(execution_id=execution_id, epoch=epoch))
        if not lost:
            return
        # one line however many: a heartbeat names at most what the worker sent, and that is
        # not a reason for the log to grow by as many lines
        shown = ", ".join(f"{eid} epoch {epoch}" for eid, epoch in lost[:3])
        more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
        log.info(
            "heartbeat of %s names %d lease(s) it does not hold: %s%s; rejected",
            link.worker_id,
            len(lost),
            p.truncate_utf8(shown, 300),
            more,
        )
        for execution_id, epoch in lost[: self.MAX_REJECTS_PER_HEARTBEAT]:
            if link.closed:
                return
            await self._reject(link, execution_id, epoch, "lease lost", quiet=True)

    async def _drain(self, lease: _Lease) -> None:
        try:
            while lease.queue:
                link, msg = lease.queue.popleft()
                try:
                    if self._leases.get(lease.execution_id) is not lease:
                        await self._reject(link, lease.execution_id, msg.epoch, "lease ended")
                    elif isinstance(msg, p.Events):
                        await self._apply_events(lease, link, msg)
                    elif isinstance(msg, p.Release):
                        await self._apply_release(lease, link, msg)
                    else:
                        assert isinstance(msg, p.Complete)
                        await self._apply_complete(lease, link, msg)
                finally:
                    link.limiter.release()
        finally:
            lease.draining = False

    async def _apply_events(self, lease: _Lease, link: WorkerLink, msg: p.Events) -> None:
        eid = lease.execution_id
        try:
            events = [p.event_from_wire(eid, e, self.wall()) for e in msg.events]
        except ValueError as exc:
            return await self._broken(lease, link, msg.epoch, str(exc))
        if lease.secrets:
            events = [self._masked(e, lease.secrets) for e in events]
        for i, e in enumerate(events):
            if e.seq != lease.next_seq + i:
                return await self._broken(
                    lease,
                    link,
                    msg.epoch,
                    f"event seq {e.seq} where {lease.next_seq + i} was expected",
                )
        state = S(msg.state) if msg.state is not None else None
        update: dict[str, Any] | None = None
        ending = state is not None and state not in (S.RUNNING, S.CLAIMED)
        if state is not None and state.is_terminal:
            output = next((e.value for e in reversed(events) if e.type in _TERMINAL_EVENTS), None)
            update = {"state": state.value, "output": output, "wake_at": None}
        elif state is not None:
            update = {"state": state.value, "wake_at": None}
        if ending:
            assert update is not None
            update.update(lease_owner=None, lease_expires_at=None)
        write = Write(
            eid,
            events,
            update=update,
            expect={"lease_epoch": lease.epoch},
            signals=msg.signals or (),
        )
        try:
            await self._commit(write)
        except StaleWriteError as exc:
            await self._reject(link, eid, msg.epoch, str(exc))
            self._end_lease(lease, Cause.FENCED)
            return
        except StoreError as exc:
            log.error("write of execution %s refused: %s", eid, exc)
            return await self._broken(lease, link, msg.epoch, f"write refused: {exc}")
        lease.next_seq += len(events)
        # a session closing meanwhile only means the ack goes nowhere: the write is durable
        await self._send(link, p.Ack(execution_id=eid, epoch=msg.epoch, batch=msg.batch))
        for e in events:
            if e.type == "TASK_STARTED" and e.value is not None and b"child_id" in e.value:
                await self._start_child(lease.record, e)
        if ending:
            assert state is not None
            self._ended_by_worker(link, lease)
            self._end_lease(lease)
            if lease.cancel_requested and not state.is_terminal:
                await self._cancel_idle(eid)
                return
            await self._after_end(lease.record, state)

    async def _broken(self, lease: _Lease, link: WorkerLink, epoch: int, why: str) -> None:
        """A lease whose writes make no sense: stop it and run the execution again."""
        await self._reject(link, lease.execution_id, epoch, why)
        self._end_lease(lease, Cause.BROKEN, requeue=True)

    @staticmethod
    def _masked(e: StoredEvent, secrets: set[str]) -> StoredEvent:
        value = redact_encoded(e.value, secrets)
        if value is e.value:
            return e
        return attrs.evolve(e, value=value)

    async def _apply_release(self, lease: _Lease, link: WorkerLink, msg: p.Release) -> None:
        eid = lease.execution_id
        if msg.reason == "shutdown":
            link.stopping = True
            self._end_lease(lease, requeue=True)
            return
        if msg.reason == "sleeping":
            update = {"state": S.SCHEDULED.value, "wake_at": msg.wake_at}
        else:
            update = {"state": S.PAUSED.value, "wake_at": None}
        update.update(lease_owner=None, lease_expires_at=None)
        try:
            await self._commit(Write(eid, update=update, expect={"lease_epoch": lease.epoch}))
        except StoreError as exc:
            await self._reject(link, eid, msg.epoch, str(exc))
            self._end_lease(lease, Cause.FENCED)
            return
        self._ended_by_worker(link, lease)
        self._end_lease(lease)
        if lease.cancel_requested:  # the cancel crossed the release: cancel it where it is
            await self._cancel_idle(eid)
        elif msg.reason == "sleeping":
            assert msg.wake_at is not None
            self.wake_at(eid, msg.wake_at)
            await dispatch_signals.wake_if_ready(self, eid)  # a signal came while it ran
            await dispatch_signals.settle_if_waiting(self, lease.record)
        else:
            await self._after_end(lease.record, S.PAUSED)

    async def _apply_complete(self, lease: _Lease, link: WorkerLink, msg: p.Complete) -> None:
        eid = lease.execution_id
        output = msg.output
        if output is not None and not isinstance(output, bytes):
            output = codec.encode(output)
        if lease.secrets:
            output = redact_encoded(output, lease.secrets)
        update = {
            "state": msg.state,
            "output": output,
            "wake_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        try:
            await self._commit(Write(eid, update=update, expect={"lease_epoch": lease.epoch}))
        except StoreError as exc:
            await self._reject(link, eid, msg.epoch, str(exc))
            self._end_lease(lease, Cause.FENCED)
            return
        self._ended_by_worker(link, lease)
        self._end_lease(lease)
        await self._after_end(lease.record, S(msg.state))

    async def _answer_secrets(
        self, link: WorkerLink, msg: p.SecretsRequest, lease: _Lease | None = None
    ) -> None:
        """Secrets go only to the worker holding the execution's current lease (checked by the
        caller), for a task call of that execution that has started and not ended, and only
        the names that task declares in ``secret_requests`` (when the source declares them
        statically; else the names any task of the source declares). Other names are answered
        as missing. Values are never logged."""
        values: dict[str, str] = {}
        missing: list[str] = []
        allowed: frozenset[str] | None = frozenset()
        rec = lease.record if lease is not None else None
        if rec is not None:
            try:
                allowed = await self._allowed_secrets(rec, msg.call_id)
            except Exception as exc:
                log.warning("cannot check the secrets of %s: %s", msg.execution_id, exc)
                allowed = frozenset()
        for name in msg.names:
            if allowed is not None and name not in allowed:
                log.warning(
                    "worker %s asked for secret %r for %s in %s, which that task does not "
                    "declare: refused",
                    link.worker_id,
                    name,
                    msg.call_id,
                    msg.execution_id,
                )
                missing.append(name)
                continue
            try:
                if self.secrets is None:
                    raise FluxError("no secret store")
                values[name] = await self.secrets.get(name)
            except Exception:
                missing.append(name)
        if lease is not None:
            lease.secrets.update(v for v in values.values() if v)
        await self._send(link, p.Secrets(request_id=msg.request_id, values=values, missing=missing))

    async def _allowed_secrets(self, rec: ExecutionRecord, call_id: str) -> frozenset[str] | None:
        source, digest = await self._source(rec.workflow_name, rec.workflow_version)
        if digest not in self._declared:
            text = source.decode("utf-8")
            self._declared[digest] = (
                await trio.to_thread.run_sync(task_secret_declarations, text),
                await trio.to_thread.run_sync(declared_secrets, text),
            )
        per_task, whole_source = self._declared[digest]
        # the call must have started (its TASK_STARTED acknowledged) and not ended
        name = None
        for event in await self.store.load_events(rec.execution_id):
            if event.call_id != call_id:
                continue
            if event.type == E.TASK_STARTED.value:
                name = event.name
            elif event.type in (
                E.TASK_COMPLETED.value,
                E.TASK_FAILED.value,
                E.TASK_CANCELLED.value,
            ):
                name = None
        if name is None:
            return frozenset()
        if per_task is None:
            return whole_source
        return secrets_for_call(per_task, name)

    async def _cache(self, link: WorkerLink, msg: p.CacheGet | p.CachePut) -> None:
        """The task cache lives in the store, shared by every worker and the embedded engine."""
        now = self.wall()
        if isinstance(msg, p.CachePut):
            expires = now + msg.ttl if msg.ttl else None
            try:
                await self.store.cache_put(msg.key, msg.value, expires)
            except StoreError as exc:
                log.warning("cache put from %s refused: %s", link.worker_id, exc)
            return
        try:
            value = await self.store.cache_get(msg.key, now)
        except StoreError as exc:
            log.warning("cache get from %s failed: %s", link.worker_id, exc)
            value = None
        await self._send(link, p.CacheValue(request_id=msg.request_id, value=value))
