"""The Flux worker: one WebSocket session to the server, executions run by the shared runtime.

``serve_worker(name, server_url, concurrency)`` connects to ``/workers/connect``, says hello, and
runs what the server leases to it with :class:`flux.runtime.executor.Execution`, exactly as the
embedded engine does, only with a journal that sends events over the session:

* ``enqueue``-d events wait (at most :attr:`Worker.linger` seconds) to go with the next commit;
  a ``commit`` sends everything pending as one ``events`` batch and returns once the server's
  ``ack`` says it is durable. One batch per execution is in flight at a time; whatever the
  execution records meanwhile goes in the next batch.
* a durable sleep longer than ``release_sleeps_after`` releases the execution (``release``,
  ``sleeping``); a pause or a wait for a subworkflow ends the lease with the state change itself.
* a ``reject`` (stale epoch, lease lost) or a lost connection abandons the execution at once: no
  rollback runs and nothing more is written (the next owner replays it).

Flow control: every frame goes through one bounded outbox that senders wait on (nothing is
dropped, nothing raises because a buffer is full); heartbeats skip the outbox so that they keep
flowing during a burst. Every request (an events batch, secrets, a cache lookup) waits for its
answer at most ``request_timeout`` seconds (from ``welcome``); past it the run gives its lease up
and the server leases the execution again once the lease expires. Batches are split to fit the
server's ``max_frame_size``, and a task whose value is over ``max_value_size`` fails (both
limits come in ``welcome``).

The session reconnects with exponential backoff when the server goes away. SIGTERM/SIGINT (with
``handle_signals``) give every execution back to the server (``release``, ``shutdown``) and stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import random
import signal
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
import trio_websocket

from flux.net import protocol as p
from flux.net.liveness import LeaseClock
from flux.net.signal import Signal
from flux.runtime import codec, logs
from flux.runtime.context import ExecutionContext
from flux.runtime.errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    FluxError,
    NondeterminismError,
    SecretNotFoundError,
    StoppedError,
    WorkflowError,
)
from flux.runtime.errors import LeaseLostError as RuntimeLeaseLost
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.executor import Execution
from flux.runtime.journal import decode_event
from flux.runtime.loader import load_source, workflows_in
from flux.runtime.records import SignalRecord
from flux.runtime.secrets import redact_encoded
from flux.runtime.store import StaleWriteError, StoredEvent
from flux.runtime.workflow import workflow

__all__ = [
    "LeaseLostError",
    "Worker",
    "WorkerRefusedError",
    "serve_worker",
    "server_urls",
    "ws_url",
]

log = logging.getLogger("flux.worker")

E = ExecutionEventType
S = ExecutionState

#: Largest frame the worker accepts (a lease carries the whole history).
WORKER_MAX_FRAME = 64 * 1024 * 1024

#: Frames waiting for the socket at most; senders wait for room beyond it (backpressure).
OUTBOX_SIZE = 64


class LeaseLostError(StaleWriteError):
    """The worker no longer holds the lease of an execution (the server rejected a write, the
    lease expired, or the connection was lost); nothing more of this run is written."""


class WorkerRefusedError(FluxError):
    """The server refused this worker for good (wrong protocol version, bad token)."""


def server_urls(server_url: str | Sequence[str]) -> list[str]:
    """The servers a worker fails over between, in order: each item may hold several
    addresses separated by commas (as ``FLUX_SERVER_URL`` does); blanks are dropped, a repeated
    address is kept once. ValueError when none is left."""
    items = [server_url] if isinstance(server_url, str) else list(server_url)
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a server URL must be a string, not {type(item).__name__}")
        for part in item.split(","):
            part = part.strip()
            if part and part not in urls:
                urls.append(part)
    if not urls:
        raise ValueError(f"no server URL in {server_url!r}")
    return urls


def ws_url(server_url: str) -> str:
    """``http(s)://host:port[/prefix]`` -> ``ws(s)://host:port[/prefix]/workers/connect``.

    ValueError naming the address when it is not one: another scheme, no host, a port that is
    not a number from 1 to 65535, spaces, a query or a fragment."""
    url = server_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif "://" in url and not url.startswith(("ws://", "wss://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"server URL {server_url!r}: scheme {scheme!r} is not http, https, ws or wss"
        )
    elif not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    _check_address(server_url, url)
    return url + "/workers/connect"


def _check_address(given: str, url: str) -> None:
    if any(c.isspace() for c in url):
        raise ValueError(f"server URL {given!r} contains whitespace")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"server URL {given!r} has a query or fragment (give host:port[/prefix])")
    try:
        port = parts.port  # ValueError for a port that is not a number in range
    except ValueError:
        port = -1
    if not parts.hostname:
        raise ValueError(f"server URL {given!r} names no host (e.g. http://127.0.0.1:8000)")
    if port == -1 or port == 0:
        raise ValueError(f"server URL {given!r}: the port must be a number from 1 to 65535")


class _Pending:
    """A commit waiting for the ack of the batch that carries it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


class _Run:
    """One leased execution on this worker: its journal and its host."""

    def __init__(self, worker: Worker, lease: p.Lease):
        self.worker = worker
        self.execution_id = lease.execution_id
        self.epoch = lease.epoch
        self.lease = lease
        self.execution: Execution | None = None
        self.scope = trio.CancelScope()
        self.pending: list[StoredEvent] = []
        self.pending_state: str | None = None
        self.waiters: list[_Pending] = []
        self.inflight: _Pending | None = None
        self.dead: str | None = None
        self.finished = False
        self._poke = Signal()
        self._urgent = Signal()
        self._secret_values: list[str] = []
        self.suspend_sleep_after = worker.release_sleeps_after
        self.cancel_requested = trio.Event()
        #: cancelled when the execution is cancelled while its source is still loading
        self.load_scope = trio.CancelScope()
        #: signals the server says are queued for this lease (signals_queued), by id
        self.queued_signals: dict[int, SignalRecord] = {}
        #: ids this run has delivered (a repeated signals_queued never offers them again)
        self.taken_signals: set[int] = set()
        #: ids delivered by the events not yet sent (they go with that batch)
        self.signals_out: list[int] = []

    #: on a worker, user code raising SystemExit, KeyboardInterrupt... fails its execution
    base_exceptions_fail = True

    @property
    def log_sink(self) -> logs.LogSink:
        return self.worker.log_sink

    async def ensure_lease(self, execution: Execution) -> None:
        """No user code starts once this run's lease is lost, or may be: the server rejected
        it, or the worker went the lease ttl without word from the server."""
        if self.dead is None and not self.worker.trusted():
            clock = self.worker.lease_clock
            silence = clock.silence() if clock is not None else 0.0
            self.abandon(
                f"no word from the server for {silence:.1f}s, past the lease ttl: the lease "
                "may have moved to another worker"
            )
        if self.dead is not None:
            execution.abandon()

    # ------------------------------------------------------------------ Journal

    def enqueue(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None:
        if self.dead is not None:
            return  # the next commit raises
        self.pending.extend(events)
        if update and update.get("state") is not None:
            self.pending_state = str(update["state"])
        self._poke.set()

    def signals_queued(self, msg: p.SignalsQueued) -> None:
        for signal_id, topic, value in msg.signals:
            if signal_id not in self.taken_signals:
                record = SignalRecord(signal_id, self.execution_id, topic, value, 0.0)
                self.queued_signals[signal_id] = record
        if self.execution is not None:
            self.execution.signals_arrived()

    async def pending_signals(
        self, execution: Execution, topic: str | None = None, limit: int | None = None
    ) -> list[SignalRecord]:
        queued = sorted(self.queued_signals.values(), key=lambda s: s.id)
        queued = [s for s in queued if topic is None or s.topic == topic]
        return queued if limit is None else queued[:limit]

    async def commit(
        self,
        events: list[StoredEvent],
        update: dict[str, Any] | None = None,
        signals: tuple[int, ...] = (),
    ) -> None:
        if self.dead is not None:
            raise LeaseLostError(f"execution {self.execution_id}: {self.dead}")
        for signal_id in signals:
            self.queued_signals.pop(signal_id, None)
            self.taken_signals.add(signal_id)
        self.signals_out.extend(signals)
        state = update.get("state") if update else None
        if state is not None and state not in (S.RUNNING, S.CLAIMED):
            # the lease ends with this write: the run's log lines go first
            await self.worker.log_sink.flush(self.execution_id, forget=True)
        if state == S.SCHEDULED and update and update.get("wake_at") is not None:
            # a long durable sleep: everything before it durable, then give the slot back
            self.pending.extend(events)
            await self._flush()
            await self.worker.send(
                p.Release(
                    execution_id=self.execution_id,
                    epoch=self.epoch,
                    reason="sleeping",
                    wake_at=float(update["wake_at"]),
                )
            )
            self.finished = True
            return
        self.pending.extend(events)
        if state is not None:
            self.pending_state = str(state)
        await self._flush()
        if state is not None and state not in (S.RUNNING, S.CLAIMED):
            self.finished = True  # the server ended the lease with this batch

    async def _flush(self) -> None:
        waiter = _Pending()
        self.waiters.append(waiter)
        self._urgent.set()
        self._poke.set()
        await waiter.wait()

    async def sender(self) -> None:
        """Send pending events one batch at a time, each after the previous one's ack."""
        linger = self.worker.linger
        while True:
            await self._poke.wait()
            if not self.waiters and self.pending:
                with trio.move_on_after(linger):
                    await self._urgent.wait()
            while self.pending or self.waiters or self.pending_state is not None:
                if self.dead is not None:
                    return
                batch, self.pending = self.pending, []
                state, self.pending_state = self.pending_state, None
                waiters, self.waiters = self.waiters, []
                signals, self.signals_out = self.signals_out, []
                try:
                    await self._send_batch(batch, state, signals=signals)
                except Exception as exc:
                    for w in waiters:
                        w.resolve(exc)
                    return
                except BaseException:
                    for w in waiters:
                        w.resolve(LeaseLostError(f"execution {self.execution_id}: stopped"))
                    raise
                for w in waiters:
                    w.resolve()

    async def _send_batch(
        self,
        batch: list[StoredEvent],
        state: str | None,
        *,
        check: bool = True,
        signals: list[int] | None = None,
    ) -> None:
        """Send ``batch`` in as many frames as the server's frame limit needs, each after the
        ack of the one before; ``state`` and the delivered ``signals`` go with the last. Secret
        values are masked first."""
        worker = self.worker
        if self._secret_values:
            batch = [self._masked(e) for e in batch]
        big = p.oversized(batch, worker.max_frame_size) if check else None
        if big is not None:
            before = batch[: batch.index(big)]
            if before:
                await self._send_batch(before, None)
            await self._fail_oversized(big)
        parts = p.split_events(batch, worker.max_frame_size)
        for i, part in enumerate(parts):
            ack = _Pending()
            self.inflight = ack
            number = worker.track(ack)
            try:
                try:
                    await worker.send(
                        p.Events(
                            execution_id=self.execution_id,
                            epoch=self.epoch,
                            batch=number,
                            events=[p.event_to_wire(e) for e in part],
                            state=state if i == len(parts) - 1 else None,
                            signals=list(signals) if signals and i == len(parts) - 1 else None,
                        )
                    )
                except LeaseLostError as exc:  # no session, or one that takes nothing
                    self.abandon(str(exc))
                    raise
                await worker.answer(ack, self, f"the ack of batch {number}")
            finally:
                self.inflight = None
                worker.untrack(number)

    def _masked(self, e: StoredEvent) -> StoredEvent:
        value = redact_encoded(e.value, self._secret_values)
        if value is e.value:
            return e
        return StoredEvent(e.execution_id, e.seq, e.type, e.call_id, e.name, value, e.time)

    async def _fail_oversized(self, big: StoredEvent) -> None:
        """An event no frame can carry (its value passed the executor's size check, or none was
        made): record WORKFLOW_FAILED in its place, then stop. The execution ends for good
        rather than running its tasks again on every new lease."""
        limit = self.worker.max_frame_size
        error = WorkflowError(
            f"execution {self.execution_id}: event {big.seq} ({big.type} of {big.call_id!r}) "
            f"is {p.wire_size(big)} bytes on the wire, over the server's frame limit of "
            f"{limit} bytes; the execution cannot be recorded further"
        )
        log.error("%s", error)
        name = self.lease.workflow_name
        failed = StoredEvent(
            self.execution_id,
            big.seq,
            E.WORKFLOW_FAILED.value,
            name,
            name,
            codec.encode(error),
            time.time(),
        )
        try:
            # not checked again: a server announcing a frame too small for even this gets it
            # anyway and says so (too-large); the run stops either way
            await self._send_batch([failed], S.FAILED.value, check=False)
            self.finished = True
        except p.LocalProtocolError as exc:
            log.error("execution %s: cannot even record its failure: %s", self.execution_id, exc)
        self.abandon("the execution failed: an event too large for a frame")
        raise LeaseLostError(str(error))

    async def cancel_watcher(self) -> None:
        """Cancel the execution once asked (``cancel`` from the server), as soon as it runs."""
        await self.cancel_requested.wait()
        while True:
            execution = self.execution
            if execution is not None and execution.root_scope is not None:
                execution.request_cancel()
                return
            if execution is None:  # still loading its source (maybe hung): stop that
                self.load_scope.cancel()
            await trio.sleep(0.005)

    def abandon(self, why: str) -> None:
        """Stop this run now without writing anything more (no rollbacks: it runs elsewhere)."""
        if self.dead is not None:
            return
        self.dead = why
        error = LeaseLostError(f"execution {self.execution_id} (epoch {self.epoch}): {why}")
        for w in self.waiters:
            w.resolve(error)
        self.waiters = []
        if self.inflight is not None:
            self.inflight.resolve(error)
        if self.execution is not None:
            # tasks skip rollback and TASK_CANCELLED; nothing more starts or is written
            self.execution.abandon(RuntimeLeaseLost(str(error)))
        self.scope.cancel()

    # ------------------------------------------------------------------ Host

    async def get_secrets(self, names: tuple[str, ...], call_id: str = "") -> dict[str, str]:
        # the server hands out secrets only for a call whose TASK_STARTED it has: send it first
        await self._flush()
        answer = await self.worker.request_secrets(self, list(names), call_id)
        if answer.missing:
            missing = answer.missing
            raise SecretNotFoundError(
                f"secret{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}"
            )
        for value in answer.values.values():
            if value not in self._secret_values:
                self._secret_values.append(value)
        return {name: answer.values[name] for name in names}

    def secret_values(self) -> list[str]:
        return self._secret_values

    async def cache_get(self, key: str) -> bytes | None:
        return await self.worker.cache_get(self, key)

    async def send_signal_from(self, target: str, topic: str, data: bytes, key: str) -> None:
        await self.worker.send_signal(self, target, topic, data, key)

    @property
    def max_value_size(self) -> int:
        """The largest encoded value the server accepts (from ``welcome``); the executor fails a
        task whose value is larger where the value is encoded."""
        return self.worker.max_value_size

    async def cache_put(self, key: str, value: bytes, ttl: float | None) -> None:
        if self._secret_values:  # the cache is recorded too (in the store, for everyone)
            value = redact_encoded(value, self._secret_values) or value
        if len(value) > self.worker.max_value_size:
            log.info(
                "not caching %d bytes under %s: over the server's value limit", len(value), key
            )
            return
        await self.worker.send(
            p.CachePut(
                execution_id=self.execution_id,
                epoch=self.epoch,
                key=key,
                value=value,
                ttl=ttl or None,
            )
        )

    async def run_child(
        self, execution: Execution, call_id: str, child: workflow, child_id: str, input: Any
    ) -> ExecutionContext:
        # The server creates the child from the TASK_STARTED event that announced it and puts
        # its outcome into this history when it ends; until then this execution waits.
        return ExecutionContext(
            child_id, child.name, input, None, S.SCHEDULED, parent_id=execution.ctx.execution_id
        )


class Worker:
    """The state of one worker process across sessions (see :func:`serve_worker`)."""

    def __init__(
        self,
        name: str,
        concurrency: int = 10,
        *,
        token: str | None = None,
        release_sleeps_after: float | None = 1.0,
        linger: float = 0.05,
        load_timeout: float = 60.0,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        problem = p.worker_name_problem(name)
        if problem is not None:
            raise ValueError(f"worker name {name!r} {problem}")
        self.name = name
        self.concurrency = concurrency
        self.token = token
        self.release_sleeps_after = release_sleeps_after
        self.linger = linger
        #: seconds a workflow source may take to load (its top level runs) before the execution
        #: that needs it fails
        self.load_timeout = load_timeout
        #: how long the leases are known to hold (see flux.net.liveness); None: no session
        self.lease_clock: LeaseClock | None = None
        #: set once the session went a lease ttl without word from the server: act on nothing
        self.stale = False
        self.worker_id: str | None = None
        self.runs: dict[str, _Run] = {}
        self._acks: dict[int, _Pending] = {}
        self._batches = itertools.count(1)
        self._requests = itertools.count(1)
        self._secret_waiters: dict[int, tuple[_Pending, list[p.Secrets]]] = {}
        self._modules: dict[str, dict[str, workflow]] = {}
        self._cache_waiters: dict[int, tuple[_Pending, list[p.CacheValue]]] = {}
        self._send: Callable[[p.Message], Awaitable[None]] | None = None
        self._loading: dict[str, trio.Lock] = {}
        #: limits and timing from the server's last ``welcome``
        self.max_frame_size = p.DEFAULT_MAX_FRAME_SIZE
        self.max_value_size = p.DEFAULT_MAX_FRAME_SIZE - p.FRAME_ENVELOPE
        self.request_timeout = 30.0
        #: cancels that came before their run started: execution id -> epoch
        self._cancels: dict[str, int] = {}
        self.stopping = False
        self.completed = 0
        #: what task bodies print and log, until it is shipped (see flux.runtime.logs)
        self.log_sink = logs.LogSink(
            self._ship_logs, batch_bytes=self.max_frame_size // 2, **logs.sink_settings()
        )

    def trusted(self) -> bool:
        """May this worker act on its leases now (start a body, act on a frame)? Not once it
        went a lease ttl without word from the server (a frozen process, a dead network)."""
        clock = self.lease_clock
        return not self.stale and (clock is None or clock.trusted())

    # ------------------------------------------------------------------ plumbing for runs

    async def send(self, msg: p.Message) -> None:
        """Queue ``msg`` for the server, waiting for room in the outbox (backpressure). Raises
        LeaseLostError when there is no session (or it ends meanwhile), and the session's
        LocalProtocolError for a frame over the limit."""
        if self._send is None:
            raise LeaseLostError("not connected")
        await self._send(msg)

    async def _ship_logs(
        self, execution_id: str, entries: list, limit: int, cut_lines: int, cut_bytes: int
    ) -> None:
        """Send log lines of a run this worker holds (those of a run gone are dropped: its
        lease, and the right to write for it, went with it)."""
        run = self.runs.get(execution_id)
        if run is None or run.dead is not None:
            log.debug("%d log line(s) of %s dropped: no lease", len(entries), execution_id)
            return
        wf = run.execution.workflow if run.execution is not None else None
        await self.send(
            p.Logs(
                execution_id=execution_id,
                epoch=run.epoch,
                lines=[
                    [e.call_id, e.attempt, e.level, e.logger, e.time, e.message] for e in entries
                ],
                limit=getattr(wf, "log_limit", None) or limit,
                cut_lines=cut_lines,
                cut_bytes=cut_bytes,
            )
        )

    async def answer(self, waiter: _Pending, run: _Run, what: str) -> None:
        """Wait for the answer to a request of ``run`` for at most ``request_timeout``; past it
        the run gives its lease up (the server leases the execution again when it expires)."""
        with trio.move_on_after(self.request_timeout):
            await waiter.wait()
            return
        why = f"no answer from the server within {self.request_timeout:g}s ({what})"
        log.warning("execution %s: %s: giving the lease up", run.execution_id, why)
        run.abandon(why)
        raise LeaseLostError(f"execution {run.execution_id}: {why}")

    def track(self, ack: _Pending) -> int:
        """Register the ack of a new batch; returns the batch number."""
        number = next(self._batches)
        self._acks[number] = ack
        return number

    def untrack(self, number: int) -> None:
        self._acks.pop(number, None)

    async def _ask(
        self, run: _Run, waiters: dict[int, Any], message: Callable[[int], p.Message], what: str
    ) -> Any:
        """Send the request ``message(request_id)`` for ``run`` and return the server's answer,
        which the reader puts in ``waiters[request_id]`` (see :meth:`answer` for the deadline
        and what happens when none comes)."""
        number = next(self._requests)
        waiter = _Pending()
        box: list[Any] = []
        waiters[number] = (waiter, box)
        try:
            await self.send(message(number))
            await self.answer(waiter, run, what)
        finally:
            waiters.pop(number, None)
        return box[0]

    async def request_secrets(self, run: _Run, names: list[str], call_id: str) -> p.Secrets:
        def request(number: int) -> p.Message:
            return p.SecretsRequest(
                execution_id=run.execution_id,
                epoch=run.epoch,
                request_id=number,
                names=names,
                call_id=call_id,
            )

        return await self._ask(run, self._secret_waiters, request, f"secrets for {call_id}")

    async def cache_get(self, run: _Run, key: str) -> bytes | None:
        """Ask the server's store (the cache is shared by every process)."""

        def request(number: int) -> p.Message:
            return p.CacheGet(
                execution_id=run.execution_id, epoch=run.epoch, request_id=number, key=key
            )

        answer: p.CacheValue = await self._ask(run, self._cache_waiters, request, "a cache lookup")
        return answer.value

    async def send_signal(self, run: _Run, target: str, topic: str, data: bytes, key: str) -> None:
        """A workflow's send_signal, queued by the server (ExecutionNotFoundError or
        ExecutionConflictError as the server answers)."""

        def request(number: int) -> p.Message:
            return p.SignalSend(
                execution_id=run.execution_id,
                epoch=run.epoch,
                request_id=number,
                target=target,
                topic=topic,
                value=data,
                key=key,
            )

        # answered like a cache lookup: the reader files SignalSent under the cache waiters
        answer: p.SignalSent = await self._ask(
            run, self._cache_waiters, request, f"a signal to {target}"
        )
        if answer.error == "not-found":
            raise ExecutionNotFoundError(target)
        if answer.error == "conflict":
            raise ExecutionConflictError(answer.detail)
        if answer.error is not None:
            raise LeaseLostError(f"execution {run.execution_id}: {answer.detail}")

    # ------------------------------------------------------------------ loading workflows

    async def _workflow(self, lease: p.Lease) -> workflow:
        digest = hashlib.sha256(lease.source).hexdigest()
        found = self._modules.get(digest)
        if found is None:
            # one load per source version: two first leases at once share one module (and so
            # one set of classes); running a module's top level is user code of any cost: off
            # the event loop
            lock = self._loading.setdefault(digest, trio.Lock())
            async with lock:
                found = self._modules.get(digest)
                if found is None:
                    # abandoned when cancelled or timed out: a source that hangs at import
                    # keeps its thread, never this worker
                    module = await trio.to_thread.run_sync(
                        load_source,
                        lease.source.decode("utf-8"),
                        f"flux_src_{digest[:16]}",
                        abandon_on_cancel=True,
                    )
                    found = self._modules[digest] = workflows_in(module)
        wf = found.get(lease.workflow_name)
        if wf is None:
            raise WorkflowError(
                f"workflow {lease.workflow_name!r} version {lease.workflow_version} is not "
                "defined by its source"
            )
        return wf

    # ------------------------------------------------------------------ one session

    async def session(
        self, ws: trio_websocket.WebSocketConnection, on_ready: Callable[[str], None]
    ) -> None:
        """Hold one session until the connection ends (returns) or we stop."""
        session = p.WorkerSession(max_frame_size=WORKER_MAX_FRAME)
        await ws.send_message(
            session.send(p.Hello(name=self.name, token=self.token, capacity=self.concurrency))
        )
        welcome = session.receive_bytes(await ws.get_message())
        if isinstance(welcome, p.Error):
            if welcome.code in ("unauthorized", "forbidden", "version-mismatch"):
                raise WorkerRefusedError(
                    f"server refused this worker: {welcome.code}: {welcome.detail}"
                )
            raise ConnectionError(f"server closed the session: {welcome.code}: {welcome.detail}")
        assert isinstance(welcome, p.Welcome)
        self.worker_id = welcome.worker_id
        self.max_frame_size = welcome.max_frame_size
        self.max_value_size = welcome.max_value_size
        self.request_timeout = welcome.request_timeout
        self.log_sink.batch_bytes = max(welcome.max_frame_size // 2, 1)
        if welcome.log_limit is not None:
            self.log_sink.limit = welcome.log_limit
        log.info(
            "worker %s connected as %s (lease ttl %.1fs, frames up to %d bytes%s)",
            self.name,
            welcome.worker_id,
            welcome.lease_ttl,
            welcome.max_frame_size,
            ""
            if welcome.capacity is None or welcome.capacity >= self.concurrency
            else f", the server leases it at most {welcome.capacity} at once",
        )
        clock = self.lease_clock = LeaseClock(welcome.lease_ttl)
        self.stale = False
        send_frames, frames = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        timeout = welcome.request_timeout

        async def send(msg: p.Message) -> None:
            try:
                frame = session.send(msg)
            except p.LocalProtocolError as exc:
                if exc.code == "closed":
                    raise LeaseLostError("connection to the server lost") from None
                raise
            try:
                try:
                    send_frames.send_nowait(frame)  # room: no need to wait (nor to yield)
                    return
                except trio.WouldBlock:
                    pass
                with trio.fail_after(timeout):
                    await send_frames.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise LeaseLostError("connection to the server lost") from None
            except trio.TooSlowError:
                raise LeaseLostError(
                    f"the connection took no frame for {timeout:g}s (the server reads nothing)"
                ) from None

        self._send = send
        on_ready(welcome.worker_id)
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    try:
                        async for frame in frames:
                            await ws.send_message(frame)
                    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                        nursery.cancel_scope.cancel()

                pings = itertools.count(1)

                async def confirm(sent: float) -> None:
                    # the pong proves the server read everything sent before the ping, this
                    # heartbeat included: the leases hold until ``sent`` + ttl
                    payload = next(pings).to_bytes(8, "big")
                    with trio.move_on_after(timeout):
                        try:
                            await ws.ping(payload)
                        except (trio_websocket.ConnectionClosed, ValueError):
                            return
                        clock.confirm(sent)

                async def watchdog() -> None:
                    # a worker that went the lease ttl without word from the server (frozen,
                    # cut off) may have lost every lease unknowingly: drop the session, act on
                    # nothing that arrived meanwhile, and connect again
                    while True:
                        await trio.sleep(clock.margin / 2)
                        if not clock.trusted():
                            self.stale = True
                            log.warning(
                                "no word from the server for %.1fs (lease ttl %gs): its leases "
                                "may have moved; dropping them and reconnecting",
                                clock.silence(),
                                welcome.lease_ttl,
                            )
                            nursery.cancel_scope.cancel()
                            return

                async def heartbeat() -> None:
                    # straight to the socket, not behind the outbox: a burst of frames must not
                    # hold heartbeats back past the lease ttl
                    while True:
                        await trio.sleep(welcome.heartbeat_interval)
                        sent = time.monotonic()
                        beat = p.Heartbeat(
                            leases=[
                                (r.execution_id, r.epoch)
                                for r in self.runs.values()
                                if not r.finished
                            ],
                            running=len(self.runs),
                        )
                        try:
                            frame = session.send(beat)
                        except p.LocalProtocolError:
                            return  # the session is closing
                        with trio.move_on_after(timeout) as waited:
                            try:
                                await ws.send_message(frame)
                            except trio_websocket.ConnectionClosed:
                                nursery.cancel_scope.cancel()
                                return
                        if waited.cancelled_caught:
                            log.warning(
                                "the connection took no heartbeat for %gs: reconnecting", timeout
                            )
                            nursery.cancel_scope.cancel()
                            return
                        nursery.start_soon(confirm, sent)

                nursery.start_soon(writer)
                nursery.start_soon(heartbeat)
                nursery.start_soon(watchdog)
                try:
                    while True:
                        msg = session.receive_bytes(await ws.get_message())
                        if self.stale or not clock.heard():  # may be from before a freeze
                            self.stale = True
                            log.warning(
                                "no word from the server for %.1fs: not acting on a %s that may "
                                "be stale; dropping the leases and reconnecting",
                                clock.silence(),
                                msg.TYPE,
                            )
                            return
                        if isinstance(msg, p.Lease):
                            nursery.start_soon(self._run_lease, msg)
                        elif isinstance(msg, p.Ack):
                            ack = self._acks.pop(msg.batch, None)
                            if ack is not None:
                                ack.resolve()
                        elif isinstance(msg, p.Reject):
                            run = self.runs.get(msg.execution_id)
                            if run is not None and run.epoch == msg.epoch:
                                log.info("lease of %s rejected: %s", msg.execution_id, msg.reason)
                                run.abandon(f"rejected by the server: {msg.reason}")
                        elif isinstance(msg, p.Cancel):
                            run = self.runs.get(msg.execution_id)
                            if run is not None and run.epoch == msg.epoch:
                                run.cancel_requested.set()
                            elif run is None:  # the lease's task has not started yet
                                self._cancels[msg.execution_id] = msg.epoch
                        elif isinstance(msg, p.SignalsQueued):
                            run = self.runs.get(msg.execution_id)
                            if run is not None and run.epoch == msg.epoch:
                                run.signals_queued(msg)
                        elif isinstance(msg, p.Secrets | p.CacheValue | p.SignalSent):
                            waiters = (
                                self._secret_waiters
                                if isinstance(msg, p.Secrets)
                                else self._cache_waiters
                            )
                            entry = waiters.get(msg.request_id)
                            if entry is not None:
                                entry[1].append(msg)
                                entry[0].resolve()
                        elif isinstance(msg, p.Error):
                            log.warning("server closed the session: %s: %s", msg.code, msg.detail)
                            return
                except trio_websocket.ConnectionClosed as exc:
                    log.info("connection to the server closed: %s", exc.reason)
                except p.RemoteProtocolError as exc:
                    log.error("server broke the protocol: %s", exc)
                    with trio.move_on_after(1):
                        await ws.send_message(session.error_frame(exc))
                finally:
                    self._send = None
                    self._abandon_all("connection to the server lost")
                    nursery.cancel_scope.cancel()
        finally:
            self._send = None

    def _abandon_all(self, why: str) -> None:
        for run in list(self.runs.values()):
            run.abandon(why)
        for ack in self._acks.values():
            ack.resolve(LeaseLostError(why))
        self._acks.clear()
        self._cancels.clear()
        for waiter, _ in (*self._secret_waiters.values(), *self._cache_waiters.values()):
            waiter.resolve(LeaseLostError(why))

    async def release_all(self) -> None:
        """Give every execution back to the server (graceful stop)."""
        for run in list(self.runs.values()):
            if run.finished:
                continue
            try:
                with trio.move_on_after(1):
                    await self.send(
                        p.Release(
                            execution_id=run.execution_id, epoch=run.epoch, reason="shutdown"
                        )
                    )
            except Exception:
                pass
            run.abandon("worker shutting down")

    # ------------------------------------------------------------------ one execution

    async def _run_lease(self, lease: p.Lease) -> None:
        eid = lease.execution_id
        old = self.runs.get(eid)
        if old is not None:
            old.abandon(f"leased again with epoch {lease.epoch}")
        if self.stopping:
            with contextlib.suppress(LeaseLostError):
                await self.send(p.Release(execution_id=eid, epoch=lease.epoch, reason="shutdown"))
            return
        run = _Run(self, lease)
        self.runs[eid] = run
        if self._cancels.pop(eid, None) == lease.epoch:
            run.cancel_requested.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.sender)
                nursery.start_soon(run.cancel_watcher)
                try:
                    with run.scope:
                        await self._execute(run, lease)
                except LeaseLostError as exc:
                    log.info("run of %s stopped: %s", eid, exc)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self.runs.get(eid) is run:
                del self.runs[eid]

    async def _load(self, run: _Run, lease: p.Lease) -> tuple[workflow, Any, list] | None:
        """The workflow, input and history of ``lease``; None when loading failed (the
        execution is then FAILED: a source raising anything at import, SystemExit included, or
        taking longer than ``load_timeout``) or was cancelled (then CANCELLED)."""
        seq = lease.history[-1]["seq"] if lease.history else 0
        what = f"workflow {lease.workflow_name!r} version {lease.workflow_version}"
        error: BaseException | None = None
        with trio.move_on_after(self.load_timeout) as timer, run.load_scope:
            try:
                wf = await self._workflow(lease)
                eid = lease.execution_id
                events = [decode_event(p.event_from_wire(eid, e, 0.0)) for e in lease.history]
                data = lease.input
                value = codec.decode(data) if isinstance(data, bytes) else data
                return wf, value, events
            except trio.Cancelled:
                raise
            except BaseException as exc:  # user code at import: SystemExit is its failure too
                error = WorkflowError(f"cannot load {what}: {type(exc).__name__}: {exc}")
        if run.load_scope.cancelled_caught:
            await self._end(run, seq, E.WORKFLOW_CANCELLED, None, S.CANCELLED)
            return None
        if timer.cancelled_caught:
            error = WorkflowError(
                f"cannot load {what}: its source took longer than {self.load_timeout:g}s to "
                "load (a module that hangs at import?); the worker's --load-timeout"
            )
        assert error is not None
        log.error("execution %s: %s", lease.execution_id, error)
        await self._fail(run, seq, error)
        return None

    async def _execute(self, run: _Run, lease: p.Lease) -> None:
        loaded = await self._load(run, lease)
        if loaded is None:
            return
        wf, value, events = loaded
        ctx = ExecutionContext(
            lease.execution_id,
            lease.workflow_name,
            value,
            None,
            S.RUNNING,
            events,
            workflow_version=lease.workflow_version,
        )
        execution = Execution(wf, ctx, run, run)
        run.execution = execution
        try:
            result = await execution.run()
        except LeaseLostError:
            raise
        except RuntimeLeaseLost as exc:
            raise LeaseLostError(str(exc)) from None
        except NondeterminismError as exc:
            # the pinned source made other calls than its own history: it never will again
            log.error("execution %s: %s", lease.execution_id, exc)
            await self._fail(run, execution.seq, exc)
            return
        except StoppedError as exc:  # the session's journal failed: the lease is gone
            raise LeaseLostError(f"execution {lease.execution_id}: {exc}") from None
        except StaleWriteError:
            raise
        if run.dead is None:
            self.completed += 1
            log.debug("execution %s: %s", lease.execution_id, result.state.value)

    async def _fail(self, run: _Run, seq: int, error: BaseException) -> None:
        await self._end(run, seq, E.WORKFLOW_FAILED, error, S.FAILED)

    async def _end(
        self, run: _Run, seq: int, type_: ExecutionEventType, value: Any, state: S
    ) -> None:
        name = run.lease.workflow_name
        ev = StoredEvent(
            run.execution_id, seq + 1, type_.value, name, name, codec.encode(value), time.time()
        )
        await run.commit([ev], {"state": state})


# ---------------------------------------------------------------------------- serving


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def serve_worker(
    name: str | None = None,
    server_url: str | Sequence[str] = "http://127.0.0.1:8000",
    concurrency: int = 10,
    *,
    token: str | None = None,
    release_sleeps_after: float | None = 1.0,
    load_timeout: float = 60.0,
    backoff: tuple[float, float] = (0.05, 2.0),
    handle_signals: bool = False,
    worker: Worker | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker until cancelled (or, with ``handle_signals``, SIGTERM/SIGINT).

    Reports its worker id through ``task_status`` once the server has welcomed it; reconnects
    with exponential backoff (``backoff`` = first and longest wait, with jitter) whenever the
    connection is lost or cannot be made.

    ``server_url`` may name several servers (a sequence, or one string with commas): the worker
    connects to the first that answers, and when its session drops or a server does not answer
    it tries the next one at once, round robin; it backs off only once a whole round of them
    failed.
    """
    worker = worker or Worker(
        name or default_worker_name(),
        concurrency,
        token=token,
        release_sleeps_after=release_sleeps_after,
        load_timeout=load_timeout,
    )
    urls = [ws_url(u) for u in server_urls(server_url)]
    url = urls[0]
    started = False
    welcomed = False

    def on_ready(worker_id: str) -> None:
        nonlocal started, welcomed
        welcomed = True
        if len(urls) > 1:
            log.info("worker %s serving executions from %s", worker.name, url)
        if not started:
            started = True
            task_status.started(worker_id)

    logs.install()
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(worker.log_sink.serve)
            if handle_signals:

                async def stop_on_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                        async for signum in received:
                            log.info(
                                "received %s: giving executions back and stopping",
                                signal.Signals(signum).name,
                            )
                            worker.stopping = True
                            await worker.release_all()
                            await trio.sleep(0.1)  # let the release frames go out
                            outer.cancel_scope.cancel()
                            return

                outer.start_soon(stop_on_signal)

            delay = backoff[0]
            index = 0  # of the server tried next, round robin
            failed = 0  # connections that failed or dropped since the last welcome
            while True:
                url = urls[index % len(urls)]
                welcomed = False
                connected_at = trio.current_time()
                try:
                    async with trio_websocket.open_websocket_url(
                        url,
                        max_message_size=WORKER_MAX_FRAME,
                        connect_timeout=10,
                        disconnect_timeout=2,
                    ) as ws:
                        await worker.session(ws, on_ready)
                except Exception as exc:
                    if isinstance(exc, ExceptionGroup):
                        refused, _ = exc.split(WorkerRefusedError)
                        if refused is not None:
                            raise refused.exceptions[0] from None
                    elif isinstance(exc, WorkerRefusedError):
                        raise
                    expected = (
                        OSError,
                        trio_websocket.HandshakeError,
                        trio_websocket.ConnectionClosed,
                        trio_websocket.ConnectionTimeout,
                        trio_websocket.DisconnectionTimeout,
                        ConnectionError,
                        trio.BrokenResourceError,
                        p.ProtocolError,
                    )
                    if isinstance(exc, expected):
                        log.info("connection to %s lost or refused: %s", url, _reason(exc))
                    else:
                        log.warning("worker session ended: %r", exc, exc_info=exc)
                if trio.current_time() - connected_at > 5:
                    delay = backoff[0]  # it worked for a while: start the backoff again
                index += 1
                failed = 1 if welcomed else failed + 1
                if failed % len(urls) == 0:  # every server tried once since: back off
                    await trio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, backoff[1])
    except BaseExceptionGroup as group:
        refused, _ = group.split(WorkerRefusedError)
        if refused is not None:  # one clear error, not a group (the CLI prints it)
            raise _first(refused) from None
        raise
    finally:
        logs.uninstall()


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words: the first message along the exception's causes (a
    HandshakeError carries none of its own), else its type's name."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if text:
            return text if seen is exc else f"{type(exc).__name__}: {text}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
