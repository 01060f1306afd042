"""Retry across real processes: a server, a worker process, HTTP, the client and the CLI."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import pytest

from tests.conftest_net import (
    ROOT,
    lines,
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow

#: ``BROKEN`` is replaced to upload a broken, then a fixed version of the source.
SOURCE = """
import os

from flux import task, workflow
from flux.tasks import call, parallel

BROKEN = {broken}


def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\\n")


@task
async def first(log, x):
    note(log, f"start first {{os.getpid()}}")
    return x + 1


@task
async def second(log, x):
    note(log, f"start second {{os.getpid()}}")
    if BROKEN or os.path.exists(log + ".fail"):
        raise ValueError("second is broken")
    return x * 10


@task
async def third(log, x):
    note(log, f"start third {{os.getpid()}}")
    return x - 1


@workflow
async def three(ctx):
    log = ctx.input["log"]
    a = await first(log, ctx.input["x"])
    b = await second(log, a)
    return await third(log, b)


@task.with_options(retry_max_attempts=2, retry_delay=0.05)
async def shaky(log, x):
    note(log, f"start shaky {{os.getpid()}}")
    if os.path.exists(log + ".fail"):
        raise RuntimeError("shaky")
    return x


@workflow
async def fan(ctx):
    log = ctx.input["log"]
    a = await first(log, ctx.input["x"])
    return list(await parallel(third(log, a), shaky(log, a)))


@workflow
async def boss(ctx):
    log = ctx.input["log"]
    a = await third(log, ctx.input["x"])
    return await call(three, {{"log": log, "x": a}})
"""


def _starts(log) -> dict[str, int]:
    out: dict[str, int] = {}
    for words in lines(log):
        out[words[1]] = out.get(words[1], 0) + 1
    return out


def _run(url: str, name: str, body: dict) -> dict:
    r = httpx.post(f"{url}/workflows/{name}/run/sync", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _retry(url: str, eid: str, **params: str) -> httpx.Response:
    return httpx.post(f"{url}/executions/{eid}/retry", params=params, timeout=60)


def _events(url: str, eid: str) -> list[tuple[str, str]]:
    r = httpx.get(f"{url}/executions/{eid}", params={"detailed": "true"}, timeout=10)
    return [(e["type"], e["source_id"]) for e in r.json()["events"]]


def test_retry_on_a_worker_after_the_source_is_fixed(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "flux.db")
    server, url = procs.server(db, lease_ttl=2.0)
    worker = procs.worker(url, "retrier")
    assert upload(url, SOURCE.format(broken=True), "retry_flows.py").status_code == 200
    log = str(tmp_path / "three.log")
    failed = _run(url, "three", {"log": log, "x": 1})
    assert failed["state"] == "FAILED"
    eid = failed["execution_id"]
    assert _starts(log) == {"first": 1, "second": 1}
    before = httpx.get(f"{url}/executions/{eid}", params={"detailed": "true"}).json()

    # the original's version runs: the bug is in the code, so it fails again, at task 2 only
    r = _retry(url, eid, wait="true")
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["state"] == "FAILED" and again["retry_of"] == eid
    assert again["workflow_version"] == 1 and again["child_retries"] == []
    assert _starts(log) == {"first": 1, "second": 2}

    # the fixed source, uploaded as version 2, runs with latest=true
    assert upload(url, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    r = _retry(url, eid, latest="true", wait="true")
    assert r.status_code == 201, r.text
    fixed = r.json()
    assert fixed["state"] == "COMPLETED" and fixed["output"] == 19
    assert fixed["workflow_version"] == 2
    assert _starts(log) == {"first": 1, "second": 3, "third": 1}  # task 1 ran once in all
    assert _events(url, fixed["execution_id"]) == [
        ("WORKFLOW_STARTED", "three"),
        ("TASK_STARTED", "first#0"),
        ("TASK_COMPLETED", "first#0"),
        ("TASK_STARTED", "second#1"),
        ("TASK_COMPLETED", "second#1"),
        ("TASK_STARTED", "third#2"),
        ("TASK_COMPLETED", "third#2"),
        ("WORKFLOW_COMPLETED", "three"),
    ]

    # linked both ways in the API; the original unchanged
    shown = httpx.get(f"{url}/executions/{eid}", params={"detailed": "true"}).json()
    assert shown.pop("retried_by") == [again["execution_id"], fixed["execution_id"]]
    assert shown == before
    child = httpx.get(f"{url}/executions/{fixed['execution_id']}").json()
    assert child["retry_of"] == eid
    listed = httpx.get(f"{url}/executions", params={"state": "COMPLETED"}).json()
    assert [e.get("retry_of") for e in listed["executions"]] == [eid]

    # a completed retry stands in the way of another one; what did not fail is refused
    r = _retry(url, eid)
    assert r.status_code == 409
    assert r.json()["retried_by"] == fixed["execution_id"] and r.json()["state"] == "FAILED"
    r = _retry(url, fixed["execution_id"])
    assert r.status_code == 409
    assert r.json()["state"] == "COMPLETED" and "not FAILED" in r.json()["detail"]
    r = _retry(url, "no-such-execution")
    assert r.status_code == 404 and r.json()["error"] == "execution-not-found"
    assert worker.popen.poll() is None and server.popen.poll() is None


def test_retry_inside_parallel_with_retries_and_a_child(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    procs.worker(url, "fanner", concurrency=4)
    assert upload(url, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    log = str(tmp_path / "fan.log")
    open(log + ".fail", "w").close()
    failed = _run(url, "fan", {"log": log, "x": 1})
    assert failed["state"] == "FAILED"
    assert _starts(log) == {"first": 1, "third": 1, "shaky": 3}
    kinds = [t for t, s in _events(url, failed["execution_id"]) if s.endswith("shaky#1")]
    assert kinds.count("TASK_RETRY_FAILED") == 2

    import os

    os.remove(log + ".fail")
    fixed = _retry(url, failed["execution_id"], wait="true").json()
    assert fixed["state"] == "COMPLETED" and fixed["output"] == [1, 2]
    assert _starts(log) == {"first": 1, "third": 1, "shaky": 4}
    kinds = [t for t, s in _events(url, fixed["execution_id"]) if s.endswith("shaky#1")]
    assert kinds == ["TASK_STARTED", "TASK_COMPLETED"]

    # a failed subworkflow is retried with its parent: neither one's completed work reruns
    log2 = str(tmp_path / "boss.log")
    open(log2 + ".fail", "w").close()
    failed = _run(url, "boss", {"log": log2, "x": 3})
    assert failed["state"] == "FAILED"
    assert _starts(log2) == {"third": 1, "first": 1, "second": 1}
    os.remove(log2 + ".fail")
    made = _retry(url, failed["execution_id"], wait="true").json()
    assert made["state"] == "COMPLETED" and made["output"] == (2 + 1) * 10 - 1
    assert len(made["child_retries"]) == 1
    assert _starts(log2) == {"third": 2, "first": 1, "second": 2}
    kid = httpx.get(f"{url}/executions/{made['child_retries'][0]}").json()
    assert kid["state"] == "COMPLETED" and "retry_of" in kid


def test_concurrent_retries_over_http_make_one(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    worker = procs.worker(url, "racer")
    assert upload(url, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    log = str(tmp_path / "race.log")
    open(log + ".fail", "w").close()
    eid = _run(url, "three", {"log": log, "x": 1})["execution_id"]
    # no worker while they race: the first retry stays queued (live), so it stands in the way
    # (with a worker it could fail again before the next request, which may then retry anew)
    assert worker.terminate() == 0
    codes: list[int] = []
    barrier = threading.Barrier(6)

    def hit() -> None:
        barrier.wait()
        codes.append(_retry(url, eid).status_code)

    threads = [threading.Thread(target=hit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [201] + [409] * 5
    retried = httpx.get(f"{url}/executions/{eid}").json()["retried_by"]
    assert len(retried) == 1
    assert [t for t, _ in _events(url, retried[0])] == [
        "WORKFLOW_STARTED",
        "TASK_STARTED",
        "TASK_COMPLETED",
        "TASK_STARTED",
    ]
    procs.worker(url, "racer2")
    wait_for(
        lambda: httpx.get(f"{url}/executions/{retried[0]}").json()["state"] == "FAILED",
        20,
        "the retry fails again (still broken)",
    )


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flux.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_cli_retry_with_a_server(procs, tmp_path):  # noqa: F811
    _, url = procs.server(str(tmp_path / "flux.db"), lease_ttl=2.0)
    procs.worker(url, "clier")
    assert upload(url, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    log = str(tmp_path / "cli.log")
    open(log + ".fail", "w").close()
    eid = _run(url, "three", {"log": log, "x": 2})["execution_id"]
    import os

    os.remove(log + ".fail")
    env = procs.env
    done = _cli("executions", "retry", eid, "--wait", "--server-url", url, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "29"
    assert f"retry of {eid}" in done.stderr
    shown = _cli("executions", "show", eid, "--server-url", url, env=env)
    assert "retried by " in shown.stdout
    refused = _cli("executions", "retry", eid, "--server-url", url, env=env)
    assert refused.returncode != 0 and "already retried by" in refused.stderr
    missing = _cli("executions", "retry", "nope", "--server-url", url, env=env)
    assert missing.returncode != 0 and "nope" in missing.stderr
    bad = _cli("executions", "retry", eid, "x.py", "--server-url", url, env=env)
    assert bad.returncode != 0 and "give no FILE" in bad.stderr


def test_a_queued_retry_survives_a_server_kill(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "flux.db")
    server, url = procs.server(db, lease_ttl=2.0)
    worker = procs.worker(url, "first")
    assert upload(url, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    log = str(tmp_path / "kill.log")
    open(log + ".fail", "w").close()
    eid = _run(url, "three", {"log": log, "x": 3})["execution_id"]
    assert worker.terminate() == 0
    import os

    os.remove(log + ".fail")
    made = _retry(url, eid).json()
    assert made["state"] == "SCHEDULED"
    server.kill9()  # the retry was committed before the answer: it must not be lost
    _, url2 = procs.server(db, lease_ttl=2.0)
    procs.worker(url2, "second")
    wait_for(
        lambda: (
            httpx.get(f"{url2}/executions/{made['execution_id']}").json()["state"] == "COMPLETED"
        ),
        30,
        "the retry to complete after the restart",
    )
    assert httpx.get(f"{url2}/executions/{made['execution_id']}").json()["output"] == 39
    assert _starts(log) == {"first": 1, "second": 2, "third": 1}


def test_two_servers_on_postgres_retry_at_once(procs, tmp_path, pg_url):  # noqa: F811
    _, a = procs.server(store=pg_url, lease_ttl=2.0)
    _, b = procs.server(store=pg_url, lease_ttl=2.0)
    assert upload(a, SOURCE.format(broken=False), "retry_flows.py").status_code == 200
    worker = procs.worker(a, "pg-worker")
    log = str(tmp_path / "pg.log")
    open(log + ".fail", "w").close()
    eid = _run(a, "three", {"log": log, "x": 1})["execution_id"]
    assert worker.terminate() == 0
    codes: dict[str, int] = {}
    barrier = threading.Barrier(2)

    def hit(url: str) -> None:
        barrier.wait()
        codes[url] = _retry(url, eid).status_code

    threads = [threading.Thread(target=hit, args=(u,)) for u in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes.values()) == [201, 409], codes
    retried = httpx.get(f"{b}/executions/{eid}").json()["retried_by"]
    assert len(retried) == 1
    import os

    os.remove(log + ".fail")
    procs.worker([a, b], "pg-worker-2")
    wait_for(
        lambda: httpx.get(f"{a}/executions/{retried[0]}").json()["state"] == "COMPLETED",
        30,
        "the one retry to complete",
    )
    assert _starts(log) == {"first": 1, "second": 2, "third": 1}
