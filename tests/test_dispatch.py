"""The dispatcher without sockets: push dispatch, leases, expiry, heartbeats and fencing.

Virtual time makes lease expiry instant and exact: the ``clock`` fixture is pytest-trio's autojump
``MockClock``, with a 10 ms threshold instead of 0 so that the clock does not jump while the real
SQLite store works in its thread (the run loop looks idle then). A fake worker link records what
the dispatcher sends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import trio

from flux.net import protocol as p
from flux.net.dispatch import Dispatcher, DispatchSettings, ExecutionConflictError, source_hash
from flux.runtime import codec
from flux.runtime.events import ExecutionState
from flux.runtime.patterns import child_execution_id
from flux.runtime.store import StaleWriteError, Write, open_store

TTL = 5.0
SOURCE = "from flux import workflow\n\n@workflow\nasync def wf(ctx):\n    return 1\n"


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.01)


class FakeWorker:
    """Collects what the dispatcher sends to one worker."""

    def __init__(self, dispatcher: Dispatcher, name: str, capacity: int = 1):
        self.sent: list[p.Message] = []
        self.changed = trio.Event()
        self.link = dispatcher.add_worker(name, name, capacity, self._receive)
        self.dispatcher = dispatcher

    def _receive(self, msg: p.Message) -> None:
        self.sent.append(msg)
        self.changed.set()
        self.changed = trio.Event()

    def of(self, kind: type) -> list:
        return [m for m in self.sent if isinstance(m, kind)]

    async def leases(self, n: int = 1) -> list[p.Lease]:
        with trio.fail_after(1000):
            while len(self.of(p.Lease)) < n:
                await self.changed.wait()
        return self.of(p.Lease)

    async def send(self, msg: p.Message) -> None:
        await self.dispatcher.on_message(self.link, msg)
        await settle(self.dispatcher)

    async def heartbeat(self, *leases: tuple[str, int]) -> None:
        await self.dispatcher.on_heartbeat(self.link, p.Heartbeat(leases=list(leases), running=0))


async def settle(dispatcher: Dispatcher) -> None:
    """Wait (busily, so that virtual time stands still) until the dispatcher's grants and
    writes are done: only its two timer loops are left in its nursery."""
    deadline = time.monotonic() + 10
    while len(dispatcher._nursery.child_tasks) > 2:
        assert time.monotonic() < deadline, "dispatcher did not settle"
        await trio.sleep(0)


def event(seq: int, type: str, call_id: str, name: str, value=None) -> dict:
    return {
        "seq": seq,
        "type": type,
        "call_id": call_id,
        "name": name,
        "value": codec.encode(value),
        "time": datetime.now(UTC),
    }


@pytest.fixture
async def dispatcher(tmp_path, nursery):
    store = open_store(tmp_path / "d.db", durability="normal")
    await store.__aenter__()
    for name in ("wf", "child"):
        await store.save_workflow(name, SOURCE, source_hash(SOURCE))
    base = 1_700_000_000.0
    d = Dispatcher(store, DispatchSettings(lease_ttl=TTL), wall=lambda: base + trio.current_time())
    await nursery.start(d.run)
    yield d
    nursery.cancel_scope.cancel()
    await store.aclose()


@pytest.mark.trio
async def test_push_dispatch_leases_at_once(dispatcher, clock):
    w = FakeWorker(dispatcher, "w1")
    t0 = trio.current_time()
    rec = await dispatcher.start("wf", codec.encode(7))
    (lease,) = await w.leases()
    assert trio.current_time() == t0  # pushed, no timer involved
    assert lease.execution_id == rec.execution_id and lease.epoch == 1
    assert lease.source.decode() == SOURCE and codec.decode(lease.input) == 7
    assert [e["type"] for e in lease.history] == ["WORKFLOW_STARTED"]
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.RUNNING and stored.lease_epoch == 1
    assert stored.lease_owner == "w1"


@pytest.mark.trio
async def test_queued_until_a_worker_has_room(dispatcher, clock):
    w = FakeWorker(dispatcher, "w1", capacity=1)
    a = await dispatcher.start("wf", codec.encode(1))
    b = await dispatcher.start("wf", codec.encode(2))
    (first,) = await w.leases()
    assert first.execution_id == a.execution_id
    assert dispatcher.statistics().ready == 1
    await w.send(
        p.Events(
            execution_id=a.execution_id,
            epoch=1,
            batch=1,
            events=[event(2, "WORKFLOW_COMPLETED", "wf", "wf", 1)],
            state="COMPLETED",
        )
    )
    leases = await w.leases(2)
    assert leases[1].execution_id == b.execution_id


@pytest.mark.trio
async def test_expiry_redispatches_with_next_epoch(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    (lease,) = await a.leases()
    t0 = trio.current_time()
    b = FakeWorker(dispatcher, "b")  # connected after: a holds the lease
    (second,) = await b.leases()
    elapsed = trio.current_time() - t0
    assert TTL <= elapsed < TTL + 0.01
    assert second.epoch == lease.epoch + 1 == 2
    assert [r.reason for r in a.of(p.Reject)] == ["lease expired"]
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.lease_epoch == 2 and stored.lease_owner == "b"
    assert dispatcher.statistics().expired == 1


@pytest.mark.trio
async def test_heartbeats_extend_the_lease(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    (lease,) = await a.leases()
    b = FakeWorker(dispatcher, "b")
    for _ in range(30):  # 30 s of heartbeats every second: never expires
        await trio.sleep(1)
        await a.heartbeat((rec.execution_id, lease.epoch))
    assert b.of(p.Lease) == [] and a.of(p.Reject) == []
    last = trio.current_time()
    (second,) = await b.leases()
    assert trio.current_time() - last == pytest.approx(TTL)
    assert second.epoch == 2


@pytest.mark.trio
async def test_heartbeat_for_a_lost_lease_is_rejected(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    await a.heartbeat(("nope", 3))
    (reject,) = a.of(p.Reject)
    assert reject.execution_id == "nope" and reject.reason == "lease lost"


@pytest.mark.trio
async def test_a_heartbeat_naming_a_lease_its_worker_just_ended_is_no_lost_lease(
    dispatcher, clock
):
    """The worker built the heartbeat before it saw the ack of its last batch: the server
    knows that lease ended well, and neither rejects nor logs it; another epoch still is."""
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    await a.leases()
    await a.send(
        p.Events(
            execution_id=eid,
            epoch=1,
            batch=1,
            events=[event(2, "WORKFLOW_COMPLETED", "wf", "wf", 1)],
            state="COMPLETED",
        )
    )
    await a.heartbeat((eid, 1))
    assert a.of(p.Reject) == []
    await a.heartbeat((eid, 7))
    (reject,) = a.of(p.Reject)
    assert reject.epoch == 7 and reject.reason == "lease lost"


@pytest.mark.trio
async def test_stale_epoch_writes_are_refused(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    await a.leases()
    b = FakeWorker(dispatcher, "b")
    await b.leases()  # after expiry: b holds epoch 2
    before = await dispatcher.store.load_events(eid)
    stale = [event(2, "TASK_STARTED", "t#0", "t", {"args": [], "kwargs": {}})]
    await a.send(p.Events(execution_id=eid, epoch=1, batch=7, events=stale))
    await a.send(p.Complete(execution_id=eid, epoch=1, state="COMPLETED", output=None))
    await a.send(p.Release(execution_id=eid, epoch=1, reason="shutdown"))
    rejects = [r for r in a.of(p.Reject) if r.epoch == 1 and r.reason != "lease expired"]
    assert len(rejects) == 3 and all("another worker" in r.reason for r in rejects)
    assert a.of(p.Ack) == []
    assert await dispatcher.store.load_events(eid) == before
    # the current holder writes fine
    await b.send(p.Events(execution_id=eid, epoch=2, batch=1, events=stale))
    assert [ack.batch for ack in b.of(p.Ack)] == [1]
    assert len(await dispatcher.store.load_events(eid)) == len(before) + 1
    # and the store itself refuses a write fenced on the old epoch
    with pytest.raises(StaleWriteError):
        await dispatcher.store.commit(
            Write(eid, update={"state": "FAILED"}, expect={"lease_epoch": 1})
        )


@pytest.mark.trio
async def test_a_sequence_gap_stops_the_lease(dispatcher, clock):
    a = FakeWorker(dispatcher, "a", capacity=2)
    rec = await dispatcher.start("wf", codec.encode(None))
    await a.leases()
    await a.send(
        p.Events(
            execution_id=rec.execution_id,
            epoch=1,
            batch=1,
            events=[event(5, "TASK_STARTED", "t#0", "t")],
        )
    )
    (reject,) = a.of(p.Reject)
    assert "seq 5" in reject.reason
    leases = await a.leases(2)  # dispatched again at once, next epoch
    assert leases[1].epoch == 2


@pytest.mark.trio
async def test_completion_frees_the_slot_and_wakes_watchers(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    done = dispatcher.watch(eid)
    await a.leases()
    await a.send(
        p.Events(
            execution_id=eid,
            epoch=1,
            batch=1,
            events=[event(2, "WORKFLOW_COMPLETED", "wf", "wf", {"x": 1})],
            state="COMPLETED",
        )
    )
    assert done.is_set()
    stored = await dispatcher.store.get_execution(eid)
    assert stored.state is ExecutionState.COMPLETED and codec.decode(stored.output) == {"x": 1}
    assert stored.lease_owner is None
    assert a.link.free == 1 and dispatcher.lease_of(eid) is None


@pytest.mark.trio
async def test_sleep_release_redispatches_at_wake_time(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    await a.leases()
    wake = dispatcher.wall() + 100
    t0 = trio.current_time()
    await a.send(p.Release(execution_id=eid, epoch=1, reason="sleeping", wake_at=wake))
    stored = await dispatcher.store.get_execution(eid)
    assert stored.state is ExecutionState.SCHEDULED and stored.wake_at == wake
    leases = await a.leases(2)
    assert trio.current_time() - t0 == pytest.approx(100)
    assert leases[1].epoch == 2


@pytest.mark.trio
async def test_pause_and_resume(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    await a.leases()
    with pytest.raises(ExecutionConflictError):
        await dispatcher.resume(eid, codec.encode(1))
    await a.send(
        p.Events(
            execution_id=eid,
            epoch=1,
            batch=1,
            state="PAUSED",
            events=[
                event(2, "TASK_PAUSED", "pause#0", "pause", "ok?"),
                event(3, "WORKFLOW_PAUSED", "wf", "wf", "ok?"),
            ],
        )
    )
    assert (await dispatcher.store.get_execution(eid)).state is ExecutionState.PAUSED
    await dispatcher.resume(eid, codec.encode("yes"))
    leases = await a.leases(2)
    tail = leases[1].history[-2:]
    assert [(e["type"], e["call_id"]) for e in tail] == [
        ("WORKFLOW_RESUMED", "wf"),
        ("TASK_RESUMED", "pause#0"),
    ]
    assert codec.decode(tail[1]["value"]) == "yes"


@pytest.mark.trio
async def test_recovery_redispatches_running_after_the_ttl(tmp_path, clock, nursery):
    store = open_store(tmp_path / "r.db", durability="normal")
    await store.__aenter__()
    await store.save_workflow("wf", SOURCE, source_hash(SOURCE))
    first = Dispatcher(store, DispatchSettings(lease_ttl=TTL))
    queued = await first.start("wf", codec.encode(1))  # no worker: stays queued
    running = await first.start("wf", codec.encode(2))
    await store.commit(Write(running.execution_id, update={"state": "RUNNING", "lease_epoch": 3}))
    # a new dispatcher on the same store, as after a restart
    second = Dispatcher(store, DispatchSettings(lease_ttl=TTL))
    await nursery.start(second.run)
    w = FakeWorker(second, "w", capacity=2)
    t0 = trio.current_time()
    (lease,) = await w.leases()
    assert lease.execution_id == queued.execution_id and trio.current_time() == t0
    leases = await w.leases(2)
    assert leases[1].execution_id == running.execution_id and leases[1].epoch == 4
    assert trio.current_time() - t0 == pytest.approx(TTL)
    nursery.cancel_scope.cancel()
    await store.aclose()


@pytest.mark.trio
async def test_subworkflow_runs_as_its_own_execution(dispatcher, clock):
    w = FakeWorker(dispatcher, "w", capacity=1)
    parent = await dispatcher.start("wf", codec.encode(None))
    pid = parent.execution_id
    await w.leases()
    cid = child_execution_id(pid, "child#0")
    started = {"args": [5], "kwargs": {}, "digest": "d", "child_id": cid}
    await w.send(
        p.Events(
            execution_id=pid,
            epoch=1,
            batch=1,
            events=[event(2, "TASK_STARTED", "child#0", "child", started)],
        )
    )
    child = await dispatcher.store.get_execution(cid)
    assert child.parent_id == pid and codec.decode(child.input) == 5
    assert len(w.of(p.Lease)) == 1  # the parent holds the only slot
    # the parent waits: its lease ends and the slot goes to the child
    await w.send(p.Events(execution_id=pid, epoch=1, batch=2, events=[], state="SCHEDULED"))
    leases = await w.leases(2)
    assert leases[1].execution_id == cid
    await w.send(
        p.Events(
            execution_id=cid,
            epoch=1,
            batch=3,
            state="COMPLETED",
            events=[event(2, "WORKFLOW_COMPLETED", "child", "child", 10)],
        )
    )
    leases = await w.leases(3)
    assert leases[2].execution_id == pid and leases[2].epoch == 2
    last = leases[2].history[-1]
    assert (last["type"], last["call_id"], codec.decode(last["value"])) == (
        "TASK_COMPLETED",
        "child#0",
        10,
    )


@pytest.mark.trio
async def test_unknown_workflow(dispatcher, clock):
    from flux.runtime.errors import WorkflowNotFoundError

    with pytest.raises(WorkflowNotFoundError):
        await dispatcher.start("nope", codec.encode(None))


@pytest.mark.trio
async def test_shutdown_release_goes_elsewhere_at_once(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    await a.leases()
    b = FakeWorker(dispatcher, "b")
    t0 = trio.current_time()
    await a.send(p.Release(execution_id=rec.execution_id, epoch=1, reason="shutdown"))
    (lease,) = await b.leases()
    assert trio.current_time() == t0 and lease.epoch == 2
    assert len(a.of(p.Lease)) == 1  # a stopping worker is leased nothing more


@pytest.mark.trio
async def test_expired_worker_gets_no_new_lease_until_it_lets_go(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    eid = rec.execution_id
    await a.leases()
    await trio.sleep(TTL + 1)  # a is hung: the lease expires, and no one else is connected
    assert [r.reason for r in a.of(p.Reject)] == ["lease expired"]
    assert len(a.of(p.Lease)) == 1 and a.link.free == 0
    await a.heartbeat((eid, 1))  # still running it: still a zombie, and told again
    assert len(a.of(p.Lease)) == 1
    await a.heartbeat()  # it let go: its slot is free, and it gets the execution back, epoch 2
    leases = await a.leases(2)
    assert leases[1].execution_id == eid and leases[1].epoch == 2


# ---------------------------------------------------------------------------- cancel (issue 5)


@pytest.mark.trio
async def test_cancel_of_a_lease_goes_to_its_worker_and_survives_an_expiry(dispatcher, clock):
    a = FakeWorker(dispatcher, "a")
    rec = await dispatcher.start("wf", codec.encode(None))
    (lease,) = await a.leases()
    cancelling = await dispatcher.cancel(rec.execution_id)
    assert cancelling.state is ExecutionState.CANCELLING
    await settle(dispatcher)  # the Cancel goes out on its own (a slow worker never holds it up)
    assert a.of(p.Cancel) == [p.Cancel(execution_id=rec.execution_id, epoch=lease.epoch)]
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.CANCELLING and stored.cancel_requested
    await a.heartbeat((rec.execution_id, lease.epoch))  # re-sent in case the first came too early
    assert len(a.of(p.Cancel)) == 2
    # the worker dies; the next owner gets the lease and the cancel right after it
    b = FakeWorker(dispatcher, "b")
    await trio.sleep(TTL + 1)
    (again,) = await b.leases()
    assert again.epoch == lease.epoch + 1
    assert b.of(p.Cancel) == [p.Cancel(execution_id=rec.execution_id, epoch=again.epoch)]
    assert b.sent.index(b.of(p.Cancel)[0]) > b.sent.index(again)
    await b.send(
        p.Events(
            execution_id=rec.execution_id,
            epoch=again.epoch,
            batch=1,
            events=[event(2, "WORKFLOW_CANCELLED", "wf", "wf")],
            state="CANCELLED",
        )
    )
    assert (
        await dispatcher.store.get_execution(rec.execution_id)
    ).state is ExecutionState.CANCELLED
    with pytest.raises(ExecutionConflictError):
        await dispatcher.cancel(rec.execution_id)


@pytest.mark.trio
async def test_cancel_crossing_a_pause_cancels_where_it_lies(dispatcher, clock):
    w = FakeWorker(dispatcher, "w")
    rec = await dispatcher.start("wf", codec.encode(None))
    (lease,) = await w.leases()
    await dispatcher.cancel(rec.execution_id)
    await w.send(  # the worker paused before it saw the cancel
        p.Events(
            execution_id=rec.execution_id,
            epoch=lease.epoch,
            batch=1,
            events=[event(2, "WORKFLOW_PAUSED", "wf", "wf", "x")],
            state="PAUSED",
        )
    )
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.CANCELLED
    types = [e.type for e in await dispatcher.store.load_events(rec.execution_id)]
    assert types == ["WORKFLOW_STARTED", "WORKFLOW_PAUSED", "WORKFLOW_CANCELLED"]


@pytest.mark.trio
async def test_cancel_of_a_queued_execution_wins_over_its_grant(dispatcher, clock):
    rec = await dispatcher.start("wf", codec.encode(None))  # no worker: queued
    done = await dispatcher.cancel(rec.execution_id)
    assert done.state is ExecutionState.CANCELLED
    w = FakeWorker(dispatcher, "w")  # connecting now leases nothing: it is cancelled
    await settle(dispatcher)
    assert w.of(p.Lease) == []
    assert dispatcher.statistics().leases == 0
    from flux.runtime.errors import ExecutionNotFoundError

    with pytest.raises(ExecutionNotFoundError):
        await dispatcher.cancel("nope")


@pytest.mark.trio
async def test_listeners_get_committed_events(dispatcher, clock):
    rec = await dispatcher.start("wf", codec.encode(None))
    listener = dispatcher.listen(rec.execution_id)
    w = FakeWorker(dispatcher, "w")
    (lease,) = await w.leases()
    await w.send(
        p.Events(
            execution_id=rec.execution_id,
            epoch=lease.epoch,
            batch=1,
            events=[event(2, "WORKFLOW_COMPLETED", "wf", "wf", 1)],
            state="COMPLETED",
        )
    )
    events, overflowed = listener.take()
    assert [e.seq for e in events] == [2] and not overflowed
    # a refused write tells nobody
    await w.send(
        p.Events(
            execution_id=rec.execution_id,
            epoch=lease.epoch,
            batch=2,
            events=[event(3, "TASK_STARTED", "t#0", "t")],
        )
    )
    assert listener.take() == ([], False)
    dispatcher.unlisten(listener)
    assert rec.execution_id not in dispatcher._listeners


# ---------------------------------------------------------------------------- issue 9


class ClosingWorker(FakeWorker):
    """A worker whose session closes (or is closing) while the dispatcher still holds its link:
    from ``closed_after`` messages on, every send raises as a closed session's does."""

    def __init__(self, dispatcher: Dispatcher, name: str, closed_after: int, error: Exception):
        self.closed_after = closed_after
        self.error = error
        super().__init__(dispatcher, name)

    def _receive(self, msg: p.Message) -> None:
        if len(self.sent) >= self.closed_after:
            raise self.error
        super()._receive(msg)


CLOSED_ERRORS = [
    p.LocalProtocolError("closed", "cannot send 'ack': the session is closed"),
    ConnectionError("the session of w is closed"),
    trio.BrokenResourceError(),
]


@pytest.mark.trio
@pytest.mark.parametrize("error", CLOSED_ERRORS, ids=lambda e: type(e).__name__)
async def test_an_ack_to_a_closing_session_never_escapes(dispatcher, clock, error):
    a = ClosingWorker(dispatcher, "a", closed_after=1, error=error)  # the Lease gets through
    rec = await dispatcher.start("wf", codec.encode(None))
    (lease,) = await a.leases()
    batch = [event(2, "TASK_STARTED", "t#0", "t")]
    # the events are durable; the ack goes nowhere; nothing is raised into the nursery
    await a.send(p.Events(execution_id=rec.execution_id, epoch=1, batch=1, events=batch))
    assert [e.seq for e in await dispatcher.store.load_events(rec.execution_id)] == [1, 2]
    dispatcher.remove_worker(a.link)  # the session ends; the lease expires; someone else runs it
    b = FakeWorker(dispatcher, "b")
    (again,) = await b.leases()
    assert again.epoch == lease.epoch + 1 and len(again.history) == 2
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.RUNNING


@pytest.mark.trio
@pytest.mark.parametrize("error", CLOSED_ERRORS, ids=lambda e: type(e).__name__)
async def test_a_grant_to_a_closing_session_leases_again_and_fails_nothing(
    dispatcher, clock, error
):
    a = ClosingWorker(dispatcher, "a", closed_after=0, error=error)  # not even the Lease
    rec = await dispatcher.start("wf", codec.encode(None))
    await settle(dispatcher)
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is not ExecutionState.FAILED
    dispatcher.remove_worker(a.link)
    b = FakeWorker(dispatcher, "b")
    (lease,) = await b.leases()
    assert lease.execution_id == rec.execution_id
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.RUNNING and stored.lease_owner == "b"


@pytest.mark.trio
async def test_a_frame_too_large_for_a_lease_fails_the_execution_once(dispatcher, clock):
    error = p.LocalProtocolError("too-large", "'lease' frame is 9 bytes, over the limit of 1")
    ClosingWorker(dispatcher, "a", closed_after=0, error=error)
    rec = await dispatcher.start("wf", codec.encode(None))
    await settle(dispatcher)
    stored = await dispatcher.store.get_execution(rec.execution_id)
    assert stored.state is ExecutionState.FAILED
    assert "over the limit" in codec.decode(stored.output, plain=True).message


@pytest.mark.trio
async def test_capacity_is_capped_and_reads_blocked_on_backpressure_keep_leases(tmp_path, clock):
    store = open_store(tmp_path / "c.db", durability="normal")
    async with store:
        await store.save_workflow("wf", SOURCE, source_hash(SOURCE))
        d = Dispatcher(store, DispatchSettings(lease_ttl=TTL, max_capacity=3))
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            greedy = FakeWorker(d, "greedy", capacity=2**63 - 1)
            assert greedy.link.capacity == 3
            ids = [(await d.start("wf", codec.encode(i))).execution_id for i in range(5)]
            await greedy.leases(3)
            await settle(d)
            assert d.statistics().ready == 2
            # the worker's frames wait for room in the dispatcher: it is alive, not expired
            greedy.link.blocked = 1
            await trio.sleep(3 * TTL)
            assert len(greedy.of(p.Lease)) == 3 and d.statistics().expired == 0
            # unless it is the worker we wait for: our sends to it wait (it reads nothing)
            greedy.link.sending = 1
            await trio.sleep(TTL + 0.1)
            assert d.statistics().expired == 3
            greedy.link.blocked = greedy.link.sending = 0
            assert {m.execution_id for m in greedy.of(p.Reject)} <= set(ids)
            nursery.cancel_scope.cancel()


def test_max_capacity_must_be_a_positive_integer():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_capacity"):
            DispatchSettings(max_capacity=bad)
