"""The HTTP API of issue 5 against a server served in-process on 127.0.0.1 (and an in-process
worker): executions list, cancel, workers, admin secrets, subworkflow pause, and the error
statuses of every route (400, 404, 409, 413). Auth is in test_security.py, streams in
test_streams.py, the schema-driven fuzz in test_openapi.py."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from tests.conftest_net import Live, start_live

pytestmark = pytest.mark.trio


@pytest.fixture
async def live(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path)


@pytest.fixture
async def idle(nursery, tmp_path) -> Live:
    """A server with no worker: what is started stays queued."""
    own = tmp_path / "idle"  # its own database: a test may use both fixtures
    own.mkdir()
    return await start_live(nursery, own, worker=False, max_body_size=64 * 1024)


def client(live: Live, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.url, timeout=30, **kw)


async def wait_state(c: httpx.AsyncClient, eid: str, states: set[str], timeout: float = 20):
    with trio.fail_after(timeout):
        while True:
            body = (await c.get(f"/executions/{eid}")).json()
            if body["state"] in states:
                return body
            await trio.sleep(0.02)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# ---------------------------------------------------------------------------- executions


async def test_list_executions_filters_and_paging(idle):
    async with client(idle) as c:
        ids = [(await c.post("/workflows/hello/run/async", json=i)).json() for i in range(5)]
        asked = (await c.post("/workflows/asker/run/async", json=None)).json()
        everything = (await c.get("/executions")).json()
        assert everything["total"] == 6 and everything["limit"] == 50
        assert everything["offset"] == 0
        listed = [e["execution_id"] for e in everything["executions"]]
        assert listed == [asked["execution_id"]] + [e["execution_id"] for e in reversed(ids)]
        item = everything["executions"][0]
        assert {"workflow_name", "execution_id", "input", "output", "state"} <= set(item)
        assert {"parent_id", "created_at", "updated_at"} <= set(item)
        page = (await c.get("/executions", params={"workflow": "hello", "limit": 2})).json()
        assert page["total"] == 5 and len(page["executions"]) == 2
        second = (
            await c.get("/executions", params={"workflow": "hello", "limit": 2, "offset": 2})
        ).json()
        assert {e["execution_id"] for e in page["executions"]}.isdisjoint(
            e["execution_id"] for e in second["executions"]
        )
        assert (await c.get("/executions", params={"offset": 99})).json()["executions"] == []
        scheduled = (await c.get("/executions", params={"state": "scheduled"})).json()
        assert scheduled["total"] == 6
        several = (await c.get("/executions", params={"state": "PAUSED,SCHEDULED"})).json()
        assert several["total"] == 6
        assert (await c.get("/executions", params={"state": "COMPLETED"})).json()["total"] == 0
        assert (await c.get("/executions", params={"workflow": "nope"})).json()["total"] == 0
        for params in (
            {"state": "SLEEPY"},
            {"state": ","},
            {"limit": "-1"},
            {"limit": "0"},
            {"limit": "1001"},
            {"limit": "ten"},
            {"offset": "-3"},
            {"offset": "1.5"},
        ):
            assert_error(await c.get("/executions", params=params), 400, "bad-parameter")
        one = await c.get(f"/executions/{asked['execution_id']}", params={"detailed": "true"})
        assert one.json()["events"][0]["type"] == "WORKFLOW_STARTED"
        assert_error(await c.get("/executions/nope"), 404, "execution-not-found")


async def test_cancel_queued_and_paused_and_errors(idle, live):
    async with client(idle) as c:
        queued = (await c.post("/workflows/hello/run/async", json=1)).json()
        r = await c.post(f"/executions/{queued['execution_id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
        events = (await c.get(f"/executions/{queued['execution_id']}?detailed=true")).json()
        assert [e["type"] for e in events["events"]] == ["WORKFLOW_STARTED", "WORKFLOW_CANCELLED"]
        again = await c.post(f"/executions/{queued['execution_id']}/cancel")
        assert_error(again, 409, "conflict")
        assert_error(await c.post("/executions/nope/cancel"), 404, "execution-not-found")
        assert_error(await c.post("/executions/x/cancel?timeout=-1"), 400, "bad-timeout")
    async with client(live) as c:
        paused = (await c.post("/workflows/asker/run/sync")).json()
        assert paused["state"] == "PAUSED"
        eid = paused["execution_id"]
        r = await c.post(f"/executions/{eid}/cancel")
        assert r.json()["state"] == "CANCELLED"
        assert_error(await c.post(f"/workflows/asker/resume/{eid}", json=1), 409, "conflict")
        # the queued one never runs, even now that a worker could take it
        done = (await c.post("/workflows/hello/run/sync", json=2)).json()
        assert done["output"] == {"doubled": 4}
        assert_error(await c.post(f"/executions/{done['execution_id']}/cancel"), 409)


async def test_cancel_running_runs_rollbacks_children_first(live):
    log = live.tmp / "holder.log"
    async with client(live) as c:
        started = await c.post("/workflows/holder/run/async", json={"log": str(log), "seconds": 30})
        eid = started.json()["execution_id"]
        with trio.fail_after(10):
            while not log.exists() or log.read_text().count("start") < 2:
                await trio.sleep(0.02)
        workers = (await c.get("/workers")).json()
        assert [lease["execution_id"] for lease in workers[0]["leases"]] == [eid]
        r = await c.post(f"/executions/{eid}/cancel", params={"wait": "true", "detailed": "1"})
        assert r.status_code == 200
        body = r.json()
        assert body["state"] == "CANCELLED"
        types = [(e["type"], e["source_id"]) for e in body["events"]]
        assert types[-1] == ("WORKFLOW_CANCELLED", "holder")
        for call in ("parallel#0/hold#0", "parallel#0/hold#1"):
            mine = [t for t, s in types if s == call]
            assert mine == [
                "TASK_STARTED",
                "TASK_ROLLBACK_STARTED",
                "TASK_ROLLBACK_COMPLETED",
                "TASK_CANCELLED",
            ], (call, mine)
        # the tasks' own cancellations come before the workflow's
        last_task = max(i for i, (t, _) in enumerate(types) if t == "TASK_CANCELLED")
        assert last_task < len(types) - 1
        lines = log.read_text().split()
        assert lines.count("rollback") == 2 and "done" not in lines
        assert_error(await c.post(f"/executions/{eid}/cancel"), 409)
        assert (await c.get("/workers")).json()[0]["leases"] == []


async def test_paused_child_pauses_the_parent_and_resume_reaches_it(live):
    async with client(live) as c:
        r = await c.post("/workflows/guardian/run/sync", json="in", params={"timeout": 20})
        parent = r.json()
        assert parent["state"] == "PAUSED", parent
        pid = parent["execution_id"]
        kids = (await c.get("/executions", params={"workflow": "kid"})).json()["executions"]
        assert len(kids) == 1 and kids[0]["parent_id"] == pid and kids[0]["state"] == "PAUSED"
        detail = (await c.get(f"/executions/{pid}", params={"detailed": "true"})).json()
        assert detail["events"][-1]["type"] == "WORKFLOW_PAUSED"
        assert detail["events"][-1]["value"] == "kid#0"  # as embedded: the call id
        done = await c.post(
            f"/workflows/guardian/resume/{pid}", json="yes", params={"wait": "true"}
        )
        assert done.json()["state"] == "COMPLETED", done.json()
        assert done.json()["output"] == {"guardian": {"kid": "yes", "input": "in"}}
        child = (await c.get(f"/executions/{kids[0]['execution_id']}")).json()
        assert child["state"] == "COMPLETED"


async def test_cancelling_a_parent_cancels_its_children(live):
    async with client(live) as c:
        parent = (await c.post("/workflows/guardian/run/sync", json=1)).json()
        assert parent["state"] == "PAUSED"
        r = await c.post(f"/executions/{parent['execution_id']}/cancel")
        assert r.json()["state"] == "CANCELLED"
        kid = (await c.get("/executions", params={"workflow": "kid"})).json()["executions"][0]
        assert kid["state"] == "CANCELLED"


async def test_workers_route(live):
    async with client(live) as c:
        with trio.fail_after(5):
            while True:
                workers = (await c.get("/workers")).json()
                if workers and workers[0]["last_heartbeat"] is not None:
                    break
                await trio.sleep(0.05)
        w = workers[0]
        assert w["name"] == "api-test" and w["id"].startswith("api-test-")
        assert w["capacity"] == 4 and w["free"] == 4 and w["leases"] == []
        assert w["connected_at"] <= w["last_heartbeat"]


# ---------------------------------------------------------------------------- admin secrets


async def test_admin_secrets(live):
    async with client(live) as c:
        assert (await c.get("/admin/secrets")).json() == []
        r = await c.post("/admin/secrets", json={"name": "API_KEY", "value": "hunter22"})
        assert r.status_code == 200 and r.json() == {"name": "API_KEY"}
        await c.post("/admin/secrets", json={"name": "B", "value": "x"})
        await c.post("/admin/secrets", json={"name": "API_KEY", "value": "hunter2"})
        listed = await c.get("/admin/secrets")
        assert listed.json() == ["API_KEY", "B"] and "hunter2" not in listed.text
        assert (await c.get("/admin/secrets/API_KEY")).json() == {
            "name": "API_KEY",
            "value": "hunter2",
        }
        # a task that asked for it gets it; nothing else, and no event shows it
        run = await c.post("/workflows/secretive/run/sync", params={"detailed": "true"})
        assert run.json()["output"] == [7, []]
        assert "hunter2" not in run.text
        r = await c.delete("/admin/secrets/B")
        assert r.status_code == 200 and r.json() == {"name": "B", "removed": True}
        assert_error(await c.delete("/admin/secrets/B"), 404, "secret-not-found")
        assert_error(await c.get("/admin/secrets/B"), 404, "secret-not-found")
        for bad in (
            [1, 2],
            {"name": "X"},
            {"name": "", "value": "v"},
            {"name": "a b", "value": "v"},
            {"name": "X", "value": 3},
            {"name": 5, "value": "v"},
            {"name": "X", "value": "v", "extra": 1},
        ):
            assert_error(await c.post("/admin/secrets", json=bad), 400)
        assert_error(await c.post("/admin/secrets", content=b"{nope"), 400, "bad-json")
        assert_error(await c.get("/admin/secrets/a%20b"), 400, "bad-secret-name")
        big = {"name": "BIG", "value": "x" * (64 * 1024 + 1)}
        assert_error(await c.post("/admin/secrets", json=big), 413, "too-large")
        assert (await c.get("/admin/secrets")).json() == ["API_KEY"]


# ---------------------------------------------------------------------------- errors of every route


async def test_error_statuses_of_the_workflow_routes(idle):
    async with client(idle) as c:
        assert_error(await c.get("/workflows/nope"), 404, "workflow-not-found")
        for mode in ("sync", "async", "stream"):
            r = await c.post(f"/workflows/nope/run/{mode}", json=1)
            assert_error(r, 404, "workflow-not-found")
            assert_error(await c.post(f"/workflows/hello/run/{mode}", content=b"{"), 400)
        assert_error(await c.post("/workflows/hello/run/later", json=1), 404, "not-found")
        assert_error(await c.post("/workflows/hello/run/sync?timeout=x", json=1), 400)
        assert_error(await c.post("/workflows/hello/run/sync?timeout=nan", json=1), 400)
        deep = b"[" * 100_000 + b"]" * 100_000
        assert_error(await c.post("/workflows/hello/run/async", content=deep), 413)
        nested = b"[" * 5000 + b"]" * 5000
        assert_error(await c.post("/workflows/hello/run/async", content=nested), 400)
        huge_int = b"1" + b"0" * 5000
        assert_error(await c.post("/workflows/hello/run/async", content=huge_int), 400)
        too_big = b'"' + b"x" * (64 * 1024) + b'"'
        assert_error(await c.post("/workflows/hello/run/async", content=too_big), 413, "too-large")
        assert_error(await c.get("/workflows/hello/status/nope"), 404, "execution-not-found")
        r = await c.post("/workflows/hello/run/async", json=1)
        eid = r.json()["execution_id"]
        assert_error(await c.get(f"/workflows/asker/status/{eid}"), 404)  # another workflow's
        assert_error(await c.post(f"/workflows/hello/resume/{eid}", json=1), 409, "conflict")
        assert_error(await c.post("/workflows/hello/resume/nope", json=1), 404)
        assert_error(await c.post("/workflows", data={"x": "y"}), 400, "no-file")
        files = {"file": ("x.py", b"\xff\xfe")}
        assert_error(await c.post("/workflows", files=files), 400, "bad-source")
        files = {"file": ("x.py", b"def broken(:\n")}
        assert_error(await c.post("/workflows", files=files), 400, "bad-source")
        files = {"file": ("x.py", b"x = 1\n" * 20_000)}  # 120 kB over the 64 kB body limit
        assert_error(await c.post("/workflows", files=files), 413, "too-large")
        assert_error(await c.get("/nowhere"), 404, "not-found")
        assert_error(await c.delete("/workflows"), 405)


async def test_upload_size_limit(nursery, tmp_path):
    live = await start_live(
        nursery, tmp_path, worker=False, upload_source=False, max_source_size=1000
    )
    async with client(live) as c:
        source = b"from flux import workflow\n\n@workflow\nasync def w(ctx):\n    return 1\n"
        ok = await c.post("/workflows", files={"file": ("w.py", source)})
        assert ok.status_code == 200 and ok.json()[0]["name"] == "w"
        big = source + b"# " + b"x" * 1000 + b"\n"
        body = assert_error(await c.post("/workflows", files={"file": ("w.py", big)}), 413)
        assert "1000 bytes" in body["detail"]


async def test_no_cors_headers_unless_configured(live, nursery, tmp_path):
    async with client(live) as c:
        r = await c.get("/workflows", headers={"Origin": "https://evil.example"})
        assert not [h for h in r.headers if h.lower().startswith("access-control")]
        pre = await c.options(
            "/workflows",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert not [h for h in pre.headers if h.lower().startswith("access-control")]
    other = await start_live(
        nursery,
        tmp_path / "cors",
        worker=False,
        upload_source=False,
        cors_origins=("https://ops.example",),
    )
    async with client(other) as c:
        r = await c.get("/workflows", headers={"Origin": "https://ops.example"})
        assert r.headers["access-control-allow-origin"] == "https://ops.example"
        pre = await c.options(
            "/workflows",
            headers={"Origin": "https://ops.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        r = await c.get("/workflows", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        assert json.loads(r.text) == []
