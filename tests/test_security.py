"""Security: API and worker tokens (on and off), the loopback rule, constant-time comparison, and
secrets handed only to the task that asked for them, inside its lease."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest
import trio
import trio_websocket

from flux.net import protocol as p
from flux.net.dispatch import Dispatcher
from flux.net.security import (
    ServerConfigError,
    check_bearer,
    check_bind,
    check_origins,
    declared_secrets,
    is_loopback,
    token_matches,
)
from flux.net.worker import WorkerRefusedError, serve_worker
from flux.runtime.secrets import SecretStore
from flux.runtime.settings import Settings
from flux.runtime.store import open_store
from tests.conftest_net import PYTHON, ROOT, Live, free_port, net_env, start_live

API = "s3cret-api-token"
WORKER = "s3cret-worker-token"

# ---------------------------------------------------------------------------- pure rules


def test_bearer_rules():
    assert check_bearer(None, None) is None and check_bearer("junk", None) is None
    assert check_bearer(f"Bearer {API}", API) is None
    assert check_bearer(f"bearer   {API} ", API) is None
    for header, status in (
        (None, 401),
        ("", 401),
        ("Basic abc", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        (API, 401),
        ("Bearer wrong", 403),
        (f"Bearer {API}x", 403),
        ("Bearer ünïcode", 403),
    ):
        failure = check_bearer(header, API)
        assert failure is not None and failure.status == status, header
        assert failure.code == ("unauthorized" if status == 401 else "forbidden")
    assert token_matches("a", "a") and not token_matches("a", "b") and not token_matches(None, "a")


def test_loopback_rule():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        assert "loopback" in check_bind(host, None, None)
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ServerConfigError, match="refusing to bind"):
            check_bind(host, None, None)
        with pytest.raises(ServerConfigError, match="worker-token"):
            check_bind(host, API, None)
        assert check_bind(host, API, WORKER) is None


def test_cors_origins_must_be_explicit():
    assert check_origins(["https://a.example/", " http://b:8080 "]) == (
        "https://a.example",
        "http://b:8080",
    )
    for bad in ("*", "https://*.example", "a.example", "https://a.example/path"):
        with pytest.raises(ServerConfigError):
            check_origins([bad])


def test_task_secret_declarations_map_task_names_to_their_secrets():
    from flux.net.security import secrets_for_call, task_secret_declarations

    src = (
        "@task.with_options(secret_requests=['A'])\nasync def plain(secrets): ...\n"
        "@task.with_options(name='fetch_{url}', secret_requests=['B', 'C'])\n"
        "async def fetch(url, secrets): ...\n"
        "@task\nasync def none(): ...\n"
    )
    decl = task_secret_declarations(src)
    assert secrets_for_call(decl, "plain") == {"A"}
    assert secrets_for_call(decl, "fetch_https://x/y") == {"B", "C"}
    assert secrets_for_call(decl, "none") == frozenset()
    assert secrets_for_call(decl, "plainer") == frozenset()
    dynamic = "KEYS = ['A']\n@task.with_options(secret_requests=KEYS)\nasync def t(): ...\n"
    assert task_secret_declarations(dynamic) is None
    outside = "t = task.with_options(secret_requests=['A'])(f)\n"
    assert task_secret_declarations(outside) is None


def test_declared_secrets():
    src = (
        "@task.with_options(secret_requests=['A', \"B\"])\nasync def t(secrets): ...\n"
        "@task.with_options(secret_requests=('C',), retry_max_attempts=2)\nasync def u(): ...\n"
    )
    assert declared_secrets(src) == {"A", "B", "C"}
    assert declared_secrets("x = 1\n") == frozenset()
    dynamic = "KEYS = ['A']\n@task.with_options(secret_requests=KEYS)\nasync def t(): ...\n"
    assert declared_secrets(dynamic) is None


def test_binding_elsewhere_without_tokens_refuses_to_start(tmp_path):
    env = net_env(tmp_path)
    for key in ("FLUX_API_TOKEN", "FLUX_WORKER_TOKEN"):
        env.pop(key, None)
    args = [PYTHON, "-m", "flux.cli", "start", "server", "--host", "0.0.0.0"]
    args += ["--port", str(free_port()), "--db", str(tmp_path / "x.db")]
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "refusing to bind 0.0.0.0" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "x.db")


# ---------------------------------------------------------------------------- auth on


@pytest.fixture
async def guarded(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path, api_token=API, worker_token=WORKER)


ROUTES = [
    ("GET", "/workflows"),
    ("POST", "/workflows"),
    ("GET", "/workflows/hello"),
    ("POST", "/workflows/hello/run/sync"),
    ("POST", "/workflows/hello/run/async"),
    ("POST", "/workflows/hello/run/stream"),
    ("GET", "/workflows/hello/status/x"),
    ("POST", "/workflows/hello/resume/x"),
    ("GET", "/executions"),
    ("GET", "/executions/x"),
    ("POST", "/executions/x/cancel"),
    ("GET", "/workers"),
    ("GET", "/admin/secrets"),
    ("POST", "/admin/secrets"),
    ("GET", "/admin/secrets/A"),
    ("DELETE", "/admin/secrets/A"),
]


@pytest.mark.trio
async def test_every_route_needs_the_api_token(guarded):
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30) as c:
        for method, path in ROUTES:
            r = await c.request(method, path, json={"name": "A", "value": "v"})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = await c.request(method, path, headers={"Authorization": "Token abc"})
            assert r.status_code == 401, (method, path)
            r = await c.request(method, path, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path)
        for path in ("/health", "/openapi.json", "/docs"):
            assert (await c.get(path)).status_code == 200, path
        spec = (await c.get("/openapi.json")).json()
        assert spec["security"] == [{"bearer": []}]
    auth = {"Authorization": f"Bearer {API}"}
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30, headers=auth) as c:
        assert {w["name"] for w in (await c.get("/workflows")).json()} >= {"hello"}
        done = await c.post("/workflows/hello/run/sync", json=4)
        assert done.json()["output"] == {"doubled": 8}  # the worker got in with its token
        assert (await c.post("/admin/secrets", json={"name": "A", "value": "v"})).is_success
        assert (await c.get("/admin/secrets/A")).json()["value"] == "v"


@pytest.mark.trio
async def test_event_stream_needs_the_api_token(guarded):
    async with httpx.AsyncClient(
        base_url=guarded.url, headers={"Authorization": f"Bearer {API}"}
    ) as c:
        eid = (await c.post("/workflows/hello/run/sync", json=1)).json()["execution_id"]
    url = guarded.url.replace("http://", "ws://") + f"/executions/{eid}/events"
    for headers, status in (([], 401), ([("Authorization", "Bearer bad")], 403)):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url, extra_headers=headers):
                pass
        assert info.value.status_code == status
        assert json.loads(info.value.body)["error"] in ("unauthorized", "forbidden")
    async with trio_websocket.open_websocket_url(
        url, extra_headers=[("Authorization", f"Bearer {API}")]
    ) as ws:
        first = json.loads(await ws.get_message())
        assert first["type"] == "WORKFLOW_STARTED"


@pytest.mark.trio
async def test_worker_token_is_checked_first(guarded):
    ws_url = guarded.url.replace("http://", "ws://") + "/workers/connect"
    for token in (None, "wrong", WORKER + "x"):
        async with trio_websocket.open_websocket_url(ws_url) as ws:
            await ws.send_message(p.to_frame(p.Hello(name="intruder", token=token, capacity=1)))
            error = p.from_frame(await ws.get_message())
            assert isinstance(error, p.Error) and error.code == "unauthorized"
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1008
    with pytest.raises(WorkerRefusedError, match="unauthorized"):
        with trio.fail_after(10):
            await serve_worker("intruder", guarded.url, 1, token="wrong")
    async with httpx.AsyncClient(
        base_url=guarded.url, headers={"Authorization": f"Bearer {API}"}
    ) as c:
        names = [w["name"] for w in (await c.get("/workers")).json()]
        assert names == ["api-test"]  # only the worker with the right token


# ---------------------------------------------------------------------------- secrets to workers


@pytest.mark.trio
async def test_secrets_go_only_to_the_lease_that_declares_them(tmp_path, nursery):
    """Unit (dispatcher with a fake link): a SecretsRequest must name an execution and epoch
    the worker holds, and names the execution's source declares; values never go elsewhere."""
    settings = Settings(db_path=str(tmp_path / "s.db"), secret_key_file=str(tmp_path / "k"))
    store = open_store(settings.db_path, durability="normal")
    await store.__aenter__()
    secrets = SecretStore(store, settings)
    await secrets.set("API_KEY", "hunter2")
    await secrets.set("OTHER", "do-not-leak")
    dispatcher = Dispatcher(store, secrets=secrets)
    await nursery.start(dispatcher.run)
    await secrets.set("OTHER_TASKS_KEY", "other-task-only")
    source = (
        "from flux import task, workflow\n"
        "@task.with_options(secret_requests=['API_KEY'])\n"
        "async def use(secrets):\n    return 1\n"
        "@task.with_options(name='other_{x}', secret_requests=['OTHER_TASKS_KEY'])\n"
        "async def other(x, secrets):\n    return 2\n"
        "@workflow\nasync def w(ctx):\n    return [await use(), await other(1)]\n"
    )
    from flux.net.dispatch import source_hash

    await store.save_workflow("w", source, source_hash(source))
    sent: list[p.Message] = []
    link = dispatcher.add_worker("w-1", "w", 2, sent.append)
    rec = await dispatcher.start("w", b"\xc0")
    with trio.fail_after(5):
        while not any(isinstance(m, p.Lease) for m in sent):
            await trio.sleep(0.01)
    lease = next(m for m in sent if isinstance(m, p.Lease))

    async def ask(names, execution_id=rec.execution_id, epoch=lease.epoch, call_id="use#0"):
        before = len(sent)
        msg = p.SecretsRequest(
            execution_id=execution_id,
            epoch=epoch,
            request_id=len(sent),
            names=names,
            call_id=call_id,
        )
        await dispatcher.on_message(link, msg)
        with trio.fail_after(5):
            while len(sent) == before:
                await trio.sleep(0.01)
        return sent[-1]

    # before the call's TASK_STARTED reached the server, nothing is handed out
    answer = await ask(["API_KEY"])
    assert answer.values == {} and answer.missing == ["API_KEY"]

    async def events(batch, *evs):
        await dispatcher.on_message(
            link,
            p.Events(
                execution_id=rec.execution_id, epoch=lease.epoch, batch=batch, events=list(evs)
            ),
        )
        with trio.fail_after(5):
            while not any(isinstance(m, p.Ack) and m.batch == batch for m in sent):
                await trio.sleep(0.01)

    def ev(seq, type_, call_id, name):
        from datetime import UTC, datetime

        from flux.runtime import codec

        return {
            "seq": seq,
            "type": type_,
            "call_id": call_id,
            "name": name,
            "value": codec.encode(None),
            "time": datetime.now(UTC),
        }

    await events(1, ev(2, "TASK_STARTED", "use#0", "use"))
    answer = await ask(["API_KEY"])
    assert isinstance(answer, p.Secrets) and answer.values == {"API_KEY": "hunter2"}
    # another task's secret, asked in the name of this call: refused
    answer = await ask(["OTHER_TASKS_KEY"])
    assert answer.values == {} and answer.missing == ["OTHER_TASKS_KEY"]
    # the other task (a templated name) gets its own secret once it has started
    await events(2, ev(3, "TASK_STARTED", "other_1#1", "other_1"))
    answer = await ask(["OTHER_TASKS_KEY", "API_KEY"], call_id="other_1#1")
    assert answer.values == {"OTHER_TASKS_KEY": "other-task-only"}
    assert answer.missing == ["API_KEY"]
    # a call that has ended gets nothing more
    await events(3, ev(4, "TASK_COMPLETED", "use#0", "use"))
    answer = await ask(["API_KEY"])
    assert answer.values == {} and answer.missing == ["API_KEY"]
    answer = await ask(["API_KEY"], call_id="other_1#1")
    assert answer.values == {} and answer.missing == ["API_KEY"]
    answer = await ask(["OTHER", "OTHER_TASKS_KEY"], call_id="other_1#1")
    assert answer.values == {"OTHER_TASKS_KEY": "other-task-only"}
    assert answer.missing == ["OTHER"]  # not declared by any task: refused
    stale = await ask(["API_KEY"], epoch=lease.epoch + 1)
    assert isinstance(stale, p.Reject)
    other = await ask(["API_KEY"], execution_id="not-leased")
    assert isinstance(other, p.Reject)
    leaked = [m for m in sent if "do-not-leak" in repr(m)]
    assert leaked == []
    await store.aclose()


@pytest.mark.trio
async def test_secret_reaches_only_the_task_that_asked(nursery, tmp_path, caplog):
    live = await start_live(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        await c.post("/admin/secrets", json={"name": "API_KEY", "value": "hunter2-value"})
        r = await c.post("/workflows/secretive/run/sync", params={"detailed": "true"})
        body = r.json()
        # use_secret saw it (its length), nosy got no secrets kwarg at all
        assert body["output"] == [len("hunter2-value"), []]
        assert "hunter2-value" not in r.text
        events = (await c.get("/executions", params={"workflow": "secretive"})).text
        assert "hunter2-value" not in events
    assert "hunter2-value" not in caplog.text
