"""Several servers on one database: how a dispatcher learns what the others did.

Each server's :class:`~flux.net.dispatch.Dispatcher` still pushes its own work to its own
workers at once; with a shared store (PostgreSQL) it also runs a :class:`Peers`, which

* **announces** what the other servers may act on, batched into one ``NOTIFY`` round trip
  whatever the rate: ``r`` an execution is ready and this server has no free slot for it, ``c``
  a cancel was stored, ``e`` events were committed (followers elsewhere read them), ``s`` an
  execution settled (``run/sync`` elsewhere returns);
* **hears** the others' announcements (``LISTEN``) and acts: takes a ready execution if it has a
  free slot (the grant, fenced on the epoch, decides between servers that try at once), tells
  its worker of a cancel, wakes its followers and waiters;
* **polls** the store every ``poll_interval`` seconds, and at once whenever listening
  (re)starts: reserves due sleeps and expired leases (``reserve_due``: once across servers),
  takes ready executions nobody announced (a lost notification), re-checks cancels of its own
  leases, and lets its followers and waiters read the store. So a lost notification delays
  work by at most one poll, never loses it;
* **renews** the leases of its workers in the store at each heartbeat, which is how the other
  servers know they are alive; a lease the store no longer has as ours (taken over after an
  expiry) is dropped here and its worker told.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

import trio

from flux.net import dispatch_signals
from flux.net import protocol as p
from flux.net.leases import Cause, owner_for, reservation_for
from flux.net.signal import Signal
from flux.runtime.errors import StoreError
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord

if TYPE_CHECKING:
    from flux.net.dispatch import Dispatcher, WorkerLink

__all__ = ["PeerHooks", "Peers"]

log = logging.getLogger("flux.peers")

S = ExecutionState
_SETTLED = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED})
#: PostgreSQL takes payloads below 8000 bytes; lines are cut into payloads under this.
_PAYLOAD = 7000
#: At most this many ready executions are offered to the others per dispatch.
_OFFER = 200


class PeerHooks:
    """The dispatcher's side of several servers: what :class:`Peers` calls on it (a part of
    :class:`~flux.net.dispatch.Dispatcher`)."""

    def owner(self, link: WorkerLink) -> str:
        """The ``lease_owner`` the store keeps for a lease of ``link``."""
        return owner_for(self.server_id if self.shared else None, link.worker_id)

    @property
    def reservation(self) -> str:
        """The ``lease_owner`` of this server's own reservations (several servers only)."""
        return reservation_for(self.server_id)

    def free_slots(self) -> int:
        """Slots free on the workers connected here that take leases."""
        return sum(
            max(link.free, 0)
            for link in self.workers.values()
            if not (link.closed or link.stopping)
        )

    def stale_listeners(self, execution_id: str | None = None) -> None:
        """Events of ``execution_id`` (None: of any) were committed by another server: its
        followers here read the store."""
        if execution_id is None:
            found = [x for group in self._listeners.values() for x in group]
        else:
            found = list(self._listeners.get(execution_id, ()))
        for listener in found:
            listener.stale()

    def settled_elsewhere(self, execution_id: str) -> None:
        """Another server saw ``execution_id`` settle: wake whoever waits for it here."""
        for event in self._settled.pop(execution_id, ()):
            event.set()

    def cancel_held(self, execution_id: str) -> None:
        """A cancel of ``execution_id`` was stored through another server: if a worker here
        holds its lease, tell it now (heartbeats tell it again until the lease ends)."""
        lease = self._leases.get(execution_id)
        if lease is None or lease.cancel_requested:
            return
        lease.cancel_requested = True
        if lease.epoch is not None and self._nursery is not None:
            msg = p.Cancel(execution_id=execution_id, epoch=lease.epoch)
            self._nursery.start_soon(self._send, lease.worker, msg)

    def take_over(self, rec: ExecutionRecord) -> None:
        """This server reserved ``rec`` in the store (a due sleep, an expired lease): run it.
        A lease of it still held here lost its epoch with the reservation: it ends now."""
        lease = self._leases.get(rec.execution_id)
        if lease is not None and lease.epoch is not None:
            link = lease.worker
            if link is not None and not link.closed:
                self._reject_soon(link, rec.execution_id, lease.epoch, "lease expired")
                link.zombies.add(rec.execution_id)
            self._end_lease(lease, Cause.LOST)
        self.submit(rec.execution_id)


class Peers:
    """The cross-server side of one dispatcher; see the module docstring."""

    def __init__(self, dispatcher: Dispatcher, poll_interval: float | None = None) -> None:
        self.d = dispatcher
        ttl = dispatcher.settings.lease_ttl
        self.poll_interval = poll_interval or getattr(
            dispatcher.settings, "poll_interval", None
        ) or min(1.0, ttl / 2)
        self._pending: dict[str, None] = {}
        self._offered: set[str] = set()
        self._wake_sender = Signal()
        self._wake_poll = Signal()
        self._nursery: trio.Nursery | None = None
        #: execution id -> updated_at when last seen waiting for subworkflows (not ready)
        self._waiting: dict[str, float] = {}
        self._renewing: set[str] = set()
        #: executions submitted here because another server offered them (told when granted)
        self._from_offer: set[str] = set()
        #: other servers heard lately (server id -> trio time): alone, nothing is announced
        self._peers: dict[str, float] = {}
        #: executions followed on other servers (id -> trio time the interest lapses)
        self._interest: dict[str, float] = {}
        self.sent = 0
        self.heard = 0
        self.polls = 0
        self.reserved = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sender)
            nursery.start_soon(self._listener)
            nursery.start_soon(self._poller)
            task_status.started()

    # ------------------------------------------------------------------ announcing

    def alone(self) -> bool:
        """No other server was heard from lately (each says hello at every poll)."""
        # generous: under load a peer's polls (its hellos) come late, and wrongly believing
        # ourselves alone costs a poll of delay, wrongly believing we are not a NOTIFY
        horizon = trio.current_time() - max(10 * self.poll_interval, 30.0)
        self._peers = {k: t for k, t in self._peers.items() if t >= horizon}
        return not self._peers

    def announce(self, kind: str, execution_id: str) -> None:
        """Tell the other servers (soon, batched) that ``kind`` happened to an execution;
        nothing when there are none (their first poll finds what they need)."""
        if kind != "h" and self.alone():
            return
        self._pending[f"{kind} {execution_id}"] = None
        self._wake_sender.set()

    def follow(self, execution_id: str) -> None:
        """A follower here wants the events of ``execution_id`` whoever writes them."""
        self.announce("f", execution_id)

    def committed(self, execution_id: str) -> None:
        """Events of ``execution_id`` were committed here: wake its followers elsewhere (only
        if some other server said it follows it: a commit per task is the hot path)."""
        lapses = self._interest.get(execution_id)
        if lapses is None:
            return
        if lapses < trio.current_time():
            del self._interest[execution_id]
            return
        self.announce("e", execution_id)

    def offer(self, ready: Any) -> None:
        """No free slot here for these queued executions: offer each to the others once (the
        newest: the older ones were offered when they came; at most ``_OFFER`` per call)."""
        queued = self.d._queued
        fresh = []
        for execution_id in reversed(ready):
            if execution_id in self._offered or len(fresh) >= _OFFER:
                break
            if execution_id in queued:
                fresh.append(execution_id)
        for execution_id in fresh:
            self._offered.add(execution_id)
            self.announce("r", execution_id)
        if len(self._offered) > 10 * _OFFER:
            self._offered = {e for e in self._offered if e in queued}

    def granted(self, execution_id: str) -> None:
        """This server granted ``execution_id``; if another offered it, tell that one it is
        taken, so it drops it from its queue (else a server with no free slot would keep every
        execution it ever offered queued)."""
        if execution_id in self._from_offer:
            self._from_offer.discard(execution_id)
            self.announce("t", execution_id)

    async def _sender(self) -> None:
        while True:
            await self._wake_sender.wait()
            lines, self._pending = list(self._pending), {}
            payloads: list[str] = []
            current: list[str] = []
            size = 0
            for line in lines:
                if current and size + len(line) + 1 > _PAYLOAD:
                    payloads.append("\n".join([self.d.server_id, *current]))
                    current, size = [], 0
                current.append(line)
                size += len(line) + 1
            if current:
                payloads.append("\n".join([self.d.server_id, *current]))
            try:
                await self.d.store.notify(payloads)
                self.sent += len(lines)
            except StoreError as exc:  # the poll of the others finds it all the same
                log.warning("cannot notify the other servers: %s", exc)

    # ------------------------------------------------------------------ hearing

    async def _listener(self) -> None:
        while True:
            try:
                await self.d.store.listen(self.deliver)
            except StoreError as exc:
                log.warning("cannot listen to the other servers: %s", exc)
            await trio.sleep(self.poll_interval)

    def deliver(self, payloads: list[str]) -> None:
        """Act on payloads heard from the store (on the event loop; never blocks)."""
        for payload in payloads:
            if payload == "*":  # (re)started listening: what was said meanwhile is lost
                self._wake_poll.set()
                continue
            sender, _, body = payload.partition("\n")
            if sender == self.d.server_id:
                continue
            if sender not in self._peers:  # a new server: say hello back, so it knows us
                self.announce("h", self.d.server_id)
            self._peers[sender] = trio.current_time()
            for line in body.split("\n"):
                kind, _, execution_id = line.partition(" ")
                if execution_id:
                    self.heard += 1
                    self._on(kind, execution_id)

    def _on(self, kind: str, execution_id: str) -> None:
        d = self.d
        if kind == "r":
            if d.free_slots() > 0 and execution_id not in d._queued:
                if len(self._from_offer) > 10_000:
                    self._from_offer.clear()
                self._from_offer.add(execution_id)
                d.submit(execution_id)
        elif kind == "t":  # another server granted it: not ours to queue any more
            self._offered.discard(execution_id)
            d._queued.discard(execution_id)
            if len(d._ready) > 2 * len(d._queued) + 100:  # drop what was taken elsewhere
                d._ready = collections.deque(e for e in d._ready if e in d._queued)
        elif kind == "c":
            d.cancel_held(execution_id)
        elif kind == "e":
            d.stale_listeners(execution_id)
        elif kind == "s":
            d.settled_elsewhere(execution_id)
        elif kind == "f":
            self._interest[execution_id] = trio.current_time() + 5 * self.poll_interval
            if len(self._interest) > 100_000:  # bounded: the oldest interest goes first
                self._interest.pop(next(iter(self._interest)))

    # ------------------------------------------------------------------ renewing

    def renew(self, link: WorkerLink, held: list[tuple[str, int]]) -> None:
        """Extend ``link``'s leases in the store (a heartbeat named them)."""
        if self._nursery is not None and link.worker_id not in self._renewing:
            # one renewal per worker at a time: a slow store skips a beat, it does not pile up
            self._renewing.add(link.worker_id)
            self._nursery.start_soon(self._renew, link, held)

    async def _renew(self, link: WorkerLink, held: list[tuple[str, int]]) -> None:
        d = self.d
        try:
            lost = await d.store.renew_leases(
                held, owner=d.owner(link), expires_at=d.wall() + d.settings.lease_ttl
            )
        except StoreError as exc:
            log.warning("cannot renew the leases of %s: %s", link.worker_id, exc)
            return
        finally:
            self._renewing.discard(link.worker_id)
        epochs = dict(held)
        for execution_id in lost:
            lease = d._leases.get(execution_id)
            if lease is None or lease.worker is not link or lease.epoch != epochs[execution_id]:
                continue  # ended meanwhile: nothing lost
            log.warning(
                "lease of %s (epoch %s, %s) was taken over by another server",
                execution_id,
                lease.epoch,
                link.worker_id,
            )
            d._reject_soon(link, execution_id, epochs[execution_id], "lease lost")
            link.zombies.add(execution_id)
            d._end_lease(lease, Cause.LOST)

    # ------------------------------------------------------------------ polling

    async def _poller(self) -> None:
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._wake_poll.wait()
            try:
                await self.poll()
            except StoreError as exc:
                log.warning("poll of the store failed: %s", exc)

    async def poll(self) -> None:
        """One look at the store for what the notifications may have missed."""
        d = self.d
        self.polls += 1
        self.announce("h", d.server_id)  # so the others know they are not alone
        for execution_id in list(d._listeners):  # interest renewed while followed
            self.follow(execution_id)
        now = d.wall()
        free = d.free_slots()
        if free > 0:
            taken = await d.store.reserve_due(
                owner=d.reservation,
                now=now,
                expires_at=now + d.settings.lease_ttl,
                limit=free,
            )
            self.reserved += len(taken)
            for rec in taken:
                d.take_over(rec)
            free = d.free_slots()
        if free > 0:
            for rec in await d.store.ready_executions(now=now, limit=free + len(d._queued)):
                eid = rec.execution_id
                if eid in d._leases or eid in d._queued:
                    continue
                if self._waiting.get(eid) == rec.updated_at:
                    continue  # waiting for its subworkflows, unchanged since we looked
                if await d.waiting_for_children(rec):
                    self._waiting[eid] = rec.updated_at
                    if len(self._waiting) > 10_000:
                        self._waiting.pop(next(iter(self._waiting)))
                    continue
                if rec.wake_at is None and await dispatch_signals.waits_only_for_signals(d, rec):
                    continue  # nothing to run until a signal comes (and that submits it)
                d.submit(eid)
        mine = [
            eid
            for eid, lease in d._leases.items()
            if lease.epoch is not None and not lease.cancel_requested
        ]
        if mine:
            for eid in await d.store.cancel_requested(mine):
                d.cancel_held(eid)
        d.stale_listeners()
        for eid in list(d._settled):
            if eid in d._leases or eid in d._queued:
                continue  # runs here: this server sees it settle
            rec = await d.store.get_execution(eid)
            if rec is None or rec.state in _SETTLED:
                d.settled_elsewhere(eid)
