"""The embedded engine: runs executions in this process against the local SQLite store."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs

from . import codec, executions, logs, owners, wakes
from .context import ExecutionContext
from .engine_leases import EngineLeases, Lease
from .errors import (
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    StoppedError,
    StoreError,
    WorkflowError,
)
from .events import ExecutionEventType, ExecutionState
from .executor import Execution
from .journal import StoreJournal, build_context, event_of, resume_events
from .retry import create_retry
from .secrets import SecretStore
from .settings import Settings
from .store import (
    ExecutionRecord,
    SignalRecord,
    StaleWriteError,
    Store,
    StoredEvent,
    Write,
    WriteTicket,
    open_store,
)
from .workflow import MISSING, workflow

E = ExecutionEventType
log = logging.getLogger("flux.engine")


def new_execution_id() -> str:
    return uuid.uuid4().hex


class _Busy(Exception):
    def __init__(self, owner: str | None, expires_at: float | None):
        self.owner = owner
        self.expires_at = expires_at


class Engine(EngineLeases):
    """Runs workflows in this process; owns nothing but references to the store and settings.

    Build it with :func:`open_engine`; ``wf.arun(..., engine=engine)`` reuses one engine (and its
    SQLite connection) for many runs. Each run holds the execution's lease in the store under
    this engine's :attr:`owner` name, renewed every ``lease_ttl / 3`` seconds by the engine's
    heartbeat and before user code starts whenever it is getting old.
    """

    suspend_sleep_after: float | None = None
    base_exceptions_fail = False

    def __init__(
        self,
        store: Store,
        settings: Settings,
        secrets: SecretStore,
        *,
        clock: Callable[[], float] = time.time,
        cancel_poll: float | None = 2.0,
    ):
        self.clock = clock
        #: longest wait between two looks for a cancel request from another process (None: off)
        self.cancel_poll = cancel_poll
        self.store = store
        self.settings = settings
        self.secrets = secrets
        #: the name this engine's leases are held under (see flux.runtime.owners)
        self.owner = owners.new_owner()
        self.lease_ttl = settings.lease_ttl
        self._secret_values: list[str] = []
        self._running: dict[str, Execution] = {}
        self._leases: dict[str, Lease] = {}
        self._schedules: Any = None  # see the schedules property
        #: executions whose user code raising a BaseException (SystemExit...) fails them, as on
        #: a worker, instead of propagating to the caller (runs nobody awaits: schedules)
        self.base_exceptions_fail_for: set[str] = set()
        self._kick: anyio.Event | None = None  # set when a run starts (see watch)
        self._leased: anyio.Event | None = None  # set when a lease is taken (see heartbeat)
        #: what task bodies print and log, until it is written (see flux.runtime.logs)
        self.log_sink = logs.LogSink(
            self._write_logs,
            limit=settings.log_limit,
            line_limit=settings.log_line_limit,
            echo=settings.log_echo,
        )
        #: workflows this engine has run or was given (by name), for waking executions
        self.workflows: dict[str, workflow] = {}
        #: set when something may have become due (a signal sent here); see serve_due
        self._due_kick = anyio.Event()
        #: more things that come due, run by wake_due (see flux.runtime.wakes)
        self.due_sources: list[Any] = []

    @property
    def schedules(self) -> Any:
        """This engine's :class:`flux.runtime.scheduler.Schedules`: manage the store's
        schedules, and run them here (``await engine.schedules.run()``)."""
        if self._schedules is None:
            from .scheduler import Schedules

            self._schedules = Schedules(self)
        return self._schedules

    def stop_run(self, execution_id: str, reason: StoppedError) -> bool:
        """Stop the run of ``execution_id`` in this engine, if any (nothing more is recorded;
        the execution stays resumable). True if it was running here."""
        running = self._running.get(execution_id)
        if running is None:
            return False
        running.stop(reason)
        return True

    def scheduler(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        """``async with engine.scheduler():`` runs the due schedules in the background."""
        return self.schedules.running(**options)

    # -------------------------------------------------------------- Host services

    async def get_secrets(self, names: tuple[str, ...], call_id: str = "") -> dict[str, str]:
        values = await self.secrets.get_many(names)
        for v in values.values():
            if v not in self._secret_values:
                self._secret_values.append(v)
        return values

    def secret_values(self) -> list[str]:
        return self._secret_values

    async def cache_get(self, key: str) -> bytes | None:
        return await self.store.cache_get(key, self.clock())

    async def cache_put(self, key: str, value: bytes, ttl: float | None) -> None:
        await self.store.cache_put(key, value, self.clock() + ttl if ttl else None)

    async def run_child(
        self, execution: Execution, call_id: str, child: workflow, child_id: str, input: Any
    ) -> ExecutionContext:
        value, execution.resume_value = execution.resume_value, MISSING
        return await self._run(child, input, child_id, value, execution.ctx.execution_id, wait=True)

    async def pending_signals(
        self, execution: Execution, topic: str | None = None, limit: int | None = None
    ) -> list[SignalRecord]:
        eid = execution.ctx.execution_id
        return await self.store.pending_signals(eid, topic=topic, limit=limit)

    async def send_signal_from(self, target: str, topic: str, data: bytes, key: str) -> None:
        await wakes.accept(self, target, topic, data, key)

    async def _write_logs(
        self, execution_id: str, entries: list, limit: int, cut_lines: int, cut_bytes: int
    ) -> None:
        await self.store.append_logs(
            execution_id, entries, limit=limit, cut_lines=cut_lines, cut_bytes=cut_bytes
        )

    async def logs(
        self,
        execution_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        call_id: str | None = None,
    ) -> list[logs.LogRecord]:
        """The task log lines of ``execution_id`` after seq ``after`` (at most ``limit``; of
        ``call_id`` and the calls below it when given), what this engine captured so far
        included. Raises ExecutionNotFoundError for an unknown execution."""
        if self.log_sink.has(execution_id):
            await self.log_sink.flush(execution_id)
        lines = await self.store.load_logs(execution_id, after, limit, call_id)
        if not lines and await self.store.get_execution(execution_id) is None:
            raise ExecutionNotFoundError(execution_id)
        return lines

    def follow_logs(
        self, execution_id: str, *, after: int = 0, call_id: str | None = None, **options: Any
    ) -> AsyncIterator[list[logs.LogRecord] | None]:
        """The task log lines of ``execution_id`` as they are stored, in pages, until it ends
        or pauses (see :func:`flux.runtime.log_reader.follow_logs`)."""
        from .log_reader import follow_logs

        return follow_logs(self.store, execution_id, after=after, call_id=call_id, **options)

    # -------------------------------------------------------------- executions

    async def get(self, execution_id: str) -> ExecutionContext:
        record = await self.store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFoundError(execution_id)
        ctx = build_context(record, await self.store.load_events(execution_id))
        ctx.retried_by = await self.store.retries_of(execution_id)
        return ctx

    async def run(
        self,
        wf: workflow,
        input: Any = None,
        *,
        execution_id: str | None = None,
        resume_value: Any = MISSING,
        wait: bool | float = False,
    ) -> ExecutionContext:
        """Start ``wf`` (new execution, or ``execution_id`` if unknown), resume a paused
        execution (``resume_value``, else ``input``, is what ``pause`` returns), recover a
        crashed running one, or return a finished one unchanged.

        An execution another live runner holds is refused with ExecutionLeasedError; with
        ``wait=True`` (or a number of seconds) this waits for that runner to finish, pause or
        lose its lease, then goes on as above."""
        return await self._run(
            wf, input, execution_id, resume_value, None, wait=wait, input_resumes=True
        )

    async def _run(
        self,
        wf: workflow,
        input: Any,
        execution_id: str | None,
        resume_value: Any,
        parent_id: str | None,
        *,
        wait: bool | float = False,
        input_resumes: bool = False,
    ) -> ExecutionContext:
        if not isinstance(wait, bool) and (
            not isinstance(wait, int | float) or not wait >= 0  # NaN too
        ):
            raise ValueError(f"wait must be True, False or seconds >= 0, got {wait!r}")
        limit = None if isinstance(wait, bool) else time.monotonic() + float(wait)
        delay = 0.05
        self.workflows.setdefault(wf.name, wf)
        again = 0
        while True:
            try:
                ctx = await self._run_once(
                    wf, input, execution_id, resume_value, parent_id, input_resumes
                )
                again += 1
                if again > 1000 or not await wakes.signal_came(self, ctx):
                    return ctx  # (past 1000 runs in a row, wake_due takes it on)
                execution_id, input, resume_value = ctx.execution_id, None, MISSING
                continue
            except _Busy as busy:
                if wait is False or (limit is not None and time.monotonic() >= limit):
                    assert execution_id is not None
                    raise ExecutionLeasedError(
                        execution_id, owners.describe(busy.owner), busy.expires_at
                    ) from None
            await anyio.sleep(delay if limit is None else min(delay, limit - time.monotonic()))
            delay = min(delay * 2, 1.0)

    async def _run_once(
        self,
        wf: workflow,
        input: Any,
        execution_id: str | None,
        resume_value: Any,
        parent_id: str | None,
        input_resumes: bool,
    ) -> ExecutionContext:
        record: ExecutionRecord | None = None
        held: list[StoredEvent] = []
        tickets: list[WriteTicket] = []
        now = self.clock()
        expires = now + self.lease_ttl
        began = time.monotonic()
        if execution_id is None:
            # a fresh random id: nobody else can know it, so the creation is only queued and
            # commits with the run's first outcome
            ctx, create = self._creation(wf, input, new_execution_id(), parent_id, expires)
            tickets = self.store.enqueue(create)
            epoch = 1
        else:
            running = self._running.get(execution_id)
            if running is not None:
                lease = self._leases.get(execution_id)
                raise _Busy(self.owner, lease.expires_at if lease else None)
            ctx, create = self._creation(wf, input, execution_id, parent_id, expires)
            # shielded: a claim that took the lease is always followed by the run, which then
            # sees a pending cancellation at once (and ends CANCELLED), never left half-taken
            with anyio.CancelScope(shield=True):
                claim = await self.store.claim(
                    execution_id,
                    owner=self.owner,
                    expires_at=expires,
                    now=now,
                    create=create,
                    owner_gone=owners.owner_gone,
                    workflow_name=wf.name,
                )
            if claim.outcome == "mismatch":
                assert claim.record is not None
                raise WorkflowError(
                    f"execution {execution_id} belongs to workflow "
                    f"{claim.record.workflow_name!r}, not {wf.name!r}"
                )
            if claim.outcome == "finished":
                assert claim.record is not None
                return build_context(claim.record, list(claim.events))
            if claim.outcome == "leased":
                assert claim.record is not None
                raise _Busy(claim.record.lease_owner, claim.record.lease_expires_at)
            epoch = claim.epoch
            if claim.outcome == "claimed":
                record = claim.record
                assert record is not None
                ctx = build_context(record, list(claim.events))
                if input_resumes and resume_value is MISSING and input is not None:
                    resume_value = input
                if record.state is ExecutionState.PAUSED:
                    value = None if resume_value is MISSING else resume_value
                    held = resume_events(ctx, value)
                ctx.state = ExecutionState.RUNNING
                if record.cancel_requested:  # asked while no process was running it
                    return await self._finish_cancelled(ctx, {"lease_epoch": epoch})
        eid = ctx.execution_id
        self._leases[eid] = Lease(epoch, expires, began)
        if self._leased is not None:
            self._leased.set()
        journal = StoreJournal(self.store, eid, epoch, held, self.log_sink)
        journal.tickets.extend(tickets)  # a refused creation stops the run at its next write
        execution = Execution(wf, ctx, journal, self, clock=self.clock)
        if eid in self.base_exceptions_fail_for:
            execution._base_fail = True
        execution.resume_value = resume_value
        self._running[eid] = execution
        try:
            return await self._run_watched(execution)
        except StoppedError as stop:
            with anyio.CancelScope(shield=True):
                await self._after_stop(eid, epoch, journal, record, stop)
            raise
        finally:
            self._running.pop(eid, None)
            self._leases.pop(eid, None)
            if self.log_sink.has(eid):  # the run's last lines are stored when it returns
                with anyio.CancelScope(shield=True):
                    await self.log_sink.flush(eid, forget=True)

    async def _after_stop(
        self,
        execution_id: str,
        epoch: int,
        journal: StoreJournal,
        record: ExecutionRecord | None,
        stop: StoppedError,
    ) -> None:
        """A run stopped: give the lease back (it is not ours any more after a lease loss), and
        when the run wrote nothing, put the state it had before the claim back (a paused
        execution stays PAUSED, a sleeping one SCHEDULED)."""
        if isinstance(stop, LeaseLostError):
            return
        update: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if record is not None and not journal.wrote:
            update["state"] = record.state.value
            update["wake_at"] = record.wake_at
        try:
            await self.store.commit(
                Write(execution_id, update=update, expect={"lease_epoch": epoch})
            )
        except StoreError as exc:
            log.info("execution %s: lease not released after the stop: %s", execution_id, exc)

    async def _run_watched(self, execution: Execution) -> ExecutionContext:
        """Run ``execution``; the engine's watcher (see :meth:`watch`) flushes what it queued
        and passes on a cancel request made by another process."""
        if self._kick is not None:
            self._kick.set()
        return await execution.run()

    async def watch(self) -> None:
        """While executions run in this engine: flush queued events (a run's creation and a long
        task's TASK_STARTED become visible to other processes within 50 ms) and look for cancel
        requests made by another process (``flux executions cancel ID``), with backoff from
        0.25 s up to ``cancel_poll`` seconds. Runs for the engine's lifetime (``open_engine``
        starts it)."""
        assert self.cancel_poll is not None
        self._kick = anyio.Event()
        if self._running:  # a run started before this task did
            self._kick.set()
        delay = self.cancel_poll
        while True:
            if not self._running or self._kick.is_set():
                await self._kick.wait()
                self._kick = anyio.Event()
                await anyio.sleep(0.05)
                delay = 0.25
            else:
                with anyio.move_on_after(delay):
                    await self._kick.wait()
                if self._kick.is_set():
                    continue
                delay = min(delay * 2, self.cancel_poll)
            await self.store.flush()
            ids = list(self._running)
            if ids:
                for execution_id in await self.store.cancel_requested(ids):
                    running = self._running.get(execution_id)
                    if running is not None:
                        running.request_cancel()
                for running in list(self._running.values()):
                    running.signals_arrived()  # sent by another process, maybe

    def _creation(
        self, wf: workflow, input: Any, execution_id: str, parent_id: str | None, expires: float
    ) -> tuple[ExecutionContext, Write]:
        """The context and the store write that create a new execution, leased to this
        engine (epoch 1) until ``expires``."""
        try:
            data = codec.encode(input)
        except Exception as e:
            raise type(e)(f"input of workflow {wf.name!r}: {e}") from None
        seen = codec.decode(data)  # the workflow gets the input as a replay will
        now = time.time()
        write = executions.creation(
            execution_id,
            wf.name,
            data,
            now,
            parent_id=parent_id,
            owner=self.owner,
            expires_at=expires,
        )
        ctx = ExecutionContext(
            execution_id, wf.name, seen, None, ExecutionState.RUNNING, parent_id=parent_id
        )
        ctx._events.append(event_of(write.events[0], seen))
        return ctx, write

    async def _finish_cancelled(
        self, ctx: ExecutionContext, expect: dict[str, Any]
    ) -> ExecutionContext:
        """End a non-running execution CANCELLED (nothing is in flight to roll back)."""
        last = ctx.events[-1].id if ctx.events else 0
        write = executions.cancellation(
            ctx.execution_id, ctx.workflow_name, last, self.clock(), expect
        )
        await self.store.commit(write)
        ctx._events.append(event_of(write.events[0], None))
        ctx.state = ExecutionState.CANCELLED
        return ctx

    def register(self, *workflows: workflow) -> None:
        """Make workflows known to this engine by name, so that :meth:`wake_due` can run their
        executions (every workflow the engine runs is registered by itself)."""
        for wf in workflows:
            self.workflows[wf.name] = wf

    async def send_signal(
        self, execution_id: str, topic: str, value: Any = None, *, key: str | None = None
    ) -> SignalRecord:
        """Queue a signal for ``execution_id`` (see :mod:`flux.runtime.signals`); returns it as
        stored. A receive running in this engine takes it at once, one in another process
        within its engine's poll (``cancel_poll``); an execution released while it waits is
        run by :meth:`wake_due`. Raises ExecutionNotFoundError, ExecutionConflictError
        (finished), TypeError/ValueError (topic) or SerializationError (value). ``key``: a
        second send with the same key is not queued again (returns the first)."""
        return await wakes.send(self, execution_id, topic, value, key)

    async def wake_due(self, workflows: Any = None) -> list[ExecutionContext]:
        """Run, once each, the released executions that can go on now: a signal queued for one
        of their receives, or a wake time (sleep, receive timeout) passed by the engine clock.
        ``workflows`` (an iterable or a name -> workflow mapping) adds to :attr:`workflows`;
        executions of workflows it does not know are left alone. Returns what the runs came
        to. The one function every loop that wakes executions calls (see :meth:`serve_due`)."""
        return await wakes.wake_due(self, workflows)

    async def serve_due(self, workflows: Any = None, *, poll: float = 1.0) -> None:
        """Wake due executions for ever (a long-running app's loop): :meth:`wake_due`, then
        wait until the next wake time, a signal sent through this engine, or ``poll`` seconds
        (for signals sent by other processes), whichever comes first."""
        await wakes.serve_due(self, workflows, poll)

    async def retry(
        self, execution_id: str, wf: workflow | None = None, *, wait: bool | float = False
    ) -> ExecutionContext:
        """Retry the FAILED execution ``execution_id``: a new execution (new id, ``retry_of``
        it) whose history is the original's up to its first failure (flux.runtime.retry).
        With ``wf`` (the workflow, fixed or not), run it now: completed calls replay, the
        failed one runs again; the result is returned. Without, return it SCHEDULED, for
        ``engine.run(wf, execution_id=...)`` (or ``flux run FILE --execution-id``) to run.

        ExecutionNotFoundError for an unknown id; ExecutionConflictError if it did not fail or
        a retry of it is live."""
        if wf is not None:
            record = await self.store.get_execution(execution_id)
            if record is not None and record.workflow_name != wf.name:
                raise WorkflowError(
                    f"execution {execution_id} belongs to workflow "
                    f"{record.workflow_name!r}, not {wf.name!r}"
                )
        plan = await create_retry(self.store, execution_id, clock=self.clock)
        new_id = plan.records[0].execution_id
        if wf is None:
            return await self.get(new_id)
        return await self.run(wf, execution_id=new_id, wait=wait)

    async def cancel(self, execution_id: str) -> ExecutionContext:
        """Cancel a running (in this engine) or paused/queued execution."""
        running = self._running.get(execution_id)
        if running is not None:
            running.request_cancel()
            return running.ctx
        while True:
            record = await self.store.get_execution(execution_id)
            if record is None:
                raise ExecutionNotFoundError(execution_id)
            if record.state.is_terminal:
                return await self.get(execution_id)
            if record.state in (ExecutionState.RUNNING, ExecutionState.CLAIMED):
                await self.store.commit(Write(execution_id, update={"cancel_requested": 1}))
                return await self.get(execution_id)
            expect = {"lease_epoch": record.lease_epoch, "state": record.state.value}
            try:
                return await self._finish_cancelled(await self.get(execution_id), expect)
            except StaleWriteError:
                continue  # claimed (resumed) meanwhile: ask its runner instead


@contextlib.asynccontextmanager
async def open_engine(
    settings: Settings | None = None,
    *,
    db: str | None = None,
    store: str | None = None,
    durability: str | None = None,
    clock: Callable[[], float] = time.time,
    cancel_poll: float | None = 2.0,
    lease_ttl: float | None = None,
) -> AsyncIterator[Engine]:
    """Open the store named by ``settings`` (or the environment) and yield an engine on it.

    ``store`` names it directly (a path, ``sqlite:///path`` or ``postgresql://...``, winning over
    ``settings`` and ``db``); ``db`` is the SQLite path, as before.

    With ``cancel_poll`` (seconds, the longest wait between two looks), the engine watches the
    store for cancel requests from other processes while it runs executions, and renews the
    leases of its runs every ``lease_ttl / 3`` seconds; None turns both off (and with them the
    early flush of queued events): leases are then renewed only before user code starts, so a
    task running longer than the lease ttl can be taken over. Meant for tests in virtual time."""
    if settings is None:
        settings = Settings.from_env(
            db_path=db, durability=durability, lease_ttl=lease_ttl, store=store
        )
    else:
        if store is not None:
            settings = attrs.evolve(settings, store=store)
        if lease_ttl is not None:
            settings = attrs.evolve(settings, lease_ttl=lease_ttl)
    opened = open_store(
        settings.store,
        durability=settings.durability,
        busy_timeout=settings.busy_timeout,
        retry_for=settings.store_retry_for,
    )
    engine = Engine(
        opened, settings, SecretStore(opened, settings), clock=clock, cancel_poll=cancel_poll
    )
    logs.install()
    try:
        if cancel_poll is None:
            yield engine
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.watch)
                tg.start_soon(engine.heartbeat)
                tg.start_soon(engine.log_sink.serve)
                try:
                    yield engine
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the caller's own exception, not wrapped by the watcher's task group
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        logs.uninstall()
        with anyio.CancelScope(shield=True):
            await engine.log_sink.flush()
            await opened.aclose()
