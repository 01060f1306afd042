"""The store interface: what the engine, the dispatcher and the server may ask of a store.

Two implementations keep this contract: :class:`flux.runtime.store.Store` (SQLite, the default)
and :class:`flux.runtime.store_pg.PostgresStore` (PostgreSQL, for several processes or machines on
one database). :func:`flux.runtime.store.open_store` picks one from a path or URL. The contract
suite ``tests/test_store.py`` runs the same assertions against both.

The contract, for both:

- **Values are bytes.** Inputs, outputs, event values, secrets and cache values arrive encoded by
  the codec and come back as the same bytes; a store never encodes or decodes them. Records are
  :mod:`flux.runtime.records` types, never column dicts.
- **Never blocking the event loop.** Every database call runs in a worker thread; the store works
  on trio and on asyncio (anyio). A store serves one event loop at a time.
- **Atomic writes.** A :class:`~flux.runtime.records.Write` is applied whole or not at all, in
  this order: ``expect`` (column values the execution row must hold, compared with SQL ``IS``
  semantics, so ``None`` matches NULL), ``insert`` (a new execution row), ``update`` (columns
  to set, ``updated_at`` too unless given), ``events`` (appended to the history).
- **Fencing.** When ``expect`` does not hold, the write raises
  :class:`~flux.runtime.records.StaleWriteError` (naming the expected and the found values) and
  stores nothing. The check and the write are one atomic step against every other writer, in
  this process or another one on the same database: of two writes expecting the same lease
  epoch, where one of them changes the epoch, exactly one succeeds.
- **Refusals are the caller's alone.** A write naming an unknown column, an execution that
  already exists (insert), one that does not (update, events) or an event seq already stored
  raises StoreError with the same message on both stores; other writes committed together with
  it are unaffected.
- **Group commit and ordering.** Writes handed to :meth:`StoreAPI.commit` or
  :meth:`StoreAPI.enqueue` by one store are applied in the order they were queued; concurrent
  commits are merged into one transaction. A reader never sees part of a transaction.
- **Durability.** ``commit`` returns once its writes are durable at the store's ``durability``
  level (``full``: survives power loss; ``normal``: survives a crash of the process).
- **Cancellation.** A write handed to ``commit`` or ``enqueue`` is committed even if its caller
  is cancelled while waiting; that caller only stops waiting for the outcome. A cancelled read
  finishes its database call first (the worker thread is not abandoned), then the caller sees
  the cancellation.
- **Lifecycle.** The store opens lazily on first use or on ``async with``; opening applies the
  schema migrations it lacks in one transaction and refuses a database with a newer schema.
  ``aclose`` commits what is queued, then closes; it is idempotent, and a closed store raises
  StoreError for every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from flux.runtime.events import ExecutionState
from flux.runtime.records import (
    Claim,
    ExecutionRecord,
    SignalRecord,
    StoredEvent,
    StoreStatistics,
    WorkflowRecord,
    Write,
)
from flux.runtime.schedule_store import Started
from flux.runtime.schedules import ScheduleFireRecord, ScheduleRecord
from flux.runtime.store_logs import LogEntry, LogRecord

__all__ = ["StateFilter", "StoreAPI"]

#: One state or several, as the listing filters take them.
StateFilter = ExecutionState | str | Iterable[ExecutionState | str] | None


@runtime_checkable
class StoreAPI(Protocol):
    """What every Flux store offers; see the module docstring for the contract."""

    #: ``"full"`` or ``"normal"``, see the module docstring.
    durability: str

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> StoreAPI:
        """Open the store now (connect, migrate), so that a bad location fails here."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """:meth:`aclose`."""
        ...

    async def aclose(self) -> None:
        """Commit whatever is queued, then close. Idempotent; shielded from cancellation."""
        ...

    # -- group commit ---------------------------------------------------------------------------

    def enqueue(self, *writes: Write) -> list[Any]:
        """Queue writes without waiting; they go with the next commit (or :meth:`flush`).
        Returns one ticket per write: ``ticket.done`` and ``ticket.error`` (the StoreError that
        refused it, None if stored) once its transaction ran.

        Raises StoreError at once, queueing none of them, if one is malformed (unknown column,
        events of another execution). A queued write that the database refuses is logged.
        """
        ...

    def discard_queued(self, execution_id: str) -> int:
        """Drop the writes to ``execution_id`` not yet in a transaction and not awaited (a run
        that stopped leaves nothing more behind); only ever a suffix of its writes, so no hole
        in its history. Returns how many were dropped."""
        ...

    # -- ownership ------------------------------------------------------------------------------

    async def claim(
        self,
        execution_id: str,
        *,
        owner: str,
        expires_at: float,
        now: float,
        create: Write | None = None,
        owner_gone: Callable[[str], bool] | None = None,
        workflow_name: str | None = None,
    ) -> Claim:
        """Take the lease of ``execution_id`` for ``owner`` until ``expires_at`` and read its
        history atomically (one transaction): create it from ``create`` if it does not exist;
        report it finished, leased by another live owner (not expired at ``now``, and
        ``owner_gone(owner)`` false), or of another workflow than ``workflow_name``; else bump
        its epoch, set it RUNNING and return its history. See :class:`Claim`."""
        ...

    async def renew_leases(
        self, leases: Sequence[tuple[str, int]], *, owner: str, expires_at: float
    ) -> list[str]:
        """Extend ``owner``'s leases ``(execution_id, epoch)`` to ``expires_at`` (SQLite: in one
        transaction; PostgreSQL: one statement per lease in one round trip, so that a renewal
        never deadlocks with writes); return the ids whose lease is no longer ``owner``'s at
        that epoch."""
        ...

    async def reserve_due(
        self, *, owner: str, now: float, expires_at: float, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Take, for server ``owner`` (a reservation owner, ``"<server id>/"``), up to ``limit``
        executions due at ``now``: a durable sleep whose wake time passed, or a lease (of a
        worker, or another reservation) that expired. One transaction: each is reserved by one
        caller only, however many poll at once (``FOR UPDATE SKIP LOCKED`` on PostgreSQL); its
        epoch is bumped, ``lease_owner``/``lease_expires_at`` set to ``owner``/``expires_at``.
        Returns them as they are now. See :mod:`flux.runtime.store_leases`."""
        ...

    async def ready_executions(self, *, now: float, limit: int = 100) -> list[ExecutionRecord]:
        """Up to ``limit`` CREATED or SCHEDULED executions with no wake time and no live lease
        at ``now``, least recently updated first."""
        ...

    #: True when several servers may serve this database at once (PostgreSQL): they then
    #: coordinate through :meth:`notify` and :meth:`listen`.
    shared: bool

    async def notify(self, payloads: Sequence[str]) -> None:
        """Wake the other processes :meth:`listen`-ing on this database with ``payloads``
        (short strings); a no-op where nobody else can listen (SQLite)."""
        ...

    async def listen(self, deliver: Callable[[list[str]], None]) -> None:
        """Call ``deliver(payloads)`` on the event loop with what :meth:`notify` sends, until
        cancelled; ``["*"]`` whenever listening (re)starts (anything may have been missed).
        Never returns on SQLite."""
        ...

    async def commit(self, *writes: Write) -> None:
        """Store ``writes`` and return once they are durably committed.

        Each write is atomic and independent: if one is refused, this raises its StoreError (or
        StaleWriteError), and the other writes, this caller's included, still commit. With no
        writes this is :meth:`flush`.
        """
        ...

    async def flush(self) -> None:
        """Return once every write queued or being committed when called is committed."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the group-commit counters."""
        ...

    # -- executions and events ------------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution row, or None."""
        ...

    async def load_events(self, execution_id: str, after_seq: int = 0) -> list[StoredEvent]:
        """The events of an execution with ``seq > after_seq``, ordered by seq."""
        ...

    async def cancel_requested(self, execution_ids: Sequence[str]) -> list[str]:
        """Which of ``execution_ids`` have a cancel request recorded."""
        ...

    async def retries_of(self, execution_id: str) -> list[str]:
        """The ids of the executions whose ``retry_of`` is ``execution_id`` (its retries),
        oldest first; empty for an unknown id."""
        ...

    async def last_seq(self, execution_id: str) -> int:
        """The highest event seq of an execution, 0 if it has none."""
        ...

    async def list_executions(
        self,
        *,
        workflow_name: str | None = None,
        state: StateFilter = None,
        parent_id: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Executions matching every filter given, newest first (``created_at``, then insertion
        order). ``state`` may be several; ``limit`` None (or negative) means no limit. An
        unknown state raises ValueError."""
        ...

    async def count_executions(
        self,
        *,
        workflow_name: str | None = None,
        state: StateFilter = None,
        parent_id: str | None = None,
    ) -> int:
        """How many executions match the filters of :meth:`list_executions`."""
        ...

    # -- workflows ------------------------------------------------------------------------------

    async def save_workflow(self, name: str, source: str, source_hash: str) -> WorkflowRecord:
        """Store a new version of a workflow's source: the previous highest version + 1, or 1.
        Concurrent saves of one name get distinct, consecutive versions."""
        ...

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowRecord | None:
        """That version of the workflow (the latest when ``version`` is None), or None."""
        ...

    async def list_workflows(self) -> list[WorkflowRecord]:
        """The latest version of each workflow, by name."""
        ...

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        """Every version of workflow ``name``, oldest first, without their source text."""
        ...

    async def workflow_version_by_hash(self, name: str, source_hash: str) -> int | None:
        """The newest version of workflow ``name`` whose source has ``source_hash``, or None."""
        ...

    # -- secrets (ciphertext only) --------------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> None:
        """Create or replace a secret's ciphertext."""
        ...

    async def get_secret(self, name: str) -> bytes | None:
        """A secret's ciphertext, or None."""
        ...

    async def delete_secret(self, name: str) -> bool:
        """Delete a secret; True if there was one."""
        ...

    async def list_secret_names(self) -> list[str]:
        """The names of the secrets, sorted."""
        ...

    # -- cache ----------------------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        """The cached value, or None when absent or expired at ``now`` (``expires_at <= now``)."""
        ...

    async def cache_put(self, key: str, value: bytes, expires_at: float | None = None) -> None:
        """Create or replace a cache entry (``expires_at`` None: never expires)."""
        ...

    async def cache_evict_expired(self, now: float) -> int:
        """Delete the entries expired at ``now``; returns how many."""
        ...

    # -- schedules (flux.runtime.schedules; SQL shared in flux.runtime.schedule_store) ----------

    async def create_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        """Store a new schedule; ScheduleExistsError when its name is taken."""
        ...

    async def get_schedule(self, name: str) -> ScheduleRecord | None: ...

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        ...

    async def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its recorded decisions (not its executions); False if none."""
        ...

    async def set_schedule_paused(self, name: str, paused: bool, now: float) -> ScheduleRecord:
        """Pause or resume (next due time: the first after ``now``); ScheduleNotFoundError."""
        ...

    async def trigger_schedule(self, name: str, now: float) -> str:
        """Ask the schedule's runner to start one execution now; returns the id it will have.
        ScheduleError while an earlier trigger waits, ScheduleNotFoundError."""
        ...

    async def schedule_fires(
        self, name: str, limit: int = 20
    ) -> list[tuple[ScheduleFireRecord, str | None]]:
        """The latest decisions of a schedule, newest first, with their executions' states."""
        ...

    async def next_schedule_wake(self, workflows: Iterable[str] | None = None) -> float | None:
        """When :meth:`claim_due_schedules` may next find work (``-inf``: now; None: never)."""
        ...

    async def claim_due_schedules(
        self,
        now: float,
        *,
        workflows: Iterable[str] | None = None,
        pin_version: bool = False,
        limit: int = 50,
    ) -> list[Started]:
        """In one transaction: start the executions the schedules due at ``now`` call for
        (SCHEDULED, with WORKFLOW_STARTED, deterministic ids, ON CONFLICT DO NOTHING), record
        every decision and advance each schedule; several processes on one database start
        each due time once (PostgreSQL: SKIP LOCKED). Returns what was started."""
        ...

    # -- task logs (flux.runtime.store_logs) ----------------------------------------------------

    async def append_logs(
        self,
        execution_id: str,
        entries: Sequence[LogEntry],
        *,
        limit: int,
        cut_lines: int = 0,
        cut_bytes: int = 0,
    ) -> int:
        """Append captured lines to the logs of ``execution_id`` in one transaction, numbered
        from the last seq + 1, keeping at most ``limit`` bytes of messages per execution in
        all: past it nothing more is kept and one marker line (logger ``flux.logs``) says how
        many lines and bytes were cut, ``cut_lines``/``cut_bytes`` (cut before they reached
        the store) included. Concurrent appends to one execution get distinct, consecutive
        seqs. Returns how many of ``entries`` were kept. Text is stored as given, except NUL
        characters (written ``\\x00``) and lone surrogates (replaced)."""
        ...

    async def load_logs(
        self,
        execution_id: str,
        after: int = 0,
        limit: int | None = None,
        call_id: str | None = None,
    ) -> list[LogRecord]:
        """The lines of ``execution_id`` with ``seq > after``, ordered by seq, at most
        ``limit`` (None: all); with ``call_id``, only the lines of that call and of the calls
        below it (``call_id/...``). A bad ``after`` or ``limit`` raises ValueError."""
        ...

    # -- signals (flux.runtime.signals) -----------------------------------------------------------

    async def add_signal(
        self,
        execution_id: str,
        topic: str,
        value: bytes,
        sent_at: float,
        key: str | None = None,
    ) -> tuple[ExecutionState | None, SignalRecord | None]:
        """Queue a signal for ``execution_id``, atomically with reading its state: ``(None,
        None)`` and nothing stored when there is no such execution, ``(state, None)`` when it
        has finished, else ``(state, record)``. With ``key``, a signal already stored with that
        key for that execution is returned instead of storing another (idempotent send)."""
        ...

    async def pending_signals(
        self, execution_id: str, *, topic: str | None = None, limit: int | None = None
    ) -> list[SignalRecord]:
        """The signals of ``execution_id`` not yet delivered, in the order accepted (only those
        on ``topic``, at most ``limit``, when given). A :class:`Write` naming some in
        ``signals`` delivers them (exactly once: see Write)."""
        ...

    # -- whole tables, for moving a store (flux.runtime.store_bulk) ------------------------------

    async def count_rows(self, table: str) -> int:
        """How many rows ``table`` holds: one of ``workflows``, ``executions``, ``events``,
        ``secrets``, ``cache``, ``logs``, ``log_totals`` (:data:`flux.runtime.store_bulk.TABLES`);
        another name raises
        StoreError."""
        ...

    async def export_rows(
        self, table: str, *, after: Any = None, limit: int = 500
    ) -> tuple[list[Any], Any]:
        """Up to ``limit`` rows of ``table`` after cursor ``after`` (None: from the start), as
        records (WorkflowRecord with its source, ExecutionRecord, StoredEvent, SecretRecord,
        CacheRecord), and the cursor for the next batch (None when this one is empty). A stable
        order: executions in insertion order, the others by key. One indexed range read per
        batch, so a whole table is read in bounded memory."""
        ...

    async def import_rows(self, table: str, records: Sequence[Any]) -> int:
        """Insert ``records`` (of ``table``'s record type, else TypeError) as they are, in one
        transaction: all of them, or none and a StoreError naming the table (a key already
        stored, an event of an execution that is not stored). Returns how many were inserted.
        Bypasses group commit and fencing: for filling an empty store, not a live one."""
        ...
