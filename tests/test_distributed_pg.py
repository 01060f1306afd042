"""End to end on PostgreSQL: real server and worker processes, the store a PostgreSQL database.

These tests run one server on PostgreSQL through pauses, durable sleeps and a kill -9, and a
worker failing over between two servers on one database (several servers serving at once:
tests/test_multi_server.py).
"""

from __future__ import annotations

import collections
import time

import httpx
import psycopg
import pytest

from tests.conftest_net import (
    lines,
    procs,  # noqa: F401 - fixture
    status,
    upload,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.slow


def run(url: str, name: str, value, mode: str = "sync", **params) -> httpx.Response:
    return httpx.post(f"{url}/workflows/{name}/run/{mode}", json=value, params=params, timeout=30)


def pg_events(store: str, execution_id: str) -> list[tuple]:
    """The events committed so far, read with a connection of the test's own."""
    with psycopg.connect(store, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, type, call_id, value FROM events WHERE execution_id = %s ORDER BY seq",
            (execution_id,),
        ).fetchall()
    return [
        (seq, kind, call, value if value is None else bytes(value))
        for seq, kind, call, value in rows
    ]


def pg_execution(store: str, execution_id: str) -> tuple:
    with psycopg.connect(store, autocommit=True) as conn:
        return conn.execute(
            "SELECT state, lease_owner, lease_epoch FROM executions WHERE execution_id = %s",
            (execution_id,),
        ).fetchone()


def counts(log_path) -> tuple[collections.Counter, collections.Counter]:
    starts, dones = collections.Counter(), collections.Counter()
    for kind, i, _pid in lines(log_path):
        (starts if kind == "start" else dones)[int(i)] += 1
    return starts, dones


def start_chain(url: str, log, n: int = 10, seconds: float = 0.15) -> str:
    body = {"n": n, "log": str(log), "seconds": seconds}
    return run(url, "chain", body, mode="async").json()["execution_id"]


def check_nothing_acknowledged_lost(store, eid, acked, log) -> None:
    final = pg_events(store, eid)
    assert final[: len(acked)] == acked  # every committed event is still there, unchanged
    assert [e[0] for e in final] == list(range(1, len(final) + 1))
    starts, dones = counts(log)
    assert set(dones) == set(range(10))
    for _, kind, call_id, _ in acked:
        if kind == "TASK_COMPLETED":  # a completed task never runs again
            assert starts[int(call_id.split("#")[1])] == 1, (call_id, starts)


def test_one_server_on_postgres_end_to_end(procs, tmp_path, pg_url):  # noqa: F811
    server, url = procs.server(store=pg_url, lease_ttl=1.5)
    worker = procs.worker(url, "pg")
    assert upload(url).status_code == 200
    body = run(url, "hello", 21).json()
    assert body["state"] == "COMPLETED" and body["output"] == {"doubled": 42}
    # pause, resume
    paused = run(url, "asker", None).json()
    assert paused["state"] == "PAUSED"
    eid = paused["execution_id"]
    assert pg_execution(pg_url, eid)[0] == "PAUSED"
    r = httpx.post(f"{url}/workflows/asker/resume/{eid}", json="yes", timeout=10)
    assert r.status_code == 200
    assert wait_state(url, "asker", eid, {"COMPLETED"}, 20)["output"] == {"answer": "yes"}
    # a durable sleep: the worker gives the execution back while it sleeps
    t0 = time.monotonic()
    sleeper = run(url, "sleeper", 1.5, mode="async").json()["execution_id"]
    time.sleep(0.3)
    assert run(url, "hello", 2).json()["state"] == "COMPLETED"
    done = wait_state(url, "sleeper", sleeper, {"COMPLETED"}, 20)
    assert done["output"] == "awake" and time.monotonic() - t0 >= 1.5
    types = [e[1] for e in pg_events(pg_url, sleeper)]
    assert types.count("WORKFLOW_COMPLETED") == 1
    # kill -9 of the server mid-run, restarted on the same database: nothing acknowledged lost
    log = tmp_path / "tasks.log"
    eid = start_chain(url, log)
    wait_for(lambda: counts(log)[1].total() >= 4, 30, "four tasks done", worker)
    server.kill9()
    acked = pg_events(pg_url, eid)  # a superset of what the worker got acks for
    assert any(kind == "TASK_COMPLETED" for _, kind, _, _ in acked)
    port = int(url.rsplit(":", 1)[1])
    _, url = procs.server(store=pg_url, port=port, lease_ttl=1.5)
    done = wait_state(url, "chain", eid, {"COMPLETED", "FAILED"}, 40, worker)
    assert done["state"] == "COMPLETED" and done["output"] == sum(i * i for i in range(10))
    check_nothing_acknowledged_lost(pg_url, eid, acked, log)
    assert worker.popen.poll() is None  # the worker reconnected by itself
    # what was there before the crash is still served
    assert status(url, "asker", paused["execution_id"])["state"] == "COMPLETED"


def test_worker_fails_over_to_the_next_server(procs, tmp_path, pg_url):  # noqa: F811
    a, url_a = procs.server(store=pg_url, lease_ttl=1.5)
    b, url_b = procs.server(store=pg_url, lease_ttl=1.5)
    worker = procs.worker([url_a, url_b], "both")
    ws_a, ws_b = (u.replace("http://", "ws://") + "/workers/connect" for u in (url_a, url_b))
    wait_for(  # the first that answers
        lambda: f"serving executions from {ws_a}" in worker.log(), 10, "worker on A", worker
    )
    assert upload(url_a).status_code == 200
    log = tmp_path / "tasks.log"
    eid = start_chain(url_a, log)
    wait_for(lambda: counts(log)[1].total() >= 3, 30, "three tasks done", worker)
    a.kill9()
    acked = pg_events(pg_url, eid)
    wait_for(
        lambda: f"serving executions from {ws_b}" in worker.log(), 20, "failover to B", worker
    )
    # B serves the worker at once: new executions run through it
    assert run(url_b, "hello", 4).json()["output"] == {"doubled": 8}
    # B takes over the lease A held once it expires in the store (active-active servers:
    # tests/test_multi_server.py has the rest), and the worker, now on B, finishes it.
    done = wait_state(url_b, "chain", eid, {"COMPLETED", "FAILED"}, 40, worker)
    assert done["state"] == "COMPLETED" and done["output"] == sum(i * i for i in range(10))
    check_nothing_acknowledged_lost(pg_url, eid, acked, log)
    assert worker.log().count(f"serving executions from {ws_b}") >= 1
    assert worker.popen.poll() is None


def test_worker_takes_comma_separated_server_urls_from_the_environment(
    procs, tmp_path  # noqa: F811
):
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=1.5)
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    procs.env["FLUX_SERVER_URL"] = f"{dead}, {url}"
    worker = procs.worker([], "env")
    assert "connection to ws://127.0.0.1:9/workers/connect lost or refused" in worker.log()
    serving = f"serving executions from {url.replace('http', 'ws')}/workers/connect"
    wait_for(lambda: serving in worker.log(), 10, "worker on the second URL", worker)
    assert upload(url).status_code == 200
    assert run(url, "hello", 1).json()["output"] == {"doubled": 2}


def test_server_urls_are_split_and_checked():
    from flux.net.worker import server_urls

    assert server_urls("http://a:1") == ["http://a:1"]
    assert server_urls("http://a:1, http://b:2,,") == ["http://a:1", "http://b:2"]
    assert server_urls(["http://a:1,http://b:2", "http://a:1", "http://c:3"]) == [
        "http://a:1",
        "http://b:2",
        "http://c:3",
    ]
    with pytest.raises(ValueError, match="no server URL"):
        server_urls(" , ")
    with pytest.raises(ValueError, match="no server URL"):
        server_urls([])
    with pytest.raises(ValueError, match="must be a string"):
        server_urls([None])
