"""Task logs across processes: a real server and worker on 127.0.0.1, the ``logs`` frame, the
HTTP API (JSON pages, SSE follow), the client and ``flux executions logs`` (embedded and with
--server-url)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import httpx
import pytest
import trio

from flux.net import protocol as p
from flux.net.client import FluxClient
from tests.conftest import PYTHON, subprocess_env
from tests.conftest_net import (
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

SOURCE = textwrap.dedent(
    """
    import logging
    import anyio
    from flux import task, workflow
    from flux.tasks import parallel

    log = logging.getLogger("shop")
    log.setLevel(logging.INFO)

    @task
    async def talker(name: str, n: int) -> str:
        for i in range(n):
            print(f"{name} says {i}")
            await anyio.sleep(0.001)
            log.info("%s logged %d", name, i)
        return name

    @task.with_options(secret_requests=["TOKEN"])
    async def authed(secrets: dict) -> None:
        print("using token", secrets["TOKEN"])

    @task
    def in_thread() -> None:
        log.warning("from a thread")

    @workflow
    async def talkers(ctx):
        await parallel(talker("ann", 4), talker("bob", 4))
        await authed()
        await in_thread()
        return "done"

    @task
    async def ticker(n: int) -> None:
        for i in range(n):
            print(f"tick {i}")
            await anyio.sleep(0.2)

    @workflow
    async def ticking(ctx):
        await ticker(ctx.input)

    @task
    async def flood() -> None:
        for i in range(2000):
            print(f"flood {i:04d} " + "z" * 50)

    @workflow.with_options(log_limit=3000)
    async def flooded(ctx):
        await flood()
    """
)


def test_the_logs_frame_checks_its_lines():
    msg = p.Logs(
        execution_id="e",
        epoch=1,
        lines=[["c#0", 1, "INFO", "stdout", 1.5, "hello"]],
        limit=100,
    )
    data = p.to_frame(msg)
    back = p.from_frame(data)
    assert back == msg
    for bad, problem in (
        ([["c#0", 1, "INFO", "stdout", 1.5]], "must be [call_id"),
        ([["c#0", -1, "INFO", "stdout", 1.5, "x"]], "lines[0][1]"),
        ([["c#0", 1, "INFO", "stdout", float("nan"), "x"]], "finite"),
        ([["c#0", 1, "INFO", 7, 1.5, "x"]], "lines[0][3]"),
    ):
        with pytest.raises(p.LocalProtocolError, match=problem.replace("[", r"\[")):
            p.Logs(execution_id="e", epoch=1, lines=bad)
    # a worker sends them; a server never does
    server = p.ServerSession()
    with pytest.raises(p.LocalProtocolError):
        server.send(msg)


def get_logs(url, eid, **params):
    r = httpx.get(f"{url}/executions/{eid}/logs", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def run_sync(url, name, value=None):
    r = httpx.post(f"{url}/workflows/{name}/run/sync", json=value, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_logs_of_a_worker_process_over_http_json_sse_client_and_cli(procs, tmp_path):  # noqa: F811
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, SOURCE, "shop.py").status_code == 200
    r = httpx.post(f"{url}/admin/secrets", json={"name": "TOKEN", "value": "tok-9f8e7d"})
    assert r.status_code in (200, 201, 204), r.text
    worker = procs.worker(url, "logger", concurrency=4)

    done = run_sync(url, "talkers")
    assert done["state"] == "COMPLETED", done
    eid = done["execution_id"]
    page = get_logs(url, eid)
    assert page["execution_id"] == eid and page["state"] == "COMPLETED"
    lines = page["lines"]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert page["after"] == lines[-1]["seq"]
    by_call: dict[str, list[str]] = {}
    for line in lines:
        by_call.setdefault(line["call_id"], []).append(line["message"])
    for call, name in (("parallel#0/talker#0", "ann"), ("parallel#0/talker#1", "bob")):
        assert by_call[call] == [
            m for i in range(4) for m in (f"{name} says {i}", f"{name} logged {i}")
        ]
    assert by_call["authed#1"] == ["using token ***"]
    assert by_call["in_thread#2"] == ["from a thread"]
    first = lines[0]
    assert set(first) == {"seq", "call_id", "attempt", "level", "logger", "time", "message"}
    assert first["attempt"] == 1 and first["time"].startswith("20")
    # the secret is nowhere in the server's database
    raw = b""
    for suffix in ("", "-wal"):
        path = str(tmp_path / "flux.db") + suffix
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw += f.read()
    assert b"tok-9f8e7d" not in raw
    # pages, the call filter, errors
    assert [x["seq"] for x in get_logs(url, eid, after=2, limit=3)["lines"]] == [3, 4, 5]
    assert {x["call_id"] for x in get_logs(url, eid, call="parallel#0/talker#1")["lines"]} == {
        "parallel#0/talker#1"
    }
    assert httpx.get(f"{url}/executions/nope/logs").status_code == 404
    r = httpx.get(f"{url}/executions/{eid}/logs", params={"after": "-1"})
    assert r.status_code == 400 and r.json()["error"] == "bad-parameter"
    r = httpx.get(f"{url}/executions/{eid}/logs", params={"limit": "0"})
    assert r.status_code == 400

    # the limit on a worker: the lines kept fit, one marker says the rest
    flooded = run_sync(url, "flooded")
    fl = get_logs(url, flooded["execution_id"], limit=5000)["lines"]
    assert sum(len(x["message"].encode()) for x in fl[:-1]) <= 3000
    assert fl[-1]["logger"] == "flux.logs" and "later line(s)" in fl[-1]["message"]
    assert fl[0]["message"].startswith("flood 0000")

    # SSE follow: live lines of a running execution, then the end
    eid2 = httpx.post(f"{url}/workflows/ticking/run/async", json=8).json()["execution_id"]
    got: list[tuple[str, str]] = []
    started = time.monotonic()
    with httpx.stream(
        "GET", f"{url}/executions/{eid2}/logs", params={"follow": "true"}, timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for raw_line in response.iter_lines():
            if raw_line.startswith("event: "):
                event = raw_line[7:]
            elif raw_line.startswith("data: "):
                data = json.loads(raw_line[6:])
                got.append((event, data))
                if event == "log" and data["message"] == "tick 0":
                    first_at = time.monotonic() - started
    assert [d["message"] for e, d in got if e == "log"] == [f"tick {i}" for i in range(8)]
    assert got[-1] == ("end", {"execution_id": eid2, "state": "COMPLETED"})
    assert first_at < 1.2  # live, not at the end (the run takes 1.6 s)

    # the client
    async def with_client():
        async with FluxClient(url) as client:
            page = await client.logs(eid, limit=2)
            assert [x["seq"] for x in page["lines"]] == [1, 2]
            followed = [x["message"] async for x in client.follow_logs(eid, after=16)]
            return followed

    followed = trio.run(with_client)
    assert followed == [x["message"] for x in lines[16:]]

    # the CLI with --server-url
    env = subprocess_env(tmp_path)
    out = subprocess.run(
        [PYTHON, "-m", "flux.cli", "executions", "logs", eid2, "--server-url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    shown = out.stdout.splitlines()
    assert len(shown) == 8 and shown[0].endswith(" INFO    ticker#0 stdout: tick 0")
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "flux.cli",
            "executions",
            "logs",
            eid,
            "--server-url",
            url,
            "--follow",
            "--call",
            "authed#1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (only,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert only["message"] == "using token ***" and only["call_id"] == "authed#1"
    worker.terminate()


EMBEDDED = textwrap.dedent(
    """
    from flux import task, workflow

    @task
    async def say(n: int) -> None:
        for i in range(n):
            print(f"said {i}")

    @workflow
    async def sayer(ctx):
        await say(ctx.input)
    """
)


def test_cli_logs_of_an_embedded_run(tmp_path):
    path = tmp_path / "sayer.py"
    path.write_text(EMBEDDED)
    env = subprocess_env(tmp_path)
    out = subprocess.run(
        [PYTHON, "-m", "flux.cli", "run", f"{path}:sayer", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # the task's prints still reach the terminal (echo), and the id is on stderr
    assert out.stdout.splitlines()[:3] == ["said 0", "said 1", "said 2"]
    eid = out.stderr.split()[1].rstrip(":")
    for args in ([], ["--follow"]):
        shown = subprocess.run(
            [PYTHON, "-m", "flux.cli", "executions", "logs", eid, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert [line.split(": ", 1)[1] for line in shown.stdout.splitlines()] == [
            "said 0",
            "said 1",
            "said 2",
        ]
    missing = subprocess.run(
        [PYTHON, "-m", "flux.cli", "executions", "logs", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert missing.returncode != 0 and "nope" in missing.stderr


KILLED = textwrap.dedent(
    """
    import anyio
    from flux import task, workflow

    @task
    async def step(i: int) -> int:
        print(f"step {i} running")
        await anyio.sleep(0.3)
        print(f"step {i} done")
        return i

    @workflow
    async def steps(ctx):
        total = 0
        for i in range(ctx.input):
            total += await step(i)
        return total
    """
)


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing_acknowledged_and_seqs_go_on(
    procs,  # noqa: F811
    tmp_path,
):
    server, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    assert upload(url, KILLED, "steps.py").status_code == 200
    first = procs.worker(url, "doomed", concurrency=1)
    eid = httpx.post(f"{url}/workflows/steps/run/async", json=8).json()["execution_id"]

    def some_lines() -> bool:
        return len(get_logs(url, eid)["lines"]) >= 4

    wait_for(some_lines, 20, "lines of the first worker", first)
    first.kill9()
    second = procs.worker(url, "heir", concurrency=1)

    def done() -> bool:
        return httpx.get(f"{url}/executions/{eid}").json()["state"] == "COMPLETED"

    wait_for(done, 60, "the execution to finish on the second worker", second)
    lines = get_logs(url, eid)["lines"]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))  # no hole, no clash
    texts = [x["message"] for x in lines]
    # every step that completed said so once; the step cut by the kill ran again (twice started)
    for i in range(8):
        assert texts.count(f"step {i} done") == 1, texts
    assert texts[-1] == "step 7 done"
    restarted = [t for t in texts if texts.count(t) > 1]
    assert set(restarted) <= {t for t in texts if t.endswith("running")}
    second.terminate()
