"""Signals across embedded processes on one SQLite file: kill -9 of the runner between a
delivery and the next receive, and exactly-once delivery under racing senders and recoverers."""

from __future__ import annotations

import subprocess
import time

import pytest
import trio

from flux.runtime.events import ExecutionEventType as E
from flux.runtime.store import open_store
from tests.conftest import PYTHON, ROOT, subprocess_env

pytestmark = pytest.mark.slow


def proc(tmp_path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "tests.procs.signals", *args],
        cwd=ROOT,
        env=env or subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 60) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


async def history(db: str, eid: str):
    async with open_store(db) as store:
        return await store.load_events(eid), await store.pending_signals(eid)


def test_kill_9_of_the_runner_then_resume_in_another_process(tmp_path):
    db = str(tmp_path / "flux.db")
    marker = str(tmp_path / "marker")
    env = subprocess_env(tmp_path)
    # before: the execution exists and waits for "a"; "a" and "b" are sent before it runs on
    assert finish(proc(tmp_path, "start", db, "x1", "crasher", marker)) == "SCHEDULED"
    assert finish(proc(tmp_path, "send", db, "x1", "a", "1", "1")) == "SENT"
    assert finish(proc(tmp_path, "send", db, "x1", "b", "7", "1")) == "SENT"
    # during: a runner takes "a", starts the slow step, and is killed in it
    env["SLOW_SECONDS"] = "60"
    runner = proc(tmp_path, "run", db, "x1", "crasher", env=env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "marker").exists():
        assert time.monotonic() < deadline and runner.poll() is None, runner.stderr.read()
        time.sleep(0.02)
    runner.kill()
    runner.wait(10)
    events, pending = trio.run(history, db, "x1")
    assert [e.type for e in events].count(E.SIGNAL_RECEIVED.value) == 1
    assert [s.topic for s in pending] == ["b"]  # "a" taken once, "b" still queued
    # after: another process resumes it; "a" is replayed, never taken again
    env["SLOW_SECONDS"] = "0"
    assert finish(proc(tmp_path, "run", db, "x1", "crasher", env=env)) == "COMPLETED"
    events, pending = trio.run(history, db, "x1")
    received = [(e.call_id, e.name) for e in events if e.type == E.SIGNAL_RECEIVED.value]
    assert received == [("receive#0", "a"), ("receive#2", "b")]
    assert pending == []
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (tmp_path / "marker").read_text().split() == ["started", "started"]


def test_queued_signals_delivered_exactly_once_under_ownership_races(tmp_path):
    db = str(tmp_path / "flux.db")
    env = subprocess_env(tmp_path)
    env["SIGNALS_TOTAL"] = "40"
    assert finish(proc(tmp_path, "start", db, "race", "collector", env=env)) == "SCHEDULED"
    runners = [proc(tmp_path, "recover", db, "race", "collector", env=env) for _ in range(2)]
    senders = [
        proc(tmp_path, "send", db, "race", "n", str(first), "20", env=env) for first in (0, 100)
    ]
    for p in senders:
        assert finish(p, 120) == "SENT"
    for p in runners:
        assert finish(p, 120) == "COMPLETED"
    events, pending = trio.run(history, db, "race")
    assert pending == []
    received = [e for e in events if e.type == E.SIGNAL_RECEIVED.value]
    assert len(received) == 40
    from flux.runtime import codec

    values = [codec.decode(e.value) for e in received]
    assert sorted(values) == list(range(20)) + list(range(100, 120))  # each exactly once
    # each sender's signals arrive in the order it sent them
    assert [v for v in values if v < 100] == list(range(20))
    assert [v for v in values if v >= 100] == list(range(100, 120))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    completed = [e for e in events if e.type == E.WORKFLOW_COMPLETED.value]
    assert len(completed) == 1 and codec.decode(completed[0].value) == values


def test_the_cli_embedded_run_signal_and_continue(tmp_path):
    env = subprocess_env(tmp_path)
    flow = tmp_path / "flow.py"
    flow.write_text(
        "from flux import workflow\n"
        "from flux.tasks import receive\n\n"
        "@workflow\n"
        "async def asks(ctx):\n"
        "    return {'answer': await receive('answer')}\n"
    )

    def flux(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "-m", "flux.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    started = flux("run", str(flow))
    assert started.returncode == 0, started.stderr
    eid = started.stderr.split("execution ", 1)[1].split(":", 1)[0]
    assert "waiting for a signal on 'answer'" in started.stderr
    assert f"flux executions signal {eid} answer [VALUE]" in started.stderr
    sent = flux("executions", "signal", eid, "answer", "42")
    assert sent.returncode == 0 and "queued" in sent.stdout, sent.stderr
    done = flux("run", str(flow), "--execution-id", eid)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"answer": 42}'
    again = flux("executions", "signal", eid, "answer", "1")
    assert again.returncode == 1 and "COMPLETED" in again.stderr
    missing = flux("executions", "signal", "nope", "answer")
    assert missing.returncode == 1 and "nope" in missing.stderr
    bad = flux("executions", "signal", eid, "no/slash", "1")
    assert bad.returncode != 0 and "invalid signal topic" in bad.stderr
