"""The dispatcher's side of signals, with a fake worker in virtual time: delivery at grant,
the offer to a worker holding the lease, fencing of deliveries, and restarts."""

from __future__ import annotations

import pytest
import trio

from flux.net import protocol as p
from flux.net.dispatch import Dispatcher, DispatchSettings, ExecutionConflictError, source_hash
from flux.runtime import codec
from flux.runtime.store import Write, open_store
from tests.test_dispatch import SOURCE, TTL, FakeWorker, event, settle


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.01)


def receive_started(seq: int, call_id: str, topic: str, due=None) -> dict:
    return event(
        seq,
        "TASK_STARTED",
        call_id,
        "receive",
        {"args": {"topic": topic, "timeout": None, "due_at": due}, "kwargs": {}},
    )


async def waiting_execution(d: Dispatcher, w: FakeWorker, topics: list[str]) -> tuple[str, int]:
    """Start an execution, have the fake worker record receives on ``topics`` and release it
    (SCHEDULED, no wake time). Returns its id and the next seq."""
    rec = await d.start("wf", codec.encode(None))
    (lease,) = [
        m for m in await w.leases(len(w.of(p.Lease)) + 1) if m.execution_id == rec.execution_id
    ]
    events = [receive_started(2 + i, f"receive#{i}", t) for i, t in enumerate(topics)]
    await w.send(
        p.Events(
            execution_id=rec.execution_id,
            epoch=lease.epoch,
            batch=1,
            events=events,
            state="SCHEDULED",
        )
    )
    return rec.execution_id, 2 + len(topics)


@pytest.fixture
async def setup(tmp_path, nursery):
    store = open_store(tmp_path / "s.db", durability="normal")
    await store.__aenter__()
    await store.save_workflow("wf", SOURCE, source_hash(SOURCE))
    d = Dispatcher(store, DispatchSettings(lease_ttl=TTL))
    await nursery.start(d.run)
    yield store, d
    nursery.cancel_scope.cancel()
    await store.aclose()


@pytest.mark.trio
async def test_a_signal_submits_a_released_execution_and_the_grant_delivers_it(setup, clock):
    store, d = setup
    w = FakeWorker(d, "w1")
    eid, seq = await waiting_execution(d, w, ["a", "b"])
    assert (await store.get_execution(eid)).state.value == "SCHEDULED"
    await d.send_signal(eid, "b", codec.encode("B"))
    await settle(d)
    lease = w.of(p.Lease)[-1]
    assert lease.execution_id == eid and lease.epoch == 2
    tail = [(e["type"], e["call_id"], e["name"]) for e in lease.history[seq - 1 :]]
    assert tail == [
        ("SIGNAL_RECEIVED", "receive#1", "b"),
        ("TASK_COMPLETED", "receive#1", "receive"),
    ]
    assert codec.decode(lease.history[-1]["value"]) == "B"
    assert await store.pending_signals(eid) == []
    # the worker holds it now: a new signal is offered to it, not granted
    sent = await d.send_signal(eid, "a", codec.encode("A"))
    await settle(d)
    (offer,) = w.of(p.SignalsQueued)
    assert offer.epoch == 2 and offer.signals == [[sent.id, "a", codec.encode("A")]]
    # the worker delivers it in a batch; delivering it twice is refused and stops the lease
    deliver = [
        event(seq + 2, "SIGNAL_RECEIVED", "receive#0", "a", "A"),
        event(seq + 3, "TASK_COMPLETED", "receive#0", "receive", "A"),
    ]
    await w.send(p.Events(execution_id=eid, epoch=2, batch=2, events=deliver, signals=[sent.id]))
    assert w.of(p.Ack)[-1].batch == 2
    again = [event(seq + 4, "SIGNAL_RECEIVED", "receive#9", "a", "A")]
    await w.send(p.Events(execution_id=eid, epoch=2, batch=3, events=again, signals=[sent.id]))
    assert w.of(p.Reject)[-1].execution_id == eid
    assert [e.seq for e in await store.load_events(eid)][-1] == seq + 3  # nothing stored


@pytest.mark.trio
async def test_restart_leaves_executions_waiting_for_signals_alone(setup, clock, nursery):
    store, d = setup
    w = FakeWorker(d, "w1")
    idle, _ = await waiting_execution(d, w, ["x"])
    ready, _ = await waiting_execution(d, w, ["y"])
    d.remove_worker(w.link)
    await store.add_signal(ready, "y", codec.encode(1), 0.0)  # queued while the server was down
    second = Dispatcher(store, DispatchSettings(lease_ttl=TTL))
    await nursery.start(second.run)
    assert second._queued == {ready}  # the idle one is not replayed for nothing
    with pytest.raises(ExecutionConflictError):
        await store.commit(Write(idle, update={"state": "COMPLETED"}))
        await second.send_signal(idle, "x", codec.encode(1))
