"""Schedules with real processes on 127.0.0.1: ``flux start scheduler`` killed (-9) and
restarted (no duplicate, no gap with catch-up all), two schedulers and two servers on one
PostgreSQL database (each due time starts exactly one execution, run once), and the
``flux schedules`` commands, embedded and with --server-url."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime

import psycopg
import pytest

from tests.conftest_net import (
    PYTHON,
    ROOT,
    Proc,
    lines,
    procs,  # noqa: F401 - fixture
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow

FLOWS = """
import os

from flux import task, workflow
from flux.decorators import TaskMetadata


@task.with_options(metadata=True)
async def mark(log, metadata: TaskMetadata = None):
    with open(log, "a") as f:
        f.write(f"{metadata.execution_id} {os.getpid()}\\n")
    return metadata.execution_id


@workflow
async def beat(ctx):
    return await mark(ctx.input["log"])
"""


def flux(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "flux.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scheduler(procs, files: str, store: str, tag: str) -> Proc:  # noqa: F811
    log = str(procs.tmp_path / f"scheduler-{tag}.log")
    proc = Proc(
        ["start", "scheduler", files, "--store", store, "--refresh", "1", "--durability",
         "normal"],
        log,
        procs.env,
    )
    procs.all.append(proc)
    wait_for(lambda: "scheduler running workflow(s) beat" in proc.log(), 30, "scheduler", proc)
    return proc


def due_seconds(ids) -> list[int]:
    out = []
    for eid in ids:
        stamp = eid.rsplit("-", 1)[1]
        out.append(int(datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()))
    return sorted(out)


def sqlite_rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def pg_rows(url, sql):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_scheduler_killed_and_restarted_no_duplicate_no_gap(procs, tmp_path):  # noqa: F811
    files = tmp_path / "flows.py"
    files.write_text(FLOWS)
    db = str(tmp_path / "sched.db")
    log = tmp_path / "marks.txt"
    made = flux(
        procs.env, "schedules", "create", "beat1", "--workflow", "beat", "--every", "1s",
        "--catch-up", "all", "--overlap", "allow", "--input", json.dumps({"log": str(log)}),
        "--store", db,
    )
    assert made.returncode == 0, made.stderr
    first = scheduler(procs, str(files), db, "a")
    wait_for(lambda: len(lines(log)) >= 3, 30, "three runs", first)
    first.kill9()
    time.sleep(3)  # due times pass with no scheduler
    second = scheduler(procs, str(files), db, "b")
    before = {row[0] for row in sqlite_rows(db, "SELECT execution_id FROM executions")}
    wait_for(
        lambda: len(sqlite_rows(db, "SELECT 1 FROM executions")) >= len(before) + 5, 30,
        "runs after the restart", second,
    )
    assert second.terminate() == 0
    rows = sqlite_rows(db, "SELECT execution_id, state FROM executions")
    ids = [eid for eid, _ in rows]
    seconds = due_seconds(ids)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), "a gap or a duplicate"
    assert len(ids) == len(set(ids))
    # every execution completed, each exactly once; a body killed mid-run may have run twice
    states = dict(rows)
    unfinished = [eid for eid, state in states.items() if state != "COMPLETED"]
    assert len(unfinished) <= 1, states  # at most the one SIGTERM stopped (resumable)
    completed = sqlite_rows(
        db, "SELECT execution_id, COUNT(*) FROM events WHERE type = 'WORKFLOW_COMPLETED' "
        "GROUP BY execution_id",
    )
    assert all(count == 1 for _, count in completed)
    fires = sqlite_rows(db, "SELECT outcome, COUNT(*) FROM schedule_fires GROUP BY outcome")
    assert dict(fires).get("duplicate") is None
    assert dict(fires)["started"] == len(ids)


def test_two_schedulers_on_one_postgres_database(procs, tmp_path, pg_url):  # noqa: F811
    files = tmp_path / "flows.py"
    files.write_text(FLOWS)
    log = tmp_path / "marks.txt"
    made = flux(
        procs.env, "schedules", "create", "beat2", "--workflow", "beat", "--every", "1s",
        "--overlap", "allow", "--input", json.dumps({"log": str(log)}), "--store", pg_url,
    )
    assert made.returncode == 0, made.stderr
    a = scheduler(procs, str(files), pg_url, "a")
    b = scheduler(procs, str(files), pg_url, "b")
    wait_for(lambda: len(lines(log)) >= 8, 40, "runs on two schedulers", a)
    assert a.terminate() == 0 and b.terminate() == 0
    ids = [r[0] for r in pg_rows(pg_url, "SELECT execution_id FROM executions")]
    assert len(ids) == len(set(ids))
    seconds = due_seconds(ids)
    # both were up the whole time: every second one execution, no gap
    assert seconds == list(range(seconds[0], seconds[-1] + 1))
    outcomes = dict(pg_rows(pg_url, "SELECT outcome, COUNT(*) FROM schedule_fires GROUP BY 1"))
    assert outcomes.get("duplicate") is None and outcomes["started"] == len(ids)
    runs = lines(log)  # each body ran once, in one of the two processes
    ran = [eid for eid, _ in runs]
    assert len(ran) == len(set(ran))
    assert {pid for _, pid in runs} <= {str(a.pid), str(b.pid)}


def test_two_servers_on_one_postgres_database(procs, tmp_path, pg_url):  # noqa: F811
    log = tmp_path / "marks.txt"
    servers = [procs.server(store=pg_url, lease_ttl=3.0) for _ in range(2)]
    for n, (_, url) in enumerate(servers):
        procs.worker(url, f"w{n}")
    url0, url1 = servers[0][1], servers[1][1]
    assert upload(url0, FLOWS, "flows.py").status_code == 200
    made = flux(
        procs.env, "schedules", "create", "beat3", "--workflow", "beat", "--every", "1s",
        "--overlap", "allow", "--input", json.dumps({"log": str(log)}), "--server-url", url1,
    )
    assert made.returncode == 0, made.stderr
    wait_for(lambda: len(lines(log)) >= 6, 40, "runs on two servers")
    paused = flux(procs.env, "schedules", "pause", "beat3", "--server-url", url0)
    assert paused.returncode == 0 and "paused" in paused.stdout
    time.sleep(1.5)
    ids = [r[0] for r in pg_rows(pg_url, "SELECT execution_id FROM executions")]
    assert len(ids) == len(set(ids))
    seconds = due_seconds(ids)
    assert seconds == list(range(seconds[0], seconds[-1] + 1))
    outcomes = dict(pg_rows(pg_url, "SELECT outcome, COUNT(*) FROM schedule_fires GROUP BY 1"))
    assert outcomes.get("duplicate") is None and outcomes["started"] == len(ids)
    wait_for(
        lambda: {r[0] for r in pg_rows(pg_url, "SELECT state FROM executions")} == {"COMPLETED"},
        30, "every execution completed",
    )
    ran = [eid for eid, _ in lines(log)]
    assert sorted(ran) == sorted(ids)  # each ran exactly once


def test_cli_embedded(procs, tmp_path):  # noqa: F811
    db = str(tmp_path / "cli.db")
    env = procs.env

    def run(*args):
        return flux(env, "schedules", *args, "--store", db)

    made = run("create", "nightly", "--workflow", "beat", "--cron", "0 2 * * *",
               "--timezone", "Europe/Berlin", "--input", '{"log": "x"}', "--overlap",
               "buffer-one", "--catch-up", "last")
    assert made.returncode == 0, made.stderr
    assert "schedule nightly created: cron '0 2 * * *' in Europe/Berlin" in made.stdout
    listed = run("list", "--json")
    data = json.loads(listed.stdout)
    assert [(s["name"], s["overlap"], s["catch_up"]) for s in data] == [
        ("nightly", "buffer-one", "last")
    ]
    shown = run("show", "nightly", "--upcoming", "3")
    assert shown.returncode == 0, shown.stderr
    assert "next due (UTC):" in shown.stdout and shown.stdout.count(" 0") >= 3
    assert "nothing yet" in shown.stdout
    for args, words in [
        (("create", "nightly", "--workflow", "beat", "--every", "1h"), "already exists"),
        (("create", "x", "--workflow", "beat", "--cron", "99 * * * *"), "bad cron expression"),
        (("create", "x", "--workflow", "beat", "--cron", "@daily", "--timezone", "No/Where"),
         "unknown time zone 'No/Where'"),
        (("create", "x", "--workflow", "beat", "--every", "0s"), "greater than 0"),
        (("create", "x", "--workflow", "beat"), "give either --cron or --every"),
        (("create", "x", "--workflow", "beat", "--every", "1m", "--input", "{bad"), "not valid"),
        (("show", "ghost"), "no schedule named 'ghost'"),
        (("pause", "ghost"), "no schedule named 'ghost'"),
        (("delete", "ghost"), "no schedule named 'ghost'"),
    ]:
        out = run(*args)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
    assert "paused" in run("pause", "nightly").stdout
    assert json.loads(run("list", "--json").stdout)[0]["paused"] is True
    assert "resumed" in run("resume", "nightly").stdout
    trig = run("trigger", "nightly")
    assert trig.returncode == 0 and "sched-nightly-trigger-" in trig.stdout
    assert "trigger   pending" in run("show", "nightly").stdout
    assert "deleted" in run("delete", "nightly").stdout
    alone = flux(env, "start", "scheduler", "--store", db)
    assert alone.returncode != 0 and "no workflows to run" in alone.stderr
    assert "no schedules" in run("list").stderr
    assert not os.path.exists(str(tmp_path / "never.db"))
    missing = flux(env, "schedules", "list", "--store", str(tmp_path / "never.db"))
    assert missing.returncode != 0 and "no Flux database" in missing.stderr
    assert not os.path.exists(str(tmp_path / "never.db"))


def test_server_killed_and_restarted_catches_up_without_duplicates(procs, tmp_path):  # noqa: F811
    from tests.conftest_net import free_port

    db = str(tmp_path / "server.db")
    log = tmp_path / "marks.txt"
    port = free_port()
    server, url = procs.server(db, port, lease_ttl=2.0)
    procs.worker(url, "w", concurrency=4)
    assert upload(url, FLOWS, "flows.py").status_code == 200
    made = flux(
        procs.env, "schedules", "create", "beat4", "--workflow", "beat", "--every", "1s",
        "--catch-up", "all", "--overlap", "allow", "--input", json.dumps({"log": str(log)}),
        "--server-url", url,
    )
    assert made.returncode == 0, made.stderr
    wait_for(lambda: len(lines(log)) >= 3, 30, "runs before the kill", server)
    server.kill9()
    time.sleep(3)  # due times pass with no server
    server, url = procs.server(db, port, lease_ttl=2.0)
    count = len(sqlite_rows(db, "SELECT 1 FROM executions"))
    wait_for(lambda: len(lines(log)) >= count + 3, 40, "runs after the restart", server)
    shown = flux(procs.env, "schedules", "show", "beat4", "--json", "--server-url", url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["schedule"]["name"] == "beat4"
    assert flux(procs.env, "schedules", "pause", "beat4", "--server-url", url).returncode == 0
    wait_for(
        lambda: {r[0] for r in sqlite_rows(db, "SELECT state FROM executions")} == {"COMPLETED"},
        40, "every execution completed", server,
    )
    ids = [r[0] for r in sqlite_rows(db, "SELECT execution_id FROM executions")]
    seconds = due_seconds(ids)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), "a gap after the restart"
    outcomes = dict(sqlite_rows(db, "SELECT outcome, COUNT(*) FROM schedule_fires GROUP BY 1"))
    assert outcomes.get("duplicate") is None and outcomes["started"] == len(ids)
    ran = collections.Counter(eid for eid, _ in lines(log))
    assert set(ran) == set(ids)  # each ran; a body in flight at the kill may have run twice
    assert sum(1 for n in ran.values() if n > 1) <= 4
