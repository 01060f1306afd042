#!/usr/bin/env python
"""Benchmarks of the embedded engine, each beside a plain-SQLite baseline measured in the same run.

    python bench/embedded.py [--quick] [--durability full|normal] [--backend trio|asyncio]
                             [--out FILE] [--table]
    python bench/embedded.py --profile W1|W2|W3|W4 [--profiler cprofile|pyinstrument|breakdown]

Prints ONE JSON document on stdout (progress goes to stderr); ``--out FILE`` also writes it there.

Workloads (docs/performance.md explains them and the targets):

- W1 hello: a one-task workflow run N times in a row through one engine (``arun(engine=...)``):
  runs/s, p50 and p99 ms per run; and the same through the blocking ``wf.run()`` (a new event loop
  and a new engine, i.e. a new SQLite connection, per run) on fewer runs.
- W2 chain: one workflow awaiting 100 tasks one after the other, repeated 5 times (median):
  microseconds per task and per committed event.
- W3 fan-out: 1000 concurrent trivial tasks via ``parallel(...)``, via ``task.map(...)`` and via
  ``task.map(..., max_concurrency=50)``: total ms.
- W4 resume: a 100-task workflow that pauses after 50 tasks; ms from the resume call to the
  finished execution (replay 50 recorded tasks, run 50 new ones).

Baseline: a plain loop that commits one SQLite row per event (sqlite3, WAL, ``synchronous=FULL``
for ``--durability full``, ``NORMAL`` for ``normal``), in a fresh temporary directory, with as many
events as the Flux workload recorded (counted from the resulting ``ctx.events``). Each Flux sample
is followed at once by its baseline sample, so both see the same disk; medians are compared. Each
ratio is Flux / baseline: below 1 means Flux was faster than committing its events one by one.

``--table`` also prints the figures as the Markdown table of docs/performance.md (on stderr).

``--profile W`` runs workload W warm, without baselines, under a profiler and reports on stderr:
cProfile (default; the event loop thread only: the SQLite work happens in a worker thread and
shows up as time waiting for it), pyinstrument (if installed), or ``breakdown``: the wall clock
split into SQLite statements, the hand-off to the SQLite thread and back, and Python on the loop.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

import flux
from flux import ExecutionContext, open_engine, task, workflow
from flux.tasks import parallel, pause

# ---------------------------------------------------------------------------------------------
# Workflows under test


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def hello_world(ctx: ExecutionContext[str]) -> str:
    return await say_hello(ctx.input)


@task
async def step(x: int) -> int:
    return x + 1


@workflow
async def chain(ctx: ExecutionContext[int]) -> int:
    x = 0
    for _ in range(ctx.input):
        x = await step(x)
    return x


@task
async def trivial(i: int) -> int:
    return i


@workflow
async def fanout_parallel(ctx: ExecutionContext[int]) -> int:
    results = await parallel(*[trivial(i) for i in range(ctx.input)])
    return len(results)


@workflow
async def fanout_map(ctx: ExecutionContext[dict]) -> int:
    results = await trivial.map(range(ctx.input["n"]), max_concurrency=ctx.input["limit"])
    return len(results)


@workflow
async def pause_halfway(ctx: ExecutionContext[int]) -> int:
    x = 0
    for _ in range(ctx.input // 2):
        x = await step(x)
    x += await pause("halfway")
    for _ in range(ctx.input - ctx.input // 2):
        x = await step(x)
    return x


# ---------------------------------------------------------------------------------------------
# Helpers


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def r(x: float, digits: int = 3) -> float:
    return round(x, digits)


@contextmanager
def fresh_dir(prefix: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=f"flux-bench-{prefix}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check(ctx: ExecutionContext, expected_state: str = "COMPLETED") -> ExecutionContext:
    state = getattr(ctx.state, "value", ctx.state)
    if state != expected_state:
        raise RuntimeError(
            f"{ctx.workflow_name} ended {state}, expected {expected_state}: {ctx.output!r}"
        )
    return ctx


class Baseline:
    """A plain loop committing one row per event, in a fresh temporary directory.

    The table has the columns and primary key of Flux's events table, so that the baseline writes
    the same kind of row; nothing else (no executions table, no encoding, no threads).
    """

    def __init__(self, durability: str, directory: str):
        self.synchronous = "FULL" if durability == "full" else "NORMAL"
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "baseline.db")
        self.conn: sqlite3.Connection | None = None
        self.seq = 0
        self.open()
        assert self.conn is not None
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS events (execution_id TEXT, seq INTEGER, type TEXT, "
            "call_id TEXT, name TEXT, value BLOB, time FLOAT, PRIMARY KEY (execution_id, seq))"
        )

    def open(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def commit_rows(self, n: int) -> float:
        """Commit ``n`` rows, one transaction each; return the seconds it took."""
        conn = self.conn
        assert conn is not None
        execute = conn.execute
        start = time.perf_counter()
        for _ in range(n):
            self.seq += 1
            execute("BEGIN IMMEDIATE")
            execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    "0123456789abcdef0123456789abcdef",
                    self.seq,
                    "TASK_COMPLETED",
                    f"step#{self.seq}",
                    "step",
                    b"\x01",
                    time.time(),
                ),
            )
            execute("COMMIT")
        return time.perf_counter() - start

    def connect_and_commit_rows(self, n: int) -> float:
        """Open a connection, commit ``n`` rows one by one, close: a run with a fresh engine."""
        self.close()
        start = time.perf_counter()
        self.open()
        self.commit_rows(n)
        self.close()
        elapsed = time.perf_counter() - start
        self.open()
        return elapsed


def commits(engine: Any) -> int:
    return engine.store.statistics().commits


# ---------------------------------------------------------------------------------------------
# Workloads. Each Flux sample is followed at once by its baseline sample (interleaved), so that
# both see the same disk and machine conditions; the medians are compared.


def summary(latencies: list[float], total: float) -> dict[str, Any]:
    n = len(latencies)
    return {
        "runs": n,
        "runs_per_s": r(n / total, 1),
        "p50_ms": r(statistics.median(latencies) * 1e3),
        "p99_ms": r(percentile(latencies, 99) * 1e3),
        "max_ms": r(max(latencies) * 1e3),
    }


async def w1_engine(cfg: argparse.Namespace, directory: str) -> dict[str, Any]:
    """W1 through one engine: ``await wf.arun(..., engine=engine)`` N times."""
    base = Baseline(cfg.durability, os.path.join(directory, "baseline"))
    async with open_engine(db=os.path.join(directory, "w1.db"), durability=cfg.durability) as eng:
        ctx = check(await hello_world.arun("World", engine=eng))
        per_run = len(ctx.events)
        for _ in range(cfg.warmup):
            check(await hello_world.arun("World", engine=eng))
            base.commit_rows(per_run)
        c0 = commits(eng)
        flux_lat: list[float] = []
        base_lat: list[float] = []
        flux_total = 0.0
        for _ in range(cfg.w1_runs):
            start = time.perf_counter()
            ctx = await hello_world.arun("World", engine=eng)
            elapsed = time.perf_counter() - start
            flux_lat.append(elapsed)
            flux_total += elapsed
            check(ctx)
            base_lat.append(base.commit_rows(per_run))
        n_commits = commits(eng) - c0
    base.close()
    assert ctx.output == "Hello, World"
    out = {"events_per_run": per_run, "commits_per_run": r(n_commits / cfg.w1_runs, 2)}
    out.update(summary(flux_lat, flux_total))
    out["baseline"] = {"what": f"commit {per_run} rows, one per commit"}
    out["baseline"].update(summary(base_lat, sum(base_lat)))
    out["ratio_p50"] = r(out["p50_ms"] / out["baseline"]["p50_ms"], 2)
    return out


def w1_run(cfg: argparse.Namespace, directory: str) -> dict[str, Any]:
    """W1 through the blocking form: each ``wf.run()`` starts an event loop and an engine (a new
    SQLite connection); its baseline opens a connection per run too."""
    base = Baseline(cfg.durability, os.path.join(directory, "baseline"))
    db = os.path.join(directory, "w1-run.db")
    ctx = check(hello_world.run("World", db=db, durability=cfg.durability))  # creates the schema
    per_run = len(ctx.events)
    flux_lat: list[float] = []
    base_lat: list[float] = []
    for _ in range(cfg.w1_blocking_runs):
        start = time.perf_counter()
        ctx = hello_world.run("World", db=db, durability=cfg.durability)
        flux_lat.append(time.perf_counter() - start)
        check(ctx)
        base_lat.append(base.connect_and_commit_rows(per_run))
    base.close()
    out: dict[str, Any] = {"events_per_run": per_run}
    out.update(summary(flux_lat, sum(flux_lat)))
    out["baseline"] = {"what": f"open a connection, commit {per_run} rows one per commit, close"}
    out["baseline"].update(summary(base_lat, sum(base_lat)))
    out["ratio_p50"] = r(out["p50_ms"] / out["baseline"]["p50_ms"], 2)
    return out


async def w2(cfg: argparse.Namespace, directory: str) -> dict[str, Any]:
    """W2: one workflow awaiting ``w2_tasks`` tasks in sequence, ``repeats`` times."""
    tasks = cfg.w2_tasks
    base = Baseline(cfg.durability, os.path.join(directory, "baseline"))
    flux_s: list[float] = []
    base_s: list[float] = []
    async with open_engine(db=os.path.join(directory, "w2.db"), durability=cfg.durability) as eng:
        ctx = check(await chain.arun(tasks, engine=eng))  # warm-up
        events = len(ctx.events)
        base.commit_rows(events)
        c0 = commits(eng)
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            ctx = await chain.arun(tasks, engine=eng)
            flux_s.append(time.perf_counter() - start)
            check(ctx)
            base_s.append(base.commit_rows(events))
        n_commits = (commits(eng) - c0) / cfg.repeats
    base.close()
    assert ctx.output == tasks and len(ctx.events) == events
    total, base_total = statistics.median(flux_s), statistics.median(base_s)
    us_per_event = total / events * 1e6
    base_us_per_row = base_total / events * 1e6
    return {
        "tasks": tasks,
        "repeats": cfg.repeats,
        "events": events,
        "store_commits": n_commits,
        "total_ms": r(total * 1e3),
        "samples_ms": [r(s * 1e3, 2) for s in flux_s],
        "us_per_task": r(total / tasks * 1e6, 1),
        "us_per_event": r(us_per_event, 1),
        "baseline": {
            "rows": events,
            "total_ms": r(base_total * 1e3),
            "samples_ms": [r(s * 1e3, 2) for s in base_s],
            "us_per_row": r(base_us_per_row, 1),
        },
        "ratio": r(us_per_event / base_us_per_row, 2),
    }


FANOUT_VARIANTS: dict[str, tuple[workflow, Callable[[int], Any]]] = {
    "parallel": (fanout_parallel, lambda n: n),
    "map": (fanout_map, lambda n: {"n": n, "limit": None}),
    "map_max_concurrency_50": (fanout_map, lambda n: {"n": n, "limit": 50}),
}


async def w3(cfg: argparse.Namespace, directory: str, variant: str) -> dict[str, Any]:
    """W3: ``w3_tasks`` concurrent trivial tasks in one workflow, ``w3_repeats`` times."""
    wf, make_input = FANOUT_VARIANTS[variant]
    n = cfg.w3_tasks
    base = Baseline(cfg.durability, os.path.join(directory, "baseline"))
    flux_s: list[float] = []
    base_s: list[float] = []
    path = os.path.join(directory, f"w3-{variant}.db")
    async with open_engine(db=path, durability=cfg.durability) as eng:
        check(await wf.arun(make_input(10), engine=eng))  # warm-up
        base.commit_rows(22)
        c0 = commits(eng)
        for _ in range(cfg.w3_repeats):
            start = time.perf_counter()
            ctx = await wf.arun(make_input(n), engine=eng)
            flux_s.append(time.perf_counter() - start)
            check(ctx)
            base_s.append(base.commit_rows(len(ctx.events)))
        n_commits = (commits(eng) - c0) / cfg.w3_repeats
        largest = eng.store.statistics().largest_batch
    base.close()
    assert ctx.output == n
    total, base_total = statistics.median(flux_s), statistics.median(base_s)
    events = len(ctx.events)
    return {
        "tasks": n,
        "repeats": cfg.w3_repeats,
        "events": events,
        "store_commits": n_commits,
        "largest_batch": largest,
        "total_ms": r(total * 1e3, 1),
        "samples_ms": [r(s * 1e3, 1) for s in flux_s],
        "us_per_event": r(total / events * 1e6, 1),
        "baseline": {
            "rows": events,
            "total_ms": r(base_total * 1e3, 1),
            "samples_ms": [r(s * 1e3, 1) for s in base_s],
            "us_per_row": r(base_total / events * 1e6, 1),
        },
        "ratio": r(total / base_total, 2),
    }


async def w4(cfg: argparse.Namespace, directory: str) -> dict[str, Any]:
    """W4: a ``w4_tasks``-task workflow paused halfway, resumed: ms from the call to the end."""
    tasks = cfg.w4_tasks
    base = Baseline(cfg.durability, os.path.join(directory, "baseline"))
    flux_s: list[float] = []
    base_s: list[float] = []
    async with open_engine(db=os.path.join(directory, "w4.db"), durability=cfg.durability) as eng:
        for i in range(cfg.repeats + 1):  # the first one is a warm-up
            paused = check(await pause_halfway.arun(tasks, engine=eng), "PAUSED")
            recorded = len(paused.events)
            start = time.perf_counter()
            ctx = await pause_halfway.arun(
                execution_id=paused.execution_id, resume_value=0, engine=eng
            )
            elapsed = time.perf_counter() - start
            check(ctx)
            new = len(ctx.events) - recorded
            b = base.commit_rows(new)
            if i:
                flux_s.append(elapsed)
                base_s.append(b)
    base.close()
    assert ctx.output == tasks
    total, base_total = statistics.median(flux_s), statistics.median(base_s)
    return {
        "tasks": tasks,
        "paused_after": tasks // 2,
        "repeats": cfg.repeats,
        "events_replayed": recorded,
        "events_recorded_by_resume": new,
        "resume_ms": r(total * 1e3),
        "samples_ms": [r(s * 1e3, 2) for s in flux_s],
        "baseline": {
            "rows": new,
            "total_ms": r(base_total * 1e3),
            "samples_ms": [r(s * 1e3, 2) for s in base_s],
            "us_per_row": r(base_total / new * 1e6, 1),
        },
        "ratio": r(total / base_total, 2),
    }


# ---------------------------------------------------------------------------------------------


def environment(cfg: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.gettempdir()
    fs = None
    try:  # the file system of the temporary directory (fsync cost depends on it)
        best = ""
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _dev, mount, fstype, *_ = line.split()
                if os.path.realpath(tmp).startswith(mount) and len(mount) > len(best):
                    best, fs = mount, fstype
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "flux": flux.__version__,
        "anyio": importlib.metadata.version("anyio"),
        "trio": importlib.metadata.version("trio"),
        "backend": cfg.backend,
        "durability": cfg.durability,
        "synchronous": "FULL" if cfg.durability == "full" else "NORMAL",
        "journal_mode": "WAL",
        "temp_dir": tmp,
        "temp_dir_filesystem": fs,
        "quick": cfg.quick,
    }


def targets(results: dict[str, Any], durability: str) -> list[dict[str, Any]]:
    """The targets of issue 2; they apply to durability=full only."""
    applies = durability == "full"
    w1 = results["W1_hello"]["engine"]
    w2 = results["W2_chain"]
    w3 = results["W3_fanout"]
    w4 = results["W4_resume"]
    rows = [
        ("W1", "p50 per run < 1 ms", w1["p50_ms"], "ms", w1["p50_ms"] < 1.0),
        ("W2", "<= 3x baseline per committed event", w2["ratio"], "x", w2["ratio"] <= 3.0),
    ]
    for variant, figures in w3.items():
        rows.append(
            (
                f"W3 {variant}",
                "<= 2x baseline for the same number of events",
                figures["ratio"],
                "x",
                figures["ratio"] <= 2.0,
            )
        )
    rows.append(("W4", "resume to finished < 20 ms", w4["resume_ms"], "ms", w4["resume_ms"] < 20))
    return [
        {"workload": w, "target": t, "value": v, "unit": u, "met": bool(m), "applies": applies}
        for w, t, v, u, m in rows
    ]


def markdown(document: dict[str, Any]) -> str:
    """The figures of ``document`` as the Markdown table used in docs/performance.md."""
    env = document["environment"]
    w = document["workloads"]
    met = {t["workload"]: t for t in document["targets"]}

    def verdict(key: str) -> str:
        t = met[key]
        if not t["applies"]:
            return "n/a (durability=normal)"
        return "met" if t["met"] else "**missed**"

    e, run = w["W1_hello"]["engine"], w["W1_hello"]["run"]
    w2, w4 = w["W2_chain"], w["W4_resume"]
    rows = [
        "| Workload | Flux | Baseline (same run) | Flux / baseline | Target | |",
        "|---|---|---|---|---|---|",
        f"| W1 hello, one engine ({e['runs']} runs, {e['events_per_run']} events, "
        f"{e['commits_per_run']:g} commits per run) | {e['runs_per_s']:g} runs/s, "
        f"p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms | "
        f"{e['baseline']['runs_per_s']:g} runs/s, p50 {e['baseline']['p50_ms']:.2f} ms, "
        f"p99 {e['baseline']['p99_ms']:.2f} ms | {e['ratio_p50']:.2f}x (p50) | p50 < 1 ms | "
        f"{verdict('W1')} |",
        f"| W1 hello, `wf.run()` ({run['runs']} runs, new loop + engine each) | "
        f"{run['runs_per_s']:g} runs/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms | "
        f"{run['baseline']['runs_per_s']:g} runs/s, p50 {run['baseline']['p50_ms']:.2f} ms "
        f"(connect + {run['events_per_run']} commits) | {run['ratio_p50']:.2f}x (p50) | - | |",
        f"| W2 chain ({w2['tasks']} tasks, {w2['events']} events, {w2['store_commits']:g} "
        f"commits) | {w2['us_per_task']:g} us/task, {w2['us_per_event']:g} us/event "
        f"({w2['total_ms']:.1f} ms) | {w2['baseline']['us_per_row']:g} us/row "
        f"({w2['baseline']['total_ms']:.1f} ms) | {w2['ratio']:.2f}x per event | <= 3x | "
        f"{verdict('W2')} |",
    ]
    for variant, f in w["W3_fanout"].items():
        label = {
            "parallel": "`parallel(*calls)`",
            "map": "`t.map(items)`",
            "map_max_concurrency_50": "`t.map(items, max_concurrency=50)`",
        }.get(variant, variant)
        rows.append(
            f"| W3 fan-out {label} ({f['tasks']} tasks, {f['events']} events, "
            f"{f['store_commits']:g} commits) | {f['total_ms']:.1f} ms | "
            f"{f['baseline']['total_ms']:.1f} ms | {f['ratio']:.2f}x | <= 2x | "
            f"{verdict('W3 ' + variant)} |"
        )
    rows.append(
        f"| W4 resume ({w4['tasks']} tasks, paused after {w4['paused_after']}; replays "
        f"{w4['events_replayed']} events, records {w4['events_recorded_by_resume']}) | "
        f"{w4['resume_ms']:.2f} ms | {w4['baseline']['total_ms']:.2f} ms | "
        f"{w4['ratio']:.2f}x | < 20 ms | {verdict('W4')} |"
    )
    head = (
        f"durability={env['durability']} (synchronous={env['synchronous']}, WAL), "
        f"backend={env['backend']}, Python {env['python']}, SQLite {env['sqlite']}, "
        f"{env['cpu_count']} CPUs, temp dir on {env['temp_dir_filesystem']}"
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


async def run_async(cfg: argparse.Namespace, results: dict[str, Any]) -> None:
    with fresh_dir("w1") as d:
        log(f"W1 hello: {cfg.w1_runs} runs through one engine")
        results["W1_hello"]["engine"] = await w1_engine(cfg, d)
    with fresh_dir("w2") as d:
        log(f"W2 chain: {cfg.w2_tasks} tasks x {cfg.repeats}")
        results["W2_chain"] = await w2(cfg, d)
    for variant in FANOUT_VARIANTS:
        with fresh_dir("w3") as d:
            log(f"W3 fan-out {variant}: {cfg.w3_tasks} tasks x {cfg.w3_repeats}")
            results["W3_fanout"][variant] = await w3(cfg, d, variant)
    with fresh_dir("w4") as d:
        log(f"W4 resume: {cfg.w4_tasks} tasks paused halfway x {cfg.repeats}")
        results["W4_resume"] = await w4(cfg, d)


def run_all(cfg: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"W1_hello": {}, "W2_chain": {}, "W3_fanout": {}, "W4_resume": {}}
    anyio.run(run_async, cfg, results, backend=cfg.backend)

    # W1 blocking form (its own event loop per run, so outside the loop above)
    with fresh_dir("w1-run") as d:
        log(f"W1 hello via wf.run(): {cfg.w1_blocking_runs} runs")
        results["W1_hello"]["run"] = w1_run(cfg, d)

    return results


PROFILE_UNITS = {"W1": "run", "W2": "task step", "W3": "task", "W4": "resume"}


async def _profiled_runs(cfg: argparse.Namespace, which: str, directory: str, prof: Any) -> int:
    """Warm up, then run workload ``which`` with ``prof`` on; return how many
    ``PROFILE_UNITS[which]`` were profiled."""
    db = os.path.join(directory, "profile.db")
    async with open_engine(db=db, durability=cfg.durability) as eng:

        async def once(profiled: bool) -> int:
            if which == "W4":  # profile the resume only
                paused = check(await pause_halfway.arun(cfg.w4_tasks, engine=eng), "PAUSED")
                resume = pause_halfway.arun(
                    execution_id=paused.execution_id, resume_value=0, engine=eng
                )
            elif which == "W1":
                resume = hello_world.arun("World", engine=eng)
            elif which == "W2":
                resume = chain.arun(cfg.w2_tasks, engine=eng)
            else:
                resume = fanout_map.arun({"n": cfg.w3_tasks, "limit": None}, engine=eng)
            if profiled:
                prof.start()
            try:
                check(await resume)
            finally:
                if profiled:
                    prof.stop()
            return {"W1": 1, "W2": cfg.w2_tasks, "W3": cfg.w3_tasks, "W4": 1}[which]

        for _ in range(3):
            await once(False)
        count = 0
        for _ in range({"W1": 300, "W2": 20, "W3": 3, "W4": 20}[which]):
            count += await once(True)
    return count


class _CProfile:
    def __init__(self) -> None:
        import cProfile

        self.profiler = cProfile.Profile()

    def start(self) -> None:
        self.profiler.enable()

    def stop(self) -> None:
        self.profiler.disable()

    def report(self, steps: int) -> None:
        import pstats

        stats = pstats.Stats(self.profiler, stream=sys.stderr)
        log(
            f"cProfile of the event loop thread over {steps} x {self.unit} "
            "(SQLite runs in a worker thread):"
        )
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


class _Pyinstrument:
    def __init__(self) -> None:
        import pyinstrument

        self.profiler = pyinstrument.Profiler(interval=0.0001, async_mode="disabled")

    def start(self) -> None:
        self.profiler.start()

    def stop(self) -> None:
        self.profiler.stop()

    def report(self, steps: int) -> None:
        log(f"pyinstrument (wall clock, event loop thread) over {steps} x {self.unit}:")
        log(self.profiler.output_text(unicode=False, color=False, show_all=False))


class _TimedConnection:
    """Stands in for the store's sqlite3 connection and times its statements."""

    def __init__(self, conn: sqlite3.Connection, acc: dict[str, float]):
        self._conn = conn
        self._acc = acc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._conn.execute(sql, *args)
        finally:
            kind = sql.split(None, 1)[0].upper()
            key = {"COMMIT": "sql COMMIT (fsync)", "BEGIN": "sql BEGIN"}.get(kind, "sql other")
            self._acc[key] += time.perf_counter() - start

    def executemany(self, sql: str, rows: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._conn.executemany(sql, rows)
        finally:
            self._acc["sql other"] += time.perf_counter() - start


class _Breakdown:
    """Wall-clock split of a sequential workload: SQLite statements (in the worker thread), the
    hand-off to that thread and back, and the rest (Python on the event loop).

    It wraps the store's private ``_run`` (every SQLite call goes through it), so it measures
    the store as it is today; if the runtime renames that method, this profiler says so. The
    split is exact for sequential workloads (W1, W2, W4); with concurrent store calls (W3) the
    waits overlap and only the SQL lines are meaningful.
    """

    KEYS = (
        "sql COMMIT (fsync)",
        "sql BEGIN",
        "sql other",
        "hand-off loop -> SQLite thread",
        "hand-off SQLite thread -> loop",
    )

    def __init__(self) -> None:
        from flux.runtime import store as store_module

        store_cls = store_module.Store
        if not hasattr(store_cls, "_run"):
            raise SystemExit("--profiler breakdown: flux.runtime.store.Store._run is gone")
        self.acc: dict[str, float] = dict.fromkeys(self.KEYS, 0.0)
        self.awaiting = 0.0
        self.calls = 0
        self.wall = 0.0
        self.on = False
        original = store_cls._run
        outer = self

        async def run(store: Any, fn: Callable[..., Any], *args: Any) -> Any:
            if not outer.on:
                return await original(store, fn, *args)
            marks: dict[str, float] = {}

            def timed(conn: sqlite3.Connection, *a: Any) -> Any:
                marks["in"] = time.perf_counter()
                try:
                    return fn(_TimedConnection(conn, outer.acc), *a)
                finally:
                    marks["out"] = time.perf_counter()

            start = time.perf_counter()
            try:
                return await original(store, timed, *args)
            finally:
                end = time.perf_counter()
                outer.calls += 1
                outer.awaiting += end - start
                if "in" in marks:
                    outer.acc["hand-off loop -> SQLite thread"] += marks["in"] - start
                    outer.acc["hand-off SQLite thread -> loop"] += end - marks["out"]

        store_cls._run = run  # type: ignore[method-assign]

    def start(self) -> None:
        self.on = True
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.wall += time.perf_counter() - self._started
        self.on = False

    def report(self, steps: int) -> None:
        per = 1e6 / steps
        in_thread = sum(self.acc[k] for k in self.KEYS if k.startswith("sql"))
        rows = [(k, self.acc[k]) for k in self.KEYS]
        rows.append(
            ("Python on the event loop (wall - awaiting the store)", self.wall - self.awaiting)
        )
        rows.append(
            (
                "unaccounted (SQLite thread, outside statements)",
                self.awaiting
                - in_thread
                - self.acc["hand-off loop -> SQLite thread"]
                - self.acc["hand-off SQLite thread -> loop"],
            )
        )
        log(
            f"wall-clock breakdown over {steps} x {self.unit}: {self.wall * per:.1f} us per "
            f"{self.unit}, {self.calls / steps:.2f} store calls per {self.unit}"
        )
        for key, value in sorted(rows, key=lambda kv: -kv[1]):
            log(f"  {key:55s} {value * per:8.1f} us  {value / self.wall:6.1%}")


def profile(cfg: argparse.Namespace, which: str) -> None:
    """Profile workload ``which`` (warm, without baselines); print the report on stderr.

    cProfile: CPU time by function. pyinstrument (if installed): wall clock by call stack.
    breakdown: wall clock split into SQLite statements, thread hand-offs and event-loop Python.
    """
    prof: Any
    if cfg.profiler == "pyinstrument":
        prof = _Pyinstrument()
    elif cfg.profiler == "breakdown":
        prof = _Breakdown()
    else:
        prof = _CProfile()
    prof.unit = PROFILE_UNITS[which]
    with fresh_dir("profile") as d:
        steps = anyio.run(_profiled_runs, cfg, which, d, prof, backend=cfg.backend)
    prof.report(steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="anyio backend of the event loop (default trio, like wf.run)",
    )
    parser.add_argument("--out", help="also write the JSON document to this file")
    parser.add_argument(
        "--table", action="store_true", help="also print the figures as a Markdown table on stderr"
    )
    parser.add_argument(
        "--profile",
        choices=("W1", "W2", "W3", "W4"),
        help="profile one workload instead of measuring (report on stderr)",
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "pyinstrument", "breakdown"),
        default="cprofile",
        help="profiler for --profile (pyinstrument must be installed)",
    )
    cfg = parser.parse_args(argv)
    cfg.w1_runs = 50 if cfg.quick else 300
    cfg.w1_blocking_runs = 10 if cfg.quick else 50
    cfg.w2_tasks = 100
    cfg.w3_tasks = 1000
    cfg.w4_tasks = 100
    cfg.repeats = 3 if cfg.quick else 5
    cfg.w3_repeats = 1 if cfg.quick else 3
    cfg.warmup = 3 if cfg.quick else 10

    if cfg.profile:
        profile(cfg, cfg.profile)
        return

    started = time.perf_counter()
    gc.collect()
    results = run_all(cfg)
    document = {
        "benchmark": "flux embedded engine",
        "environment": environment(cfg),
        "workloads": results,
        "targets": targets(results, cfg.durability),
        "wall_s": r(time.perf_counter() - started, 1),
    }
    text = json.dumps(document, indent=2)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(text + "\n")
    print(text)
    if cfg.table:
        log(markdown(document))


if __name__ == "__main__":
    main()
