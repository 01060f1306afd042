"""The lease lifecycle as data (flux/net/leases.py): the table and the pure decisions."""

from __future__ import annotations

import pytest

from flux.net.leases import (
    TRANSITIONS,
    Cause,
    GrantDecision,
    LeaseError,
    Phase,
    advance,
    decide_grant,
    expiry_due,
    fence,
    owner_for,
    reservation_for,
)
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord

S = ExecutionState


def rec(state: S, owner: str | None = None, expires: float | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id="e",
        workflow_name="wf",
        input=b"",
        state=state,
        lease_owner=owner,
        lease_expires_at=expires,
    )


def test_the_table_walks_a_lease_from_grant_to_end():
    phase = advance(Phase.GRANTING, Cause.EXTENDED)  # a heartbeat while granting
    assert phase is Phase.GRANTING
    phase = advance(phase, Cause.GRANTED)
    assert advance(phase, Cause.EXTENDED) is Phase.HELD
    for cause in (Cause.EXPIRED, Cause.RELEASED, Cause.FENCED, Cause.LOST, Cause.BROKEN):
        assert advance(Phase.HELD, cause) is Phase.ENDED
        assert advance(Phase.ENDED, cause) is Phase.ENDED  # ended stays ended
    assert advance(Phase.GRANTING, Cause.REFUSED) is Phase.ENDED


@pytest.mark.parametrize(
    "phase, cause",
    [
        (Phase.HELD, Cause.GRANTED),  # granted twice
        (Phase.ENDED, Cause.GRANTED),  # revived
        (Phase.GRANTING, Cause.EXPIRED),  # a grant in flight never expires
        (Phase.GRANTING, Cause.RELEASED),  # the worker cannot end what it never got
    ],
)
def test_steps_the_table_does_not_have_are_errors(phase, cause):
    assert (phase, cause) not in TRANSITIONS
    with pytest.raises(LeaseError, match=f"from {phase} on {cause}"):
        advance(phase, cause)


def test_owners():
    assert owner_for(None, "w1") == "w1"  # one server per database: the worker id, as before
    assert owner_for("s1", "w1") == "s1/w1"
    assert reservation_for("s1") == "s1/"


def test_decide_grant():
    now = 100.0
    # one server per database: whatever the row says, a runnable execution is ours
    assert decide_grant(rec(S.RUNNING, "w9", now + 50), server_id=None, now=now) == "grant"
    assert decide_grant(rec(S.SCHEDULED), server_id="a", now=now) is GrantDecision.GRANT
    for gone in (S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED):
        assert decide_grant(rec(gone), server_id="a", now=now) is GrantDecision.GONE
    assert decide_grant(None, server_id="a", now=now) is GrantDecision.GONE
    # a live worker of another server holds it: hands off
    live = rec(S.RUNNING, "b/w1", now + 1)
    assert decide_grant(live, server_id="a", now=now) is GrantDecision.HELD_ELSEWHERE
    assert decide_grant(rec(S.CANCELLING, "b/w1", now + 1), server_id="a", now=now) == (
        "held-elsewhere"
    )
    # ... unless it expired, or it is a reservation, or it is one of ours
    assert decide_grant(rec(S.RUNNING, "b/w1", now), server_id="a", now=now) == "grant"
    assert decide_grant(rec(S.RUNNING, "b/", now + 1), server_id="a", now=now) == "grant"
    assert decide_grant(rec(S.RUNNING, "a/w1", now + 1), server_id="a", now=now) == "grant"
    # "ab/w1" is not a worker of "a"
    assert decide_grant(rec(S.RUNNING, "ab/w1", now + 1), server_id="a", now=now) == (
        "held-elsewhere"
    )


def test_fence():
    assert fence(None, None, None, "w1", 3) == "no lease held"
    assert fence(Phase.ENDED, "w1", 3, "w1", 3) == "no lease held"
    assert fence(Phase.HELD, "w2", 3, "w1", 3) == "leased to another worker (epoch 3)"
    assert fence(Phase.HELD, "w1", 4, "w1", 3) == "stale epoch: the lease is at epoch 4"
    assert fence(Phase.HELD, "w1", 3, "w1", 3) is None


def test_expiry_due():
    kw = dict(writing=False, worker_waits_for_us=False, we_wait=False)
    assert not expiry_due(Phase.HELD, expired=False, **kw)
    assert expiry_due(Phase.HELD, expired=True, **kw)
    assert not expiry_due(Phase.GRANTING, expired=True, **kw)
    # the server is the slow side: extended ...
    assert not expiry_due(Phase.HELD, expired=True, **{**kw, "writing": True})
    assert not expiry_due(Phase.HELD, expired=True, **{**kw, "worker_waits_for_us": True})
    # ... unless the worker reads nothing either (it is hung)
    assert expiry_due(
        Phase.HELD, expired=True, writing=True, worker_waits_for_us=False, we_wait=True
    )
