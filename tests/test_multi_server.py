"""Several servers on one PostgreSQL database, active-active: real server and worker processes.

Executions are started, cancelled, resumed and followed (SSE and the event WebSocket, from an
offset) through different servers, events written through the other server included; a server
is killed with SIGKILL mid-run and its workers, leases and executions move to the other with
nothing acknowledged lost and no completed task run again; a durable sleep fires exactly once
with two servers up. Task bodies note their starts in side files, so "ran once" is counted.
"""

from __future__ import annotations

import collections
import json
import threading
import time

import httpx
import pytest
import websocket

from tests.conftest_net import (
    WORKFLOWS,
    lines,
    procs,  # noqa: F401 - fixture
    status,
    upload,
    wait_for,
    wait_state,
)
from tests.test_distributed_pg import pg_events, pg_execution

pytestmark = pytest.mark.slow

TTL = 1.5

EXTRA = """

@workflow
async def napper(ctx):
    await sleep(ctx.input["seconds"])
    return await step(ctx.input["log"], 0, 0.0)
"""


def run(url: str, name: str, value, mode: str = "sync", **params) -> httpx.Response:
    return httpx.post(f"{url}/workflows/{name}/run/{mode}", json=value, params=params, timeout=60)


def start_chain(url: str, log, n: int = 10, seconds: float = 0.15) -> str:
    body = {"n": n, "log": str(log), "seconds": seconds}
    r = run(url, "chain", body, mode="async")
    assert r.status_code == 200, r.text
    return r.json()["execution_id"]


def counts(log_path) -> tuple[collections.Counter, collections.Counter, set[int]]:
    """Task body starts and ends by step index, and the pids of the workers that ran them."""
    starts, dones, pids = collections.Counter(), collections.Counter(), set()
    for kind, i, pid in lines(log_path):
        (starts if kind == "start" else dones)[int(i)] += 1
        pids.add(int(pid))
    return starts, dones, pids


def ws_events(url: str, eid: str, after: int) -> list[dict]:
    """Every event the WebSocket stream of ``url`` sends from offset ``after`` until it closes."""
    ws_url = url.replace("http://", "ws://") + f"/executions/{eid}/events?from={after}"
    ws = websocket.create_connection(ws_url, timeout=60)
    got = []
    try:
        while True:
            try:
                message = ws.recv()
            except websocket.WebSocketConnectionClosedException:
                break
            if not message:
                break
            got.append(json.loads(message))
    finally:
        ws.close()
    return got


def sse_run(url: str, name: str, body) -> list[tuple[str, dict]]:
    """``run/stream`` through ``url``: (event kind, data) for each Server-Sent Event."""
    out, kind, data = [], "message", []
    with httpx.stream(
        "POST", f"{url}/workflows/{name}/run/stream", json=body, timeout=60
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "":
                if data:
                    out.append((kind, json.loads("\n".join(data))))
                kind, data = "message", []
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
    return out


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; returns a function giving its result (or raising)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result():
        thread.join(90)
        assert not thread.is_alive(), "stream did not end"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def stored_seqs(pg_url: str, eid: str) -> list[int]:
    return [e[0] for e in pg_events(pg_url, eid)]


def test_two_servers_serve_one_database(procs, tmp_path, pg_url):  # noqa: F811
    a, url_a = procs.server(store=pg_url, lease_ttl=TTL)
    b, url_b = procs.server(store=pg_url, lease_ttl=TTL)
    c, url_c = procs.server(store=pg_url, lease_ttl=TTL)  # no worker at all
    wa = procs.worker(url_a, "wa")
    wb = procs.worker(url_b, "wb")
    assert upload(url_a).status_code == 200
    # the workflows uploaded through A are there on B and C
    assert run(url_c, "hello", 5).json()["output"] == {"doubled": 10}  # C has no worker

    # two chains started through A at once: one runs on A's worker, the other on B's
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    eids = [start_chain(url_a, log, n=6, seconds=0.2) for log in logs]
    wait_for(lambda: all(counts(log)[1].total() >= 1 for log in logs), 30, "both running")
    # followed through the other servers, from an offset, while the events are written
    pairs = zip((url_b, url_c), eids, strict=True)
    followers = [in_thread(ws_events, url, eid, 2) for url, eid in pairs]
    for eid in eids:
        assert wait_state(url_b, "chain", eid, {"COMPLETED", "FAILED"}, 60)["state"] == (
            "COMPLETED"
        )
    pids = set()
    for log in logs:
        starts, dones, ran_on = counts(log)
        assert set(dones) == set(range(6)) and all(n == 1 for n in starts.values())
        pids |= ran_on
    assert pids == {wa.pid, wb.pid}, "an execution started through A ran on B's worker"
    for follow, eid in zip(followers, eids, strict=True):
        got = follow()
        assert [e["id"] for e in got] == stored_seqs(pg_url, eid)[2:]
        assert got[-1]["type"] == "WORKFLOW_COMPLETED"

    # run/stream (SSE) through C, which has no worker: every event comes from another server
    messages = sse_run(url_c, "chain", {"n": 3, "log": str(tmp_path / "sse.log"), "seconds": 0})
    summary = messages[-1][1]
    assert summary["state"] == "COMPLETED" and summary["output"] == 0 + 1 + 4
    streamed = [m["id"] for k, m in messages if k == "message"]
    assert streamed == stored_seqs(pg_url, summary["execution_id"])

    # cancel through the server the running worker is not connected to
    log = tmp_path / "long.log"
    eid = start_chain(url_c, log, n=100, seconds=0.1)
    wait_for(lambda: counts(log)[1].total() >= 2, 30, "long chain running")
    (pid,) = counts(log)[2]
    other = url_b if pid == wa.pid else url_a
    r = httpx.post(f"{other}/executions/{eid}/cancel", timeout=10)
    assert r.status_code == 200, r.text
    done = wait_state(url_c, "chain", eid, {"CANCELLED", "COMPLETED", "FAILED"}, 30)
    assert done["state"] == "CANCELLED"
    types = [e[1] for e in pg_events(pg_url, eid)]
    assert types[-1] == "WORKFLOW_CANCELLED" and types.count("WORKFLOW_CANCELLED") == 1
    assert counts(log)[1].total() < 50  # it stopped, it did not run to the end

    # paused through A, resumed through B, settled (run/sync) through C
    paused = run(url_a, "asker", None).json()
    assert paused["state"] == "PAUSED"
    r = httpx.post(f"{url_b}/workflows/asker/resume/{paused['execution_id']}", json="yes")
    assert r.status_code == 200, r.text
    done = wait_state(url_c, "asker", paused["execution_id"], {"COMPLETED"}, 30)
    assert done["output"] == {"answer": "yes"}
    # nothing is leased any more, and no process died
    assert httpx.get(f"{url_a}/health").json()["status"] == "ok"
    for proc in (a, b, c, wa, wb):
        assert proc.popen.poll() is None, proc.log()[-2000:]


def test_kill9_of_a_server_mid_run_moves_everything_to_the_other(
    procs, tmp_path, pg_url  # noqa: F811
):
    a, url_a = procs.server(store=pg_url, lease_ttl=TTL)
    b, url_b = procs.server(store=pg_url, lease_ttl=TTL)
    # each worker prefers a different server and fails over to the other
    w1 = procs.worker([url_a, url_b], "w1", concurrency=2)
    w2 = procs.worker([url_b, url_a], "w2", concurrency=2)
    assert upload(url_b).status_code == 200
    logs = [tmp_path / f"chain{i}.log" for i in range(4)]
    eids = [start_chain(url_b if i % 2 else url_a, log) for i, log in enumerate(logs)]
    wait_for(lambda: all(counts(log)[1].total() >= 2 for log in logs), 40, "chains running")
    a.kill9()
    acked = {eid: pg_events(pg_url, eid) for eid in eids}
    for eid in eids:
        done = wait_state(url_b, "chain", eid, {"COMPLETED", "FAILED"}, 60, w1)
        assert done["state"] == "COMPLETED" and done["output"] == sum(i * i for i in range(10))
    for eid, log in zip(eids, logs, strict=True):
        final = pg_events(pg_url, eid)
        assert final[: len(acked[eid])] == acked[eid]  # every acknowledged event is still there
        assert [e[0] for e in final] == list(range(1, len(final) + 1))
        starts, dones, _ = counts(log)
        assert set(dones) == set(range(10))
        for _, kind, call_id, _ in acked[eid]:
            if kind == "TASK_COMPLETED":  # a completed task never runs again
                assert starts[int(call_id.split("#")[1])] == 1, (call_id, starts)
        assert pg_execution(pg_url, eid)[0] == "COMPLETED"
    # the executions A's worker held were taken over: reserved (epoch + 1), granted again
    assert max(pg_execution(pg_url, eid)[2] for eid in eids) >= 3
    ws_b = url_b.replace("http://", "ws://") + "/workers/connect"
    wait_for(lambda: f"serving executions from {ws_b}" in w1.log(), 10, "w1 on B", w1)
    # B serves new work with both workers
    assert run(url_b, "hello", 4).json()["output"] == {"doubled": 8}
    assert w1.popen.poll() is None and w2.popen.poll() is None


def test_a_durable_sleep_fires_once_with_two_servers(procs, tmp_path, pg_url):  # noqa: F811
    _, url_a = procs.server(store=pg_url, lease_ttl=TTL)
    _, url_b = procs.server(store=pg_url, lease_ttl=TTL)
    procs.worker(url_a, "wa", concurrency=4)
    procs.worker(url_b, "wb", concurrency=4)
    assert upload(url_a, WORKFLOWS + EXTRA).status_code == 200
    logs = [tmp_path / f"nap{i}.log" for i in range(6)]
    eids = []
    for i, log in enumerate(logs):
        body = {"seconds": 1.5, "log": str(log)}
        r = run(url_a if i % 2 else url_b, "napper", body, mode="async")
        eids.append(r.json()["execution_id"])
    t0 = time.monotonic()
    for eid in eids:
        done = wait_state(url_a, "napper", eid, {"COMPLETED", "FAILED"}, 30)
        assert done["state"] == "COMPLETED" and done["output"] == 0
    assert time.monotonic() - t0 < 15
    time.sleep(2 * TTL)  # a second firing would have started by now
    for eid, log in zip(eids, logs, strict=True):
        starts, dones, _ = counts(log)
        assert starts == {0: 1} and dones == {0: 1}, (eid, starts)
        events = pg_events(pg_url, eid)
        steps = [e for e in events if e[2].startswith("step#") and e[1] == "TASK_STARTED"]
        assert len(steps) == 1
        assert [e[1] for e in events].count("WORKFLOW_COMPLETED") == 1
    for eid in eids:
        assert status(url_b, "napper", eid)["state"] == "COMPLETED"


def test_a_sleep_released_through_a_killed_server_fires_on_the_other(
    procs, tmp_path, pg_url  # noqa: F811
):
    a, url_a = procs.server(store=pg_url, lease_ttl=TTL)
    _, url_b = procs.server(store=pg_url, lease_ttl=TTL)
    worker = procs.worker([url_a, url_b], "w", concurrency=4)  # on A first
    assert upload(url_a, WORKFLOWS + EXTRA).status_code == 200
    logs = [tmp_path / f"nap{i}.log" for i in range(3)]
    eids = [
        run(url_a, "napper", {"seconds": 3.0, "log": str(log)}, mode="async").json()[
            "execution_id"
        ]
        for log in logs
    ]
    # released to sleep through A (the wake time is in the database; A's timer in A's memory)
    for eid in eids:
        wait_for(lambda eid=eid: pg_execution(pg_url, eid)[0] == "SCHEDULED", 20, "sleeping")
    a.kill9()
    for eid in eids:
        done = wait_state(url_b, "napper", eid, {"COMPLETED", "FAILED"}, 30, worker)
        assert done["state"] == "COMPLETED" and done["output"] == 0
    time.sleep(2 * TTL)
    for eid, log in zip(eids, logs, strict=True):
        starts, dones, _ = counts(log)
        assert starts == {0: 1} and dones == {0: 1}, (eid, starts)
