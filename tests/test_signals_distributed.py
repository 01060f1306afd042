"""Signals across real processes: a server and a worker on 127.0.0.1, the HTTP API, the CLI."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.conftest import PYTHON, ROOT
from tests.conftest_net import (
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow

SIGNAL_WORKFLOWS = """
from flux import task, workflow
from flux.errors import SignalTimeoutError
from flux.tasks import parallel, receive, send_signal


@workflow
async def approve(ctx):
    try:
        decision = await receive("approval", timeout=ctx.input)
    except SignalTimeoutError:
        return "timed out"
    return f"approved by {decision['by']}"


@workflow
async def two_of_them(ctx):
    return [await receive("n"), await receive("n")]


@task
async def work(seconds):
    import anyio

    await anyio.sleep(seconds)
    return "worked"


@workflow
async def busy_receiver(ctx):
    return await parallel(receive("stop"), work(ctx.input))


@workflow
async def talks_to_itself(ctx):
    await send_signal(ctx.execution_id, "self", "note to self")
    return await receive("self", timeout=30)


@workflow
async def notifier(ctx):
    await send_signal(ctx.input, "n", "from a workflow")
    return "sent"
"""


def get(url: str, eid: str) -> dict:
    return httpx.get(f"{url}/executions/{eid}", params={"detailed": "true"}, timeout=10).json()


def wait_state(url: str, eid: str, states: set[str], timeout: float, proc=None) -> dict:
    found: dict = {}

    def done() -> bool:
        found.clear()
        found.update(get(url, eid))
        return found["state"] in states

    wait_for(done, timeout, f"{eid} in {states}", proc)
    return found


def test_receive_releases_the_worker_and_a_signal_over_http_wakes_it(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "flux.db")
    server, url = procs.server(db, lease_ttl=2.0)
    assert upload(url, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(url, "receiver", concurrency=1)

    t0 = time.monotonic()
    sync = httpx.post(f"{url}/workflows/approve/run/sync", json=3600, timeout=60).json()
    assert sync["state"] == "SCHEDULED" and time.monotonic() - t0 < 10  # answers: it waits
    eid = sync["execution_id"]
    waiting = wait_state(url, eid, {"SCHEDULED"}, 20, worker)
    types = [e["type"] for e in waiting["events"]]
    assert types[-1] == "TASK_STARTED"
    # released: the worker holds no lease, and its one slot runs another execution meanwhile
    leases = httpx.get(f"{url}/workers", timeout=10).json()
    assert all(not w.get("leases") for w in leases), leases
    other = httpx.post(f"{url}/workflows/two_of_them/run/async").json()["execution_id"]
    wait_state(url, other, {"SCHEDULED"}, 20, worker)

    # a signal over HTTP wakes it
    r = httpx.post(f"{url}/executions/{eid}/signals/approval", json={"by": "ada"}, timeout=10)
    assert r.status_code == 202, r.text
    assert r.json()["topic"] == "approval" and r.json()["signal_id"] >= 1
    done = wait_state(url, eid, {"COMPLETED"}, 20, worker)
    assert done["output"] == "approved by ada"
    kinds = [(e["type"], e["source_id"]) for e in done["events"]]
    assert ("SIGNAL_RECEIVED", "receive#0") in kinds
    assert [k for k, _ in kinds].count("SIGNAL_RECEIVED") == 1

    # finished: 409 naming the state; unknown: 404; bad topic: 400; too large: 413
    r = httpx.post(f"{url}/executions/{eid}/signals/approval", json=1, timeout=10)
    assert r.status_code == 409 and r.json()["state"] == "COMPLETED"
    assert httpx.post(f"{url}/executions/nope/signals/x", json=1).status_code == 404
    bad = httpx.post(f"{url}/executions/{other}/signals/{'x' * 201}", json=1)
    assert bad.status_code == 400 and bad.json()["error"] == "bad-topic"

    # two signals on one topic, queued while nothing runs it, delivered in order, once each
    for n in (1, 2):
        assert httpx.post(f"{url}/executions/{other}/signals/n", json=n).status_code == 202
    both = wait_state(url, other, {"COMPLETED"}, 20, worker)
    assert both["output"] == [1, 2]
    assert httpx.get(f"{url}/executions/{other}/signals").json() == []


def test_receive_timeout_fires_through_the_dispatcher_timers(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(url, "timer", concurrency=1)
    t0 = time.monotonic()
    eid = httpx.post(f"{url}/workflows/approve/run/async", json=2.5).json()["execution_id"]
    rec = wait_state(url, eid, {"SCHEDULED"}, 20, worker)
    assert rec["state"] == "SCHEDULED"
    done = wait_state(url, eid, {"COMPLETED"}, 20, worker)
    assert done["output"] == "timed out" and time.monotonic() - t0 >= 2.5
    failed = [e for e in done["events"] if e["type"] == "TASK_FAILED"]
    assert failed[0]["value"]["type"].endswith("SignalTimeoutError")


def test_signal_survives_a_server_restart_and_the_cli_sends_one(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "flux.db")
    server, url = procs.server(db, lease_ttl=2.0)
    assert upload(url, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(url, "w1", concurrency=1)
    eid = httpx.post(f"{url}/workflows/two_of_them/run/async").json()["execution_id"]
    wait_state(url, eid, {"SCHEDULED"}, 20, worker)
    worker.kill9()
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "flux.cli",
            "executions",
            "signal",
            eid,
            "n",
            '"first"',
            "--server-url",
            url,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=procs.env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "queued" in out.stdout
    server.kill9()  # the signal was accepted: it is in the store
    server, url = procs.server(db, port=int(url.rsplit(":", 1)[1]), lease_ttl=2.0)
    worker = procs.worker(url, "w2", concurrency=1)
    assert httpx.post(f"{url}/executions/{eid}/signals/n", json="second").status_code == 202
    done = wait_state(url, eid, {"COMPLETED"}, 30, worker)
    assert done["output"] == ["first", "second"]
    bad = subprocess.run(
        [PYTHON, "-m", "flux.cli", "executions", "signal", eid, "n", "{oops", "--server-url", url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=procs.env,
        timeout=60,
    )
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_a_workflow_on_a_worker_sends_a_signal_once(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(url, "sender", concurrency=2)
    target = httpx.post(f"{url}/workflows/two_of_them/run/async").json()["execution_id"]
    wait_state(url, target, {"SCHEDULED"}, 20, worker)
    for _ in range(2):
        sent = httpx.post(f"{url}/workflows/notifier/run/sync", json=target, timeout=30).json()
        assert sent["state"] == "COMPLETED" and sent["output"] == "sent", sent
    done = wait_state(url, target, {"COMPLETED"}, 20, worker)
    assert done["output"] == ["from a workflow", "from a workflow"]
    late = httpx.post(f"{url}/workflows/notifier/run/sync", json=target, timeout=30).json()
    assert late["state"] == "FAILED" and "COMPLETED" in late["output"]["message"]
    missing = httpx.post(f"{url}/workflows/notifier/run/sync", json="nope", timeout=30).json()
    assert missing["state"] == "FAILED" and "nope" in missing["output"]["message"]
    itself = httpx.post(f"{url}/workflows/talks_to_itself/run/sync", timeout=30).json()
    assert itself["state"] == "COMPLETED" and itself["output"] == "note to self", itself


def test_signal_sent_while_the_worker_runs_other_tasks(procs, tmp_path):  # noqa: F811
    """During: the run holds its lease (a task is running); the server offers the signal to
    the worker (signals_queued) and the waiting receive takes it while the task still runs."""
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(url, "busy", concurrency=1)
    eid = httpx.post(f"{url}/workflows/busy_receiver/run/async", json=3.0).json()["execution_id"]
    wait_state(url, eid, {"RUNNING"}, 20, worker)
    r = httpx.post(f"{url}/executions/{eid}/signals/stop", json="stop now", timeout=10)
    assert r.status_code == 202 and r.json()["state"] == "RUNNING"
    done = wait_state(url, eid, {"COMPLETED"}, 30, worker)
    assert done["output"] == ["stop now", "worked"]
    kinds = [e["type"] for e in done["events"]]
    assert kinds.count("SIGNAL_RECEIVED") == 1
    outcomes = [e["source_id"] for e in done["events"] if e["type"] == "TASK_COMPLETED"]
    assert "receive" in outcomes[0] and "work" in outcomes[1]  # taken while the task ran


def test_two_servers_leave_a_signal_wait_alone_until_a_signal_comes(procs, tmp_path, pg_url):  # noqa: F811
    # the servers' poll for ready executions must not grant, again and again, one that can
    # only go on when a signal comes (each grant a replay on a worker, and a new epoch)
    from tests.test_distributed_pg import pg_execution

    _, a = procs.server(store=pg_url, lease_ttl=1.5)
    _, b = procs.server(store=pg_url, lease_ttl=1.5)
    assert upload(a, SIGNAL_WORKFLOWS, "signal_flows.py").status_code == 200
    worker = procs.worker(a, "receiver", concurrency=1)
    eid = httpx.post(f"{a}/workflows/approve/run/async", json=None).json()["execution_id"]
    wait_state(a, eid, {"SCHEDULED"}, 20, worker)
    time.sleep(0.5)
    _, _, epoch = pg_execution(pg_url, eid)
    time.sleep(4.0)  # several polls of both servers
    state, owner, later = pg_execution(pg_url, eid)
    assert (state, owner, later) == ("SCHEDULED", None, epoch)
    r = httpx.post(f"{b}/executions/{eid}/signals/approval", json={"by": "bo"}, timeout=10)
    assert r.status_code == 202, r.text
    done = wait_state(a, eid, {"COMPLETED"}, 30, worker)
    assert done["output"] == "approved by bo"
