"""Helpers for end-to-end tests: real server and worker processes on 127.0.0.1.

Import what you need from here (``from tests.conftest_net import ...``). Every process started
through :class:`Procs` is killed when the test ends, whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

#: Workflows the end-to-end tests upload. Tasks append a line to ``ctx.input["log"]`` when they
#: start and end, so tests count how often each body ran.
WORKFLOWS = """
import os
import time

import anyio

from flux import task, workflow
from flux.tasks import call, pause, sleep


def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\\n")
        f.flush()


@task
async def step(log, i, seconds):
    note(log, f"start {i} {os.getpid()}")
    await anyio.sleep(seconds)
    note(log, f"done {i} {os.getpid()}")
    return i * i


@workflow
async def chain(ctx):
    total = 0
    for i in range(ctx.input["n"]):
        total += await step(ctx.input["log"], i, ctx.input.get("seconds", 0.0))
    return total


@task
async def double(x):
    return x * 2


@workflow
async def hello(ctx):
    return {"doubled": await double(ctx.input)}


@workflow
async def asker(ctx):
    answer = await pause("approve")
    return {"answer": answer}


@workflow
async def child(ctx):
    return await double(ctx.input)


@workflow
async def parent(ctx):
    a = await call(child, ctx.input)
    b = await call(child, a)
    return [a, b]


@workflow
async def sleeper(ctx):
    await sleep(ctx.input)
    return "awake"


class Boom(Exception):
    pass


@task
async def explode():
    raise Boom("kaboom")


@workflow
async def failing(ctx):
    await explode()


@task.with_options(cache=True)
async def expensive(log, x):
    note(log, f"cached {x} {os.getpid()}")
    return x * 10


@workflow
async def cached(ctx):
    return await expensive(ctx.input["log"], ctx.input["x"])


@task.with_options(secret_requests=["API_KEY"])
async def use_secret(secrets):
    return len(secrets["API_KEY"])


@workflow
async def secretive(ctx):
    return await use_secret()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def net_env(tmp_path: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["FLUX_SECRET_KEY_FILE"] = str(tmp_path / "secret.key")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FLUX_SECRET_KEY", None)
    env.pop("FLUX_DB", None)
    return env


class Proc:
    """One subprocess and its log file."""

    def __init__(self, args: list[str], log_path: str, env: dict[str, str]):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "flux.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.popen.pid

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.popen.wait(timeout)

    def close(self) -> None:
        try:
            self.kill9()
        finally:
            self._log.close()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Procs:
    """Starts servers and workers; :meth:`close` kills them all."""

    def __init__(self, tmp_path: Any):
        self.tmp_path = tmp_path
        self.env = net_env(tmp_path)
        self.all: list[Proc] = []

    def server(
        self,
        db: str | None = None,
        port: int | None = None,
        *,
        store: str | None = None,
        lease_ttl: float = 5.0,
        extra: tuple = (),
    ) -> tuple[Proc, str]:
        """A server on ``db`` (a SQLite path) or ``store`` (any store URL, e.g. PostgreSQL)."""
        if (db is None) == (store is None):
            raise TypeError("give the server a db or a store, not both")
        port = port or free_port()
        log = str(self.tmp_path / f"server-{port}-{len(self.all)}.log")
        proc = Proc(
            [
                "start",
                "server",
                "--port",
                str(port),
                *(["--db", db] if db is not None else ["--store", store]),
                "--lease-ttl",
                str(lease_ttl),
                "--durability",
                "normal",
                *extra,
            ],
            log,
            self.env,
        )
        self.all.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), 20, f"server on {url}", proc)
        return proc, url

    def worker(
        self, url: str | list[str], name: str, *, concurrency: int = 1, wait: bool = True
    ) -> Proc:
        """A worker on the server at ``url``, or failing over between several (a list)."""
        log = str(self.tmp_path / f"worker-{name}-{len(self.all)}.log")
        urls = [url] if isinstance(url, str) else url
        options = [word for u in urls for word in ("--server-url", u)]
        proc = Proc(
            ["start", "worker", name, *options, "--concurrency", str(concurrency)],
            log,
            self.env,
        )
        self.all.append(proc)
        if wait:
            wait_for(lambda: f"connected as {name}-" in proc.log(), 20, f"worker {name}", proc)
        return proc

    def close(self) -> None:
        for proc in self.all:
            proc.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{what}: process exited\n{proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            detail = proc.log()[-3000:] if proc is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.02)


@pytest.fixture
def procs(tmp_path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def upload(url: str, source: str = WORKFLOWS, filename: str = "workflows.py") -> httpx.Response:
    return httpx.post(url + "/workflows", files={"file": (filename, source.encode())}, timeout=10)


def status(url: str, name: str, execution_id: str, detailed: bool = False) -> dict:
    params = {"detailed": "true"} if detailed else {}
    r = httpx.get(f"{url}/workflows/{name}/status/{execution_id}", params=params, timeout=10)
    r.raise_for_status()
    return r.json()


def wait_state(
    url: str,
    name: str,
    execution_id: str,
    states: set[str],
    timeout: float,
    proc: Proc | None = None,
) -> dict:
    found: dict = {}

    def done() -> bool:
        found.update(status(url, name, execution_id))
        return found["state"] in states

    wait_for(done, timeout, f"execution {execution_id} in {states}", proc)
    return found


def lines(path: Any) -> list[str]:
    try:
        with open(path) as f:
            return [line.split() for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


def committed_events(db: str, execution_id: str) -> list[tuple]:
    """The events committed so far, read with a separate SQLite connection (WAL readers)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(
            "SELECT seq, type, call_id, value FROM events WHERE execution_id = ? ORDER BY seq",
            (execution_id,),
        ).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- in-process server

#: Workflows of the in-process API tests (tests/test_api*.py, test_streams.py, test_security.py).
API_WORKFLOWS = """
import anyio
from flux import task, workflow
from flux.tasks import call, parallel, pause


def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\\n")


@task
async def double(x):
    return x * 2


@workflow
async def hello(ctx):
    return {"doubled": await double(ctx.input)}


@workflow
async def asker(ctx):
    return {"answer": await pause("approve")}


@task
async def tick(i, seconds):
    await anyio.sleep(seconds)
    return i


@workflow
async def ticker(ctx):
    out = []
    for i in range(ctx.input["n"]):
        out.append(await tick(i, ctx.input.get("seconds", 0.05)))
    return out


async def undo(path, i, seconds):
    note(path, f"rollback {i}")


@task.with_options(rollback=undo)
async def hold(path, i, seconds):
    note(path, f"start {i}")
    await anyio.sleep(seconds)
    note(path, f"done {i}")
    return i


@workflow
async def holder(ctx):
    log = ctx.input["log"]
    return await parallel(hold(log, 0, ctx.input["seconds"]), hold(log, 1, ctx.input["seconds"]))


@workflow
async def kid(ctx):
    return {"kid": await pause("kid-approval"), "input": ctx.input}


@workflow
async def guardian(ctx):
    return {"guardian": await call(kid, ctx.input)}


@task.with_options(secret_requests=["API_KEY"])
async def use_secret(secrets):
    return len(secrets["API_KEY"])


@task
async def nosy(**kwargs):
    return sorted(kwargs)


@workflow
async def secretive(ctx):
    return [await use_secret(), await nosy()]
"""


@attrs.frozen
class Live:
    """A server served in this trio run (and maybe an in-process worker)."""

    url: str
    app: Any
    tmp: Any

    @property
    def server(self) -> Any:
        return self.app.extensions["flux"]


async def start_live(
    nursery: Any,
    tmp_path: Any,
    *,
    worker: bool = True,
    concurrency: int = 4,
    upload_source: bool = True,
    worker_token: str | None = None,
    **server_kw: Any,
) -> Live:
    """Serve an app on 127.0.0.1:0 in ``nursery`` with API_WORKFLOWS uploaded; with ``worker``,
    an in-process worker connected to it."""
    import functools

    from flux.net.server import ServerSettings, create_app, serve_server
    from flux.net.worker import serve_worker
    from flux.runtime.settings import Settings

    settings = Settings(
        db_path=str(tmp_path / "api.db"),
        durability="normal",
        secret_key_file=str(tmp_path / "secret.key"),
    )
    server_kw.setdefault("lease_ttl", 2.0)
    server_settings = ServerSettings(port=0, worker_token=worker_token, **server_kw)
    app = create_app(settings, server_settings)
    address = await nursery.start(
        functools.partial(serve_server, settings, server_settings, app=app)
    )
    if upload_source:
        headers = {}
        if server_settings.api_token:
            headers["Authorization"] = f"Bearer {server_settings.api_token}"
        async with httpx.AsyncClient(base_url=address.url, headers=headers) as c:
            r = await c.post("/workflows", files={"file": ("api_flows.py", API_WORKFLOWS.encode())})
            assert r.status_code == 200, r.text
    if worker:
        await nursery.start(
            functools.partial(
                serve_worker, "api-test", address.url, concurrency, token=worker_token
            )
        )
    return Live(address.url, app, tmp_path)
