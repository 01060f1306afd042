"""The server's scheduling core: push dispatch, leases with epochs, heartbeats, fencing, timers.

No HTTP and no sockets here: a connected worker is a :class:`WorkerLink` whose ``send`` puts one
protocol message on its way (the server's WebSocket shell provides it; tests pass a list). The
dispatcher owns the in-memory truth about who runs what, and the store owns the durable truth:

* **Push.** :meth:`Dispatcher.submit` puts an execution on the ready queue and, in the same call,
  hands it to the connected worker with the most free slots. A worker's capacity coming free
  (a lease ending, a worker connecting) dispatches again at once. Nothing polls.
* **Leases.** Granting commits ``lease_epoch + 1`` (fenced on the old epoch) before the Lease
  frame is sent, with the history the worker replays. Heartbeats (and every accepted write)
  extend a lease by ``lease_ttl``; one timer task sleeps until the earliest expiry, so a lease not
  extended in time expires on the dot and its execution is dispatched again with epoch + 1.
* **Fencing.** Events, releases and completions name their epoch. Anything for a lease that is not
  the current one of that worker gets a Reject and touches nothing; every write also carries
  ``expect={"lease_epoch": epoch}`` so the store refuses it should memory ever be wrong.
* **Order.** The messages of one lease are applied one after the other (a per-lease queue); the
  writes of different leases go to the store concurrently, so group commit batches them.
* **Timers.** Executions released on a long durable sleep are dispatched again at their wake time
  by one timer task sleeping until the earliest wake time.
* **Subworkflows.** A TASK_STARTED event carrying ``child_id`` creates the child execution. A
  parent waiting for children is released (state SCHEDULED); when a child ends, its outcome is
  appended to the parent's history (TASK_COMPLETED / TASK_FAILED at the call id, exactly what the
  embedded engine records) and the parent is dispatched again. A parent whose every awaited
  child is PAUSED pauses too (as embedded); resuming it resumes those children with the value.
* **Listeners.** Every write with events goes through :meth:`Dispatcher._commit`, which hands
  the committed events to the execution's :class:`EventListener` s (the API's event streams).
* **Cancel.** :meth:`Dispatcher.cancel` sends ``cancel`` to the worker holding the lease (and
  again with the next grant and every heartbeat until the lease ends), or cancels an execution
  nobody runs in one fenced write.
* **Flow control.** Every message to a worker is awaited into its session's bounded outbox
  (nothing is dropped); a session that takes nothing for ``request_timeout`` seconds is closed
  by the server shell, and its leases expire and are granted again. A link that is closed or
  closing makes a send a no-op that returns False: a session race never escapes its session
  (no exception reaches the dispatcher's nursery, no execution fails for it). While a worker's
  reads wait for room (its writes in flight are bounded), its leases do not expire: it is alive,
  the server is what is slow.
* **Secrets.** The values handed to a lease are masked in every event and output it writes
  (:func:`flux.runtime.secrets.redact_encoded`), whatever the worker did.
* **Several servers.** On a store several servers share (PostgreSQL, ``store.shared``), a lease
  is owned ``"<server id>/<worker id>"`` in the store and renewed there at every heartbeat; a
  grant leaves alone an execution a live worker of another server holds
  (:func:`flux.net.leases.decide_grant`), and is fenced on the epoch, so of two servers granting
  one execution exactly one wins. :class:`~flux.net.peers.Peers` wakes the other servers
  (NOTIFY) and polls the store for due sleeps, expired leases and lost wake-ups.

The lease lifecycle (phases, causes, decisions) is data in :mod:`flux.net.leases`; this module is
the shell around it, in parts: :mod:`~flux.net.dispatch_types` (values),
:mod:`~flux.net.dispatch_frames` (what workers send), :mod:`~flux.net.dispatch_children` (after
a lease ends, subworkflows), :mod:`~flux.net.dispatch_ops` (start, resume, cancel) and
:mod:`~flux.net.peers` (other servers).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from flux.net import dispatch_signals
from flux.net import protocol as p
from flux.net.dispatch_children import Children
from flux.net.dispatch_frames import WorkerFrames
from flux.net.dispatch_ops import Operations
from flux.net.dispatch_types import (
    DispatcherStatistics,
    DispatchSettings,
    EventListener,
    ExecutionConflictError,
    WorkerLink,
    _Lease,
)
from flux.net.leases import (
    Cause,
    GrantDecision,
    Phase,
    advance,
    decide_grant,
    expiry_due,
)
from flux.net.peers import PeerHooks, Peers
from flux.net.signal import Signal
from flux.runtime import codec
from flux.runtime.errors import (
    StoreError,
    WorkflowError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.records import SignalRecord
from flux.runtime.store import ExecutionRecord, StaleWriteError, Store, StoredEvent, Write

__all__ = [
    "DispatchSettings",
    "Dispatcher",
    "DispatcherStatistics",
    "ExecutionConflictError",
    "WorkerLink",
]

log = logging.getLogger("flux.dispatch")

E = ExecutionEventType
S = ExecutionState

#: what may end a lease whose grant is in flight (anything else ends it as lost)
_GRANT_ENDINGS = frozenset({Cause.REFUSED, Cause.LOST, Cause.FENCED})


class Dispatcher(WorkerFrames, Children, Operations, PeerHooks):
    """Leases executions to connected workers; see the module docstring.

    Run it with ``await nursery.start(dispatcher.run)``; it recovers the store's queued and running
    executions first. ``wall`` is the clock of wake times (Unix seconds); lease expiry uses trio's
    clock, so tests drive it with ``autojump_clock``.
    """

    def __init__(
        self,
        store: Store,
        settings: DispatchSettings | None = None,
        *,
        secrets: Any = None,
        wall: Callable[[], float] = time.time,
    ):
        self.store = store
        self.settings = settings or DispatchSettings()
        #: Several servers on this database (PostgreSQL): leases are owned ``server/worker``,
        #: and :class:`~flux.net.peers.Peers` wakes the others and polls the store.
        self.shared = bool(getattr(store, "shared", False))
        self.server_id = uuid.uuid4().hex[:12]
        self.peers: Peers | None = Peers(self) if self.shared else None
        self.secrets = secrets
        self.wall = wall
        self.workers: dict[str, WorkerLink] = {}
        self._leases: dict[str, _Lease] = {}
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = itertools.count()
        self._timer_changed = Signal()
        self._lease_added = Signal()
        self._settled: dict[str, list[trio.Event]] = {}
        self._listeners: dict[str, set[EventListener]] = {}
        #: per source digest: each task's declared secrets, and those of the whole source
        self._declared: dict[str, tuple[Any, frozenset[str] | None]] = {}
        self._sources: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._nursery: trio.Nursery | None = None
        #: called with the record of each execution that ended or paused (schedules)
        self.on_end: list[Callable[[ExecutionRecord], None]] = []
        self._granted = 0
        self._expired = 0
        self._rejected = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from the store, then serve timers and lease expiry until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.recover()
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(self._timer_loop)
            if self.peers is not None:
                await nursery.start(self.peers.run)
            task_status.started()

    async def recover(self) -> None:
        """Queue what the store says is runnable: SCHEDULED executions (at their wake time if
        they sleep) and RUNNING ones, whose lease nobody holds any more once their ttl passed."""
        queued = await self.store.list_executions(state=[S.CREATED, S.SCHEDULED], limit=None)
        now = self.wall()
        for rec in reversed(queued):  # oldest first
            if rec.wake_at is not None and rec.wake_at > now:
                self.wake_at(rec.execution_id, rec.wake_at)
                await dispatch_signals.wake_if_ready(self, rec.execution_id)
            elif rec.wake_at is None and await dispatch_signals.waits_only_for_signals(self, rec):
                continue  # a signal submits it
            else:
                self.submit(rec.execution_id)
        if self.shared:  # other servers' leases: the store says when they expire (Peers)
            running = []
        else:
            running = await self.store.list_executions(
                state=[S.RUNNING, S.CLAIMED, S.CANCELLING], limit=None
            )
        deadline = trio.current_time() + self.settings.lease_ttl
        for rec in reversed(running):
            lease = _Lease(rec.execution_id, None, deadline, rec.lease_epoch, Phase.HELD)
            self._leases[rec.execution_id] = lease
        if running:
            self._lease_added.set()
            log.info(
                "recovered %d running execution(s): dispatched again once their lease "
                "expires (%.1fs)",
                len(running),
                self.settings.lease_ttl,
            )
        if queued:
            log.info("recovered %d queued execution(s)", len(queued))

    def statistics(self) -> DispatcherStatistics:
        open_links = [w for w in self.workers.values() if not w.closed]
        return DispatcherStatistics(
            workers=len(open_links),
            capacity=sum(w.capacity for w in open_links),
            leases=len(self._leases),
            ready=len(self._ready),
            timers=len(self._timers),
            granted=self._granted,
            expired=self._expired,
            rejected=self._rejected,
        )

    def lease_of(self, execution_id: str) -> tuple[str | None, int | None] | None:
        """``(worker_id, epoch)`` of the current lease of an execution, or None."""
        lease = self._leases.get(execution_id)
        if lease is None:
            return None
        return (lease.worker.worker_id if lease.worker else None, lease.epoch)

    def workers_info(self) -> list[dict[str, Any]]:
        """The connected workers with their leases (for ``GET /workers``)."""
        now = trio.current_time()
        out = []
        for link in self.workers.values():
            if link.closed:
                continue
            leases = []
            for eid in sorted(link.leases):
                lease = self._leases.get(eid)
                if lease is None:
                    continue
                leases.append(
                    {
                        "execution_id": eid,
                        "epoch": lease.epoch,
                        "expires_in": round(max(lease.expires - now, 0.0), 3),
                    }
                )
            out.append(
                {
                    "id": link.worker_id,
                    "name": link.name,
                    "capacity": link.capacity,
                    "free": max(link.free, 0),
                    "stopping": link.stopping,
                    "connected_at": link.connected_at,
                    "last_heartbeat": link.last_heartbeat,
                    "leases": leases,
                }
            )
        return out

    # ------------------------------------------------------------------ event notifications

    def listen(self, execution_id: str, limit: int = 10_000) -> EventListener:
        """Get every event of ``execution_id`` committed from now on (until :meth:`unlisten`)."""
        listener = EventListener(execution_id, limit)
        self._listeners.setdefault(execution_id, set()).add(listener)
        if self.peers is not None:  # its events may be written through another server
            self.peers.follow(execution_id)
        return listener

    def unlisten(self, listener: EventListener) -> None:
        found = self._listeners.get(listener.execution_id)
        if found is not None:
            found.discard(listener)
            if not found:
                del self._listeners[listener.execution_id]

    async def _commit(self, write: Write) -> None:
        """Commit one write through the store's group commit; once it is durable, hand its
        events to the execution's listeners. A refused write raises and tells nobody."""
        await self.store.commit(write)
        if write.events:
            for listener in list(self._listeners.get(write.execution_id, ())):
                listener.push(list(write.events))
            if self.peers is not None:
                self.peers.committed(write.execution_id)

    # ------------------------------------------------------------------ workers

    def add_worker(
        self,
        worker_id: str,
        name: str,
        capacity: int,
        send: Callable[[p.Message], Awaitable[None] | None],
    ) -> WorkerLink:
        """Register a connected worker; its capacity is capped at ``settings.max_capacity``."""
        limit = self.settings.max_capacity
        if capacity > limit:
            log.warning(
                "worker %s claims capacity %d, over the maximum %d: leasing it at most %d",
                worker_id,
                capacity,
                limit,
                limit,
            )
            capacity = limit
        link = WorkerLink(worker_id, name, capacity, send)
        self.workers[worker_id] = link
        log.info("worker %s (%s) connected with capacity %d", worker_id, name, capacity)
        self._dispatch()
        return link

    def remove_worker(self, link: WorkerLink) -> None:
        """The worker's session ended. Its leases stay until they expire: the worker may still
        be running them (a network split), and fencing refuses whatever it writes later."""
        link.closed = True
        self.workers.pop(link.worker_id, None)
        log.info("worker %s disconnected holding %d lease(s)", link.worker_id, len(link.leases))

    async def _send(
        self, link: WorkerLink | None, msg: p.Message, *, oversize_raises: bool = False
    ) -> bool:
        """Send ``msg`` to ``link``; True if it is on its way. A closed or closing session, or
        any failure of it, gives False (logged): it never escapes. A frame over the limit
        raises ``LocalProtocolError`` only with ``oversize_raises`` (the grant fails the
        execution then); otherwise it is logged and dropped like a closed session."""
        if link is None or link.closed:
            return False
        try:
            pending = link.send(msg)
            if pending is not None:
                link.sending += 1
                try:
                    await pending
                finally:
                    link.sending -= 1
        except p.LocalProtocolError as exc:
            if exc.code == "too-large" and oversize_raises:
                raise
            if exc.code == "too-large":
                log.warning("cannot send %s to worker %s: %s", msg.TYPE, link.worker_id, exc)
                return False
            error: Exception = exc
        except Exception as exc:
            error = exc
        else:
            return True
        # the session is closed or closing: lease this worker nothing more (its session's end
        # removes it; its leases expire as usual)
        if not link.closed:
            log.info("worker %s is gone: cannot send %s: %s", link.worker_id, msg.TYPE, error)
        link.closed = True
        return False

    async def _reject(
        self, link: WorkerLink, execution_id: str, epoch: int, reason: str, *, quiet: bool = False
    ) -> None:
        self._rejected += 1
        if not quiet:
            log.info(
                "rejected %s epoch %d from %s: %s", execution_id, epoch, link.worker_id, reason
            )
        await self._send(link, p.Reject(execution_id=execution_id, epoch=epoch, reason=reason))

    def _reject_soon(self, link: WorkerLink, execution_id: str, epoch: int, reason: str) -> None:
        """:meth:`_reject` from code that must not wait (the expiry loop)."""
        if self._nursery is not None and not link.closed:
            self._nursery.start_soon(self._reject, link, execution_id, epoch, reason)

    # ------------------------------------------------------------------ queue and push

    def submit(self, execution_id: str) -> None:
        """Make an execution runnable now (no-op if it is leased or queued already)."""
        if execution_id in self._leases or execution_id in self._queued:
            return
        self._queued.add(execution_id)
        self._ready.append(execution_id)
        self._dispatch()

    def _pick(self) -> WorkerLink | None:
        best: WorkerLink | None = None
        for link in self.workers.values():
            if link.stopping or link.closed or link.free <= 0:
                continue
            if best is None or link.free > best.free:
                best = link
        return best

    def _dispatch(self) -> None:
        """Hand ready executions to workers with free slots, now."""
        while self._ready and self._nursery is not None:
            link = self._pick()
            if link is None:
                if self.peers is not None:  # no room here: maybe another server has some
                    self.peers.offer(self._ready)
                return
            execution_id = self._ready.popleft()
            if execution_id not in self._queued:
                continue  # dropped meanwhile (another server took it: Peers)
            self._queued.discard(execution_id)
            if execution_id in self._leases:
                continue
            lease = _Lease(execution_id, link, trio.current_time() + self.settings.lease_ttl)
            self._leases[execution_id] = lease
            link.leases.add(execution_id)
            self._lease_added.set()
            self._nursery.start_soon(self._grant, lease)

    @staticmethod
    def _ended_by_worker(link: WorkerLink, lease: _Lease) -> None:
        """The worker ended this lease itself (its last batch, a release, complete): a heartbeat
        it built before it saw the ack may still name it, and that is no lost lease."""
        link.ended[lease.execution_id] = lease.epoch
        if len(link.ended) > 1024:
            del link.ended[next(iter(link.ended))]

    def _end_lease(
        self, lease: _Lease, cause: Cause = Cause.RELEASED, *, requeue: bool = False
    ) -> None:
        lease.phase = advance(
            lease.phase,
            cause if lease.phase is not Phase.GRANTING or cause in _GRANT_ENDINGS else Cause.LOST,
        )
        if self._leases.get(lease.execution_id) is lease:
            del self._leases[lease.execution_id]
        if lease.worker is not None:
            lease.worker.leases.discard(lease.execution_id)
        if requeue:
            self.submit(lease.execution_id)
        self._dispatch()

    async def _grant(self, lease: _Lease) -> None:
        eid = lease.execution_id
        link = lease.worker
        assert link is not None
        try:
            rec = await self.store.get_execution(eid)
            decision = decide_grant(
                rec, server_id=self.server_id if self.shared else None, now=self.wall()
            )
            if decision is not GrantDecision.GRANT:
                # gone, or a worker of another server holds it: not ours to run
                self._end_lease(lease, Cause.REFUSED)
                return
            assert rec is not None
            events = await self.store.load_events(eid)
            seq = events[-1].seq if events else 0
            extra = await self._child_outcomes(rec, events, seq)
            delivered, signals = await dispatch_signals.grant_deliveries(
                self, eid, [*events, *extra]
            )
            extra += delivered
            source, _ = await self._source(rec.workflow_name, rec.workflow_version)
            epoch = rec.lease_epoch + 1
            if rec.cancel_requested:
                lease.cancel_requested = True
            await self._commit(
                Write(
                    eid,
                    extra,
                    update={
                        "state": (S.CANCELLING if lease.cancel_requested else S.RUNNING).value,
                        "lease_epoch": epoch,
                        "lease_owner": self.owner(link),
                        "lease_expires_at": self.wall() + self.settings.lease_ttl,
                        "wake_at": None,
                    },
                    # the state too: a cancel of the queued execution may have come first
                    expect={"lease_epoch": rec.lease_epoch, "state": rec.state.value},
                    signals=signals,
                )
            )
        except Exception as exc:
            log.error("cannot lease execution %s: %s", eid, exc)
            stale = isinstance(exc, StaleWriteError)
            self._end_lease(lease, Cause.REFUSED)
            if stale:  # the row changed under us: read it again
                self.submit(eid)
            return
        self._granted += 1
        if self.peers is not None:
            self.peers.granted(eid)
        if lease.phase is Phase.GRANTING:
            lease.phase = advance(lease.phase, Cause.GRANTED)
        lease.epoch = epoch
        lease.record = rec
        lease.next_seq = seq + len(extra) + 1
        lease.expires = trio.current_time() + self.settings.lease_ttl
        if self._leases.get(eid) is not lease or link.closed:
            # the worker went away (or the lease expired) before it got it: nobody runs it
            self._end_lease(lease, Cause.LOST, requeue=True)
            return
        msg = p.Lease(
            execution_id=eid,
            epoch=epoch,
            workflow_name=rec.workflow_name,
            workflow_version=rec.workflow_version or 0,
            source=source,
            input=rec.input,
            history=[p.event_to_wire(e) for e in (*events, *extra)],
            state=S.RUNNING.value,
            resume=len(events) + len(extra) > 1,
        )
        try:
            sent = await self._send(link, msg, oversize_raises=True)
        except p.LocalProtocolError as exc:
            log.error("cannot lease execution %s: %s", eid, exc)
            self._end_lease(lease)
            await self._fail_execution(rec, epoch, lease.next_seq, WorkflowError(str(exc)))
            return
        if not sent:
            # the session closed under the grant: nobody runs it, so it is leased again now
            # (fenced: the epoch just committed is the one the next grant checks)
            if self._leases.get(eid) is lease:
                self._end_lease(lease, Cause.LOST, requeue=True)
        elif lease.cancel_requested:
            await self._send(link, p.Cancel(execution_id=eid, epoch=epoch))

    async def _source(self, name: str, version: int | None) -> tuple[bytes, str]:
        key = (name, version or 0)
        cached = self._sources.get(key)
        if cached is None:
            record = await self.store.get_workflow(name, version)
            if record is None:
                raise WorkflowNotFoundError(f"{name} version {version}")
            cached = (record.source.encode("utf-8"), record.source_hash)
            self._sources[key] = cached
        return cached

    async def _fail_execution(
        self, rec: ExecutionRecord, epoch: int, seq: int, error: BaseException
    ) -> None:
        data = codec.encode(error)
        ev = StoredEvent(
            rec.execution_id,
            seq,
            E.WORKFLOW_FAILED.value,
            rec.workflow_name,
            rec.workflow_name,
            data,
            self.wall(),
        )
        try:
            await self._commit(
                Write(
                    rec.execution_id,
                    [ev],
                    update={"state": S.FAILED.value, "output": data, "lease_owner": None},
                    expect={"lease_epoch": epoch},
                )
            )
        except StoreError as exc:
            log.error("cannot fail execution %s: %s", rec.execution_id, exc)
            return
        await self._after_end(rec, S.FAILED)

    # ------------------------------------------------------------------ lease expiry

    async def _expiry_loop(self) -> None:
        while True:
            if not self._leases:
                await self._lease_added.wait()
                continue
            now = trio.current_time()
            expired = [lease for lease in self._leases.values() if lease.expires <= now]
            for lease in expired:
                self._expire(lease, now)
            if expired:
                continue
            deadline = min(lease.expires for lease in self._leases.values())
            with trio.move_on_at(deadline):
                await self._lease_added.wait()

    def _expire(self, lease: _Lease, now: float) -> None:
        link = lease.worker
        # A write of this lease in flight, or the worker's frames waiting for *us* (its
        # heartbeat may be among them), show it alive, unless what we wait for is the worker
        # itself: our sends to it wait for room, it reads nothing (stopped, hung).
        if lease.epoch is None or not expiry_due(
            lease.phase,
            expired=True,  # the caller saw its deadline pass
            writing=lease.draining,
            worker_waits_for_us=link is not None and link.blocked > 0,
            we_wait=link is not None and link.sending > 0,
        ):
            # the grant is in flight (bounded by request_timeout), or we are the slow side
            lease.expires = now + self.settings.lease_ttl
            return
        self._expired += 1
        owner = lease.worker.worker_id if lease.worker else "nobody (recovered)"
        log.warning(
            "lease of %s (epoch %s, %s) expired; dispatching it again",
            lease.execution_id,
            lease.epoch,
            owner,
        )
        if lease.worker is not None and not lease.worker.closed:
            self._reject_soon(lease.worker, lease.execution_id, lease.epoch, "lease expired")
            lease.worker.zombies.add(lease.execution_id)
        self._end_lease(lease, Cause.EXPIRED, requeue=True)

    # ------------------------------------------------------------------ timers

    async def send_signal(self, execution_id: str, topic: str, data: bytes) -> SignalRecord:
        """Queue a signal (value already encoded) for an execution; see dispatch_signals."""
        return await dispatch_signals.accept(self, execution_id, topic, data)

    def wake_at(self, execution_id: str, when: float) -> None:
        """Submit ``execution_id`` at wall time ``when``."""
        heapq.heappush(self._timers, (when, next(self._timer_seq), execution_id))
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            if not self._timers:
                await self._timer_changed.wait()
                continue
            when, _, eid = self._timers[0]
            delay = when - self.wall()
            if delay <= 0:
                heapq.heappop(self._timers)
                self.submit(eid)
                continue
            with trio.move_on_after(delay):
                await self._timer_changed.wait()

def source_hash(source: str) -> str:
    """The hash the store keeps for a workflow source."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()
