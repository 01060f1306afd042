"""Issue 9 against an in-process server on 127.0.0.1: input that cannot hurt later requests
(item 11), names that are the names that run (12), stored values served as plain data (9),
secret values never recorded (13) and bounded inputs from workers (8)."""

from __future__ import annotations

import dataclasses
import glob
import logging
import socket
import time

import httpx
import pytest
import trio
import trio_websocket

from flux.net import protocol as p
from flux.net.views import MAX_JSON_DEPTH
from flux.runtime import codec
from flux.runtime.events import ExecutionState
from flux.runtime.store import ExecutionRecord, StoredEvent, Write
from tests.conftest_net import Live, start_live

pytestmark = pytest.mark.trio


def client(live: Live) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.url, timeout=30)


def nested(depth: int):
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return value


async def wait_state(c: httpx.AsyncClient, eid: str, states: set[str], timeout: float = 20):
    with trio.fail_after(timeout):
        while True:
            body = (await c.get(f"/executions/{eid}", params={"detailed": "true"})).json()
            if body["state"] in states:
                return body
            await trio.sleep(0.02)


# ---------------------------------------------------------------------------- item 11


async def test_deep_json_is_refused_before_anything_is_stored(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False)
    async with client(live) as c:
        before = (await c.get("/executions")).json()["total"]
        for depth in (MAX_JSON_DEPTH + 1, 500, 800, 5000):
            text = "[" * depth + "]" * depth
            r = await c.post(
                "/workflows/hello/run/async",
                content=text,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 400, (depth, r.text)
            assert r.json()["error"] == "bad-json"
            assert f"more than {MAX_JSON_DEPTH} levels" in r.json()["detail"]
        ok = await c.post("/workflows/hello/run/async", json=nested(MAX_JSON_DEPTH))
        assert ok.status_code == 200, ok.text
        listing = await c.get("/executions")
        assert listing.status_code == 200 and listing.json()["total"] == before + 1


async def test_one_bad_stored_row_cannot_break_a_listing(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False)
    store = live.server.store
    now = time.time()
    rows = {
        "deep": codec.encode(nested(480)),  # what a worker may well have stored
        "garbage": b"\xc1\xc1 not msgpack",
    }
    for eid, output in rows.items():
        record = ExecutionRecord(
            execution_id=eid,
            workflow_name="hello",
            workflow_version=1,
            parent_id=None,
            input=codec.encode(None),
            state=ExecutionState.COMPLETED,
            created_at=now,
        )
        started = StoredEvent(eid, 1, "WORKFLOW_STARTED", "hello", "hello", output, now)
        await store.commit(Write(eid, [started], insert=record))
        await store.commit(Write(eid, update={"output": output}))
    async with client(live) as c:
        ok = (await c.post("/workflows/hello/run/async", json=3)).json()["execution_id"]
        listing = await c.get("/executions")
        assert listing.status_code == 200, listing.text
        shown = {e["execution_id"]: e for e in listing.json()["executions"]}
        assert set(shown) == {"deep", "garbage", ok}
        assert "nested more than" in shown["deep"]["output"]
        assert shown["garbage"]["output"].startswith("<undecodable")
        assert shown[ok]["input"] == 3
        for eid in rows:
            r = await c.get(f"/executions/{eid}", params={"detailed": "true"})
            assert r.status_code == 200, r.text
            assert isinstance(r.json()["events"][0]["value"], str)


def _raw_request(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def _read_response(sock: socket.socket, timeout: float) -> bytes:
    """Read one response (or until the peer closes); raises socket.timeout if it hangs."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


async def test_after_a_413_the_next_request_on_the_connection_is_answered_or_closed(
    nursery, tmp_path
):
    live = await start_live(
        nursery, tmp_path, worker=False, upload_source=False, max_body_size=1024
    )
    port = int(live.url.rsplit(":", 1)[1])

    def exchange() -> list[bytes]:
        outcomes = []
        # the whole body sent, or the client still sending when the 413 comes, small or large
        for size, sent in [(600, None), (5000, None), (5000, 2000), (500_000, None)] * 3:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                body = b"[" + b"1," * size + b"1]"
                _raw_request(
                    sock,
                    b"POST /workflows/hello/run/async HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body[:sent],
                )
                first = _read_response(sock, 5)
                assert first.startswith(b"HTTP/1.1 413"), first[:200]
                assert b"connection: close" in first.lower()
                try:
                    _raw_request(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    second = _read_response(sock, 5)  # socket.timeout here is the old hang
                except (BrokenPipeError, ConnectionResetError):
                    second = b""
                assert second == b"" or second.startswith(b"HTTP/1.1 200"), second[:200]
                outcomes.append(second)
        return outcomes

    outcomes = await trio.to_thread.run_sync(exchange)
    assert len(outcomes) == 12
    async with client(live) as c:  # and the server serves on
        assert (await c.get("/health")).status_code == 200


# ---------------------------------------------------------------------------- item 12

NAMED = """
from flux import workflow

NAME = "computed"

@workflow.with_options(name={name})
async def {func}(ctx):
    return 1
"""


@pytest.mark.parametrize(
    "name,words",
    [
        ("None", "not a string literal"),
        ("NAME", "not a string literal"),
        ("'a' + 'b'", "not a string literal"),
        ("'a/b'", "contains '/'"),
        ("'a\\nb'", "control character"),
        ("''", "empty name"),
        ("'x' * 300", "not a string literal"),
        (repr("y" * 300), "over the limit"),
    ],
)
async def test_unusable_workflow_names_are_refused_at_upload(nursery, tmp_path, name, words):
    live = await start_live(nursery, tmp_path, worker=False, upload_source=False)
    source = NAMED.format(name=name, func="the_function")
    async with client(live) as c:
        r = await c.post("/workflows", files={"file": ("named.py", source.encode())})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "bad-source"
        assert "'the_function'" in body["detail"] and words in body["detail"], body
        assert (await c.get("/workflows")).json() == []


async def test_a_literal_name_is_the_name_that_runs(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    source = NAMED.format(name="'billing.monthly-run v2'", func="f")
    async with client(live) as c:
        r = await c.post("/workflows", files={"file": ("named.py", source.encode())})
        assert r.status_code == 200 and r.json()[0]["name"] == "billing.monthly-run v2"
        run = await c.post("/workflows/billing.monthly-run v2/run/sync", json=None)
        assert run.status_code == 200 and run.json()["state"] == "COMPLETED", run.text


# ---------------------------------------------------------------------------- item 9

CONSTRUCTED: list[int] = []


@dataclasses.dataclass
class Spy:
    """Built by the codec only with class lookup: building it is visible."""

    x: int

    def __post_init__(self) -> None:
        CONSTRUCTED.append(self.x)


async def test_the_api_serves_stored_values_as_plain_data(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False)
    store = live.server.store
    now = time.time()
    value = codec.encode({"spy": Spy(7), "error": ValueError("bad")})
    record = ExecutionRecord(
        execution_id="spied",
        workflow_name="hello",
        workflow_version=1,
        parent_id=None,
        input=value,
        state=ExecutionState.COMPLETED,
        created_at=now,
    )
    first = StoredEvent("spied", 1, "WORKFLOW_STARTED", "hello", "hello", value, now)
    await store.commit(Write("spied", [first], insert=record))
    await store.commit(Write("spied", update={"output": value}))
    CONSTRUCTED.clear()
    async with client(live) as c:
        one = (await c.get("/executions/spied", params={"detailed": "true"})).json()
        listing = (await c.get("/executions")).json()
        status = (await c.get("/workflows/hello/status/spied", params={"detailed": "true"})).json()
    assert CONSTRUCTED == []  # no class was built, though it is importable here
    # an error is served as its type, message and traceback text (empty: never raised)
    expected = {
        "spy": {"x": 7},
        "error": {"type": "builtins.ValueError", "message": "bad", "traceback": ""},
    }
    assert one["input"] == one["output"] == expected
    assert one["events"][0]["value"] == expected
    assert listing["executions"][0]["output"] == expected
    assert status["events"][0]["value"] == expected


# ---------------------------------------------------------------------------- item 13

SECRET = "s3cr3t-Value-9f8e7d"

LEAKY = """
from flux import task, workflow


class Leak(Exception):
    def __init__(self, message, token):
        super().__init__(message)
        self.token = token


@task.with_options(secret_requests=["API_KEY"])
async def returns_it(secrets):
    return {"key": secrets["API_KEY"], "nested": ["x", secrets["API_KEY"] + "-suffix"]}


@task.with_options(secret_requests=["API_KEY"])
async def raises_it(secrets):
    raise Leak(f"cannot log in with {secrets['API_KEY']}", secrets["API_KEY"])


@task.with_options(secret_requests=["API_KEY"], cache=True)
async def cached_token(secrets):
    return "tok:" + secrets["API_KEY"]


@workflow
async def leaky(ctx):
    await cached_token()  # the cache is in the database file too
    value = await returns_it()
    try:
        await raises_it()
    except Exception as exc:
        return {"value": value, "caught": exc, "text": str(exc)}
"""


async def test_secret_values_are_never_recorded(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    async with client(live) as c:
        r = await c.post("/workflows", files={"file": ("leaky.py", LEAKY.encode())})
        assert r.status_code == 200, r.text
        r = await c.post("/admin/secrets", json={"name": "API_KEY", "value": SECRET})
        assert r.status_code == 200
        async with c.stream("POST", "/workflows/leaky/run/stream", json=None) as sse:
            streamed = "".join([chunk async for chunk in sse.aiter_text()])
        eid = streamed.split('"execution_id": "', 1)[1].split('"', 1)[0]
        done = await wait_state(c, eid, {"COMPLETED", "FAILED"})
        assert done["state"] == "COMPLETED", done
        out = done["output"]
        assert out["value"] == {"key": "***", "nested": ["x", "***-suffix"]}
        assert out["text"] == "cannot log in with ***"
        assert out["caught"]["message"] == "cannot log in with ***"
        shown = [
            (await c.get(f"/executions/{eid}", params={"detailed": "true"})).text,
            (await c.get("/executions")).text,
            (await c.get(f"/workflows/leaky/status/{eid}", params={"detailed": "true"})).text,
            streamed,
        ]
    ws_url = live.url.replace("http://", "ws://") + f"/executions/{eid}/events?from=0"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        with trio.fail_after(10):
            try:
                while True:
                    shown.append(await ws.get_message())
            except trio_websocket.ConnectionClosed:
                pass  # closed once the history is sent: the execution ended
    assert any("WORKFLOW_COMPLETED" in text for text in shown[4:])
    for text in shown:
        assert SECRET not in text
    for path in glob.glob(str(tmp_path / "api.db*")):
        with open(path, "rb") as f:
            assert SECRET.encode() not in f.read(), path


# ---------------------------------------------------------------------------- item 8


def connect(live: Live):
    return trio_websocket.open_websocket_url(
        live.url.replace("http://", "ws://") + "/workers/connect"
    )


async def hello(ws: trio_websocket.WebSocketConnection, **fields) -> p.Message:
    frame = codec.encode({"type": "hello", "protocol_version": 1, "token": None, **fields})
    await ws.send_message(frame)
    return p.from_frame(await ws.get_message())


async def test_bounded_inputs_from_workers(nursery, tmp_path, caplog):
    live = await start_live(nursery, tmp_path, worker=False, max_capacity=8)
    caplog.set_level(logging.INFO, logger="flux")
    async with connect(live) as ws:
        # capacity: capped at the server's maximum, and the worker is told
        welcome = await hello(ws, name="greedy", capacity=2**63 - 1)
        assert isinstance(welcome, p.Welcome) and welcome.capacity == 8
        async with client(live) as c:
            (info,) = (await c.get("/workers")).json()
            assert info["capacity"] == 8 and info["name"] == "greedy"
        # a heartbeat naming 100k leases it does not hold: one log line, not 100k
        caplog.clear()
        leases = [[f"nope-{i}", 1] for i in range(100_000)]
        await ws.send_message(codec.encode({"type": "heartbeat", "leases": leases, "running": 0}))
        rejects = 0
        with trio.fail_after(30):
            while rejects < 1000:
                msg = p.from_frame(await ws.get_message())
                assert isinstance(msg, p.Reject)
                rejects += 1
        await trio.sleep(0.2)
        lines = [r.getMessage() for r in caplog.records if "nope-" in r.getMessage()]
        assert len(lines) == 1, len(lines)
        assert "100000 lease(s)" in lines[0] and len(lines[0]) < 600
    # a name with a control character is refused; a long one is cut
    async with connect(live) as ws:
        refused = await hello(ws, name="evil\nINFO forged line", capacity=1)
        assert isinstance(refused, p.Error) and refused.code == "bad-field"
        assert "control characters" in refused.detail
    async with connect(live) as ws:
        welcome = await hello(ws, name="n" * 100_000, capacity=1)
        assert isinstance(welcome, p.Welcome)
        assert len(welcome.worker_id) <= p.MAX_WORKER_NAME + 9
        async with client(live) as c:
            names = [w["name"] for w in (await c.get("/workers")).json()]
        assert names and all(len(n) <= p.MAX_WORKER_NAME for n in names)
    assert not any(len(r.getMessage()) > 2000 for r in caplog.records)


# ---------------------------------------------------------------------------- the example


async def test_the_limits_example_runs(tmp_path):
    import functools
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("FLUX_SECRET_KEY", None)
    run = functools.partial(
        subprocess.run,
        [sys.executable, os.path.join(root, "examples", "distributed_limits.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = await trio.to_thread.run_sync(run)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "100 rows: COMPLETED 1500 characters"
    assert lines[1].startswith("100000 rows: COMPLETED too large: task 'export_rows'")
    assert "1500005 bytes, over the limit of 258048 bytes" in lines[1]
    assert lines[2:] == ["session: signed in with ***", "secret in the history: False"]
