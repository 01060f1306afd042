"""The dispatcher's values: settings, statistics, a connected worker, a lease in memory, an
event listener, and the history helpers its parts share (see :mod:`flux.net.dispatch`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from flux.net import protocol as p
from flux.net.leases import Phase
from flux.net.signal import Signal
from flux.runtime.errors import ExecutionConflictError as ExecutionConflictError
from flux.runtime.events import ExecutionEvent, ExecutionEventType, ExecutionState
from flux.runtime.store import ExecutionRecord, StoredEvent

E = ExecutionEventType
S = ExecutionState

_LEASED = frozenset({S.CLAIMED, S.RUNNING, S.CANCELLING})
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
    #: Several servers on one database: seconds between two looks at the store for what the
    #: notifications missed (due sleeps, expired leases, lost wake-ups); None: ``lease_ttl / 2``,
    #: at most 1 s.
    poll_interval: float | None = None

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
        if self.poll_interval is not None and not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {self.poll_interval!r}")
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
    phase: Phase = Phase.GRANTING
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

    def stale(self) -> None:
        """Events were committed elsewhere (another server): the reader reads the store."""
        self.overflowed = True
        self.events = []
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
