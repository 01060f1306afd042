"""Group commit, independent of the database: concurrent writes merged into one transaction.

:class:`GroupCommit` queues :class:`~flux.runtime.records.Write` objects and hands them, in
batches, to an ``apply`` coroutine that stores a whole batch in one transaction and returns one
outcome per write (``None`` or the StoreError refusing it). When many tasks commit at once, the
first one that finds no transaction running becomes the *leader*: it takes everything queued,
awaits ``apply``, wakes the others, and goes on while more is queued. The leader works inside a
shielded cancel scope, so a cancelled leader still finishes and wakes everybody; a write handed
over is committed even if its caller is cancelled meanwhile.

Everything here runs on the event loop thread; only ``apply`` leaves it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

from flux.runtime.errors import StoreError, StoreUnavailableError
from flux.runtime.records import StoreStatistics, Write, check_write

__all__ = ["ApplyBatch", "GroupCommit"]

logger = logging.getLogger(__name__)

#: Stores one batch in one transaction; one outcome per write, in order.
ApplyBatch = Callable[[list[Write]], Awaitable[list[StoreError | None]]]


class _Pending:
    """One queued write and, once done, its outcome (what ``enqueue`` returns as a ticket)."""

    __slots__ = ("write", "awaited", "done", "error", "event")

    def __init__(self, write: Write, awaited: bool):
        self.write = write
        self.awaited = awaited  # False for enqueue(): nobody will see an error, so it is logged
        self.done = False
        self.error: StoreError | None = None
        self.event: anyio.Event | None = None


class GroupCommit:
    """The writer of one store: queue, batches, leader, counters."""

    def __init__(self, apply: ApplyBatch, closed_message: str):
        self._apply = apply
        self._closed_message = closed_message
        self.closing = False
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []
        self._committing = False
        self._commits = 0
        self._writes_committed = 0
        self._writes_failed = 0
        self._largest_batch = 0

    def enqueue(self, writes: Sequence[Write], *, awaited: bool = False) -> list[_Pending]:
        """Check and queue ``writes`` (none of them if one is malformed)."""
        if self.closing:
            raise StoreError(self._closed_message)
        for write in writes:
            check_write(write)
        pendings = [_Pending(write, awaited) for write in writes]
        self._queue.extend(pendings)
        return pendings

    def discard(self, execution_id: str) -> int:
        """Drop the writes to ``execution_id`` still queued (not those in a transaction, nor
        awaited ones); see ``Store.discard_queued``."""
        kept: list[_Pending] = []
        dropped = 0
        for pending in self._queue:
            if pending.write.execution_id == execution_id and not pending.awaited:
                pending.error = StoreError(f"write to execution {execution_id!r} discarded")
                pending.done = True
                dropped += 1
            else:
                kept.append(pending)
        self._queue = kept
        return dropped

    async def commit(self, writes: Sequence[Write]) -> None:
        """Queue ``writes``, wait for them, raise the first refusal among them."""
        if not writes:
            await self.flush()
            return
        pendings = self.enqueue(writes, awaited=True)
        await self._settle(pendings)
        for pending in pendings:
            if pending.error is not None:
                raise pending.error

    async def flush(self) -> None:
        """Return once every write queued or being committed when called is committed."""
        pendings = self._inflight + self._queue
        if not pendings:
            await anyio.lowlevel.checkpoint()
            return
        await self._settle(pendings)

    async def drain(self) -> None:
        """Refuse new writes and commit everything queued (for closing; shielded)."""
        with anyio.CancelScope(shield=True):
            self.closing = True
            while self._committing or self._queue:
                await self.flush()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            commits=self._commits,
            writes_committed=self._writes_committed,
            writes_failed=self._writes_failed,
            largest_batch=self._largest_batch,
            queued=len(self._queue),
        )

    async def _settle(self, pendings: list[_Pending]) -> None:
        if not self._committing:
            await self._lead()  # drains the queue, ours included
            return
        for pending in pendings:
            if not pending.done:
                if pending.event is None:
                    pending.event = anyio.Event()
                await pending.event.wait()

    async def _lead(self) -> None:
        self._committing = True
        try:
            with anyio.CancelScope(shield=True):
                while self._queue:
                    batch, self._queue = self._queue, []
                    self._inflight = batch
                    try:
                        errors = await self._apply([p.write for p in batch])
                    except Exception as exc:
                        # nothing of the batch was stored: fail what was queued behind it as
                        # well, so that no later write of an execution commits after an
                        # earlier one was refused (a history never gets a hole)
                        queued, self._queue = self._queue, []
                        batch = batch + queued
                        errors = [_batch_error(exc, len(batch)) for _ in batch]
                    except BaseException as exc:
                        self._finish(batch, [_batch_error(exc, len(batch)) for _ in batch])
                        queued, self._queue = self._queue, []
                        self._finish(queued, [_batch_error(exc, len(queued)) for _ in queued])
                        raise
                    finally:
                        self._inflight = []
                    self._finish(batch, errors)
        finally:
            self._committing = False

    def _finish(self, batch: list[_Pending], errors: list[StoreError | None]) -> None:
        self._commits += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        for pending, error in zip(batch, errors, strict=True):
            if error is None:
                self._writes_committed += 1
            else:
                self._writes_failed += 1
                pending.error = error
                if not pending.awaited:
                    logger.warning("queued write refused: %s", error)
            pending.done = True
            if pending.event is not None:
                pending.event.set()


def _batch_error(exc: BaseException, size: int) -> StoreError:
    cls = StoreUnavailableError if isinstance(exc, StoreUnavailableError) else StoreError
    error = cls(f"commit of a batch of {size} write(s) failed: {exc}")
    error.__cause__ = exc
    return error
