"""Issue 5 across real processes on 127.0.0.1: cancel of queued, paused and running executions
reaching a worker process, the event stream catching up on a running execution, and secrets
that stay out of events and logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest
import trio
import trio_websocket

from tests.conftest_net import (
    API_WORKFLOWS,
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow


def events_of(url: str, eid: str) -> list[dict]:
    r = httpx.get(f"{url}/executions/{eid}", params={"detailed": "true"}, timeout=10)
    return r.json()["events"]


def test_cancel_queued_paused_and_running_across_a_worker_process(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, API_WORKFLOWS, "api_flows.py").status_code == 200
    # queued: no worker yet
    queued = httpx.post(f"{url}/workflows/hello/run/async", json=1).json()["execution_id"]
    r = httpx.post(f"{url}/executions/{queued}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
    worker = procs.worker(url, "canceller", concurrency=2)
    # paused
    paused = httpx.post(f"{url}/workflows/asker/run/sync", timeout=30).json()
    assert paused["state"] == "PAUSED"
    r = httpx.post(f"{url}/executions/{paused['execution_id']}/cancel")
    assert r.json()["state"] == "CANCELLED"
    # running: two tasks in parallel, each with a rollback
    log = tmp_path / "holder.log"
    eid = httpx.post(
        f"{url}/workflows/holder/run/async", json={"log": str(log), "seconds": 60}
    ).json()["execution_id"]
    wait_for(lambda: log.exists() and log.read_text().count("start") == 2, 20, "both tasks", worker)
    t0 = time.monotonic()
    r = httpx.post(f"{url}/executions/{eid}/cancel", params={"wait": "true"}, timeout=30)
    assert r.json()["state"] == "CANCELLED", r.json()
    assert time.monotonic() - t0 < 5  # at once over the session, not at a lease expiry
    assert log.read_text().split().count("rollback") == 2
    events = [(e["type"], e["source_id"]) for e in events_of(url, eid)]
    assert events[-1] == ("WORKFLOW_CANCELLED", "holder")
    for call in ("parallel#0/hold#0", "parallel#0/hold#1"):
        assert [t for t, s in events if s == call] == [
            "TASK_STARTED",
            "TASK_ROLLBACK_STARTED",
            "TASK_ROLLBACK_COMPLETED",
            "TASK_CANCELLED",
        ]
    assert httpx.post(f"{url}/executions/{eid}/cancel").status_code == 409
    # the queued one never ran, even with a worker connected since
    assert [e["type"] for e in events_of(url, queued)] == ["WORKFLOW_STARTED", "WORKFLOW_CANCELLED"]
    listed = httpx.get(f"{url}/executions", params={"state": "CANCELLED"}).json()
    assert listed["total"] == 3
    assert worker.popen.poll() is None and server.popen.poll() is None


def test_stream_catches_up_on_a_worker_process_run(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    procs.worker(url, "streamer")
    assert upload(url, API_WORKFLOWS, "api_flows.py").status_code == 200
    eid = httpx.post(f"{url}/workflows/ticker/run/async", json={"n": 10, "seconds": 0.1}).json()[
        "execution_id"
    ]
    wait_for(lambda: len(events_of(url, eid)) >= 5, 20, "five events")

    async def follow() -> tuple[list[dict], int]:
        got = []
        ws = url.replace("http://", "ws://") + f"/executions/{eid}/events?from=0"
        async with trio_websocket.open_websocket_url(ws) as conn:
            try:
                with trio.fail_after(30):
                    while True:
                        got.append(json.loads(await conn.get_message()))
            except trio_websocket.ConnectionClosed as exc:
                return got, exc.reason.code
        raise AssertionError("unreachable")

    got, code = trio.run(follow)
    assert code == 1000
    full = events_of(url, eid)
    assert full[-1]["type"] == "WORKFLOW_COMPLETED" and len(full) == 22
    assert got == full  # every event exactly once, in order


def test_secret_values_stay_out_of_events_and_logs(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    worker = procs.worker(url, "keeper")
    assert upload(url, API_WORKFLOWS, "api_flows.py").status_code == 200
    value = "correct-horse-battery-staple"
    httpx.post(f"{url}/admin/secrets", json={"name": "API_KEY", "value": value})
    r = httpx.post(f"{url}/workflows/secretive/run/sync", params={"detailed": "1"}, timeout=30)
    assert r.json()["output"] == [len(value), []]
    assert value not in r.text
    assert value not in httpx.get(f"{url}/executions").text
    assert value not in server.log() and value not in worker.log()


SEED_WORKFLOWS = """
from flux import task, workflow, ExecutionContext


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def workflow_name(ctx: ExecutionContext[str]):
    return await say_hello(ctx.input)
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_examples_work_as_written(procs, tmp_path):  # noqa: F811
    """The README's (SEED.md) curl commands, verbatim but for the port, against a server started
    without tokens on loopback."""
    _, url = procs.server(str(tmp_path / "flux.db"))
    procs.worker(url, "seed")
    (tmp_path / "my_workflows.py").write_text(SEED_WORKFLOWS)
    base = url.replace("127.0.0.1", "localhost")

    def curl(*args: str) -> str:
        out = subprocess.run(
            ["curl", "-s", "-S", "--fail-with-body", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    up = json.loads(curl("-X", "POST", f"{base}/workflows", "-F", "file=@my_workflows.py"))
    assert [w["name"] for w in up] == ["workflow_name"]
    assert json.loads(curl("-X", "GET", f"{base}/workflows"))[0]["name"] == "workflow_name"
    assert "say_hello" in json.loads(curl("-X", "GET", f"{base}/workflows/workflow_name"))["source"]
    json_body = ["-H", "Content-Type: application/json", "-d", '"input_data"']
    done = json.loads(curl("-X", "POST", f"{base}/workflows/workflow_name/run/sync", *json_body))
    assert done["state"] == "COMPLETED" and done["output"] == "Hello, input_data"
    started = json.loads(
        curl("-X", "POST", f"{base}/workflows/workflow_name/run/async", *json_body)
    )
    stream = curl("-X", "POST", f"{base}/workflows/workflow_name/run/stream", *json_body)
    datas = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    assert datas[-1]["state"] == "COMPLETED" and datas[-2]["type"] == "WORKFLOW_COMPLETED"
    eid = started["execution_id"]
    wait_for(
        lambda: (
            json.loads(curl("-X", "GET", f"{base}/workflows/workflow_name/status/{eid}"))["state"]
            == "COMPLETED"
        ),
        20,
        "the async run",
    )
    detailed = json.loads(
        curl("-X", "GET", f"{base}/workflows/workflow_name/status/{eid}?detailed=true")
    )
    assert detailed["events"][-1]["type"] == "WORKFLOW_COMPLETED"
    secret = ["-H", "Content-Type: application/json"]
    secret += ["-d", '{"name": "API_KEY", "value": "your-api-key-value"}']
    curl("-X", "POST", f"{base}/admin/secrets", *secret)
    assert json.loads(curl("-X", "GET", f"{base}/admin/secrets")) == ["API_KEY"]
    value = json.loads(curl("-X", "GET", f"{base}/admin/secrets/API_KEY"))
    assert value["value"] == "your-api-key-value"
    curl("-X", "DELETE", f"{base}/admin/secrets/API_KEY")
    assert json.loads(curl("-X", "GET", f"{base}/admin/secrets")) == []
    assert "<html" in curl(f"{base}/docs")
