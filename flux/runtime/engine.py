"""The embedded engine: runs executions in this process against the local SQLite store."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs

from . import codec
from .context import ExecutionContext
from .errors import ExecutionNotFoundError, NondeterminismError, StoreError, WorkflowError
from .events import ExecutionEvent, ExecutionEventType, ExecutionState
from .executor import Execution
from .history import pending_pauses
from .secrets import SecretStore
from .settings import Settings
from .store import ExecutionRecord, StaleWriteError, Store, StoredEvent, Write, open_store
from .workflow import MISSING, workflow

E = ExecutionEventType


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
    )


def _columns(update: dict[str, Any] | None) -> dict[str, Any] | None:
    if update is None:
        return None
    return {k: (v.value if isinstance(v, ExecutionState) else v) for k, v in update.items()}


class StoreJournal:
    """Journal of one execution in the local store, fenced by the lease epoch it claimed.

    ``held`` events (the resume of a paused execution) are written with the first event the run
    records, so that a run stopped by nondeterminism before recording anything leaves the
    history exactly as it was."""

    __slots__ = ("store", "execution_id", "expect", "held")

    def __init__(
        self, store: Store, execution_id: str, epoch: int, held: list[StoredEvent] | None = None
    ):
        self.store = store
        self.execution_id = execution_id
        self.expect = {"lease_epoch": epoch}
        self.held = held or []

    def _write(self, events: list[StoredEvent], update: dict[str, Any] | None) -> Write:
        if self.held:
            events, self.held = self.held + events, []
        return Write(self.execution_id, events, update=_columns(update), expect=self.expect)

    def enqueue(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None:
        self.store.enqueue(self._write(events, update))

    async def commit(self, events: list[StoredEvent], update: dict[str, Any] | None = None) -> None:
        await self.store.commit(self._write(events, update))


def new_execution_id() -> str:
    return uuid.uuid4().hex


class Engine:
    """Runs workflows in this process; owns nothing but references to the store and settings.

    Build it with :func:`open_engine`; ``wf.arun(..., engine=engine)`` reuses one engine (and its
    SQLite connection) for many runs.
    """

    suspend_sleep_after: float | None = None

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
        self._secret_values: list[str] = []
        self._running: dict[str, Execution] = {}
        self._kick: anyio.Event | None = None  # set when a run starts (see watch)

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
        return await self._run(child, input, child_id, value, execution.ctx.execution_id)

    # -------------------------------------------------------------- executions

    async def get(self, execution_id: str) -> ExecutionContext:
        record = await self.store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFoundError(execution_id)
        return build_context(record, await self.store.load_events(execution_id))

    async def run(
        self,
        wf: workflow,
        input: Any = None,
        *,
        execution_id: str | None = None,
        resume_value: Any = MISSING,
    ) -> ExecutionContext:
        """Start ``wf`` (new execution, or ``execution_id`` if unknown), resume a paused
        execution (``resume_value``, else ``input``, is what ``pause`` returns), recover a
        crashed running one, or return a finished one unchanged."""
        if execution_id is not None and resume_value is MISSING and input is not None:
            record = await self.store.get_execution(execution_id)
            if record is not None:
                resume_value = input
        return await self._run(wf, input, execution_id, resume_value, None)

    async def _run(
        self,
        wf: workflow,
        input: Any,
        execution_id: str | None,
        resume_value: Any,
        parent_id: str | None,
    ) -> ExecutionContext:
        record = await self.store.get_execution(execution_id) if execution_id else None
        held: list[StoredEvent] = []
        if record is None:
            ctx, epoch = self._create(wf, input, execution_id or new_execution_id(), parent_id)
        else:
            if record.workflow_name != wf.name:
                raise WorkflowError(
                    f"execution {execution_id} belongs to workflow {record.workflow_name!r}, "
                    f"not {wf.name!r}"
                )
            if record.state.is_terminal:
                return build_context(record, await self.store.load_events(record.execution_id))
            ctx, epoch, held = await self._claim(record, resume_value)
            if record.cancel_requested:  # asked while no process was running it
                return await self._finish_cancelled(ctx, {"lease_epoch": epoch})
        journal = StoreJournal(self.store, ctx.execution_id, epoch, held)
        execution = Execution(wf, ctx, journal, self, clock=self.clock)
        execution.resume_value = resume_value
        self._running[ctx.execution_id] = execution
        try:
            return await self._run_watched(execution)
        except NondeterminismError:
            if record is not None and journal.held:  # nothing recorded: put the state back
                with anyio.CancelScope(shield=True):
                    await self.store.commit(
                        Write(
                            ctx.execution_id,
                            update={"state": record.state.value},
                            expect=journal.expect,
                        )
                    )
            raise
        except StaleWriteError as e:
            raise StoreError(
                f"execution {ctx.execution_id} was taken over by another run while this one "
                f"was running; this run stopped ({e})"
            ) from None
        finally:
            self._running.pop(ctx.execution_id, None)

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

    def _create(
        self, wf: workflow, input: Any, execution_id: str, parent_id: str | None
    ) -> tuple[ExecutionContext, int]:
        try:
            data = codec.encode(input)
        except Exception as e:
            raise type(e)(f"input of workflow {wf.name!r}: {e}") from None
        now = time.time()
        record = ExecutionRecord(
            execution_id=execution_id,
            workflow_name=wf.name,
            parent_id=parent_id,
            input=data,
            state=ExecutionState.RUNNING,
            created_at=now,
            lease_epoch=1,
        )
        ctx = ExecutionContext(
            execution_id, wf.name, input, None, ExecutionState.RUNNING, parent_id=parent_id
        )
        started = append_event(ctx, E.WORKFLOW_STARTED, wf.name, wf.name, input, now, data)
        self.store.enqueue(Write(execution_id, [started], insert=record))
        return ctx, 1

    async def _finish_cancelled(
        self, ctx: ExecutionContext, expect: dict[str, Any]
    ) -> ExecutionContext:
        """End a non-running execution CANCELLED (nothing is in flight to roll back)."""
        name = ctx.workflow_name
        event = append_event(ctx, E.WORKFLOW_CANCELLED, name, name, None, self.clock())
        await self.store.commit(
            Write(
                ctx.execution_id,
                [event],
                update={"state": ExecutionState.CANCELLED.value, "wake_at": None},
                expect=expect,
            )
        )
        ctx.state = ExecutionState.CANCELLED
        return ctx

    async def _claim(
        self, record: ExecutionRecord, resume_value: Any
    ) -> tuple[ExecutionContext, int, list[StoredEvent]]:
        events = await self.store.load_events(record.execution_id)
        ctx = build_context(record, events)
        epoch = record.lease_epoch + 1
        new: list[StoredEvent] = []
        if record.state is ExecutionState.PAUSED:
            value = None if resume_value is MISSING else resume_value
            new = resume_events(ctx, value)
        ctx.state = ExecutionState.RUNNING
        await self.store.commit(
            Write(
                record.execution_id,
                update={
                    "state": ExecutionState.RUNNING.value,
                    "lease_epoch": epoch,
                    "wake_at": None,
                },
                expect={"lease_epoch": record.lease_epoch},
            )
        )
        return ctx, epoch, new

    async def cancel(self, execution_id: str) -> ExecutionContext:
        """Cancel a running (in this engine) or paused/queued execution."""
        running = self._running.get(execution_id)
        if running is not None:
            running.request_cancel()
            return running.ctx
        record = await self.store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFoundError(execution_id)
        if record.state.is_terminal:
            return await self.get(execution_id)
        if record.state in (ExecutionState.RUNNING, ExecutionState.CLAIMED):
            await self.store.commit(Write(execution_id, update={"cancel_requested": 1}))
            return await self.get(execution_id)
        expect = {"lease_epoch": record.lease_epoch, "state": record.state.value}
        return await self._finish_cancelled(await self.get(execution_id), expect)


def append_event(
    ctx: ExecutionContext,
    type: ExecutionEventType,
    source_id: str,
    name: str,
    value: Any,
    now: float,
    data: bytes | None = None,
) -> StoredEvent:
    """Add an event with the next sequence number to ``ctx.events``; return its stored form
    (``data``: the value already encoded, when the caller has it)."""
    seq = ctx.events[-1].id + 1 if ctx.events else 1
    ctx._events.append(
        ExecutionEvent(seq, type, source_id, name, value, datetime.fromtimestamp(now, UTC))
    )
    encoded = codec.encode(value) if data is None else data
    return StoredEvent(ctx.execution_id, seq, type.value, source_id, name, encoded, now)


def resume_events(ctx: ExecutionContext, value: Any) -> list[StoredEvent]:
    """Events that resume a paused execution: WORKFLOW_RESUMED, then TASK_RESUMED carrying
    ``value`` for every pause point still waiting. Appended to ``ctx.events`` too."""
    data = codec.encode(value)
    now = time.time()
    name = ctx.workflow_name
    targets = [(E.WORKFLOW_RESUMED, name, name)] + [
        (E.TASK_RESUMED, p.source_id, p.name) for p in pending_pauses(ctx.events)
    ]
    return [append_event(ctx, t, source, label, value, now, data) for t, source, label in targets]


@contextlib.asynccontextmanager
async def open_engine(
    settings: Settings | None = None,
    *,
    db: str | None = None,
    store: str | None = None,
    durability: str | None = None,
    clock: Callable[[], float] = time.time,
    cancel_poll: float | None = 2.0,
) -> AsyncIterator[Engine]:
    """Open the store named by ``settings`` (or the environment) and yield an engine on it.

    ``store`` names it directly (a path, ``sqlite:///path`` or ``postgresql://...``, winning over
    ``settings`` and ``db``); ``db`` is the SQLite path, as before.

    With ``cancel_poll`` (seconds, the longest wait between two looks), the engine watches the
    store for cancel requests from other processes while it runs executions; None turns that
    off (and with it the early flush of queued events)."""
    if settings is None:
        settings = Settings.from_env(db_path=db, durability=durability, store=store)
    elif store is not None:
        settings = attrs.evolve(settings, store=store)
    opened = open_store(settings.store, durability=settings.durability)
    engine = Engine(
        opened, settings, SecretStore(opened, settings), clock=clock, cancel_poll=cancel_poll
    )
    try:
        if cancel_poll is None:
            yield engine
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.watch)
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
        with anyio.CancelScope(shield=True):
            await opened.aclose()
