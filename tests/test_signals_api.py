"""The signal routes and client methods against an in-process server: answers and every error."""

from __future__ import annotations

import httpx
import pytest
import trio

from flux.net.client import FluxClient, FluxClientError
from tests.conftest_net import Live, start_live
from tests.test_signals_distributed import SIGNAL_WORKFLOWS
from tests.test_streams import collect, sse, ws_url

pytestmark = pytest.mark.trio


@pytest.fixture
async def idle(nursery, tmp_path) -> Live:
    """No worker: what is started stays queued (and can be sent signals)."""
    return await start_live(nursery, tmp_path, worker=False, max_value_size=1024)


async def test_signal_routes_answers_and_errors(idle):
    async with httpx.AsyncClient(base_url=idle.url, timeout=30) as c:
        eid = (await c.post("/workflows/hello/run/async", json=1)).json()["execution_id"]
        r = await c.post(f"/executions/{eid}/signals/go", json={"n": 1})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["execution_id"] == eid and body["topic"] == "go"
        assert body["state"] == "SCHEDULED" and isinstance(body["signal_id"], int)
        empty = await c.post(f"/executions/{eid}/signals/go")  # no body: null
        assert empty.status_code == 202
        assert empty.json()["signal_id"] > body["signal_id"]
        queued = (await c.get(f"/executions/{eid}/signals")).json()
        assert [(q["topic"], q["value"]) for q in queued] == [("go", {"n": 1}), ("go", None)]

        big = await c.post(f"/executions/{eid}/signals/go", json="x" * 2000)
        assert big.status_code == 413 and "value of signal 'go'" in big.json()["detail"]
        bad = await c.post(
            f"/executions/{eid}/signals/go",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 400 and bad.json()["error"] == "bad-json"
        spaced = await c.post(f"/executions/{eid}/signals/a%20b", json=1)
        assert spaced.status_code == 400 and spaced.json()["error"] == "bad-topic"
        missing = await c.post("/executions/nope/signals/go", json=1)
        assert missing.status_code == 404 and missing.json()["error"] == "execution-not-found"
        assert (await c.get("/executions/nope/signals")).status_code == 404
        # nothing refused was stored
        assert len((await c.get(f"/executions/{eid}/signals")).json()) == 2

        assert (await c.post(f"/executions/{eid}/cancel")).json()["state"] == "CANCELLED"
        late = await c.post(f"/executions/{eid}/signals/go", json=1)
        assert late.status_code == 409
        assert late.json()["state"] == "CANCELLED" and late.json()["error"] == "conflict"


async def test_client_send_signal(idle):
    async with FluxClient(idle.url) as client:
        started = await client.run("hello", 1, mode="async")
        eid = started["execution_id"]
        sent = await client.send_signal(eid, "go", [1, 2])
        assert sent["topic"] == "go" and sent["state"] == "SCHEDULED"
        assert [q["value"] for q in await client.queued_signals(eid)] == [[1, 2]]
        with pytest.raises(FluxClientError) as info:
            await client.send_signal("nope", "go")
        assert info.value.status == 404
        await client.cancel(eid)
        with pytest.raises(FluxClientError) as info:
            await client.send_signal(eid, "go", 1)
        assert info.value.status == 409 and "CANCELLED" in info.value.detail


@pytest.fixture
async def running(nursery, tmp_path) -> Live:
    live = await start_live(nursery, tmp_path / "running", upload_source=False)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        files = {"file": ("signal_flows.py", SIGNAL_WORKFLOWS.encode())}
        assert (await c.post("/workflows", files=files)).status_code == 200
    return live


async def test_streams_and_the_console_show_signals(running):
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as c:
        eid = (await c.post("/workflows/approve/run/sync", json=600)).json()["execution_id"]
        assert (await c.post(f"/executions/{eid}/signals/approval", json={"by": "ada"})).is_success
        with trio.fail_after(20):
            while (await c.get(f"/executions/{eid}")).json()["state"] != "COMPLETED":
                await trio.sleep(0.02)
        got, code, _ = await collect(ws_url(running, eid))
        assert code == 1000
        received = [e for e in got if e["type"] == "SIGNAL_RECEIVED"]
        assert [(e["source_id"], e["name"], e["value"]) for e in received] == [
            ("receive#0", "approval", {"by": "ada"})
        ]
        page = await c.get(f"/ui/executions/{eid}")
        assert page.status_code == 200 and "SIGNAL_RECEIVED" in page.text
        # run/stream stays open while the execution waits, and shows the deliveries
        box: dict = {}

        async def stream() -> None:
            box["events"] = await sse(c, "/workflows/two_of_them/run/stream", None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            with trio.fail_after(20):
                while True:
                    listed = (await c.get("/executions", params={"workflow": "two_of_them"})).json()
                    if listed["executions"]:
                        other = listed["executions"][0]["execution_id"]
                        break
                    await trio.sleep(0.02)
            for n in (1, 2):
                assert (await c.post(f"/executions/{other}/signals/n", json=n)).is_success
        kinds = [data.get("type") for _, data in box["events"]]
        assert kinds.count("SIGNAL_RECEIVED") == 2 and "WORKFLOW_COMPLETED" in kinds
