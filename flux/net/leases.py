"""The lease lifecycle as data: phases, causes, the table of transitions, and the decisions the
dispatcher takes on a lease, as pure functions (no I/O, no clock, no trio), like the protocol's
session state machine. :mod:`flux.net.dispatch` is the shell that reads the store and the clock,
asks these functions, and acts on the answer.

A lease is one ``(execution, epoch)`` granted to one worker::

    GRANTING --granted--> HELD --extended--> HELD
        |                   |
        +--refused----------+--expired / released / fenced / lost / broken--> ENDED

``GRANTING`` is the time between picking a worker and committing ``epoch + 1`` in the store (its
epoch is not known yet); a grant in flight never expires (it is bounded by the store call).
``HELD`` leases are extended by heartbeats and accepted writes. Every way out is ``ENDED``: the
worker's frames for it are refused from then on.

Owners. With one server per database (SQLite) a lease's ``lease_owner`` in the store is the
worker id. With several (PostgreSQL) it is ``"<server id>/<worker id>"``, and a server's own
*reservation* of a due execution, before it picks a worker, is ``"<server id>/"`` (see
:mod:`flux.runtime.store_leases`).
"""

from __future__ import annotations

from enum import StrEnum

from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord
from flux.runtime.store_leases import RESERVATION_SUFFIX, is_reservation

__all__ = [
    "Cause",
    "GrantDecision",
    "LeaseError",
    "Phase",
    "TRANSITIONS",
    "advance",
    "decide_grant",
    "expiry_due",
    "fence",
    "owner_for",
    "reservation_for",
]

S = ExecutionState

#: States an execution may be granted from (queued, or leased by a runner that is gone).
RUNNABLE = frozenset({S.CREATED, S.SCHEDULED, S.CLAIMED, S.RUNNING, S.CANCELLING})
#: States in which some runner holds (or held) the lease.
LEASED = frozenset({S.CLAIMED, S.RUNNING, S.CANCELLING})


class Phase(StrEnum):
    GRANTING = "GRANTING"
    HELD = "HELD"
    ENDED = "ENDED"


class Cause(StrEnum):
    #: the store took ``epoch + 1`` for this worker
    GRANTED = "granted"
    #: the grant did not happen (the execution ended, changed, or is held elsewhere)
    REFUSED = "refused"
    #: a heartbeat or an accepted write
    EXTENDED = "extended"
    #: ``lease_ttl`` passed without a heartbeat
    EXPIRED = "expired"
    #: the worker ended it (its last batch, a release, a completion, a shutdown)
    RELEASED = "released"
    #: the store refused a write of it (another epoch is current)
    FENCED = "fenced"
    #: the store no longer has it as this worker's (another server took it over)
    LOST = "lost"
    #: its writes made no sense (a seq gap, a refused write): run it again
    BROKEN = "broken"


class LeaseError(Exception):
    """A transition the table does not allow (a bug in the shell, never the worker's doing)."""


_ENDINGS = (Cause.EXPIRED, Cause.RELEASED, Cause.FENCED, Cause.LOST, Cause.BROKEN)

#: ``(phase, cause) -> next phase``; a pair missing here is a :class:`LeaseError`.
TRANSITIONS: dict[tuple[Phase, Cause], Phase] = {
    (Phase.GRANTING, Cause.GRANTED): Phase.HELD,
    (Phase.GRANTING, Cause.REFUSED): Phase.ENDED,
    (Phase.GRANTING, Cause.EXTENDED): Phase.GRANTING,
    # the worker went away or the lease was taken over while the grant was in flight
    (Phase.GRANTING, Cause.LOST): Phase.ENDED,
    (Phase.GRANTING, Cause.FENCED): Phase.ENDED,
    (Phase.HELD, Cause.EXTENDED): Phase.HELD,
    **{(Phase.HELD, cause): Phase.ENDED for cause in _ENDINGS},
    # an ended lease stays ended whatever still arrives for it
    **{(Phase.ENDED, cause): Phase.ENDED for cause in (*_ENDINGS, Cause.EXTENDED)},
}


def advance(phase: Phase, cause: Cause) -> Phase:
    """The phase after ``cause``; raises :class:`LeaseError` if the table has no such step."""
    try:
        return TRANSITIONS[(phase, cause)]
    except KeyError:
        raise LeaseError(f"a lease cannot go from {phase} on {cause}") from None


def owner_for(server_id: str | None, worker_id: str) -> str:
    """The ``lease_owner`` stored for a lease of ``worker_id`` granted by ``server_id`` (None:
    the only server of its database)."""
    if server_id is None:
        return worker_id
    return f"{server_id}{RESERVATION_SUFFIX}{worker_id}"


def reservation_for(server_id: str) -> str:
    """The ``lease_owner`` of a reservation held by ``server_id`` itself."""
    return f"{server_id}{RESERVATION_SUFFIX}"


class GrantDecision(StrEnum):
    #: take ``epoch + 1`` for the picked worker
    GRANT = "grant"
    #: the execution cannot run (ended, paused, gone): drop it
    GONE = "gone"
    #: a live worker of another server holds it: leave it alone
    HELD_ELSEWHERE = "held-elsewhere"


def decide_grant(
    record: ExecutionRecord | None, *, server_id: str | None, now: float
) -> GrantDecision:
    """Whether to grant the execution ``record`` (as just read from the store) at wall time
    ``now``. With several servers (``server_id`` given) a lease held by a worker of another
    server that has not expired in the store is left alone; a reservation (of any server) is
    not a holder: the grant is fenced on the epoch, so of two servers granting one execution
    exactly one succeeds. A lease of this server's own is ours to decide on (its in-memory
    lease already ended, or it would not be granted again)."""
    if record is None or record.state not in RUNNABLE:
        return GrantDecision.GONE
    owner = record.lease_owner
    if (
        server_id is not None
        and record.state in LEASED
        and owner is not None
        and not is_reservation(owner)
        and not owner.startswith(reservation_for(server_id))
        and record.lease_expires_at is not None
        and record.lease_expires_at > now
    ):
        return GrantDecision.HELD_ELSEWHERE
    return GrantDecision.GRANT


def fence(
    phase: Phase | None, holder: str | None, epoch: int | None, worker_id: str, claimed: int
) -> str | None:
    """Why a frame of ``worker_id`` for epoch ``claimed`` is refused, or None if it is the
    current lease's (``phase``/``holder``/``epoch`` of the lease in memory, None if none)."""
    if phase is None or phase is Phase.ENDED:
        return "no lease held"
    if holder != worker_id:
        return f"leased to another worker (epoch {epoch})"
    if epoch != claimed:
        return f"stale epoch: the lease is at epoch {epoch}"
    return None


def expiry_due(
    phase: Phase, *, expired: bool, writing: bool, worker_waits_for_us: bool, we_wait: bool
) -> bool:
    """Whether a lease whose deadline passed (``expired``) really expires now. It does not while
    its grant is in flight, nor while the server is the slow side: a write of it is being
    applied (``writing``) or the worker's frames wait for room in the server
    (``worker_waits_for_us``), unless the server's own sends to that worker are stuck too
    (``we_wait``: the worker reads nothing, it is hung). Otherwise its deadline is extended."""
    if not expired:
        return False
    if phase is Phase.GRANTING:
        return False
    if (writing or worker_waits_for_us) and not we_wait:
        return False
    return True
