"""Hostile user code and frozen workers, with real server and worker processes on 127.0.0.1.

- A task raising SystemExit / KeyboardInterrupt / GeneratorExit fails its execution; the worker
  keeps serving.
- A source calling sys.exit() at import fails its execution; one that hangs at import fails after
  the worker's load timeout, ends CANCELLED when cancelled, and does not keep SIGTERM from
  stopping the worker.
- A worker frozen (SIGSTOP) past its lease ttl, with leases and acks waiting in its socket, starts
  no task body once woken (SIGCONT).
- Losing the lease of a 3000-task fan-out is cheap: the worker goes on serving at once.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.conftest_net import (
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
    wait_state,
)
from tests.test_chaos import CHAOS

pytestmark = pytest.mark.slow

HOSTILE = """
import os
import sys

import anyio

from flux import task, workflow
from flux.tasks import parallel


@task
async def leave(how):
    if how == "exit":
        sys.exit(3)
    if how == "interrupt":
        raise KeyboardInterrupt("from a task")
    raise GeneratorExit("from a task")


@workflow
async def leaver(ctx):
    return await leave(ctx.input)


@task
async def double(x):
    return x * 2


@workflow
async def hello(ctx):
    return await double(ctx.input)


@task
async def wait_for_file(path, i):
    while not os.path.exists(path):
        await anyio.sleep(0.05)
    return i


@workflow
async def wide(ctx):
    flag, n = ctx.input["flag"], ctx.input["n"]
    return sum(await parallel(*(wait_for_file(flag, i) for i in range(n))))
"""

EXITS_AT_IMPORT = """
import sys
sys.exit("this source leaves at import")

from flux import workflow


@workflow
async def quitter(ctx):
    return 1
"""

HANGS_AT_IMPORT = """
import time
time.sleep(3600)

from flux import workflow


@workflow
async def sleeper_at_import(ctx):
    return 1
"""


def _run(url: str, name: str, body=None) -> str:
    r = httpx.post(f"{url}/workflows/{name}/run/async", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["execution_id"]


def _worker(procs, url: str, name: str, *extra: str, concurrency: int = 4):  # noqa: F811
    from tests.conftest_net import Proc

    log = str(procs.tmp_path / f"worker-{name}-{len(procs.all)}.log")
    proc = Proc(
        ["start", "worker", name, "--server-url", url, "--concurrency", str(concurrency), *extra],
        log,
        procs.env,
    )
    procs.all.append(proc)
    wait_for(lambda: f"connected as {name}-" in proc.log(), 20, f"worker {name}", proc)
    return proc


def test_a_task_leaving_the_process_fails_its_execution_not_the_worker(procs):  # noqa: F811
    server, url = procs.server(str(procs.tmp_path / "h.db"), lease_ttl=2.0)
    assert upload(url, HOSTILE, "hostile.py").status_code == 200
    worker = _worker(procs, url, "tough")
    for how, type_name in (
        ("exit", "SystemExit"),
        ("interrupt", "KeyboardInterrupt"),
        ("generator", "GeneratorExit"),
    ):
        eid = _run(url, "leaver", how)
        done = wait_state(url, "leaver", eid, {"FAILED", "COMPLETED"}, 20, worker)
        assert done["state"] == "FAILED", done
        assert type_name in str(done["output"]), done
    eid = _run(url, "hello", 21)
    assert wait_state(url, "hello", eid, {"COMPLETED"}, 20, worker)["output"] == 42
    assert worker.popen.poll() is None  # still serving


def test_a_source_leaving_or_hanging_at_import_fails_only_its_execution(procs):  # noqa: F811
    server, url = procs.server(str(procs.tmp_path / "h.db"), lease_ttl=2.0)
    for source, filename in (
        (HOSTILE, "hostile.py"),
        (EXITS_AT_IMPORT, "exits.py"),
        (HANGS_AT_IMPORT, "hangs.py"),
    ):
        assert upload(url, source, filename).status_code == 200
    worker = _worker(procs, url, "loader", "--load-timeout", "1.5")
    eid = _run(url, "quitter")
    done = wait_state(url, "quitter", eid, {"FAILED", "COMPLETED"}, 20, worker)
    assert done["state"] == "FAILED" and "SystemExit" in str(done["output"]), done
    hung = _run(url, "sleeper_at_import")
    done = wait_state(url, "sleeper_at_import", hung, {"FAILED", "COMPLETED"}, 20, worker)
    assert done["state"] == "FAILED", done
    assert "took longer than 1.5s to load" in str(done["output"]), done
    eid = _run(url, "hello", 5)
    assert wait_state(url, "hello", eid, {"COMPLETED"}, 20, worker)["output"] == 10
    assert worker.popen.poll() is None


def test_a_hung_import_can_be_cancelled_and_does_not_block_sigterm(procs):  # noqa: F811
    server, url = procs.server(str(procs.tmp_path / "h.db"), lease_ttl=2.0)
    assert upload(url, HANGS_AT_IMPORT, "hangs.py").status_code == 200
    worker = _worker(procs, url, "patient", "--load-timeout", "600")
    hung = _run(url, "sleeper_at_import")
    wait_state(url, "sleeper_at_import", hung, {"RUNNING"}, 20, worker)
    time.sleep(0.5)
    r = httpx.post(f"{url}/executions/{hung}/cancel", params={"wait": "true"}, timeout=30)
    assert r.json()["state"] == "CANCELLED", r.json()
    second = _run(url, "sleeper_at_import")  # hangs its own thread too
    wait_state(url, "sleeper_at_import", second, {"RUNNING"}, 20, worker)
    began = time.monotonic()
    assert worker.terminate(timeout=20) is not None
    assert time.monotonic() - began < 20


def test_a_frozen_worker_woken_past_its_ttl_starts_no_body(procs, tmp_path):  # noqa: F811
    ttl = 2.0
    server, url = procs.server(str(tmp_path / "f.db"), lease_ttl=ttl)
    assert upload(url, CHAOS, "chaos.py").status_code == 200
    log = str(tmp_path / "bodies.log")
    frozen = _worker(procs, url, "frozen", concurrency=8)
    first = _run(url, "chain_c", {"log": log, "key": "c0", "n": 12})
    wait_for(lambda: os.path.exists(log) and "start c0 2 " in open(log).read(), 20, "step 2")
    os.kill(frozen.pid, signal.SIGSTOP)
    # leased to the frozen worker before the server notices it is gone: these wait in its socket
    more = [_run(url, "chain_c", {"log": log, "key": f"c{i}", "n": 4}) for i in range(1, 4)]
    time.sleep(0.5)
    other = _worker(procs, url, "other", concurrency=8)
    time.sleep(ttl + 2.0)
    woken = time.time()
    os.kill(frozen.pid, signal.SIGCONT)
    for eid in [first, *more]:
        done = wait_state(url, "chain_c", eid, {"COMPLETED", "FAILED"}, 60, other)
        assert done["state"] == "COMPLETED", done
    lines = [line.split() for line in open(log).read().splitlines() if line]
    late = [line for line in lines if int(line[3]) == frozen.pid and float(line[4]) >= woken]
    assert [line for line in late if line[0] == "start"] == [], late
    assert "dropping" in frozen.log() or "lease" in frozen.log()


def test_losing_the_lease_of_a_wide_fan_out_is_cheap(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "w.db")
    server, url = procs.server(db, lease_ttl=3.0)
    port = int(url.rsplit(":", 1)[1])
    assert upload(url, HOSTILE, "hostile.py").status_code == 200
    worker = _worker(procs, url, "wide", concurrency=2)
    flag = str(tmp_path / "go")
    eid = _run(url, "wide", {"flag": flag, "n": 3000})
    wait_state(url, "wide", eid, {"RUNNING"}, 20, worker)
    time.sleep(3)  # all 3000 bodies waiting
    server.kill9()  # every lease of the worker is lost at once
    server, url = procs.server(db, port, lease_ttl=3.0)
    open(flag, "w").close()
    began = time.monotonic()
    done = wait_state(url, "wide", eid, {"COMPLETED", "FAILED"}, 90, worker)
    assert done["state"] == "COMPLETED" and done["output"] == sum(range(3000)), done
    eid2 = _run(url, "hello", 1)
    assert wait_state(url, "hello", eid2, {"COMPLETED"}, 30, worker)["output"] == 2
    assert time.monotonic() - began < 90
    assert "Traceback" not in worker.log()
