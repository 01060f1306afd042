"""The embedded engine's leases (a part of :class:`flux.runtime.engine.Engine`): each run holds
its execution's lease in the store under the engine's owner name, renewed by the heartbeat
every ``lease_ttl / 3`` seconds and, before user code starts, whenever it is getting old; a run
whose lease another runner took stops at once, writing nothing more."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import attrs

from .errors import LeaseLostError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from .executor import Execution

__all__ = ["EngineLeases"]

log = logging.getLogger("flux.engine")


@attrs.define
class Lease:
    """The lease this engine holds on one execution it runs."""

    epoch: int
    #: when it ends unless renewed (engine clock, like the store's lease_expires_at)
    expires_at: float
    #: time.monotonic() when the renewal that set expires_at began
    renewed: float


class EngineLeases:
    """Lease renewal and loss of the runs of an :class:`~flux.runtime.engine.Engine`."""

    async def ensure_lease(self, execution: Execution) -> None:
        """Renew the lease of ``execution`` first if it is getting old (half its ttl gone by
        the engine clock or by the monotonic clock, which a frozen or suspended process also
        sees jump); stop the run if the lease turns out lost, or cannot be renewed before it
        expires."""
        eid = execution.ctx.execution_id
        lease = self._leases.get(eid)
        if lease is None or self._fresh(lease):
            return
        await self.renew([eid])
        lease = self._leases.get(eid)
        if lease is not None and not self._fresh(lease) and self._expired(lease):
            execution.stop(
                StoreUnavailableError(
                    f"execution {eid}: its lease expired and could not be renewed"
                )
            )

    def _fresh(self, lease: Lease) -> bool:
        margin = self.lease_ttl / 2
        return (
            self.clock() < lease.expires_at - margin
            and time.monotonic() - lease.renewed < margin
        )

    def _expired(self, lease: Lease) -> bool:
        return (
            self.clock() >= lease.expires_at or time.monotonic() - lease.renewed >= self.lease_ttl
        )

    async def renew(self, execution_ids: list[str] | None = None) -> None:
        """Extend the leases of the given running executions (all by default); a run whose
        lease another runner took stops at once, writing nothing more."""
        ids = list(self._leases) if execution_ids is None else execution_ids
        due = [(eid, self._leases[eid].epoch) for eid in ids if eid in self._leases]
        if not due:
            return
        began = time.monotonic()
        expires = self.clock() + self.lease_ttl
        try:
            # a run's creation may still be queued (it commits with the first outcome): an
            # execution row that is not there yet would read as a lease lost
            await self.store.flush()
            lost = set(await self.store.renew_leases(due, owner=self.owner, expires_at=expires))
        except StoreError as exc:
            log.warning("cannot renew the leases of %d execution(s): %s", len(due), exc)
            return
        for eid, epoch in due:
            lease = self._leases.get(eid)
            if lease is None or lease.epoch != epoch:
                continue
            if eid in lost:
                self._lease_lost(eid)
            else:
                lease.expires_at = expires
                lease.renewed = began

    def _lease_lost(self, execution_id: str) -> None:
        self._leases.pop(execution_id, None)
        running = self._running.get(execution_id)
        if running is not None:
            log.warning("execution %s: lease lost to another runner; this run stops", execution_id)
            running.abandon(
                LeaseLostError(
                    f"execution {execution_id}: another runner took it over after this one "
                    f"missed its {self.lease_ttl:g}s lease (a stalled or frozen process); "
                    "this run stopped and wrote nothing more"
                )
            )

    async def heartbeat(self) -> None:
        """Renew the leases of the running executions every ``lease_ttl / 3`` seconds, for
        the engine's lifetime (``open_engine`` starts it)."""
        self._leased = anyio.Event()
        while True:
            if not self._leases:
                await self._leased.wait()
                self._leased = anyio.Event()
            await anyio.sleep(self.lease_ttl / 3)
            await self.renew()
