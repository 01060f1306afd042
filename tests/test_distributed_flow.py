"""Issue 9 end to end with real server and worker processes on 127.0.0.1: backpressure instead
of drops (item 1), size limits where values are made (2), session races that never escape the
session (3) and one module per source version per worker (7)."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio_websocket

from flux.net import protocol as p
from flux.runtime import codec
from tests.conftest_net import (
    lines,
    procs,  # noqa: F401 - fixture
    status,
    upload,
    wait_state,
)

pytestmark = pytest.mark.slow

FLOWS = """
import os
import time

import anyio

from flux import task, workflow


def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\\n")


if os.environ.get("FLUX_TEST_IMPORT_LOG"):
    note(os.environ["FLUX_TEST_IMPORT_LOG"], f"import {os.getpid()}")
    time.sleep(0.5)  # a slow top level: two first leases at once both wait for it


@task.with_options(cache=True)
async def square(x):
    return x * x


@workflow
async def cached_map(ctx):
    values = await square.map(range(ctx.input["n"]))
    return sum(values)


@task
async def blob(log, size):
    note(log, f"blob {size}")
    return "x" * size


@workflow
async def big_value(ctx):
    return len(await blob(ctx.input["log"], ctx.input["size"]))


@task
async def piece(size):
    return "y" * size


@workflow
async def many_values(ctx):
    values = await piece.map([ctx.input["size"]] * ctx.input["n"])
    return sum(len(v) for v in values)


class Boom(Exception):
    pass


@task
async def explode():
    await anyio.sleep(0.05)
    raise Boom("kaboom")


@workflow
async def catcher(ctx):
    try:
        await explode()
    except Boom:
        return "caught"
    return "not caught"


@task
async def double(x):
    return x * 2


@workflow
async def hello(ctx):
    return await double(ctx.input)
"""


def start(url: str, name: str, value) -> str:
    r = httpx.post(f"{url}/workflows/{name}/run/async", json=value, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["execution_id"]


def test_a_burst_of_cached_tasks_waits_for_room_instead_of_dropping(procs):  # noqa: F811
    # a 5 s ttl: a heartbeat starved on a loaded machine expires a lease, which is no drop
    server, url = procs.server(str(procs.tmp_path / "flux.db"), lease_ttl=5.0)
    worker = procs.worker(url, "burst", concurrency=1)
    assert upload(url, FLOWS, "flows.py").status_code == 200
    n = 3000
    expected = sum(i * i for i in range(n))
    first = start(url, "cached_map", {"n": n})  # 3000 cache misses, bodies, puts
    done = wait_state(url, "cached_map", first, {"COMPLETED", "FAILED"}, 120, worker)
    assert done["state"] == "COMPLETED" and done["output"] == expected, done
    # every value now cached: 3000 lookups answered at once, 3000 acks
    second = start(url, "cached_map", {"n": n})
    done = wait_state(url, "cached_map", second, {"COMPLETED", "FAILED"}, 120, worker)
    assert done["state"] == "COMPLETED" and done["output"] == expected, done
    events = status(url, "cached_map", second, detailed=True)["events"]
    assert sum(e["type"] == "TASK_COMPLETED" for e in events) == n
    for log in (server.log(), worker.log()):
        assert "WouldBlock" not in log and "expired" not in log and "Traceback" not in log
    assert "rejected" not in server.log()  # one lease per execution: never lost, never taken


def test_a_value_over_the_frame_limit_fails_its_task_once(procs):  # noqa: F811
    limit = 256 * 1024
    server, url = procs.server(
        str(procs.tmp_path / "flux.db"),
        lease_ttl=2.0,
        extra=("--max-frame-size", str(limit)),
    )
    worker = procs.worker(url, "sizes", concurrency=2)
    assert upload(url, FLOWS, "flows.py").status_code == 200
    log = str(procs.tmp_path / "blob.log")
    eid = start(url, "big_value", {"log": log, "size": 300_000})
    done = wait_state(url, "big_value", eid, {"COMPLETED", "FAILED"}, 30, worker)
    assert done["state"] == "FAILED", done
    message = done["output"]["message"]
    assert "blob" in message and "blob#0" in message  # the task, by name and call id
    assert "over the limit of" in message and str(limit - p.FRAME_ENVELOPE) in message
    assert "300" in message  # the size, 300 kB and some bytes
    events = status(url, "big_value", eid, detailed=True)["events"]
    assert [e["type"] for e in events] == [
        "WORKFLOW_STARTED",
        "TASK_STARTED",
        "TASK_FAILED",
        "WORKFLOW_FAILED",
    ]
    # the body ran once: no session was closed, nothing was leased again
    trio.run(trio.sleep, 2.5)  # past a lease ttl: a loop of re-leases would show by now
    assert lines(log) == [["blob", "300000"]]
    assert "rejected" not in server.log() and "too-large" not in server.log()
    # many values that each fit, far more than one frame together: batches are split
    many = start(url, "many_values", {"log": log, "size": 40_000, "n": 30})
    done = wait_state(url, "many_values", many, {"COMPLETED", "FAILED"}, 30, worker)
    assert done["state"] == "COMPLETED" and done["output"] == 30 * 40_000, done
    assert "too-large" not in server.log() and "closed" not in worker.log()


async def _raw_worker(url: str, *frames_after_lease: bytes) -> p.Lease:
    """Connect as a worker, take one lease, send ``frames_after_lease`` back to back."""
    ws_url = url.replace("http://", "ws://") + "/workers/connect"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        session = p.WorkerSession()
        await ws.send_message(session.send(p.Hello(name="raw", token=None, capacity=1)))
        assert isinstance(session.receive_bytes(await ws.get_message()), p.Welcome)
        with trio.fail_after(20):
            lease = session.receive_bytes(await ws.get_message())
        assert isinstance(lease, p.Lease)
        for frame in frames_after_lease:
            await ws.send_message(frame(lease) if callable(frame) else frame)
        with trio.move_on_after(2):
            try:
                while True:
                    await ws.get_message()  # until the server closes the session
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason.code == 1002  # closed for the garbage, nothing else
        return lease


def test_an_events_batch_then_garbage_never_escapes_the_session(procs):  # noqa: F811
    server, url = procs.server(str(procs.tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, FLOWS, "flows.py").status_code == 200
    eid = start(url, "hello", 21)

    def events(lease: p.Lease) -> bytes:
        seq = lease.history[-1]["seq"] + 1
        started = {
            "seq": seq,
            "type": "TASK_STARTED",
            "call_id": "double#0",
            "name": "double",
            "value": codec.encode({"args": [21], "kwargs": {}, "digest": None}),
            "time": None,
        }
        msg = p.Events(execution_id=eid, epoch=lease.epoch, batch=1, events=[started])
        return p.to_frame(msg)

    for _ in range(3):  # the race is a race: try it a few times
        trio.run(_raw_worker, url, events, b"\xc1 garbage")
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert status(url, "hello", eid)["state"] in ("RUNNING", "SCHEDULED")
    log = server.log()
    assert "Traceback" not in log and "FAILED" not in log and "internal" not in log
    # a real worker gets it once the raw one's lease expires, and finishes it
    worker = procs.worker(url, "real", concurrency=1)
    done = wait_state(url, "hello", eid, {"COMPLETED", "FAILED"}, 30, worker)
    assert done["state"] == "COMPLETED" and done["output"] == 42, done


def test_two_first_leases_of_one_source_load_it_once(procs):  # noqa: F811
    server, url = procs.server(str(procs.tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, FLOWS, "flows.py").status_code == 200
    ids = [start(url, "catcher", None) for _ in range(2)]  # queued: no worker yet
    imports = procs.tmp_path / "imports.log"
    procs.env["FLUX_TEST_IMPORT_LOG"] = str(imports)
    worker = procs.worker(url, "loader", concurrency=2)  # both leased at once
    for eid in ids:
        done = wait_state(url, "catcher", eid, {"COMPLETED", "FAILED"}, 30, worker)
        # the recorded Boom the workflow receives is the Boom its own module defines
        assert done["state"] == "COMPLETED" and done["output"] == "caught", done
    assert len(lines(imports)) == 1, lines(imports)
