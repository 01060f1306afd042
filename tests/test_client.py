"""flux.net.client: FluxClient against a real in-process server (issue 4's routes) and against a
small fake Quart-Trio app for the routes of issue 5 (stream, follow, cancel, executions, workers,
admin secrets, tokens), so the client's own logic is proven before those routes exist. Tests of
the real routes run as soon as the server has them (they are skipped, with the reason, before).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
from contextlib import aclosing
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request, websocket
from quart_trio import QuartTrio

from flux.net.client import (
    DEFAULT_SERVER_URL,
    EVENTS_WS_PATH,
    FluxClient,
    FluxClientError,
    Progress,
    _SSEParser,
    event_line,
)
from flux.net.server import ServerSettings, create_app, serve_server
from flux.net.worker import serve_worker
from flux.runtime.errors import FluxError
from flux.runtime.settings import Settings

from .conftest_net import PYTHON, ROOT, free_port, procs  # noqa: F401 - fixture

SOURCE = """
import anyio
from flux import task, workflow
from flux.tasks import pause


@task
async def double(x):
    return x * 2


@workflow
async def hello(ctx):
    return {"doubled": await double(ctx.input)}


@workflow
async def asker(ctx):
    return {"answer": await pause("approve")}


class Boom(Exception):
    pass


@task
async def explode():
    raise Boom("kaboom")


@workflow
async def failing(ctx):
    await explode()


@task
async def nap(seconds):
    await anyio.sleep(seconds)
    return seconds


@workflow
async def slow(ctx):
    return await nap(ctx.input)
"""

BODY_LIMIT = 64 * 1024


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch):
    """FluxClient reads FLUX_SERVER_URL and FLUX_API_TOKEN: tests say what they mean."""
    monkeypatch.delenv("FLUX_SERVER_URL", raising=False)
    monkeypatch.delenv("FLUX_API_TOKEN", raising=False)


# ---------------------------------------------------------------------------- a real server


@attrs.frozen
class Real:
    url: str
    app: Any


#: The routes of issue 5 the client uses, with a request that tells whether the server has them.
PROBES = {
    "stream": ("POST", "/workflows/nope/run/stream", "POST /workflows/{name}/run/stream"),
    "follow": ("WEBSOCKET", "/executions/nope/events", f"WebSocket {EVENTS_WS_PATH}?from=N"),
    "cancel": ("POST", "/executions/nope/cancel", "POST /executions/{id}/cancel"),
    "executions": ("GET", "/executions", "GET /executions"),
    "execution": ("GET", "/executions/nope", "GET /executions/{id}"),
    "workers": ("GET", "/workers", "GET /workers"),
    "secrets": ("GET", "/admin/secrets", "GET|POST /admin/secrets"),
    "tokens": ("GET", "/workflows", "API token (ServerSettings.api_token, 401 without it)"),
}


@functools.cache
def server_routes() -> frozenset[str]:
    """Which of PROBES the real server serves: a throwaway server is asked once (outside any
    test's trio loop, so a missing route skips with its reason before the test starts)."""
    import tempfile

    async def probe() -> frozenset[str]:
        found = set()
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(db_path=f"{tmp}/probe.db", secret_key_file=f"{tmp}/key")
            tokens = (
                {"api_token": "probe"} if "api_token" in attrs.fields_dict(ServerSettings) else {}
            )
            server_settings = ServerSettings(port=0, **tokens)
            async with trio.open_nursery() as nursery:
                address = await nursery.start(
                    functools.partial(serve_server, settings, server_settings)
                )
                async with FluxClient(address.url, token="probe") as c:
                    for key, (method, path, _) in PROBES.items():
                        try:
                            if key == "tokens":
                                r = await c.http.get(path, headers={"Authorization": ""})
                                if r.status_code == 401:
                                    found.add(key)
                                continue
                            if method == "WEBSOCKET":
                                async with aclosing(c.follow("nope")) as events:
                                    async for _ in events:
                                        pass
                            else:
                                await c._request(method, path)
                        except FluxClientError as e:
                            if e.code in ("not-found", "method-not-allowed"):
                                continue  # the generic answers of a route that does not exist
                        found.add(key)
                nursery.cancel_scope.cancel()
        return frozenset(found)

    return trio.run(probe)


def has_route(key: str) -> bool:
    return key in server_routes()


def needs(*keys: str) -> pytest.MarkDecorator:
    """Skip (with the reason) until the real server has these routes of issue 5."""
    what = ", ".join(PROBES[k][2] for k in keys)
    condition = " and ".join(f"has_route({k!r})" for k in keys)
    return pytest.mark.skipif(
        f"not ({condition})", reason=f"the server has no {what} yet (issue 5)"
    )


@pytest.fixture
async def real(tmp_path, nursery) -> Real:
    """A real server (small body limit) and an in-process worker, with SOURCE registered."""
    settings = Settings(
        db_path=str(tmp_path / "server.db"),
        durability="normal",
        secret_key_file=str(tmp_path / "secret.key"),
    )
    server_settings = ServerSettings(port=0, lease_ttl=2.0, max_body_size=BODY_LIMIT)
    app = create_app(settings, server_settings)
    address = await nursery.start(
        functools.partial(serve_server, settings, server_settings, app=app)
    )
    await nursery.start(functools.partial(serve_worker, "client-test", address.url, 4))
    async with FluxClient(address.url) as c:
        await c.register(SOURCE, "flows.py")
    return Real(address.url, app)


async def settled(c: FluxClient, name: str, eid: str, states: set[str]) -> dict:
    with trio.fail_after(20):
        while True:
            s = await c.status(name, eid)
            if s["state"] in states:
                return s
            await trio.sleep(0.02)


# ---------------------------------------------------------------------------- a fake server


def summary(eid: str, state: str, output: Any = None, name: str = "hello") -> dict:
    return {
        "workflow_name": name,
        "execution_id": eid,
        "input": 21,
        "output": output,
        "state": state,
    }


def ev(i: int, kind: str, source: str, value: Any, name: str | None = None) -> dict:
    return {
        "id": i,
        "type": kind,
        "source_id": source,
        "name": name or source.split("#")[0],
        "value": value,
        "time": f"2026-11-26T19:13:0{i % 10}.000000+00:00",
    }


EVENTS = [
    ev(1, "WORKFLOW_STARTED", "hello", 21),
    ev(2, "TASK_STARTED", "double#0", {"args": [21], "kwargs": {}}),
    ev(3, "TASK_COMPLETED", "double#0", 42),
    ev(4, "WORKFLOW_COMPLETED", "hello", {"doubled": 42}),
]


@attrs.define
class Fake:
    """State of the fake server: what it was asked, and what it holds."""

    url: str = ""
    token: str | None = None
    seen: list[tuple[str, str, dict, str | None]] = attrs.Factory(list)
    secrets: dict[str, str] = attrs.Factory(dict)
    hung_up: trio.Event = attrs.Factory(trio.Event)

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.seen]


def fake_app(fake: Fake) -> QuartTrio:
    """The routes of issue 5 as DESIGN.md describes them, with canned data."""
    app = QuartTrio("fake-flux")

    def error(status: int, code: str, detail: str) -> Response:
        body = json.dumps({"error": code, "detail": detail})
        return Response(body, status=status, mimetype="application/json")

    def denied(headers: Any) -> Response | None:
        auth = headers.get("Authorization")
        if fake.token and not auth:
            return error(401, "unauthorized", "this server requires an API token")
        if fake.token and auth != f"Bearer {fake.token}":
            return error(403, "forbidden", "the API token is not valid")
        return None

    @app.before_request
    async def record() -> Response | None:
        auth = request.headers.get("Authorization")
        fake.seen.append((request.method, request.path, dict(request.args), auth))
        return denied(request.headers)

    @app.get("/health")
    async def health() -> Response:
        return Response("<html>502 Bad Gateway</html>", status=502, mimetype="text/html")

    @app.get("/workflows")
    async def workflows() -> Response:
        return Response("not json", mimetype="text/plain")

    @app.post("/workflows/<name>/run/stream")
    async def run_stream(name: str) -> Any:
        value = json.loads(await request.get_data())
        if name == "nope":
            return error(404, "workflow-not-found", "no workflow named 'nope'")
        if name == "plain":
            return Response(json.dumps(summary("e9", "COMPLETED")), mimetype="application/json")

        async def body():
            yield ": keep-alive\n\n"
            yield f"event: execution\ndata: {json.dumps(summary('e1', 'SCHEDULED'))}\n\n"
            for i, e in enumerate(EVENTS):
                if name == "boom" and i == 2:
                    yield 'event: error\ndata: {"error": "internal", "detail": "store broke"}\n\n'
                    return
                if i == 1:  # a multi-line data field, and \r\n line ends
                    lines = json.dumps(e, indent=1).split("\n")
                    yield "".join(f"data: {line}\r\n" for line in lines) + "\r\n"
                else:
                    yield f"id: {e['id']}\ndata: {json.dumps(e)}\n\n"
                await trio.sleep(0)
            final = summary("e1", "COMPLETED", {"doubled": value * 2})
            yield f"event: execution\ndata: {json.dumps(final)}\n\n"

        return body(), 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

    @app.websocket("/executions/<eid>/events")
    async def events(eid: str) -> Any:
        fake.seen.append(
            ("WS", websocket.path, dict(websocket.args), websocket.headers.get("Authorization"))
        )
        refused = denied(websocket.headers)
        if refused is not None:
            return refused
        if eid not in ("e1", "open", "bad", "short"):
            return error(404, "execution-not-found", f"no execution {eid!r}")
        start = int(websocket.args.get("from", 0))
        await websocket.accept()
        try:
            if eid == "bad":
                await websocket.send(json.dumps(EVENTS[0]))
                reason = json.dumps({"error": "conflict", "detail": "stream overtaken"})
                await websocket.close(4409, reason)
                return None
            if eid == "short":  # ends normally without a terminal event
                await websocket.send(json.dumps(EVENTS[0]))
                await websocket.close(1000)
                return None
            for e in EVENTS[start:]:
                await websocket.send(json.dumps(e))
                await trio.sleep(0.01)
            if eid == "open":  # stays open after the end: the client must stop by itself
                await trio.sleep_forever()
            await websocket.close(1000)
        finally:
            fake.hung_up.set()
        return None

    @app.get("/executions/<eid>")
    async def get_execution(eid: str) -> Response:
        known = {
            "e1": summary("e1", "COMPLETED", {"doubled": 42}),
            "short": summary("short", "RUNNING"),
        }
        if eid not in known:
            return error(404, "execution-not-found", f"no execution {eid!r}")
        return Response(json.dumps(known[eid]), mimetype="application/json")

    @app.post("/executions/<eid>/cancel")
    async def cancel(eid: str) -> Response:
        if eid == "done":
            return error(409, "conflict", "execution 'done' is COMPLETED: nothing to cancel")
        if eid != "e1":
            return error(404, "execution-not-found", f"no execution {eid!r}")
        return Response(json.dumps(summary("e1", "CANCELLED")), mimetype="application/json")

    @app.get("/executions")
    async def executions() -> Response:
        times = {"parent_id": None, "created_at": 1.0, "updated_at": 2.0}  # a row's extra keys
        items = [{**summary("e2", "RUNNING"), **times}, {**summary("e1", "COMPLETED"), **times}]
        body = {"executions": items, "total": 2}
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/workers")
    async def workers() -> Response:
        body = [
            {
                "id": "w-1",
                "name": "w",
                "capacity": 2,
                "free": 2,
                "stopping": False,
                "connected_at": 0.5,
                "last_heartbeat": 1.0,
                "leases": [],
            }
        ]
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/admin/secrets")
    async def secrets_names() -> Response:
        return Response(json.dumps(sorted(fake.secrets)), mimetype="application/json")

    @app.post("/admin/secrets")
    async def secrets_set() -> Response:
        body = json.loads(await request.get_data())
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return error(400, "bad-request", "send {name, value}")
        fake.secrets[body["name"]] = body["value"]
        return Response(json.dumps({"name": body["name"]}), status=201)

    @app.get("/admin/secrets/<name>")
    async def secrets_get(name: str) -> Response:
        if name not in fake.secrets:
            return error(404, "secret-not-found", f"secret {name!r} is not set")
        body = {"name": name, "value": fake.secrets[name]}
        return Response(json.dumps(body), mimetype="application/json")

    @app.delete("/admin/secrets/<name>")
    async def secrets_delete(name: str) -> Response:
        if fake.secrets.pop(name, None) is None:
            return error(404, "secret-not-found", f"secret {name!r} is not set")
        return Response("", status=204)

    return app


async def serve_app(app: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5

    class Started:
        def started(self, binds: list[str]) -> None:
            task_status.started(binds[0].replace("0.0.0.0", "127.0.0.1"))

    await hypercorn_serve(app, config, task_status=Started())


@pytest.fixture
async def fake(nursery) -> Fake:
    state = Fake()
    state.url = await nursery.start(serve_app, fake_app(state))
    return state


# ---------------------------------------------------------------------------- real: workflows


@pytest.mark.trio
async def test_health_register_list_and_show(real, tmp_path):
    async with FluxClient(real.url) as c:
        health = await c.health()
        assert health["status"] == "ok" and health["workers"] == 1
        path = tmp_path / "more.py"
        path.write_text(SOURCE)
        saved = await c.register(path)  # a path; the fixture registered the source itself
        assert {w["name"]: w["version"] for w in saved}["hello"] == 2
        again = await c.register(SOURCE.encode(), filename="bytes.py")
        assert {w["name"] for w in again} == {"hello", "asker", "failing", "slow"}
        names = [w["name"] for w in await c.list_workflows()]
        assert {"hello", "asker", "failing", "slow"} <= set(names)
        one = await c.get_workflow("hello")
        assert one["version"] == 3 and one["versions"] == [1, 2, 3]
        assert "async def hello" in one["source"]


@pytest.mark.trio
async def test_register_errors(real, tmp_path):
    async with FluxClient(real.url) as c:
        with pytest.raises(FluxClientError) as bad:
            await c.register("from flux import workflow\n\n@workflow\nasync def x(ctx)\n  pass\n")
        assert bad.value.status == 400 and bad.value.code == "bad-source"
        assert "line 4" in bad.value.detail
        assert str(bad.value).startswith("400 bad-source: ")
        with pytest.raises(FluxClientError, match="defines no @workflow"):
            await c.register("x = 1\n", filename="empty.py")
        with pytest.raises(FileNotFoundError):
            await c.register(tmp_path / "missing.py")
        with pytest.raises(FluxClientError) as big:
            await c.register(b"#" * (2 * BODY_LIMIT) + b"\n")
        assert big.value.status == 413


@pytest.mark.trio
async def test_get_unknown_workflow_is_a_404_with_one_line(real):
    async with FluxClient(real.url) as c:
        with pytest.raises(FluxClientError) as info:
            await c.get_workflow("nope")
    e = info.value
    assert isinstance(e, FluxError)
    assert (e.status, e.code) == (404, "workflow-not-found")
    assert str(e) == "404 workflow-not-found: no workflow named 'nope'"
    assert "\n" not in str(e)


# ---------------------------------------------------------------------------- real: executions


@pytest.mark.trio
async def test_run_sync_async_and_status(real):
    async with FluxClient(real.url) as c:
        done = await c.run("hello", 21)
        assert set(done) == {"workflow_name", "execution_id", "input", "output", "state"}
        assert (done["state"], done["output"], done["input"]) == ("COMPLETED", {"doubled": 42}, 21)
        detailed = await c.run("hello", 2, detailed=True)
        assert [e["type"] for e in detailed["events"]][-1] == "WORKFLOW_COMPLETED"

        started = await c.run("hello", 5, mode="async")
        assert started["state"] in ("SCHEDULED", "RUNNING", "COMPLETED")
        eid = started["execution_id"]
        assert (await settled(c, "hello", eid, {"COMPLETED"}))["output"] == {"doubled": 10}
        events = (await c.status("hello", eid, detailed=True))["events"]
        assert [e["type"] for e in events] == [
            "WORKFLOW_STARTED",
            "TASK_STARTED",
            "TASK_COMPLETED",
            "WORKFLOW_COMPLETED",
        ]
        assert "events" not in await c.status("hello", eid)

        failed = await c.run("failing")  # input None is sent as JSON null
        assert failed["state"] == "FAILED" and failed["input"] is None
        assert failed["output"]["message"] == "kaboom"
        with pytest.raises(ValueError, match="use stream"):
            await c.run("hello", 1, mode="stream")


@pytest.mark.trio
async def test_execution_errors(real):
    async with FluxClient(real.url) as c:
        with pytest.raises(FluxClientError, match=r"^404 workflow-not-found: .*'nope'"):
            await c.run("nope", 1)
        with pytest.raises(FluxClientError) as unknown:
            await c.status("hello", "no-such-id")
        assert (unknown.value.status, unknown.value.code) == (404, "execution-not-found")
        with pytest.raises(FluxClientError) as big:
            await c.run("hello", "x" * (2 * BODY_LIMIT))
        assert big.value.status == 413
        # malformed JSON cannot come from the client; the error shape of a 400 is parsed the same
        r = await c.http.post("/workflows/hello/run/sync", content=b"{nope")
        assert r.status_code == 400 and r.json()["error"] == "bad-json"


@pytest.mark.trio
async def test_pause_and_resume(real):
    async with FluxClient(real.url) as c:
        paused = await c.run("asker")
        assert paused["state"] == "PAUSED"
        eid = paused["execution_id"]
        done = await c.resume("asker", eid, "yes", wait=True)
        assert (done["state"], done["output"]) == ("COMPLETED", {"answer": "yes"})
        with pytest.raises(FluxClientError) as again:
            await c.resume("asker", eid, "again")
        assert again.value.status == 409
        second = await c.run("asker")
        started = await c.resume("asker", second["execution_id"], {"ok": 1})
        assert started["state"] != "PAUSED" or started["output"] is None
        final = await settled(c, "asker", second["execution_id"], {"COMPLETED"})
        assert final["output"] == {"answer": {"ok": 1}}


@pytest.mark.trio
async def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    async with FluxClient(url, timeout=5) as c:
        for call in (c.health(), c.list_workflows(), c.run("hello", 1)):
            with pytest.raises(FluxClientError) as info:
                await call
            assert info.value.code == "unreachable" and info.value.status is None
            assert str(info.value).startswith(f"cannot reach the Flux server at {url}: ")
        with pytest.raises(FluxClientError, match="cannot reach the Flux server"):
            async with aclosing(c.follow("e1")) as events:
                async for _ in events:
                    pass
        with pytest.raises(FluxClientError, match="cannot reach the Flux server"):
            async for _ in c.stream("hello", 1):
                pass


@pytest.mark.trio
async def test_client_settings(monkeypatch):
    monkeypatch.delenv("FLUX_SERVER_URL", raising=False)
    monkeypatch.delenv("FLUX_API_TOKEN", raising=False)
    assert FluxClient().server_url == DEFAULT_SERVER_URL == "http://127.0.0.1:8000"
    assert FluxClient().token is None
    monkeypatch.setenv("FLUX_SERVER_URL", "https://flux.example:9000/")
    monkeypatch.setenv("FLUX_API_TOKEN", "t0k")
    c = FluxClient()
    assert (c.server_url, c.token) == ("https://flux.example:9000", "t0k")
    assert FluxClient("http://other", token="x").token == "x"
    for bad in ("ftp://x", "localhost:8000", "http://"):
        with pytest.raises(ValueError, match="must be http"):
            FluxClient(bad)
    with pytest.raises(RuntimeError, match="async with"):
        await FluxClient().health()


@needs("tokens")
@pytest.mark.trio
async def test_real_server_tokens(tmp_path, nursery):
    settings = Settings(db_path=str(tmp_path / "t.db"), secret_key_file=str(tmp_path / "k"))
    server_settings = ServerSettings(port=0, api_token="right")
    address = await nursery.start(functools.partial(serve_server, settings, server_settings))
    async with FluxClient(address.url, token="wrong") as c:
        with pytest.raises(FluxClientError) as info:
            await c.list_workflows()
        assert (info.value.status, info.value.code) == (403, "forbidden")
    async with FluxClient(address.url) as c:
        with pytest.raises(FluxClientError) as info:
            await c.list_workflows()
        assert (info.value.status, info.value.code) == (401, "unauthorized")
    async with FluxClient(address.url, token="right") as c:
        assert await c.list_workflows() == []


# ---------------------------------------------------------------------------- real: issue 5 routes


@needs("stream")
@pytest.mark.trio
async def test_real_stream(real):
    async with FluxClient(real.url) as c:
        progress = Progress()
        async for message in c.stream("hello", 21):
            progress.update(message)
        assert progress.state == "COMPLETED" and progress.output == {"doubled": 42}
        with pytest.raises(FluxClientError) as info:
            async for _ in c.stream("nope", 1):
                pass
        assert info.value.status == 404


@needs("follow")
@pytest.mark.trio
async def test_real_follow(real):
    async with FluxClient(real.url) as c:
        done = await c.run("hello", 3)
        async with aclosing(c.follow(done["execution_id"])) as events:
            got = [e async for e in events]
        assert [e["type"] for e in got][-1] == "WORKFLOW_COMPLETED"
        async with aclosing(c.follow(done["execution_id"], from_offset=2)) as events:
            later = [e async for e in events]
        assert later == got[2:]
        with pytest.raises(FluxClientError) as info:
            async for _ in c.follow("no-such-id"):
                pass
        assert info.value.status == 404


@needs("cancel", "executions", "execution")
@pytest.mark.trio
async def test_real_cancel_and_list_executions(real):
    async with FluxClient(real.url) as c:
        paused = await c.run("asker")
        cancelled = await c.cancel(paused["execution_id"])
        assert cancelled["state"] in ("CANCELLING", "CANCELLED")
        await settled(c, "asker", paused["execution_id"], {"CANCELLED"})
        running = await c.run("slow", 30, mode="async")
        with trio.fail_after(10):
            while len((await c.get_execution(running["execution_id"], True))["events"]) < 2:
                await trio.sleep(0.02)  # its task has started
        stopped = await c.cancel(running["execution_id"], wait=True)
        assert stopped["state"] == "CANCELLED"
        assert (await c.get_execution(running["execution_id"]))["state"] == "CANCELLED"
        with pytest.raises(FluxClientError) as info:
            await c.cancel("no-such-id")
        assert info.value.status == 404
        done = await c.list_executions(workflow="asker", state="CANCELLED")
        assert [e["execution_id"] for e in done] == [paused["execution_id"]]
        assert len(await c.list_executions(limit=1)) == 1
        both = await c.list_executions(state=["CANCELLED", "PAUSED"])
        assert {e["execution_id"] for e in both} == {
            paused["execution_id"],
            running["execution_id"],
        }
        assert await c.list_executions(workflow="asker", offset=5) == []


@needs("workers", "secrets")
@pytest.mark.trio
async def test_real_workers_and_secrets(real):
    async with FluxClient(real.url) as c:
        workers = await c.workers()
        assert len(workers) == 1 and "client-test" in json.dumps(workers)
        await c.secrets_set("API_KEY", "s3cret")
        assert await c.secrets_list() == ["API_KEY"]
        assert await c.secrets_get("API_KEY") == "s3cret"
        await c.secrets_remove("API_KEY")
        assert await c.secrets_list() == []
        with pytest.raises(FluxClientError) as info:
            await c.secrets_get("API_KEY")
        assert info.value.status == 404


# ---------------------------------------------------------------------------- fake: issue 5 client


@pytest.mark.trio
async def test_stream_parses_server_sent_events(fake):
    async with FluxClient(fake.url, token="t") as c:
        got = [m async for m in c.stream("hello", 21)]
    assert got[0] == summary("e1", "SCHEDULED")
    assert got[1:5] == EVENTS  # the multi-line event is joined and parsed
    assert got[-1] == summary("e1", "COMPLETED", {"doubled": 42})
    method, path, _, auth = fake.seen[-1]
    assert (method, path, auth) == ("POST", "/workflows/hello/run/stream", "Bearer t")
    progress = Progress()
    for m in got:
        progress.update(m)
    assert progress.summary == summary("e1", "COMPLETED", {"doubled": 42})


@pytest.mark.trio
async def test_stream_errors(fake):
    async with FluxClient(fake.url) as c:
        with pytest.raises(FluxClientError) as nope:
            async for _ in c.stream("nope", 1):
                pass
        assert str(nope.value) == "404 workflow-not-found: no workflow named 'nope'"
        seen = []
        with pytest.raises(FluxClientError) as boom:
            async for m in c.stream("boom", 1):
                seen.append(m)
        assert str(boom.value) == "internal: store broke" and len(seen) == 3
        with pytest.raises(FluxClientError, match="did not answer with an event stream"):
            async for _ in c.stream("plain", 1):
                pass


@pytest.mark.trio
async def test_follow_reads_the_websocket_stream(fake):
    async with FluxClient(fake.url, token="t") as c:
        async with aclosing(c.follow("e1")) as events:
            assert [e async for e in events] == EVENTS
        ws = [s for s in fake.seen if s[0] == "WS"]
        assert ws[-1][1:] == ("/executions/e1/events", {"from": "0"}, "Bearer t")
        async with aclosing(c.follow("e1", from_offset=2)) as events:
            assert [e async for e in events] == EVENTS[2:]
        assert fake.seen[-1][2] == {"from": "2"}
        # a stream the server keeps open ends at the terminal event, and the client hangs up
        with trio.fail_after(5):
            async with aclosing(c.follow("open")) as events:
                assert [e async for e in events] == EVENTS
            await fake.hung_up.wait()
        # a normal close without a terminal event ends the iteration quietly
        async with aclosing(c.follow("short")) as events:
            assert [e async for e in events] == EVENTS[:1]
        # leaving early is fine
        async with aclosing(c.follow("e1")) as events:
            async for e in events:
                assert e == EVENTS[0]
                break
        with pytest.raises(ValueError):
            async for _ in c.follow("e1", from_offset=-1):
                pass


@pytest.mark.trio
async def test_follow_errors(fake):
    async with FluxClient(fake.url) as c:
        with pytest.raises(FluxClientError) as unknown:
            async for _ in c.follow("zzz"):
                pass
        assert str(unknown.value) == "404 execution-not-found: no execution 'zzz'"
        got = []
        with pytest.raises(FluxClientError) as closed:
            async for e in c.follow("bad"):
                got.append(e)
        assert got == EVENTS[:1]
        assert (closed.value.status, closed.value.code) == (409, "conflict")
    fake.token = "right"
    async with FluxClient(fake.url, token="wrong") as c:
        with pytest.raises(FluxClientError) as denied:
            async for _ in c.follow("e1"):
                pass
        assert (denied.value.status, denied.value.code) == (403, "forbidden")
    async with FluxClient(fake.url) as c:
        with pytest.raises(FluxClientError) as none:
            async for _ in c.follow("e1"):
                pass
        assert (none.value.status, none.value.code) == (401, "unauthorized")


@pytest.mark.trio
async def test_cancel_executions_and_workers(fake):
    async with FluxClient(fake.url) as c:
        assert (await c.cancel("e1"))["state"] == "CANCELLED"
        assert fake.paths()[-1] == "POST /executions/e1/cancel"
        with pytest.raises(FluxClientError, match=r"^404 execution-not-found"):
            await c.cancel("zzz")
        with pytest.raises(FluxClientError) as conflict:
            await c.cancel("done")
        assert conflict.value.status == 409
        listed = await c.list_executions()
        assert [e["execution_id"] for e in listed] == ["e2", "e1"]  # unwrapped
        assert fake.seen[-1][2] == {"limit": "50", "offset": "0"}
        await c.list_executions(workflow="hello", state="RUNNING", limit=5, offset=10)
        args = {"workflow": "hello", "state": "RUNNING", "limit": "5", "offset": "10"}
        assert fake.seen[-1][2] == args
        workers = await c.workers()
        assert workers[0]["name"] == "w" and "last_heartbeat" in workers[0]


@pytest.mark.trio
async def test_admin_secrets(fake):
    async with FluxClient(fake.url) as c:
        assert await c.secrets_list() == []
        await c.secrets_set("API_KEY", "v1")
        await c.secrets_set("API_KEY", "v2")
        await c.secrets_set("OTHER", "x")
        assert await c.secrets_list() == ["API_KEY", "OTHER"]
        assert await c.secrets_get("API_KEY") == "v2"
        await c.secrets_remove("API_KEY")
        with pytest.raises(FluxClientError) as gone:
            await c.secrets_remove("API_KEY")
        assert str(gone.value) == "404 secret-not-found: secret 'API_KEY' is not set"
        with pytest.raises(FluxClientError) as missing:
            await c.secrets_get("a?b")  # quoted in the path
        assert missing.value.detail == "secret 'a?b' is not set"


@pytest.mark.trio
async def test_tokens_and_odd_answers(fake):
    fake.token = "right"
    async with FluxClient(fake.url, token="wrong") as c:
        with pytest.raises(FluxClientError) as denied:
            await c.workers()
        assert str(denied.value) == "403 forbidden: the API token is not valid"
        with pytest.raises(FluxClientError) as denied:
            async for _ in c.stream("hello", 1):
                pass
        assert denied.value.status == 403 and fake.seen[-1][3] == "Bearer wrong"
    async with FluxClient(fake.url) as c:
        with pytest.raises(FluxClientError) as none:
            await c.workers()
        assert str(none.value) == "401 unauthorized: this server requires an API token"
    async with FluxClient(fake.url, token="right") as c:
        await c.workers()
        assert fake.seen[-1][3] == "Bearer right"
        with pytest.raises(FluxClientError) as proxy:
            await c.health()  # an HTML error page (a proxy's) becomes one line
        assert str(proxy.value) == "502 http-502: <html>502 Bad Gateway</html>"
        with pytest.raises(FluxClientError) as odd:
            await c.list_workflows()
        assert odd.value.code == "bad-response" and "not json" in odd.value.detail


@pytest.mark.trio
async def test_the_client_runs_on_asyncio_too(fake):
    """FluxClient is anyio code: HTTP, SSE and the WebSocket stream work on asyncio as well."""

    async def on_asyncio() -> tuple:
        async with FluxClient(fake.url) as c:
            cancelled = await c.cancel("e1")
            streamed = [m async for m in c.stream("hello", 1)]
            async with aclosing(c.follow("e1", 1)) as events:
                followed = [e async for e in events]
        return cancelled["state"], len(streamed), followed

    state, n, followed = await trio.to_thread.run_sync(asyncio.run, on_asyncio())
    assert (state, n, followed) == ("CANCELLED", 6, EVENTS[1:])


# ---------------------------------------------------------------------------- pure helpers


def test_sse_parser():
    p = _SSEParser()
    lines = [": comment", "event: x", "data: {", 'data:  "a": 1}', "id: 7", "retry: 5", ""]
    out = [p.feed(line) for line in lines]
    assert out[:-1] == [None] * 6 and out[-1] == ("x", '{\n "a": 1}')
    assert p.feed("") is None  # no data: nothing dispatched
    assert p.feed("data:2") is None and p.feed("") == ("message", "2")


def test_progress_from_events_only():
    p = Progress(execution_id="e1")
    for e in EVENTS[:3]:
        p.update(e)
    assert (p.state, p.settled, p.workflow_name, p.input) == ("RUNNING", False, "hello", 21)
    p.update(EVENTS[3])
    assert p.settled and p.summary == {
        "workflow_name": "hello",
        "execution_id": "e1",
        "input": 21,
        "output": {"doubled": 42},
        "state": "COMPLETED",
    }
    paused = Progress()
    paused.update(ev(5, "WORKFLOW_PAUSED", "asker", "approve"))
    assert paused.state == "PAUSED" and paused.settled and paused.output is None
    failed = Progress()
    failed.update(ev(9, "WORKFLOW_FAILED", "f", {"type": "x.Boom", "message": "kaboom"}))
    assert failed.state == "FAILED" and failed.output["message"] == "kaboom"
    assert failed.events == 1


def test_event_lines():
    line = event_line(EVENTS[2])
    assert line.split() == ["3", "19:13:03", "TASK_COMPLETED", "double#0", "42"]
    long = event_line(ev(2, "TASK_STARTED", "t#0", "x" * 500), width=100)
    assert len(long) == 100 and long.endswith("...")
    assert event_line(summary("e1", "PAUSED")) == "execution e1: PAUSED"
    assert event_line({"other": 1}) == '{"other": 1}'
    assert "\n" not in event_line(ev(1, "TASK_COMPLETED", "t#0", "a\nb"))


def test_error_message_forms():
    assert str(FluxClientError(404, "not-found", "x")) == "404 not-found: x"
    assert str(FluxClientError(None, "internal", "y")) == "internal: y"
    e = FluxClientError(None, "unreachable", "refused", "cannot reach the Flux server at u: no")
    assert (str(e), e.status, e.code, e.detail) == (
        "cannot reach the Flux server at u: no",
        None,
        "unreachable",
        "refused",
    )


# ---------------------------------------------------------------------------- the example


@needs("stream", "cancel")
@pytest.mark.slow
def test_example_client_flow(procs, tmp_path):  # noqa: F811 - the fixture
    """examples/distributed_client_flow.py against a server and a worker (real processes)."""
    _, url = procs.server(str(tmp_path / "flux.db"))
    procs.worker(url, "example", concurrency=2)
    out = subprocess.run(
        [PYTHON, os.path.join(ROOT, "examples", "distributed_client_flow.py"), url],
        cwd=tmp_path,
        env=procs.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.splitlines()[-1] == (
        "client flow: sync COMPLETED, async COMPLETED, stream COMPLETED, "
        "resume COMPLETED, cancel CANCELLED"
    )
