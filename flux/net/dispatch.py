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
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import trio

from flux.net import protocol as p
from flux.net import task_logs
from flux.net.security import declared_secrets, secrets_for_call, task_secret_declarations
from flux.net.signal import Signal
from flux.runtime import codec
from flux.runtime.errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    FluxError,
    StoreError,
    WorkflowError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionEvent, ExecutionEventType, ExecutionState
from flux.runtime.history import child_failure, resume_targets
from flux.runtime.patterns import child_execution_id
from flux.runtime.retry import create_retry, latest_version
from flux.runtime.secrets import redact_encoded
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

_RUNNABLE = frozenset({S.CREATED, S.SCHEDULED, S.CLAIMED, S.RUNNING, S.CANCELLING})
_SETTLED = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED})
_TERMINAL_EVENTS = frozenset(
    {E.WORKFLOW_COMPLETED.value, E.WORKFLOW_FAILED.value, E.WORKFLOW_CANCELLED.value}
)
_OUTCOMES = frozenset(
    {E.TASK_COMPLETED.value, E.TASK_FAILED.value, E.TASK_CANCELLED.value, E.TASK_RESUMED.value}
)


@attrs.frozen
class DispatchSettings:
    """Timing of leases and bounds on workers. ``heartbeat_interval`` defaults to a third of
    ``lease_ttl``; ``max_capacity`` bounds the capacity a worker may claim (a worker claiming
    more is leased at most this many executions at once)."""

    lease_ttl: float = 5.0
    heartbeat_interval: float | None = None
    max_capacity: int = 1024

    @property
    def heartbeat(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.lease_ttl / 3

    def __attrs_post_init__(self) -> None:
        if not self.lease_ttl > 0:
            raise ValueError(f"lease_ttl must be > 0, got {self.lease_ttl!r}")
        if not 0 < self.heartbeat < self.lease_ttl:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat}) must be > 0 and shorter than "
                f"lease_ttl ({self.lease_ttl})"
            )
        if isinstance(self.max_capacity, bool) or not (
            isinstance(self.max_capacity, int) and self.max_capacity >= 1
        ):
            raise ValueError(f"max_capacity must be an integer >= 1, got {self.max_capacity!r}")


@attrs.frozen
class DispatcherStatistics:
    """A snapshot of the dispatcher (see :meth:`Dispatcher.statistics`)."""

    workers: int
    capacity: int
    leases: int
    ready: int
    timers: int
    granted: int
    expired: int
    rejected: int


@attrs.define(eq=False)
class WorkerLink:
    """One connected worker as the dispatcher sees it.

    ``send`` takes a protocol message and puts it on its way to the worker: a coroutine
    function waits for room in the session's outbox (backpressure), a plain function queues it
    at once (tests). It raises ``LocalProtocolError`` (``too-large``) for a frame over the limit,
    and anything else when the session is closed or closing. ``limiter`` bounds the messages of
    this worker the dispatcher holds at once (backpressure on its socket).
    """

    worker_id: str
    name: str
    capacity: int
    send: Callable[[p.Message], Awaitable[None] | None]
    leases: set[str] = attrs.field(factory=set)
    #: Expired leases this worker may still be running: they hold a slot until a heartbeat
    #: shows the worker let go, so a hung worker gets nothing more.
    zombies: set[str] = attrs.field(factory=set)
    #: leases this worker ended itself lately (execution id -> epoch), see _ended_by_worker
    ended: dict[str, int] = attrs.field(factory=dict)
    closed: bool = False
    #: The worker is shutting down (it released an execution for that): lease it nothing more.
    stopping: bool = False
    #: Wall-clock times (Unix seconds) of the connection and of the last heartbeat (None: none).
    connected_at: float = attrs.field(factory=time.time)
    last_heartbeat: float | None = None
    limiter: trio.Semaphore = attrs.field(init=False)
    #: reads of this worker waiting for the limiter, and sends to it waiting for room
    blocked: int = 0
    sending: int = 0

    def __attrs_post_init__(self) -> None:
        self.limiter = trio.Semaphore(4 * self.capacity + 16)

    @property
    def free(self) -> int:
        return self.capacity - len(self.leases) - len(self.zombies)


@attrs.define(eq=False)
class _Lease:
    execution_id: str
    worker: WorkerLink | None
    expires: float
    epoch: int | None = None  # None while being granted
    next_seq: int = 0
    record: ExecutionRecord | None = None
    queue: deque[tuple[WorkerLink, p.Message]] = attrs.field(factory=deque)
    draining: bool = False
    #: Cancel asked for: sent with the grant and again with every heartbeat until it ends.
    cancel_requested: bool = False
    #: Secret values handed out under this lease: masked in everything it writes.
    secrets: set[str] = attrs.field(factory=set)


class EventListener:
    """Receives the events of one execution as the dispatcher commits them (see
    :meth:`Dispatcher.listen`). ``push`` never blocks: past ``limit`` buffered events the buffer
    is dropped and ``overflowed`` set, and the reader reads the store instead (no event is lost,
    the reader only falls back to the durable copy)."""

    def __init__(self, execution_id: str, limit: int = 10_000):
        self.execution_id = execution_id
        self.limit = limit
        self.events: list[StoredEvent] = []
        self.overflowed = False
        self._signal = Signal()

    def push(self, events: list[StoredEvent]) -> None:
        if self.overflowed or len(self.events) + len(events) > self.limit:
            self.overflowed = True
            self.events = []
        else:
            self.events.extend(events)
        self._signal.set()

    def take(self) -> tuple[list[StoredEvent], bool]:
        """What was pushed since the last ``take``, and whether some of it was dropped."""
        events, overflowed = self.events, self.overflowed
        self.events, self.overflowed = [], False
        return events, overflowed

    async def wait(self) -> None:
        """Return once something was pushed since the last ``take`` (at once if so already)."""
        if self.events or self.overflowed:
            return
        await self._signal.wait()


def _view(events: Iterable[StoredEvent]) -> list[ExecutionEvent]:
    """Events with types and ids only (values not decoded), for history helpers."""
    return [ExecutionEvent(e.seq, E(e.type), e.call_id, e.name) for e in events]


def _open_calls(events: list[StoredEvent]) -> dict[str, StoredEvent]:
    """TASK_STARTED events of calls that have no outcome yet, by call id."""
    started: dict[str, StoredEvent] = {}
    for e in events:
        if e.type == "TASK_STARTED":
            started[e.call_id] = e
        elif e.type in _OUTCOMES:
            started.pop(e.call_id, None)
    return started


class Dispatcher:
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
            task_status.started()

    async def recover(self) -> None:
        """Queue what the store says is runnable: SCHEDULED executions (at their wake time if
        they sleep) and RUNNING ones, whose lease nobody holds any more once their ttl passed."""
        queued = await self.store.list_executions(state=[S.CREATED, S.SCHEDULED], limit=None)
        now = self.wall()
        for rec in reversed(queued):  # oldest first
            if rec.wake_at is not None and rec.wake_at > now:
                self.wake_at(rec.execution_id, rec.wake_at)
            else:
                self.submit(rec.execution_id)
        running = await self.store.list_executions(
            state=[S.RUNNING, S.CLAIMED, S.CANCELLING], limit=None
        )
        deadline = trio.current_time() + self.settings.lease_ttl
        for rec in reversed(running):
            lease = _Lease(rec.execution_id, None, deadline, rec.lease_epoch)
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
                return
            execution_id = self._ready.popleft()
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

    def _end_lease(self, lease: _Lease, *, requeue: bool = False) -> None:
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
            if rec is None or rec.state not in _RUNNABLE:
                self._end_lease(lease)
                return
            events = await self.store.load_events(eid)
            seq = events[-1].seq if events else 0
            extra = await self._child_outcomes(rec, events, seq)
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
                        "lease_owner": link.worker_id,
                        "lease_expires_at": self.wall() + self.settings.lease_ttl,
                        "wake_at": None,
                    },
                    # the state too: a cancel of the queued execution may have come first
                    expect={"lease_epoch": rec.lease_epoch, "state": rec.state.value},
                )
            )
        except Exception as exc:
            log.error("cannot lease execution %s: %s", eid, exc)
            stale = isinstance(exc, StaleWriteError)
            self._end_lease(lease)
            if stale:  # the row changed under us: read it again
                self.submit(eid)
            return
        self._granted += 1
        lease.epoch = epoch
        lease.record = rec
        lease.next_seq = seq + len(extra) + 1
        lease.expires = trio.current_time() + self.settings.lease_ttl
        if self._leases.get(eid) is not lease or link.closed:
            # the worker went away (or the lease expired) before it got it: nobody runs it
            self._end_lease(lease, requeue=True)
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
                self._end_lease(lease, requeue=True)
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
        ours = lease.draining or (link is not None and link.blocked > 0)
        if lease.epoch is None or (ours and not (link is not None and link.sending > 0)):
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
        self._end_lease(lease, requeue=True)

    # ------------------------------------------------------------------ timers

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

    # ------------------------------------------------------------------ messages from workers

    async def _current(self, link: WorkerLink, execution_id: str, epoch: int) -> _Lease | None:
        lease = self._leases.get(execution_id)
        if lease is None or lease.worker is not link or lease.epoch != epoch:
            if lease is None:
                why = "no lease held"
            elif lease.worker is not link:
                why = f"leased to another worker (epoch {lease.epoch})"
            else:
                why = f"stale epoch: the lease is at epoch {lease.epoch}"
            await self._reject(link, execution_id, epoch, why)
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
        for execution_id, epoch in msg.leases:
            lease = self._leases.get(execution_id)
            if lease is not None and lease.worker is link and lease.epoch == epoch:
                lease.expires = deadline
                if lease.cancel_requested:  # in case the first Cancel came too early
                    cancels.append((execution_id, epoch))
            elif link.ended.get(execution_id) != epoch:  # not one it just ended itself
                lost.append((execution_id, epoch))
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
        write = Write(eid, events, update=update, expect={"lease_epoch": lease.epoch})
        try:
            await self._commit(write)
        except StaleWriteError as exc:
            await self._reject(link, eid, msg.epoch, str(exc))
            self._end_lease(lease)
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
        self._end_lease(lease, requeue=True)

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
            self._end_lease(lease)
            return
        self._ended_by_worker(link, lease)
        self._end_lease(lease)
        if lease.cancel_requested:  # the cancel crossed the release: cancel it where it is
            await self._cancel_idle(eid)
        elif msg.reason == "sleeping":
            assert msg.wake_at is not None
            self.wake_at(eid, msg.wake_at)
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
            self._end_lease(lease)
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
        now = self.wall()
        record = ExecutionRecord(
            execution_id=execution_id,
            workflow_name=name,
            workflow_version=version,
            parent_id=parent_id,
            input=input_data,
            state=S.SCHEDULED,
            created_at=now,
        )
        first = StoredEvent(execution_id, 1, E.WORKFLOW_STARTED.value, name, name, input_data, now)
        await self._commit(Write(execution_id, [first], insert=record))
        self.submit(execution_id)
        return record

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
        now = self.wall()
        name = rec.workflow_name
        targets = resume_targets(name, _view(events))
        new = [
            StoredEvent(execution_id, seq + i, type_.value, source, label, value_data, now)
            for i, (type_, source, label) in enumerate(targets, start=1)
        ]
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
                if lease.epoch is not None and lease.epoch == rec.lease_epoch:
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
        name = rec.workflow_name
        ev = StoredEvent(
            execution_id,
            seq + 1,
            E.WORKFLOW_CANCELLED.value,
            name,
            name,
            codec.encode(None),
            self.wall(),
        )
        try:
            await self._commit(
                Write(
                    execution_id,
                    [ev],
                    update={
                        "state": S.CANCELLED.value,
                        "output": codec.encode(None),
                        "wake_at": None,
                        "cancel_requested": 1,
                    },
                    expect={"lease_epoch": rec.lease_epoch, "state": rec.state.value},
                )
            )
        except StoreError as exc:
            log.info("cancel of %s raced with a change: %s", execution_id, exc)
            return None
        done = attrs.evolve(rec, state=S.CANCELLED, output=codec.encode(None), wake_at=None)
        await self._after_end(done, S.CANCELLED)
        return done


def source_hash(source: str) -> str:
    """The hash the store keeps for a workflow source."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()
