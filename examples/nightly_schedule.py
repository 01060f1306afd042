"""A nightly report on a schedule: cron "30 2 * * *" in Europe/Berlin.

    python examples/nightly_schedule.py     # a week of nights in virtual time, in seconds

The week it runs includes the night clocks go forward in Berlin (29 March 2026), when 02:30 does
not exist: that night's report starts at the moment the clocks jump (03:00 local), once.

For real, against a local store, create the schedule once and keep a scheduler running:

    flux schedules create nightly --workflow nightly_report \\
        --cron "30 2 * * *" --timezone Europe/Berlin --input '{"team": "ops"}'
    flux start scheduler examples/nightly_schedule.py

or on a server (upload this file with `flux workflow register` first), with the same
`flux schedules create ... --server-url http://127.0.0.1:8000`: the server starts each night's
execution and a worker runs it.
"""

import tempfile
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import trio
import trio.testing

from flux import ExecutionContext, task, workflow
from flux.runtime.engine import open_engine
from flux.schedules import scheduled_time


@task
async def gather(team: str, night: str) -> dict:
    return {"team": team, "night": night, "incidents": int(night[4:6]) % 3}


@workflow
async def nightly_report(ctx: ExecutionContext[dict]):
    due = scheduled_time(ctx.execution_id)  # the due time it runs for, from its id
    night = due.astimezone(ZoneInfo("Europe/Berlin")).strftime("%a %d %b %H:%M")
    report = await gather(ctx.input["team"], night)
    return f"{report['team']} report for {night}: {report['incidents']} incident(s)"


async def main(store: str) -> None:
    start = datetime(2026, 3, 25, 12, 0, tzinfo=UTC).timestamp()
    async with open_engine(
        store=store,
        durability="normal",
        clock=lambda: start + trio.current_time(),
        cancel_poll=None,
    ) as engine:
        await engine.schedules.create(
            "nightly",
            nightly_report,
            cron="30 2 * * *",
            timezone="Europe/Berlin",
            input={"team": "ops"},
        )
        # sleep until each due time (virtual), run it, record it; no busy polling
        async with engine.scheduler(refresh=86400):
            await trio.sleep(7 * 86400)
        shown = await engine.schedules.show("nightly", recent=7)
        for fire in reversed(shown.recent):
            ctx = await engine.get(fire.execution_id)
            print(f"{fire.execution_id}: {ctx.state.value} {ctx.output}")
        states = {f.state for f in shown.recent}
        print(f"{len(shown.recent)} nights, {len(shown.recent)} reports: {', '.join(states)}")
        print("next:", ", ".join(shown.upcoming[:2]))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        # autojump: virtual time skips ahead whenever everything waits (a week in seconds)
        trio.run(main, f"{tmp}/flux.db", clock=trio.testing.MockClock(autojump_threshold=0.1))
