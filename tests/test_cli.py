"""The flux CLI, run as a real process, and pause/resume across processes."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest

from .conftest import PYTHON, subprocess_env

WORKFLOWS = textwrap.dedent(
    """
    import os
    import anyio
    from flux import task, workflow, ExecutionContext
    from flux.tasks import pause

    def mark(what):
        with open(os.environ["MARKS"], "a") as f:
            f.write(what + "\\n")

    @task
    async def say_hello(name: str) -> str:
        mark(f"hello {name}")
        return f"Hello, {name}"

    @task
    async def fail(x):
        raise ValueError(f"cannot do {x}")

    @workflow
    async def greet(ctx: ExecutionContext[str]):
        return await say_hello(ctx.input)

    @workflow
    async def broken(ctx: ExecutionContext):
        return await fail(ctx.input)

    @workflow
    async def approval(ctx: ExecutionContext[str]):
        first = await say_hello(ctx.input)
        answer = await pause("approve")
        second = await say_hello(str(answer))
        return [first, second]

    async def undo():
        mark("rolled back")

    @task.with_options(rollback=undo)
    async def long_job():
        mark("long job started")
        await anyio.sleep(60)

    @workflow
    async def long_running(ctx: ExecutionContext):
        await long_job()
    """
)


@pytest.fixture
def cli(tmp_path):
    (tmp_path / "wfs.py").write_text(WORKFLOWS)
    env = subprocess_env(tmp_path)
    env["MARKS"] = str(tmp_path / "marks.txt")

    def run(*args, timeout=60):
        return subprocess.run(
            [PYTHON, "-m", "flux.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run.env = env
    run.marks = tmp_path / "marks.txt"
    return run


def test_run_prints_output(cli):
    out = cli("run", "wfs.py:greet", '"World"')
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello, World\n"
    assert "COMPLETED" in out.stderr


def test_run_failure_exits_non_zero_with_the_error(cli):
    out = cli("run", "wfs.py:broken", "5")
    assert out.returncode == 1
    assert "ValueError: cannot do 5" in out.stderr


def test_bad_input_and_unknown_workflow(cli):
    out = cli("run", "wfs.py:greet", "{not json")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = cli("run", "wfs.py:nope", "1")
    assert out.returncode == 1 and "nope" in out.stderr
    out = cli("run", "wfs.py", "1")
    assert out.returncode == 1 and "several workflows" in out.stderr
    out = cli("executions", "show", "no-such-id")
    assert out.returncode == 1 and "no-such-id" in out.stderr
    (cli.marks.parent / "broken.py").write_text("from flux import workflow\nasync def w(ctx)\n")
    out = cli("run", "broken.py", "1")
    assert out.returncode == 1
    assert out.stderr.strip().endswith("broken.py at line 2: expected ':'")
    assert "Traceback" not in out.stderr
    (cli.marks.parent / "missing_dep.py").write_text("import no_such_module_here\n")
    out = cli("run", "missing_dep.py", "1")
    assert out.returncode == 1 and "ModuleNotFoundError" in out.stderr
    assert "no_such_module_here" in out.stderr and "Traceback" not in out.stderr


def test_executions_list_and_show(cli, tmp_path):
    assert cli("run", "wfs.py:greet", '"A"').returncode == 0
    assert cli("--version").returncode == 0
    listed = json.loads(cli("executions", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["state"] == "COMPLETED"
    eid = listed[0]["execution_id"]
    shown = cli("executions", "show", eid, "--events")
    assert shown.returncode == 0
    assert "TASK_COMPLETED" in shown.stdout and "say_hello#0" in shown.stdout
    as_json = json.loads(cli("executions", "show", eid, "--json", "--events").stdout)
    assert as_json["output"] == "Hello, A" and len(as_json["events"]) == 4
    # --db points at no database: a one-line error, and no file is created
    other = cli("executions", "list", "--json", "--db", str(tmp_path / "sub" / "other.db"))
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr == (
        f"error: no Flux database at {tmp_path / 'sub' / 'other.db'} (nothing has run with "
        "this store yet; --db, --store or FLUX_STORE names another, --server-url asks a "
        "server)\n"
    )
    assert not (tmp_path / "sub").exists()


def test_pause_in_one_process_resume_in_another(cli):
    first = cli("run", "wfs.py:approval", '"ann"')
    assert first.returncode == 0, first.stderr
    assert "PAUSED" in first.stderr
    eid = json.loads(cli("executions", "list", "--json").stdout)[0]["execution_id"]
    assert cli.marks.read_text() == "hello ann\n"
    resumed = cli("run", "wfs.py:approval", '"bob"', "--execution-id", eid)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == ["Hello, ann", "Hello, bob"]
    # the task before the pause did not run again in the second process
    assert cli.marks.read_text() == "hello ann\nhello bob\n"
    again = cli("run", "wfs.py:approval", "--execution-id", eid)
    assert json.loads(again.stdout) == ["Hello, ann", "Hello, bob"]
    assert cli.marks.read_text() == "hello ann\nhello bob\n"


def test_cancel_a_paused_execution(cli):
    cli("run", "wfs.py:approval", '"x"')
    eid = json.loads(cli("executions", "list", "--json").stdout)[0]["execution_id"]
    out = cli("executions", "cancel", eid)
    assert out.returncode == 0 and "CANCELLED" in out.stdout
    shown = json.loads(cli("executions", "show", eid, "--json", "--events").stdout)
    assert shown["state"] == "CANCELLED"
    assert shown["events"][-1]["type"] == "WORKFLOW_CANCELLED"
    # cancelling it again, or a completed one, is refused with a clear line
    again = cli("executions", "cancel", eid)
    assert again.returncode == 0 and "CANCELLED" in again.stdout
    cli("run", "wfs.py:greet", '"z"')
    done_id = json.loads(cli("executions", "list", "--json", "--state", "COMPLETED").stdout)[0]
    refused = cli("executions", "cancel", done_id["execution_id"])
    assert refused.returncode == 1 and "already finished (COMPLETED)" in refused.stderr
    # resuming a cancelled execution returns it unchanged
    again = cli("run", "wfs.py:approval", '"y"', "--execution-id", eid)
    assert again.returncode == 2 and "cancelled" in again.stderr


def test_cancel_a_running_execution_from_another_process(cli):
    proc = subprocess.Popen(
        [PYTHON, "-m", "flux.cli", "run", "wfs.py:long_running", "--execution-id", "long-1"],
        cwd=cli.marks.parent,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cli.marks.exists() and "long job started" in cli.marks.read_text()):
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.05)
        out = cli("executions", "cancel", "long-1")
        assert out.returncode == 0 and "cancel requested" in out.stdout
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr
    shown = json.loads(cli("executions", "show", "long-1", "--json", "--events").stdout)
    assert shown["state"] == "CANCELLED"
    types = [(e["type"], e["source_id"]) for e in shown["events"]]
    assert ("TASK_ROLLBACK_COMPLETED", "long_job#0") in types
    assert ("TASK_CANCELLED", "long_job#0") in types
    assert cli.marks.read_text().splitlines() == ["long job started", "rolled back"]


def test_secrets_commands(cli):
    assert cli("secrets", "set", "API_KEY", "abc123").returncode == 0
    assert cli("secrets", "list").stdout.split() == ["API_KEY"]
    assert cli("secrets", "get", "API_KEY").stdout.strip() == "abc123"
    missing = cli("secrets", "get", "NOPE")
    assert missing.returncode == 1 and "NOPE" in missing.stderr
    assert cli("secrets", "remove", "API_KEY").returncode == 0
    assert cli("secrets", "list").stdout.strip() == ""
    bad = cli("secrets", "set", "has space", "v")
    assert bad.returncode == 1 and "space" in bad.stderr
