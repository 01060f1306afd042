"""The schedules tables on both stores: CRUD, and the atomic claim of due schedules (each due
time starts exactly one execution, even with several stores claiming at once)."""

from __future__ import annotations

import pytest
import trio

from flux.runtime import codec
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord, Write
from flux.runtime.schedules import (
    ScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    execution_id,
    new_record,
)
from flux.runtime.store import open_store

T0 = 1_800_000_000.0  # a whole hour (UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "flux.db")
    return request.getfixturevalue("pg_url")


def schedule(name="s", workflow="wf", *, now=T0, **kw):
    kw.setdefault("every", "1m")
    return new_record(name, workflow, input=codec.encode({"n": 1}), now=now, **kw)


async def finish(store, eid):
    await store.commit(Write(eid, update={"state": ExecutionState.COMPLETED.value}))


@pytest.mark.trio
async def test_crud(location):
    async with open_store(location) as store:
        created = await store.create_schedule(schedule("b"))
        await store.create_schedule(schedule("a", cron="0 2 * * *", every=None,
                                             timezone="Europe/Berlin"))
        assert await store.get_schedule("b") == created
        assert [s.name for s in await store.list_schedules()] == ["a", "b"]
        with pytest.raises(ScheduleExistsError, match="'b' already exists"):
            await store.create_schedule(schedule("b"))
        paused = await store.set_schedule_paused("b", True, T0 + 5)
        assert paused.paused == 1 and (await store.get_schedule("b")).paused == 1
        resumed = await store.set_schedule_paused("b", False, T0 + 125)
        assert resumed.paused == 0 and resumed.next_due_at == T0 + 180  # nothing caught up
        with pytest.raises(ScheduleNotFoundError):
            await store.set_schedule_paused("nope", True, T0)
        eid = await store.trigger_schedule("b", T0 + 1.5)
        assert eid.startswith("sched-b-trigger-")
        with pytest.raises(ScheduleError, match="already has a trigger waiting"):
            await store.trigger_schedule("b", T0 + 2)
        assert await store.delete_schedule("b") is True
        assert await store.delete_schedule("b") is False
        assert await store.get_schedule("b") is None


@pytest.mark.trio
async def test_claim_starts_one_execution_and_advances(location):
    async with open_store(location) as store:
        await store.create_schedule(schedule())
        assert await store.claim_due_schedules(T0 + 59) == []
        assert await store.next_schedule_wake() == T0 + 60
        started = await store.claim_due_schedules(T0 + 60.2)
        eid = execution_id("s", T0 + 60)
        assert [(s.execution_id, s.workflow, s.due_at) for s in started] == [
            (eid, "wf", T0 + 60)
        ]
        rec = await store.get_execution(eid)
        assert rec.state is ExecutionState.SCHEDULED and rec.lease_owner is None
        assert codec.decode(rec.input) == {"n": 1} and rec.workflow_version is None
        events = await store.load_events(eid)
        assert [(e.seq, e.type, e.call_id) for e in events] == [(1, "WORKFLOW_STARTED", "wf")]
        assert await store.claim_due_schedules(T0 + 60.5) == []  # the same due time: nothing
        s = await store.get_schedule("s")
        assert (s.next_due_at, s.last_due_at, s.last_execution_id) == (T0 + 120, T0 + 60, eid)
        fires = await store.schedule_fires("s")
        assert [(f.outcome, f.execution_id, state) for f, state in fires] == [
            ("started", eid, "SCHEDULED")
        ]


@pytest.mark.trio
async def test_claim_overlap_skip_then_buffer(location):
    async with open_store(location) as store:
        await store.create_schedule(schedule("skip"))
        await store.create_schedule(schedule("buf", overlap="buffer-one"))
        first = {s.schedule: s.execution_id for s in await store.claim_due_schedules(T0 + 60)}
        assert set(first) == {"skip", "buf"}
        assert await store.claim_due_schedules(T0 + 120) == []  # both still run
        assert await store.claim_due_schedules(T0 + 180) == []
        assert (await store.get_schedule("buf")).buffered_at == T0 + 120
        assert await store.next_schedule_wake() == T0 + 240
        await finish(store, first["buf"])
        assert await store.next_schedule_wake() == float("-inf")  # the buffered one may go
        started = await store.claim_due_schedules(T0 + 181)
        assert [s.execution_id for s in started] == [execution_id("buf", T0 + 120)]
        skip_fires = [(f.outcome, f.due_at) for f, _ in await store.schedule_fires("skip")]
        assert skip_fires == [("skipped", T0 + 180), ("skipped", T0 + 120), ("started", T0 + 60)]
        buf = [(f.outcome, f.due_at) for f, _ in await store.schedule_fires("buf")]
        assert buf == [
            ("started", T0 + 120),
            ("skipped", T0 + 180),
            ("buffered", T0 + 120),
            ("started", T0 + 60),
        ]


@pytest.mark.trio
async def test_claim_catch_up_after_downtime(location):
    async with open_store(location) as store:
        for policy in ("none", "last", "all"):
            await store.create_schedule(
                schedule(policy, every="5m", catch_up=policy, overlap="allow")
            )
        # nothing ran for 50 minutes: the latest due time is 90 s old, past the grace
        started = await store.claim_due_schedules(T0 + 3000 + 90)
        by = {}
        for s in started:
            by.setdefault(s.schedule, []).append(s.due_at)
        assert "none" not in by
        assert by["last"] == [T0 + 3000]
        assert by["all"] == [T0 + 300 * k for k in range(1, 11)]
        assert (await store.get_schedule("none")).next_due_at == T0 + 3300
        fires = await store.schedule_fires("none")
        assert [f.outcome for f, _ in fires] == ["missed"]
        assert "10 due time(s) missed" in fires[0][0].detail


@pytest.mark.trio
async def test_claim_refuses_a_duplicate_id(location):
    async with open_store(location) as store:
        await store.create_schedule(schedule())
        eid = execution_id("s", T0 + 60)
        await store.commit(
            Write(eid, insert=ExecutionRecord(execution_id=eid, workflow_name="x", input=b"\xc0"))
        )
        assert await store.claim_due_schedules(T0 + 60) == []
        fires = await store.schedule_fires("s")
        assert [(f.outcome, f.execution_id) for f, _ in fires] == [("duplicate", eid)]
        assert (await store.get_execution(eid)).workflow_name == "x"  # untouched


@pytest.mark.trio
async def test_claim_filters_by_workflow_and_pins_versions(location):
    async with open_store(location) as store:
        await store.create_schedule(schedule("mine", "wf"))
        await store.create_schedule(schedule("other", "elsewhere"))
        started = await store.claim_due_schedules(T0 + 60, workflows=["wf"])
        assert [s.schedule for s in started] == ["mine"]
        assert (await store.get_schedule("other")).next_due_at == T0 + 60  # left for another
        await finish(store, started[0].execution_id)
        await store.save_workflow("wf", "v1", "h1")
        await store.save_workflow("wf", "v2", "h2")
        started = await store.claim_due_schedules(T0 + 120, pin_version=True)
        pinned = {s.schedule: s.execution_id for s in started}
        assert set(pinned) == {"mine"}
        assert (await store.get_execution(pinned["mine"])).workflow_version == 2
        fires = await store.schedule_fires("other")
        assert fires[0][0].outcome == "error" and "'elsewhere' is not registered" in (
            fires[0][0].detail
        )


@pytest.mark.trio
async def test_trigger_starts_even_when_paused(location):
    async with open_store(location) as store:
        await store.create_schedule(schedule(paused=True))
        eid = await store.trigger_schedule("s", T0 + 10.25)
        assert await store.next_schedule_wake() == float("-inf")
        started = await store.claim_due_schedules(T0 + 10.5)
        assert [s.execution_id for s in started] == [eid]
        assert await store.next_schedule_wake() is None  # paused, nothing pending
        assert await store.claim_due_schedules(T0 + 3600) == []
        fires = await store.schedule_fires("s")
        assert [(f.outcome, f.execution_id) for f, _ in fires] == [("triggered", eid)]


@pytest.mark.trio
async def test_recorded_decisions_are_bounded(location):
    from flux.runtime.schedule_store import KEEP_FIRES

    async with open_store(location) as store:
        await store.create_schedule(schedule(every="1s", overlap="allow", catch_up="all"))
        for k in range(1, 4):  # each claim starts 100: 300 decisions recorded
            await store.claim_due_schedules(T0 + 100 * k)
        fires = await store.schedule_fires("s", limit=1000)
        assert len(fires) == KEEP_FIRES
        assert fires[0][0].seq == 300 and fires[-1][0].seq == 300 - KEEP_FIRES + 1


async def _race(location, claimers: int, rounds: int) -> list[str]:
    """``claimers`` stores on one database claim at the same instants, concurrently."""
    stores = [open_store(location) for _ in range(claimers)]
    started: list[str] = []
    try:
        for s in stores:
            await s.__aenter__()
        for k in range(10):
            await stores[0].create_schedule(schedule(f"s{k}", every="1s", overlap="allow"))
        for r in range(1, rounds + 1):
            async with trio.open_nursery() as nursery:
                for s in stores:

                    async def claim(s=s, now=T0 + r + 0.1):
                        found = await s.claim_due_schedules(now)
                        started.extend(x.execution_id for x in found)

                    nursery.start_soon(claim)
    finally:
        for s in stores:
            await s.aclose()
    return started


@pytest.mark.trio
async def test_concurrent_claims_start_each_due_time_once(location):
    started = await _race(location, claimers=4, rounds=8)
    assert len(started) == len(set(started)) == 10 * 8
    async with open_store(location) as store:
        assert await store.count_executions() == 80


@pytest.mark.trio
async def test_a_row_no_rule_can_read_is_paused_with_the_reason(location):
    import attrs

    async with open_store(location) as store:
        good = schedule("good")
        await store.create_schedule(attrs.evolve(schedule("bad"), timezone="Nowhere/Land",
                                                 cron="0 * * * *", every=None))
        await store.create_schedule(good)
        started = await store.claim_due_schedules(T0 + 60)
        assert [s.schedule for s in started] == ["good"]  # one bad row stops nothing else
        bad = await store.get_schedule("bad")
        assert bad.paused == 1
        fires = await store.schedule_fires("bad")
        assert fires[0][0].outcome == "error" and "Nowhere/Land" in fires[0][0].detail
        await store.claim_due_schedules(T0 + 120)  # paused: not looked at again
        assert len(await store.schedule_fires("bad")) == 1
