"""Chaos, bounded to about a minute: a server and three workers run chains, fan-outs, durable
sleeps and pauses while workers and the server are killed with SIGKILL at random and one worker
is frozen with SIGSTOP past its lease ttl, then woken.

Every execution must end with the right output; no body whose completion was acknowledged runs
again (by a live or a woken worker); no acknowledged event is lost (dense histories, one end);
nothing is left stuck.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time

import httpx
import pytest

from tests.conftest_net import (
    Proc,
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow

CHAOS = """
import os
import time

import anyio

from flux import task, workflow
from flux.tasks import parallel, pause, sleep


def note(log, line):
    with open(log, "a") as f:
        f.write(line + "\\n")


@task
async def step(log, key, i, seconds):
    note(log, f"start {key} {i} {os.getpid()} {time.time()}")
    await anyio.sleep(seconds)
    note(log, f"done {key} {i} {os.getpid()} {time.time()}")
    return i


@workflow
async def chain_c(ctx):
    log, key, n = ctx.input["log"], ctx.input["key"], ctx.input["n"]
    return [await step(log, key, i, 0.1) for i in range(n)]


@workflow
async def fan_c(ctx):
    log, key = ctx.input["log"], ctx.input["key"]
    return await parallel(*(step(log, key, i, 0.3) for i in range(6)))


@workflow
async def nap_c(ctx):
    log, key = ctx.input["log"], ctx.input["key"]
    a = await step(log, key, 0, 0.05)
    await sleep(1.5)
    return [a, await step(log, key, 1, 0.05)]


@workflow
async def ask_c(ctx):
    log, key = ctx.input["log"], ctx.input["key"]
    a = await step(log, key, 0, 0.05)
    answer = await pause("go")
    return [a, answer, await step(log, key, 1, 0.05)]
"""

EXPECTED = {
    "chain_c": list(range(8)),
    "fan_c": list(range(6)),
    "nap_c": [0, 1],
    "ask_c": [0, "yes", 1],
}


def _get(url: str, path: str, **kw) -> httpx.Response | None:
    try:
        return httpx.get(url + path, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def _post(url: str, path: str, **kw) -> httpx.Response | None:
    try:
        return httpx.post(url + path, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def test_chaos_kill_and_freeze_workers_and_the_server(procs, tmp_path):  # noqa: F811
    rng = random.Random(int(os.environ.get("FLUX_CHAOS_SEED", "7")))
    db = str(tmp_path / "chaos.db")
    log = str(tmp_path / "bodies.log")
    ttl = 2.0
    server, url = procs.server(db, lease_ttl=ttl)
    port = url.rsplit(":", 1)[1]
    assert upload(url, CHAOS, "chaos.py").status_code == 200
    workers: list[Proc] = [procs.worker(url, f"w{i}", concurrency=4) for i in range(3)]
    suspects: set[int] = set()  # pids killed or frozen: their last bodies may not be acked

    started: dict[str, str] = {}
    kinds = ["chain_c"] * 4 + ["fan_c"] * 3 + ["nap_c"] * 2 + ["ask_c"] * 2
    for i, name in enumerate(kinds):
        body = {"log": log, "key": f"{name}-{i}"}
        if name == "chain_c":
            body["n"] = 8
        r = httpx.post(f"{url}/workflows/{name}/run/async", json=body, timeout=10)
        assert r.status_code == 200, r.text
        started[r.json()["execution_id"]] = name

    frozen: Proc | None = None
    woken_at: float | None = None
    t0 = time.monotonic()
    server_killed = False
    freeze_done = False
    while time.monotonic() - t0 < 25:
        time.sleep(rng.uniform(1.5, 3.0))
        elapsed = time.monotonic() - t0
        if not server_killed and elapsed > 8:
            server.kill9()
            server_killed = True
            server, url = procs.server(db, int(port), lease_ttl=ttl)
        elif not freeze_done and elapsed > 13:
            frozen = rng.choice([w for w in workers if w.popen.poll() is None])
            os.kill(frozen.pid, signal.SIGSTOP)
            suspects.add(frozen.pid)
            time.sleep(ttl + 1.5)
            os.kill(frozen.pid, signal.SIGCONT)
            woken_at = time.time()
            freeze_done = True
        else:
            victim = rng.choice([w for w in workers if w.popen.poll() is None and w is not frozen])
            suspects.add(victim.pid)
            victim.kill9()
            workers.remove(victim)
            workers.append(procs.worker(url, f"w{len(procs.all)}", concurrency=4, wait=False))
        for eid, name in started.items():  # answer the pauses as they come
            if name == "ask_c":
                r = _get(url, f"/workflows/{name}/status/{eid}")
                if r is not None and r.status_code == 200 and r.json()["state"] == "PAUSED":
                    _post(url, f"/workflows/{name}/resume/{eid}", json="yes")

    def all_done() -> bool:
        for eid, name in started.items():
            r = _get(url, f"/workflows/{name}/status/{eid}")
            if r is None or r.status_code != 200:
                return False
            state = r.json()["state"]
            if state == "PAUSED":
                _post(url, f"/workflows/{name}/resume/{eid}", json="yes")
                return False
            if state != "COMPLETED":
                return False
        return True

    wait_for(all_done, 60, "every execution COMPLETED", server)

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for eid, name in started.items():
            r = httpx.get(f"{url}/workflows/{name}/status/{eid}", timeout=10).json()
            assert r["output"] == EXPECTED[name], (eid, name, r)
            seqs = [
                row[0]
                for row in conn.execute(
                    "select seq from events where execution_id=? order by seq", (eid,)
                )
            ]
            assert seqs == list(range(1, len(seqs) + 1)), eid  # nothing acknowledged lost
            types = [
                row[0]
                for row in conn.execute(
                    "select type from events where execution_id=? order by seq", (eid,)
                )
            ]
            assert types.count("WORKFLOW_COMPLETED") == 1 and types[-1] == "WORKFLOW_COMPLETED"
    finally:
        conn.close()

    lines = [line.split() for line in open(log).read().splitlines() if line]
    done: dict[tuple[str, str], list[int]] = {}
    for event, key, i, pid, _at in lines:
        if event == "done":
            done.setdefault((key, i), []).append(int(pid))
    for (key, i), pids in done.items():
        # a body ran to its end twice only if the first run's outcome may not have been
        # acknowledged: its worker was killed or frozen
        for pid in pids[:-1]:
            assert pid in suspects, (key, i, pids)
    assert frozen is not None and woken_at is not None
    late = [
        line
        for line in lines
        if line[0] == "start" and int(line[3]) == frozen.pid and float(line[4]) >= woken_at
    ]
    assert late == [], f"the woken worker started bodies: {late}"
