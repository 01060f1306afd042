"""Schedules on a server (in-process, real time, a worker connected): the HTTP routes, their
errors, the client, and the server's loop starting due executions on the dispatcher."""

from __future__ import annotations

import httpx
import pytest
import trio

from flux.net.client import FluxClient
from tests.conftest_net import Live, start_live

pytestmark = pytest.mark.trio


@pytest.fixture
async def live(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path)


def client(live: Live) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.url, timeout=30)


def assert_error(r: httpx.Response, status: int, code: str, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and words in body["detail"], body


async def wait_for(predicate, timeout: float = 20.0):
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.05)


async def test_schedule_lifecycle_over_http(live):
    async with client(live) as c:
        r = await c.post(
            "/schedules", json={"name": "often", "workflow": "hello", "every": "1s", "input": 3}
        )
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["every"] == "1s" and made["input"] == 3 and made["overlap"] == "skip"

        async def completed():
            shown = (await c.get("/schedules/often", params={"recent": 50})).json()
            done = [f for f in shown["recent"] if f["state"] == "COMPLETED"]
            return done if len(done) >= 2 else None

        done = await wait_for(completed)
        eid = done[0]["execution_id"]
        assert eid.startswith("sched-often-")
        status = (await c.get(f"/executions/{eid}")).json()
        assert status["output"] == {"doubled": 6} and status["workflow_name"] == "hello"
        assert [s["name"] for s in (await c.get("/schedules")).json()] == ["often"]
        shown = (await c.get("/schedules/often", params={"upcoming": 3})).json()
        assert len(shown["upcoming"]) == 3 and shown["schedule"]["name"] == "often"

        r = await c.post("/schedules/often/pause")
        assert r.status_code == 200 and r.json()["paused"] is True
        await trio.sleep(0.3)  # a claim in flight may still land
        count = len((await c.get("/executions", params={"limit": 1000})).json()["executions"])
        await trio.sleep(2.5)
        after = len((await c.get("/executions", params={"limit": 1000})).json()["executions"])
        assert after == count  # paused: nothing more

        r = await c.post("/schedules/often/trigger")
        assert r.status_code == 202, r.text
        triggered = r.json()["execution_id"]
        assert triggered.startswith("sched-often-trigger-")

        async def trigger_done():
            rec = await c.get(f"/executions/{triggered}")
            return rec.status_code == 200 and rec.json()["state"] == "COMPLETED"

        await wait_for(trigger_done)
        r = await c.post("/schedules/often/resume")
        assert r.status_code == 200 and r.json()["paused"] is False
        r = await c.delete("/schedules/often")
        assert r.status_code == 200 and r.json() == {"schedule": "often", "deleted": True}
        assert_error(await c.get("/schedules/often"), 404, "schedule-not-found", "often")


async def test_schedule_errors(live):
    async with client(live) as c:
        base = {"name": "s", "workflow": "hello", "every": "1h"}
        cases = [
            ({**base, "every": None, "cron": "nope"}, 400, "bad-schedule", "bad cron"),
            ({**base, "every": None, "cron": "0 2 * * *", "timezone": "Mars/Base"}, 400,
             "bad-schedule", "unknown time zone 'Mars/Base'"),
            ({**base, "every": "0s"}, 400, "bad-schedule", "greater than 0"),
            ({**base, "every": "soon"}, 400, "bad-schedule", "interval 'soon'"),
            ({**base, "every": True}, 400, "bad-request", "every must be"),
            ({**base, "cron": "0 * * * *"}, 400, "bad-schedule", "either a cron"),
            ({**base, "overlap": "maybe"}, 400, "bad-schedule", "overlap policy 'maybe'"),
            ({**base, "catch_up": 3}, 400, "bad-request", "catch_up must be a string"),
            ({**base, "name": "bad name"}, 400, "bad-schedule", "schedule name"),
            ({**base, "when": "now"}, 400, "bad-request", "unknown field(s) when"),
            ({**base, "workflow": "ghost"}, 404, "workflow-not-found", "'ghost' is not registered"),
        ]
        for body, status, code, words in cases:
            assert_error(await c.post("/schedules", json=body), status, code, words)
        assert_error(await c.post("/schedules", json=[1]), 400, "bad-request", "JSON object")
        assert (await c.post("/schedules", json=base)).status_code == 201
        assert_error(await c.post("/schedules", json=base), 409, "schedule-exists", "'s'")
        for method, path in [
            ("GET", "/schedules/nope"),
            ("DELETE", "/schedules/nope"),
            ("POST", "/schedules/nope/pause"),
            ("POST", "/schedules/nope/resume"),
            ("POST", "/schedules/nope/trigger"),
        ]:
            assert_error(await c.request(method, path), 404, "schedule-not-found", "nope")
        assert_error(await c.get("/schedules/-x"), 400, "bad-schedule-name", "schedule name")
        assert (await c.post("/schedules/s/pause")).status_code == 200
        first = await c.post("/schedules/s/trigger")
        second = await c.post("/schedules/s/trigger")
        # the loop serves a trigger within milliseconds; a second one before that is a 409
        assert first.status_code == 202
        assert second.status_code in (202, 409), second.text


async def test_buffer_one_starts_when_the_running_one_ends(live):
    """The server's loop is woken when a scheduled execution ends (the dispatcher's hook)."""
    async with FluxClient(live.url) as c:
        await c.schedule_create(
            "slowly", "ticker", every="1s", input={"n": 1, "seconds": 1.6},
            overlap="buffer-one",
        )

        async def buffered_started():
            shown = await c.schedule_show("slowly", recent=50)
            return [
                f for f in shown["recent"]
                if f["outcome"] == "started" and "buffered" in f["detail"]
                and f["state"] == "COMPLETED"
            ]

        assert await wait_for(buffered_started, 30)
        shown = await c.schedule_show("slowly", recent=50)
        outcomes = {f["outcome"] for f in shown["recent"]}
        assert {"started", "buffered"} <= outcomes
        states = [f["state"] for f in shown["recent"] if f["outcome"] == "started"]
        assert states.count("RUNNING") + states.count("SCHEDULED") <= 1  # one at a time
        await c.schedule_delete("slowly")
        assert await c.schedules_list() == []
