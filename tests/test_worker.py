"""Server and worker in one trio process: ``serve_server``/``serve_worker`` with ``task_status``,
port 0, a real WebSocket session, and the worker's reaction to a lease taken away."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import httpx
import pytest
import trio

from flux.net.server import ServerAddress, ServerSettings, create_app, serve_server
from flux.net.worker import Worker, serve_worker, ws_url
from flux.runtime.settings import Settings

SOURCE = """
import anyio
from flux import task, workflow
from flux.tasks import parallel

@task
async def double(x):
    return x * 2

@task
async def slow(path, i):
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    await anyio.sleep(0.3)
    return i

@workflow
async def fan(ctx):
    return sum(await parallel(*[double(i) for i in range(ctx.input)]))

@workflow
async def slowly(ctx):
    return [await slow(ctx.input, i) for i in range(3)]
"""


def test_ws_url():
    assert ws_url("http://h:8000") == "ws://h:8000/workers/connect"
    assert ws_url("https://h/flux/") == "wss://h/flux/workers/connect"
    assert ws_url("h:1") == "ws://h:1/workers/connect"


@pytest.fixture
async def cluster(tmp_path, nursery):
    settings = Settings(
        db_path=str(tmp_path / "flux.db"),
        durability="normal",
        secret_key_file=str(tmp_path / "secret.key"),
    )
    server_settings = ServerSettings(port=0, lease_ttl=1.0)
    app = create_app(settings, server_settings)
    address: ServerAddress = await nursery.start(
        functools.partial(serve_server, settings, server_settings, app=app)
    )
    assert address.port > 0 and address.url.startswith("http://127.0.0.1:")
    worker = Worker("inproc", 4)
    start_worker = functools.partial(serve_worker, None, address.url, worker=worker)
    worker_id = await nursery.start(start_worker)
    assert worker_id.startswith("inproc-") and worker.worker_id == worker_id
    async with httpx.AsyncClient(base_url=address.url, timeout=30) as client:
        r = await client.post("/workflows", files={"file": ("w.py", SOURCE.encode())})
        assert r.status_code == 200
        yield client, app.extensions["flux"].dispatcher
    nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_in_process_run(cluster):
    client, _ = cluster
    body = (await client.post("/workflows/fan/run/sync", json=10)).json()
    assert body["state"] == "COMPLETED" and body["output"] == 90
    health = (await client.get("/health")).json()
    assert health["workers"] == 1 and health["leases"] == 0


@pytest.mark.trio
async def test_parallel_tasks_batch_their_events(cluster):
    client, _ = cluster
    body = (await client.post("/workflows/fan/run/sync?detailed=true", json=30)).json()
    assert body["output"] == sum(2 * i for i in range(30))
    types = [e["type"] for e in body["events"]]
    assert types.count("TASK_COMPLETED") == 30 and types[-1] == "WORKFLOW_COMPLETED"
    assert [e["id"] for e in body["events"]] == list(range(1, len(types) + 1))


@pytest.mark.trio
async def test_worker_stops_a_run_whose_lease_is_taken(cluster, tmp_path):
    """The server expires the lease under the worker's feet: the worker is told (reject), stops
    the run without writing, and the execution completes under the next epoch."""
    client, dispatcher = cluster
    log = tmp_path / "slow.log"
    eid = (await client.post("/workflows/slowly/run/async", json=str(log))).json()["execution_id"]
    with trio.fail_after(10):
        while not log.exists():
            await trio.sleep(0.01)
    lease = dispatcher._leases[eid]
    dispatcher._expire(lease, trio.current_time())  # as if its ttl had passed
    assert dispatcher.lease_of(eid) is None or dispatcher.lease_of(eid)[1] != lease.epoch
    with trio.fail_after(20):
        while True:
            body = (await client.get(f"/workflows/slowly/status/{eid}?detailed=true")).json()
            if body["state"] == "COMPLETED":
                break
            await trio.sleep(0.05)
    assert body["output"] == [0, 1, 2]
    rec = await dispatcher.store.get_execution(eid)
    assert rec.lease_epoch >= 2


# ---------------------------------------------------------------------------- issue 9

QUIET_SOURCE = """
from flux import task, workflow

@task
async def one():
    return 1

@workflow
async def quiet(ctx):
    return await one()

@task
async def wide():
    return "x" * 10_000

@workflow
async def big(ctx):
    return len(await wide())
"""


async def _fake_server(
    nursery, answer: bool, seen: list, *, timeout: float = 0.5, name: str = "quiet", **limits
):
    """A server that welcomes, leases one execution, and then (``answer=False``) never answers:
    no ack for any batch. Records every frame the worker sends in ``seen``."""
    import trio_websocket

    from flux.net import protocol as p
    from flux.runtime import codec

    async def handler(request):
        ws = await request.accept()
        session = p.ServerSession()
        session.receive_bytes(await ws.get_message())
        await ws.send_message(
            session.send(
                p.Welcome(
                    worker_id="w-1",
                    heartbeat_interval=0.2,
                    lease_ttl=5.0,
                    request_timeout=timeout,
                    **limits,
                )
            )
        )
        started = {
            "seq": 1,
            "type": "WORKFLOW_STARTED",
            "call_id": name,
            "name": name,
            "value": codec.encode(None),
            "time": None,
        }
        lease = p.Lease(
            execution_id="e-1",
            epoch=1,
            workflow_name=name,
            workflow_version=1,
            source=QUIET_SOURCE.encode(),
            input=codec.encode(None),
            history=[started],
            state="RUNNING",
            resume=False,
        )
        await ws.send_message(session.send(lease))
        try:
            while True:
                msg = session.receive_bytes(await ws.get_message())
                seen.append((trio.current_time(), msg))
                if answer and isinstance(msg, p.Events):
                    await ws.send_message(
                        session.send(p.Ack(execution_id="e-1", epoch=1, batch=msg.batch))
                    )
        except trio_websocket.ConnectionClosed:
            pass

    listeners = await nursery.start(
        functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
    )
    return f"http://127.0.0.1:{listeners.port}"


@pytest.mark.trio
async def test_a_request_without_answer_ends_in_giving_the_lease_up(nursery):
    from flux.net import protocol as p

    seen: list = []
    url = await _fake_server(nursery, answer=False, seen=seen)
    worker = Worker("deadline", 1)
    await nursery.start(functools.partial(serve_worker, server_url=url, worker=worker))
    with trio.fail_after(10):
        while not any(isinstance(m, p.Events) for _, m in seen):
            await trio.sleep(0.01)
        sent_at = next(t for t, m in seen if isinstance(m, p.Events))
        # no ack within request_timeout (0.5 s): the run stops and its lease is given up,
        # so heartbeats stop naming it and the server leases it again once it expires
        while True:
            beats = [m for t, m in seen if isinstance(m, p.Heartbeat) and t > sent_at + 0.6]
            if beats:
                break
            await trio.sleep(0.01)
    assert beats[-1].leases == [] and "e-1" not in worker.runs
    # heartbeats flowed the whole time: the session itself is fine
    gaps = [b - a for (a, m), (b, n) in zip(seen, seen[1:], strict=False)]
    assert max(gaps) < 1.0


@pytest.mark.trio
async def test_a_burst_of_frames_waits_for_the_outbox_and_heartbeats_still_flow(nursery):
    """The worker's outbox holds OUTBOX_SIZE frames; far more requests than that wait for
    room (none is dropped, the session survives), and heartbeats go around the queue."""
    from flux.net import protocol as p
    from flux.net import worker as worker_module

    seen: list = []
    url = await _fake_server(nursery, answer=True, seen=seen, timeout=30)
    worker = Worker("burst", 1)
    await nursery.start(functools.partial(serve_worker, server_url=url, worker=worker))
    with trio.fail_after(10):
        while "e-1" in worker.runs or not seen:
            await trio.sleep(0.01)
    n = 20 * worker_module.OUTBOX_SIZE
    before = len(seen)

    async def put(i: int) -> None:
        await worker.send(p.CachePut(execution_id="e-1", epoch=1, key=f"k{i}", value=b"v"))

    with trio.fail_after(20):
        async with trio.open_nursery() as burst:
            for i in range(n):
                burst.start_soon(put, i)
        while sum(isinstance(m, p.CachePut) for _, m in seen[before:]) < n:
            await trio.sleep(0.01)
        await trio.sleep(0.5)
    puts = [m for _, m in seen[before:] if isinstance(m, p.CachePut)]
    assert sorted(int(m.key[1:]) for m in puts) == list(range(n))  # every one, once
    assert any(isinstance(m, p.Heartbeat) for _, m in seen[before:])


@pytest.mark.trio
async def test_two_first_leases_of_one_source_load_one_module(tmp_path):
    import sys

    from flux.net import protocol as p

    log = tmp_path / "imports.log"
    source = (
        "import time\n"
        f"open({str(log)!r}, 'a').write('import\\n')\n"
        "time.sleep(0.3)\n"
        "from flux import workflow\n"
        "class Boom(Exception):\n    pass\n"
        "@workflow\nasync def w(ctx):\n    return 1\n"
    )

    def lease(eid: str) -> p.Lease:
        return p.Lease(
            execution_id=eid,
            epoch=1,
            workflow_name="w",
            workflow_version=1,
            source=source.encode(),
            input=None,
            history=[],
            state="RUNNING",
            resume=False,
        )

    worker = Worker("loader", 2)
    found = []
    async with trio.open_nursery() as nursery:
        for eid in ("a", "b", "c"):
            nursery.start_soon(lambda e=eid: _append(found, worker._workflow(lease(e))))
    assert len({id(wf) for wf in found}) == 1
    assert log.read_text() == "import\n"
    module = sys.modules[found[0].func.__module__]
    assert module.Boom is vars(module)["Boom"]


async def _append(out: list, awaitable) -> None:
    out.append(await awaitable)


@pytest.mark.trio
async def test_an_event_no_frame_can_carry_fails_the_execution_instead_of_looping(nursery):
    """The backstop behind the executor's value check: a server announcing a frame smaller
    than a value it allows gets WORKFLOW_FAILED in that event's place, and the run stops."""
    from flux.net import protocol as p
    from flux.runtime import codec

    seen: list = []
    url = await _fake_server(
        nursery,
        answer=True,
        seen=seen,
        timeout=5,
        name="big",
        max_frame_size=p.FRAME_ENVELOPE + 2000,
        max_value_size=1_000_000,
    )
    worker = Worker("tiny-frames", 1)
    await nursery.start(functools.partial(serve_worker, server_url=url, worker=worker))
    with trio.fail_after(10):
        while not any(isinstance(m, p.Events) and m.state == "FAILED" for _, m in seen):
            await trio.sleep(0.01)
    batches = [m for _, m in seen if isinstance(m, p.Events)]
    events = [e for b in batches for e in b.events]
    assert [e["type"] for e in events] == ["TASK_STARTED", "WORKFLOW_FAILED"]
    assert [e["seq"] for e in events] == [2, 3]  # in the oversized event's place
    error = codec.decode(events[-1]["value"], plain=True)
    assert "over the server's frame limit" in error.message and "wide#0" in error.message
    with trio.fail_after(5):
        while "e-1" in worker.runs:
            await trio.sleep(0.01)
    assert all(len(p.to_frame(b)) <= p.FRAME_ENVELOPE + 2000 for b in batches)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/workers/connect"),
        ("https://flux.example/prefix/", "wss://flux.example/prefix/workers/connect"),
        ("127.0.0.1:8000", "ws://127.0.0.1:8000/workers/connect"),
        ("ws://[::1]:9", "ws://[::1]:9/workers/connect"),
    ],
)
def test_ws_url_of_a_server_address(given, expected):
    assert ws_url(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ftp://h:1", "scheme 'ftp'"),
        ("http://:8000", "names no host"),
        ("http://h:99999", "port must be a number"),
        ("http://h:abc", "port must be a number"),
        ("http://h:0", "port must be a number"),
        ("http://h:8000?x=1", "query or fragment"),
        ("http://h :8000", "whitespace"),
    ],
)
def test_a_server_url_that_is_not_one_is_refused_naming_it(given, says):
    with pytest.raises(ValueError, match=re.escape(says)) as info:
        ws_url(given)
    assert repr(given) in str(info.value)


def test_the_worker_command_refuses_a_bad_server_url_in_one_line():
    proc = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "flux"),
            "start",
            "worker",
            "--server-url",
            "ftp://h:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: server URL 'ftp://h:1': scheme 'ftp' is not http, https, ws or wss"
    ]
