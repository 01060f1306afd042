"""One owner per execution, proven with real processes racing on one SQLite file.

Each test starts ``python -m tests.procs.owners`` processes on the test's store; their task
bodies log ``<pid> start|end <key>`` lines, so the assertions say which process ran what.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env

pytestmark = pytest.mark.slow


class Procs:
    def __init__(self, tmp_path, ttl: float = 15.0, store: str | None = None):
        self.tmp = tmp_path
        self.db = str(tmp_path / "flux.db")
        self.store = store  # a PostgreSQL URL, or None for the SQLite file
        self.log = str(tmp_path / "bodies.log")
        self.go = str(tmp_path / "go")
        self.env = subprocess_env(tmp_path)
        self.env["FLUX_TEST_LOG"] = self.log
        self.env["FLUX_LEASE_TTL"] = str(ttl)
        self.env["FLUX_DURABILITY"] = "normal"
        if store is not None:
            self.env["FLUX_STORE"] = store
        self.started: list[subprocess.Popen] = []

    def spawn(self, *args: str, together: bool = False) -> subprocess.Popen:
        env = dict(self.env)
        if together:
            env["FLUX_TEST_GO"] = self.go
        proc = subprocess.Popen(
            [PYTHON, "-m", "tests.procs.owners", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def release(self) -> None:
        time.sleep(0.8)  # both interpreters are up and polling for the go file
        open(self.go, "w").close()

    @staticmethod
    def result(proc: subprocess.Popen, timeout: float = 60) -> dict:
        out, err = proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"no result (exit {proc.returncode}): {err[-2000:]}"
        return json.loads(lines[-1])

    def bodies(self) -> list[tuple[int, str, str]]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            lines = [line.split(" ", 2) for line in f.read().split("\n") if line]
        return [(int(p), e, k) for p, e, k in lines]

    def starts(self) -> Counter[str]:
        return Counter(k for _, e, k in self.bodies() if e == "start")

    def wait_for_body(self, key: str, event: str = "start", timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, e, k in self.bodies():
                if e == event and k == key:
                    return pid
            time.sleep(0.01)
        raise AssertionError(f"no body {event} of {key!r} within {timeout}s: {self.bodies()}")

    def events(self, execution_id: str) -> list[tuple]:
        sql = (
            "select seq, type, call_id, name, value from events where execution_id=%s "
            "order by seq"
        )
        if self.store is not None:
            import psycopg

            with psycopg.connect(self.store) as conn:
                rows = conn.execute(sql, (execution_id,)).fetchall()
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql.replace("%s", "?"), (execution_id,)).fetchall()
        finally:
            conn.close()

    def completed_keys(self, execution_id: str) -> set[str]:
        from flux.runtime import codec

        started = {}
        done = set()
        for _seq, type_, call_id, _name, value in self.events(execution_id):
            if type_ == "TASK_STARTED":
                args = codec.decode(value).get("args")
                if args:
                    started[call_id] = args[0]
            elif type_ == "TASK_COMPLETED" and call_id in started:
                done.add(started[call_id])
        return done

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                proc.kill()
                proc.wait()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request):
    """Every test runs on the SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


@pytest.fixture
def procs(tmp_path, store):
    p = Procs(tmp_path, store=store)
    yield p
    p.cleanup()


def assert_dense(events: list[tuple]) -> None:
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    assert [e[1] for e in events].count("WORKFLOW_STARTED") == 1


def test_two_processes_starting_one_new_id_run_it_once(procs):
    args = ("chain", "new-1", "[4, 0.2]", "--wait")
    a = procs.spawn(*args, together=True)
    b = procs.spawn(*args, together=True)
    procs.release()
    ra, rb = procs.result(a), procs.result(b)
    assert ra == rb == {"state": "COMPLETED", "output": ["s0", "s1", "s2", "s3"]}
    assert procs.starts() == Counter({"s0": 1, "s1": 1, "s2": 1, "s3": 1})
    assert len({pid for pid, _, _ in procs.bodies()}) == 1  # one process ran every body
    events = procs.events("new-1")
    assert_dense(events)
    assert [e[1] for e in events].count("WORKFLOW_COMPLETED") == 1
    assert "WORKFLOW_FAILED" not in [e[1] for e in events]


def test_without_wait_the_second_starter_is_refused_naming_the_owner(procs):
    args = ("chain", "new-2", "[3, 0.4]")
    a = procs.spawn(*args, together=True)
    b = procs.spawn(*args, together=True)
    procs.release()
    results = [procs.result(a), procs.result(b)]
    done = [r for r in results if r.get("state") == "COMPLETED"]
    refused = [r for r in results if r.get("error") == "ExecutionLeasedError"]
    assert len(done) == 1 and len(refused) == 1, results
    owner_pid = procs.bodies()[0][0]
    assert f"pid {owner_pid}" in refused[0]["message"]
    assert procs.starts() == Counter({"s0": 1, "s1": 1, "s2": 1})
    assert_dense(procs.events("new-2"))


def test_a_live_run_is_not_taken_by_another_process(tmp_path, store):
    # renewed by the heartbeat: live long past one ttl (2 s, not less: a heartbeat delayed
    # past the ttl on a loaded machine really does lose the lease, correctly)
    procs = Procs(tmp_path, ttl=2.0, store=store)
    try:
        a = procs.spawn("chain", "live-1", "[1, 7.0]")
        owner = procs.wait_for_body("s0")
        time.sleep(4.5)
        b = procs.spawn("chain", "live-1", "[1, 7.0]")
        rb = procs.result(b)
        assert rb["error"] == "ExecutionLeasedError"
        assert f"pid {owner}" in rb["message"]
        assert procs.result(a) == {"state": "COMPLETED", "output": ["s0"]}
        assert procs.starts() == Counter({"s0": 1})
    finally:
        procs.cleanup()


def test_crash_recovery_on_one_machine_does_not_wait_for_the_lease(procs):
    a = procs.spawn("chain", "crash-1", "[30, 0.05]")
    procs.wait_for_body("s5", "end")
    a.kill()
    a.wait()
    completed = procs.completed_keys("crash-1")
    assert completed
    began = time.monotonic()
    # two recoverers at once: one takes the dead process's lease at once, the other waits
    b = procs.spawn("chain", "crash-1", "[30, 0.05]", "--wait", together=True)
    c = procs.spawn("chain", "crash-1", "[30, 0.05]", "--wait", together=True)
    procs.release()
    rb, rc = procs.result(b), procs.result(c)
    assert time.monotonic() - began < 12  # far less than waiting out the 15 s lease
    expected = {"state": "COMPLETED", "output": [f"s{i}" for i in range(30)]}
    assert rb == rc == expected
    starts = procs.starts()
    for key in completed:  # a completed body never runs again
        assert starts[key] == 1, (key, starts)
    recoverers = {pid for pid, _, k in procs.bodies() if k not in completed} - {a.pid}
    assert len(recoverers) == 1
    assert_dense(procs.events("crash-1"))


def test_two_resumes_of_one_paused_execution_deliver_one_value(procs):
    first = procs.spawn("approval", "approve-1")
    assert procs.result(first) == {"state": "PAUSED", "output": None}
    a = procs.spawn("approval", "approve-1", "--resume", '"A"', together=True)
    b = procs.spawn("approval", "approve-1", "--resume", '"B"', together=True)
    procs.release()
    results = [procs.result(a), procs.result(b)]
    works = [k for _, e, k in procs.bodies() if e == "start"]
    assert len(works) == 1, works  # work() ran once, with one of the values
    value = works[0].split(":")[1]
    done = {"state": "COMPLETED", "output": f"work:{value}"}
    assert done in results
    results.remove(done)
    # the other resume was refused while the first ran, or found it finished: never delivered
    assert results[0].get("error") == "ExecutionLeasedError" or results[0] == done, results
    events = procs.events("approve-1")
    assert_dense(events)
    assert [e[1] for e in events].count("WORKFLOW_RESUMED") == 1


@pytest.mark.parametrize(
    "workflow, input_, stalled", [("saga", "3.0", "pay"), ("fan", "3.0", "r1")]
)
def test_a_run_frozen_past_its_ttl_starts_and_writes_nothing_once_woken(
    tmp_path, store, workflow, input_, stalled
):
    """SIGSTOP a runner inside a task body past its 1 s lease; another process takes the
    execution over and finishes it; SIGCONT the first: it starts no body, no compensation and
    no rollback, writes nothing, and stops."""
    procs = Procs(tmp_path, ttl=1.0, store=store)
    try:
        a = procs.spawn(workflow, f"frozen-{workflow}", input_)
        procs.wait_for_body(stalled)
        time.sleep(0.2)
        os.kill(a.pid, signal.SIGSTOP)
        b = procs.spawn(workflow, f"frozen-{workflow}", input_, "--wait")
        rb = procs.result(b)
        assert rb["state"] == "COMPLETED", rb
        before = procs.events(f"frozen-{workflow}")
        lines_before = len(procs.bodies())
        os.kill(a.pid, signal.SIGCONT)
        ra = procs.result(a)
        assert ra["error"] == "LeaseLostError", ra
        assert procs.events(f"frozen-{workflow}") == before
        woken = [(e, k) for pid, e, k in procs.bodies()[lines_before:] if pid == a.pid]
        # at most the bodies it was inside when frozen return; nothing new starts
        assert all(e == "end" for e, _ in woken), woken
        started_by_a = {k for pid, e, k in procs.bodies() if pid == a.pid and e == "start"}
        assert not any(k.startswith(("compensate", "rollback", "ship")) for k in started_by_a)
        if workflow == "saga":
            assert rb["output"] == ["book", "pay", "ship"]
        else:
            assert rb["output"] == ["r0", "r1", "r2"]
    finally:
        procs.cleanup()
