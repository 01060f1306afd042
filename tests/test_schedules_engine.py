"""``engine.schedules`` in virtual time: interval and cron firing (across DST), every overlap and
catch-up policy, pause/resume/delete/trigger, and a stopped scheduler that neither cancels nor
duplicates anything."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

from flux import ExecutionContext, task, workflow
from flux.runtime.engine import open_engine
from flux.runtime.events import ExecutionState
from flux.runtime.schedules import (
    ScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    execution_id,
)
from flux.tasks import sleep

BASE = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC).timestamp()
# big enough that the loop sleeps until the next due time, not a refresh period (virtual time)
QUIET = {"refresh": 3600.0}

calls: list[tuple[str, object]] = []


@task
async def note(what: str, value: object) -> str:
    calls.append((what, value))
    return what


@workflow
async def quick(ctx: ExecutionContext[dict]):
    return await note("quick", ctx.input)


@workflow
async def slow(ctx: ExecutionContext[int]):
    await sleep(ctx.input)
    return await note("slow", ctx.input)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def engine_at(tmp_path, base: float = BASE):
    return open_engine(
        store=str(tmp_path / "flux.db"),
        clock=lambda: base + trio.current_time(),
        cancel_poll=None,
    )


async def states(engine, prefix: str = "sched-") -> dict[str, str]:
    records = await engine.store.list_executions(limit=None)
    return {r.execution_id: r.state.value for r in records if r.execution_id.startswith(prefix)}


@pytest.fixture(autouse=True)
def _clear():
    calls.clear()


@pytest.mark.trio
async def test_interval_fires_each_due_time_once(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        made = await engine.schedules.create("tick", quick, every="1m", input={"a": 1})
        assert made.next_due_at == "2027-01-15T08:01:00Z" and made.every == "1m"
        async with engine.scheduler(**QUIET):
            await trio.sleep(5 * 60 + 30)
        got = await states(engine)
    want = {execution_id("tick", BASE + 60 * k): "COMPLETED" for k in range(1, 6)}
    assert got == want
    assert calls == [("quick", {"a": 1})] * 5


@pytest.mark.trio
async def test_cron_across_spring_forward_in_berlin(tmp_path, settled_clock):
    base = at("2026-03-29T00:10:00")  # 01:10 CET; at 01:00 UTC clocks jump to 03:00 CEST
    async with engine_at(tmp_path, base) as engine:
        await engine.schedules.create("hourly", quick, cron="30 * * * *",
                                      timezone="Europe/Berlin")
        await engine.schedules.create("daily", quick, cron="30 2 * * *",
                                      timezone="Europe/Berlin")
        async with engine.scheduler(**QUIET):
            await trio.sleep(2 * 3600)
        got = await states(engine)
    assert sorted(got) == [
        "sched-daily-20260329T010000Z",  # 02:30 does not exist: at the jump
        "sched-hourly-20260329T003000Z",  # 01:30 CET
        "sched-hourly-20260329T010000Z",  # 02:30 (nonexistent) at the jump
        "sched-hourly-20260329T013000Z",  # 03:30 CEST
    ]
    assert set(got.values()) == {"COMPLETED"}


@pytest.mark.trio
async def test_cron_across_fall_back_in_new_york(tmp_path, settled_clock):
    base = at("2026-11-01T04:50:00")  # 00:50 EDT; at 06:00 UTC clocks go back to 01:00 EST
    async with engine_at(tmp_path, base) as engine:
        await engine.schedules.create("early", quick, cron="30 1 * * *",
                                      timezone="America/New_York")
        await engine.schedules.create("half", quick, cron="30 * * * *",
                                      timezone="America/New_York")
        async with engine.scheduler(**QUIET):
            await trio.sleep(3 * 3600)
        got = await states(engine)
    assert sorted(got) == [
        "sched-early-20261101T053000Z",  # the first 01:30 (EDT) only
        "sched-half-20261101T053000Z",  # 01:30 EDT
        "sched-half-20261101T073000Z",  # 02:30 EST (the second 01:30 does not fire)
    ]


@pytest.mark.trio
async def test_overlap_skip(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("s", slow, every="1m", input=150)
        async with engine.scheduler(**QUIET):
            await trio.sleep(5 * 60 + 30)
        got = await states(engine)
        shown = await engine.schedules.show("s", recent=10)
    # 08:01 runs until 08:03:30: 08:02 and 08:03 are skipped; 08:04 starts, 08:05 skipped
    assert sorted(got) == [execution_id("s", BASE + 60), execution_id("s", BASE + 240)]
    outcomes = [(f.due_at[11:16], f.outcome) for f in reversed(shown.recent)]
    assert outcomes == [
        ("08:01", "started"), ("08:02", "skipped"), ("08:03", "skipped"),
        ("08:04", "started"), ("08:05", "skipped"),
    ]
    assert shown.recent[-1].state == "COMPLETED"


@pytest.mark.trio
async def test_overlap_allow(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("a", slow, every="1m", input=150, overlap="allow")
        async with engine.scheduler(**QUIET):
            await trio.sleep(3 * 60 + 10)
            running = await states(engine)
        assert len(running) == 3  # 08:01, 08:02 and 08:03 at once
        assert set(running.values()) == {"RUNNING"}


@pytest.mark.trio
async def test_overlap_buffer_one(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("b", slow, every="1m", input=90, overlap="buffer-one")
        async with engine.scheduler(**QUIET):
            await trio.sleep(4 * 60 + 10)
        shown = await engine.schedules.show("b", recent=20)
    # 08:01 runs to 08:02:30; 08:02 waits and starts at 08:02:30 (to 08:04); 08:03 waits and
    # starts at 08:04; 08:04 is skipped (one waits already)
    started = [(f.due_at[11:16], f.recorded_at[11:19]) for f in reversed(shown.recent)
               if f.outcome == "started"]
    assert started == [("08:01", "08:01:00"), ("08:02", "08:02:30"), ("08:03", "08:04:00")]
    outcomes = {(f.due_at[11:16], f.outcome) for f in shown.recent}
    assert ("08:04", "buffered") in outcomes or ("08:04", "skipped") in outcomes


@pytest.mark.trio
@pytest.mark.parametrize(
    "policy, want",
    [("none", []), ("last", ["08:45"]), ("all", ["08:15", "08:30", "08:45"])],
)
async def test_catch_up_after_the_scheduler_was_down(tmp_path, settled_clock, policy, want):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("c", quick, every="15m", catch_up=policy, overlap="allow")
        await trio.sleep(50 * 60)  # no scheduler: 08:15, 08:30 and 08:45 pass
        async with engine.scheduler(**QUIET):
            await trio.sleep(1)
            got = await states(engine)
            # then it goes on on time
            await trio.sleep(10 * 60)
            after = await states(engine)
    assert sorted(eid[-7:-3] for eid in got) == [w.replace(":", "") for w in want]
    assert set(after) - set(got) == {execution_id("c", BASE + 3600)}


@pytest.mark.trio
async def test_pause_resume_delete_trigger(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        s = engine.schedules
        await s.create("p", quick, every="1m", input={"k": 1})
        async with engine.scheduler(**QUIET):
            await trio.sleep(70)  # 08:01 ran
            paused = await s.pause("p")
            assert paused.paused and paused.next_due_at is None
            await trio.sleep(180)  # 08:02..08:04 pass paused
            assert len(await states(engine)) == 1
            eid = await s.trigger("p")  # works while paused, at once
            await trio.sleep(1)
            assert (await states(engine))[eid] == "COMPLETED"
            resumed = await s.resume("p")  # at 08:04:11: next 08:05, nothing caught up
            assert resumed.next_due_at == "2027-01-15T08:05:00Z"
            await trio.sleep(60)
            assert execution_id("p", BASE + 300) in await states(engine)
            await s.delete("p")
            await trio.sleep(180)
        final = await states(engine)
        assert len(final) == 3  # 08:01, the trigger, 08:05
        with pytest.raises(ScheduleNotFoundError):
            await s.get("p")
        with pytest.raises(ScheduleNotFoundError):
            await s.delete("p")
        with pytest.raises(ScheduleNotFoundError):
            await s.trigger("p")


@pytest.mark.trio
async def test_create_errors_name_what_is_wrong(tmp_path):
    async with engine_at(tmp_path) as engine:
        s = engine.schedules
        await s.create("x", quick, every="1m")
        with pytest.raises(ScheduleExistsError, match="'x' already exists"):
            await s.create("x", quick, every="1m")
        with pytest.raises(ScheduleError, match="bad cron expression 'every day'"):
            await s.create("y", quick, cron="every day")
        with pytest.raises(ScheduleError, match="unknown time zone 'Europe/Nowhere'"):
            await s.create("y", quick, cron="0 0 * * *", timezone="Europe/Nowhere")
        with pytest.raises(ScheduleError, match="interval '-1m'"):
            await s.create("y", quick, every="-1m")
        with pytest.raises(ScheduleError, match="input of schedule 'y'"):
            await s.create("y", quick, every="1m", input=object())
        assert [x.name for x in await s.list()] == ["x"]


@pytest.mark.trio
async def test_unknown_workflows_are_left_for_another_runner(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("theirs", "not_here", every="1m")
        async with engine.scheduler(**QUIET):
            await trio.sleep(130)
        assert await states(engine) == {}
        shown = await engine.schedules.show("theirs")
        assert shown.schedule.next_due_at == "2027-01-15T08:01:00Z"  # still due, unclaimed


@pytest.mark.trio
async def test_stopping_the_scheduler_stops_runs_and_the_next_one_finishes_them(
    tmp_path, settled_clock
):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("long", slow, every="1h", input=600)
        async with engine.scheduler(**QUIET):
            await trio.sleep(3600 + 60)  # 09:00 started, sleeping until 09:10
        eid = execution_id("long", BASE + 3600)
        rec = await engine.store.get_execution(eid)
        assert rec.state is ExecutionState.RUNNING and rec.lease_owner is None  # stopped
        types = [e.type for e in await engine.store.load_events(eid)]
        assert "WORKFLOW_CANCELLED" not in types and "TASK_CANCELLED" not in types
    async with engine_at(tmp_path, BASE + 3600 + 120) as engine:
        engine.schedules.register(slow)
        async with engine.scheduler(**QUIET):
            await trio.sleep(600)
        got = await states(engine)
    assert got == {eid: "COMPLETED"}  # recovered, not started twice, 10:00 not due yet
    assert calls == [("slow", 600)]


@pytest.mark.trio
async def test_a_running_scheduler_takes_over_what_a_dead_one_left(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("orphan", "quick", every="5m", input={"o": 1})
        async with engine.scheduler(refresh=60.0):  # knows no workflow yet: claims nothing
            await trio.sleep(300 + 5)
            assert await states(engine) == {}
            # another scheduler claims 09:00 and dies before running it: SCHEDULED, no lease
            started = await engine.store.claim_due_schedules(engine.clock())
            eid = execution_id("orphan", BASE + 300)
            assert [s.execution_id for s in started] == [eid]
            engine.schedules.register(quick)
            await trio.sleep(70)  # the next look for unfinished executions finds it
            assert await states(engine) == {eid: "COMPLETED"}
        assert calls == [("quick", {"o": 1})]


@task
async def exits():
    raise SystemExit(3)


@task
async def interrupts():
    raise KeyboardInterrupt


@workflow
async def hostile(ctx: ExecutionContext[str]):
    return await (exits() if ctx.input == "exit" else interrupts())


@pytest.mark.trio
async def test_hostile_user_code_fails_only_its_execution(tmp_path, settled_clock):
    async with engine_at(tmp_path) as engine:
        await engine.schedules.create("exit", hostile, every="1m", input="exit")
        await engine.schedules.create("ctrl-c", hostile, every="1m", input="kb")
        await engine.schedules.create("fine", quick, every="1m", input={})
        async with engine.scheduler(**QUIET):
            await trio.sleep(2 * 60 + 30)
        got = await states(engine)
    assert len(got) == 6
    for eid, state in got.items():
        assert state == ("COMPLETED" if eid.startswith("sched-fine-") else "FAILED"), eid


def test_schedules_run_on_asyncio_too(tmp_path):
    import anyio

    async def main():
        async with open_engine(store=str(tmp_path / "aio.db")) as engine:
            await engine.schedules.create("a", quick, every="1s", input={"aio": 1})
            async with engine.scheduler():
                with anyio.fail_after(20):
                    while len(await states(engine)) < 2:
                        await anyio.sleep(0.1)
            return await engine.schedules.show("a")

    shown = anyio.run(main, backend="asyncio")
    started = [f for f in shown.recent if f.outcome == "started"]
    assert len(started) >= 2 and all(f.state == "COMPLETED" for f in started[1:])
