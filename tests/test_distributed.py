"""End to end: a real server and real workers on 127.0.0.1, driven over HTTP.

Failure tests kill processes with SIGKILL and check the store and the tasks' own logs afterwards.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import httpx
import pytest
import trio
import trio_websocket

from flux.net import protocol as p
from flux.runtime import codec
from tests.conftest_net import (
    Procs,
    committed_events,
    lines,
    procs,  # noqa: F401 - fixture
    status,
    upload,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.slow

FRAME_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One server (small frame limit, 2 s leases) and one worker with concurrency 1."""
    tmp = tmp_path_factory.mktemp("cluster")
    cluster_procs = Procs(tmp)
    try:
        server, url = cluster_procs.server(
            str(tmp / "flux.db"), lease_ttl=2.0, extra=("--max-frame-size", str(FRAME_LIMIT))
        )
        worker = cluster_procs.worker(url, "solo", concurrency=1)
        assert upload(url).status_code == 200
        yield url, server, worker, tmp
    finally:
        cluster_procs.close()


def run(url: str, name: str, value, mode: str = "sync", **params) -> httpx.Response:
    return httpx.post(f"{url}/workflows/{name}/run/{mode}", json=value, params=params, timeout=30)


# ---------------------------------------------------------------------------- HTTP API


def test_upload_list_and_get(cluster):
    url, *_ = cluster
    names = [w["name"] for w in httpx.get(url + "/workflows").json()]
    assert {"chain", "hello", "asker", "parent", "child", "sleeper"} <= set(names)
    one = httpx.get(url + "/workflows/hello").json()
    assert one["name"] == "hello" and "async def hello" in one["source"]
    again = upload(url).json()
    assert {w["name"]: w["version"] for w in again}["hello"] == one["version"] + 1
    bad = upload(url, "from flux import workflow\n\n@workflow\nasync def x(ctx)\n    pass\n")
    assert bad.status_code == 400
    assert bad.json()["error"] == "bad-source" and "line 4" in bad.json()["detail"]
    none = upload(url, "x = 1\n")
    assert none.status_code == 400 and "no @workflow" in none.json()["detail"]
    missing = httpx.post(url + "/workflows", data={"other": "x"})
    assert missing.status_code == 400 and missing.json()["error"] == "no-file"
    assert httpx.get(url + "/workflows/nope").status_code == 404


def test_run_sync_async_and_status(cluster):
    url, *_ = cluster
    r = run(url, "hello", 21)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"workflow_name", "execution_id", "input", "output", "state"}
    assert body["state"] == "COMPLETED" and body["output"] == {"doubled": 42}
    assert body["input"] == 21 and body["workflow_name"] == "hello"

    a = run(url, "hello", 5, mode="async").json()
    assert a["state"] in ("SCHEDULED", "RUNNING", "COMPLETED")
    done = wait_state(url, "hello", a["execution_id"], {"COMPLETED"}, 20)
    assert done["output"] == {"doubled": 10}
    detailed = status(url, "hello", a["execution_id"], detailed=True)
    types = [e["type"] for e in detailed["events"]]
    assert types == ["WORKFLOW_STARTED", "TASK_STARTED", "TASK_COMPLETED", "WORKFLOW_COMPLETED"]

    null = run(url, "hello", None).json()
    assert null["state"] == "FAILED"  # None * 2: the task fails, the run returns
    failed = run(url, "failing", None).json()
    assert failed["state"] == "FAILED" and "kaboom" in failed["output"]["message"]


def test_http_errors(cluster):
    url, *_ = cluster
    bad = httpx.post(url + "/workflows/hello/run/sync", content=b"{nope", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "bad-json"
    assert "detail" in bad.json()
    unknown = run(url, "nope", 1)
    assert unknown.status_code == 404 and unknown.json()["error"] == "workflow-not-found"
    r = httpx.get(url + "/workflows/hello/status/nope")
    assert r.status_code == 404 and r.json()["error"] == "execution-not-found"
    mode = httpx.post(url + "/workflows/hello/run/later", json=1)
    assert mode.status_code == 404
    big = httpx.post(url + "/workflows/hello/run/sync", content=b"1" * (17 * 1024 * 1024))
    assert big.status_code == 413 and set(big.json()) == {"error", "detail"}
    assert httpx.get(url + "/nowhere").json()["error"] == "not-found"


def test_pause_and_resume_over_http(cluster):
    url, *_ = cluster
    paused = run(url, "asker", None).json()
    assert paused["state"] == "PAUSED"  # run/sync returns on a pause
    eid = paused["execution_id"]
    r = httpx.post(f"{url}/workflows/asker/resume/{eid}", json="yes", timeout=10)
    assert r.status_code == 200
    done = wait_state(url, "asker", eid, {"COMPLETED"}, 20)
    assert done["output"] == {"answer": "yes"}
    again = httpx.post(f"{url}/workflows/asker/resume/{eid}", json="no", timeout=10)
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    # resume and wait in one request
    eid2 = run(url, "asker", None).json()["execution_id"]
    r = httpx.post(
        f"{url}/workflows/asker/resume/{eid2}", json=7, params={"wait": "true"}, timeout=30
    )
    assert r.json()["state"] == "COMPLETED" and r.json()["output"] == {"answer": 7}


def test_subworkflows_with_concurrency_one(cluster):
    url, *_ = cluster
    body = run(url, "parent", 3).json()  # the only worker runs one execution at a time
    assert body["state"] == "COMPLETED" and body["output"] == [6, 12]


def test_long_sleep_releases_the_worker(cluster):
    url, *_ = cluster
    t0 = time.monotonic()
    sleeper = run(url, "sleeper", 1.5, mode="async").json()
    time.sleep(0.3)
    # the sleeping execution gave its slot back: the only worker runs something else
    quick = run(url, "hello", 2).json()
    assert quick["state"] == "COMPLETED" and time.monotonic() - t0 < 1.5
    done = wait_state(url, "sleeper", sleeper["execution_id"], {"COMPLETED"}, 20)
    assert done["output"] == "awake" and time.monotonic() - t0 >= 1.5


def test_task_cache_is_shared_through_the_server(cluster):
    url, _, _, tmp = cluster
    log = tmp / "cache.log"
    first = run(url, "cached", {"log": str(log), "x": 4}).json()
    second = run(url, "cached", {"log": str(log), "x": 4}).json()
    assert first["output"] == second["output"] == 40
    assert len(lines(log)) == 1  # the second execution hit the cache in the store


def test_secrets_reach_tasks_and_nothing_else(cluster):
    url, _, _, tmp = cluster
    env = Procs(tmp).env
    subprocess.run(
        [
            sys.executable,
            "-m",
            "flux.cli",
            "secrets",
            "set",
            "API_KEY",
            "hunter2",
            "--db",
            str(tmp / "flux.db"),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    body = run(url, "secretive", None, detailed="true").json()
    assert body["state"] == "COMPLETED" and body["output"] == 7
    assert "hunter2" not in json.dumps(body)


# ---------------------------------------------------------------------------- bad frames


async def _session(url: str, frames: list[bytes | str]) -> tuple[int | None, str, list]:
    """Send frames on a raw worker socket; return the close code, reason and what came back."""
    received: list = []
    ws_url = url.replace("http://", "ws://") + "/workers/connect"
    async with trio_websocket.open_websocket_url(ws_url, max_message_size=64 << 20) as ws:
        for frame in frames:
            try:
                await ws.send_message(frame)
            except trio_websocket.ConnectionClosed:
                break
        try:
            with trio.fail_after(5):
                while True:
                    received.append(await ws.get_message())
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code, exc.reason.reason or "", received
    return None, "", received


def _hello(**kw) -> bytes:
    return p.to_frame(p.Hello(name=kw.pop("name", "probe"), token=None, capacity=1, **kw))


def test_garbage_and_oversized_frames_leave_the_server_serving(cluster):
    url, server, _, _ = cluster
    cases = {
        "garbage": ([b"\xc1\x00not msgpack at all"], 1002, "bad-frame"),
        "text": (["hello?"], 1003, "unsupported-data"),
        "not a map": ([codec.encode([1, 2, 3])], 1002, "bad-frame"),
        "unknown type": ([codec.encode({"type": "launch-missiles"})], 1002, "unknown-type"),
        "oversized": ([b"\x00" * (FRAME_LIMIT + 10)], 1009, "too-large"),
        "wrong version": (
            [
                codec.encode(
                    {
                        "type": "hello",
                        "protocol_version": 99,
                        "name": "x",
                        "token": None,
                        "capacity": 1,
                    }
                )
            ],
            1002,
            "version-mismatch",
        ),
        "events before hello": (
            [p.to_frame(p.Events(execution_id="x", epoch=1, batch=1, events=[]))],
            1002,
            "unexpected-message",
        ),
        "garbage after hello": ([_hello(), b"\xff\xff\xff"], 1002, "bad-frame"),
        "bad field after hello": (
            [_hello(), codec.encode({"type": "heartbeat", "leases": 3, "running": 0})],
            1002,
            "bad-field",
        ),
    }
    for what, (frames, code, slug) in cases.items():
        got_code, reason, received = trio.run(_session, url, frames)
        assert got_code == code, (what, got_code, reason)
        assert reason.startswith(slug), (what, reason)
        errors = [p.from_frame(m) for m in received if isinstance(m, bytes)]
        assert errors and isinstance(errors[-1], p.Error) and errors[-1].code == slug, what
    assert server.popen.poll() is None
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["workers"] == 1
    assert run(url, "hello", 4).json()["output"] == {"doubled": 8}


# ---------------------------------------------------------------------------- failures


def _counts(log_path) -> tuple[collections.Counter, collections.Counter]:
    starts, dones = collections.Counter(), collections.Counter()
    for kind, i, _pid in lines(log_path):
        (starts if kind == "start" else dones)[int(i)] += 1
    return starts, dones


def test_kill_worker_mid_workflow_second_worker_finishes(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=1.5)
    first = procs.worker(url, "first")
    assert upload(url).status_code == 200
    log = tmp_path / "tasks.log"
    eid = run(url, "chain", {"n": 10, "log": str(log), "seconds": 0.15}, mode="async").json()[
        "execution_id"
    ]
    wait_for(lambda: _counts(log)[1].total() >= 4, 30, "four tasks done", first)
    first.kill9()
    killed_at = time.monotonic()
    before = committed_events(str(tmp_path / "flux.db"), eid)
    completed_before = {c for _, t, c, _ in before if t == "TASK_COMPLETED"}
    second = procs.worker(url, "second")
    done = wait_state(url, "chain", eid, {"COMPLETED", "FAILED"}, 30, second)
    assert done["state"] == "COMPLETED"
    assert done["output"] == sum(i * i for i in range(10))
    starts, dones = _counts(log)
    assert set(dones) == set(range(10))
    rerun = [i for i, n in starts.items() if n > 1]
    assert len(rerun) <= 1, starts  # at most the task in flight ran again
    for call_id in completed_before:
        assert starts[int(call_id.split("#")[1])] == 1, (call_id, starts)
    pids = {pid for _, _, pid in lines(log)}
    assert pids == {str(first.pid), str(second.pid)}
    assert time.monotonic() - killed_at < 1.5 + 10


def test_kill_server_mid_run_nothing_acknowledged_is_lost(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "flux.db")
    server, url = procs.server(db, lease_ttl=1.5)
    worker = procs.worker(url, "steady")
    assert upload(url).status_code == 200
    log = tmp_path / "tasks.log"
    eid = run(url, "chain", {"n": 10, "log": str(log), "seconds": 0.15}, mode="async").json()[
        "execution_id"
    ]
    wait_for(lambda: _counts(log)[1].total() >= 4, 30, "four tasks done", worker)
    server.kill9()
    acked = committed_events(db, eid)  # a superset of what the worker got acks for
    assert any(t == "TASK_COMPLETED" for _, t, _, _ in acked)
    port = int(url.rsplit(":", 1)[1])
    _, url = procs.server(db, port, lease_ttl=1.5)
    done = wait_state(url, "chain", eid, {"COMPLETED", "FAILED"}, 40, worker)
    assert done["state"] == "COMPLETED" and done["output"] == sum(i * i for i in range(10))
    final = committed_events(db, eid)
    assert final[: len(acked)] == acked  # every committed event is still there, unchanged
    starts, _ = _counts(log)
    for _, t, call_id, _ in acked:
        if t == "TASK_COMPLETED":
            assert starts[int(call_id.split("#")[1])] == 1
    assert worker.popen.poll() is None  # the worker reconnected by itself


def test_two_workers_never_run_the_same_lease(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    a = procs.worker(url, "a", concurrency=4)
    b = procs.worker(url, "b", concurrency=4)
    assert upload(url).status_code == 200
    logs = [tmp_path / f"run-{i}.log" for i in range(16)]
    ids = [
        run(url, "chain", {"n": 5, "log": str(path), "seconds": 0.01}, mode="async").json()[
            "execution_id"
        ]
        for path in logs
    ]
    for eid in ids:
        assert wait_state(url, "chain", eid, {"COMPLETED"}, 60)["output"] == 30
    used = set()
    for path in logs:
        entries = lines(path)
        assert len(entries) == 10  # every task body ran exactly once
        pids = {pid for _, _, pid in entries}
        assert len(pids) == 1  # one execution, one worker
        used |= pids
    assert used == {str(a.pid), str(b.pid)}  # and both workers got work


def test_graceful_stop_gives_executions_back(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=30.0)
    first = procs.worker(url, "first")
    assert upload(url).status_code == 200
    log = tmp_path / "tasks.log"
    eid = run(url, "chain", {"n": 6, "log": str(log), "seconds": 0.2}, mode="async").json()[
        "execution_id"
    ]
    wait_for(lambda: _counts(log)[1].total() >= 2, 30, "two tasks done", first)
    assert first.terminate() == 0 or first.popen.returncode is not None
    second = procs.worker(url, "second")
    t0 = time.monotonic()
    done = wait_state(url, "chain", eid, {"COMPLETED"}, 30, second)
    assert done["output"] == sum(i * i for i in range(6))
    assert time.monotonic() - t0 < 10  # released at once, not after the 30 s lease ttl
    assert server.terminate() == 0
