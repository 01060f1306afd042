"""Server and worker in one trio process: ``serve_server``/``serve_worker`` with ``task_status``,
port 0, a real WebSocket session, and the worker's reaction to a lease taken away."""

from __future__ import annotations

import functools

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
