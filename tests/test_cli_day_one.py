"""Issue 10 ("day one"), through the real ``flux`` console script: output asserted line by line.

Local commands run as subprocesses on a store under tmp_path; remote ones against a server
served in the test's trio run on 127.0.0.1 (with or without an in-process worker). ``flux run``
is also run under a pseudo-terminal and stopped with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import ROOT, subprocess_env
from .conftest_net import free_port, start_live

FLUX = os.path.join(os.path.dirname(sys.executable), "flux")

WORKFLOWS = textwrap.dedent(
    """
    import anyio
    from flux import ExecutionContext, task, workflow


    @task
    async def divide(a, b):
        return a / b


    @workflow
    async def calc(ctx: ExecutionContext):
        return await divide(ctx.input, 0)


    @task
    async def step(i: int) -> int:
        await anyio.sleep(STEP)
        return i * 10


    @workflow
    async def slow(ctx: ExecutionContext):
        out = []
        for i in range(ctx.input or 4):
            out.append(await step(i))
        return out
    """
)

CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture
def local(tmp_path):
    """``local(*args)`` runs the console script in tmp_path/work on tmp_path/flux.db."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "wfs.py").write_text("STEP = 0.05\n" + WORKFLOWS)
    env = subprocess_env(tmp_path)
    env.pop("FLUX_SERVER_URL", None)

    def run(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLUX, *args],
            cwd=work,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run.work = work
    run.env = env
    run.db = str(tmp_path / "flux.db")
    return run


def events_of(db: str, execution_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT type, call_id FROM events WHERE execution_id = ? ORDER BY seq",
            (execution_id,),
        ).fetchall()
    return [(t, c) for t, c in rows]


def state_of(db: str, execution_id: str) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT state FROM executions WHERE execution_id = ?", (execution_id,)
        ).fetchone()[0]


def traceback_lines(lines: list[str], path: Path) -> None:
    """The traceback recorded where divide raised ZeroDivisionError, Flux's frames left out
    (the workflow receives the recorded error, so its traceback is the task's)."""
    shown = [line for line in lines if not re.fullmatch(r"\s*[\^~]+\s*", line)]  # carets
    assert shown == [
        "Traceback (most recent call last):",
        f'  File "{path}", line 9, in divide',
        "    return a / b",
        "ZeroDivisionError: division by zero",
    ]


# ---------------------------------------------------------------------------- 1. tracebacks


def test_a_failed_run_shows_the_failing_call_and_its_traceback(local):
    out = local("run", "wfs.py:calc", "1", "--execution-id", "f1")
    assert out.returncode == 1 and out.stdout == ""
    err = out.stderr.splitlines()
    assert err[0] == "execution f1: running workflow calc"
    assert re.fullmatch(
        rf"  {CLOCK}  divide#0 +failed +ZeroDivisionError: division by zero", err[1]
    )
    assert err[2] == "execution f1: FAILED"
    traceback_lines(err[3:-1], local.work / "wfs.py")
    assert err[-1] == (
        "error: workflow calc failed at task divide#0: ZeroDivisionError: division by zero"
    )
    assert "flux/runtime" not in out.stderr  # Flux's own frames are left out

    shown = local("executions", "show", "f1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:6] == [
        "execution  f1",
        "workflow   calc",
        "state      FAILED",
        "input      1",
        "error      ZeroDivisionError: division by zero",
        "failed at  divide#0",
    ]
    traceback_lines(lines[6:], local.work / "wfs.py")
    with_events = local("executions", "show", "f1", "--events").stdout.splitlines()
    assert [line.split()[3:5] for line in with_events[6:10]] == [
        ["WORKFLOW_STARTED", "calc"],
        ["TASK_STARTED", "divide#0"],
        ["TASK_FAILED", "divide#0"],
        ["WORKFLOW_FAILED", "calc"],
    ]
    assert with_events[8].endswith(f"{'divide#0':28}  ZeroDivisionError: division by zero")
    data = json.loads(local("executions", "show", "f1", "--json").stdout)
    assert data["output"]["type"] == "builtins.ZeroDivisionError"
    assert data["output"]["message"] == "division by zero"
    assert data["output"]["traceback"].rstrip().endswith("ZeroDivisionError: division by zero")
    assert 'in divide\n' in data["output"]["traceback"]


FAILING_SOURCE = textwrap.dedent(
    """
    from flux import task, workflow


    class Boom(Exception):
        pass


    @task
    async def explode(x):
        raise Boom(f"kaboom {x}")


    @workflow
    async def failing(ctx):
        return await explode(ctx.input)


    @task
    async def double(x):
        return x * 2


    @workflow
    async def hello(ctx):
        return {"doubled": await double(ctx.input)}
    """
)


async def flux_async(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return await trio.run_process(
        [FLUX, *args], env=env, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
    )


async def upload(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/workflows", files={"file": ("flows.py", FAILING_SOURCE.encode())})
        assert r.status_code == 200, r.text


@pytest.mark.trio
async def test_remote_failures_carry_the_traceback(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    await upload(live.url)
    env = subprocess_env(tmp_path)
    env["FLUX_SERVER_URL"] = live.url
    done = await flux_async("workflow", "run", "failing", '"x"', env=env, cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == b""
    err = done.stderr.decode().splitlines()
    assert re.fullmatch(r"execution \w+: FAILED", err[0])
    eid = err[0].split()[1].rstrip(":")
    assert err[1:] == [
        "Traceback (most recent call last):",
        f'  File "<{_module_of(err)}>", line 11, in explode',
        '    raise Boom(f"kaboom {x}")',  # uploaded source shows its lines
        *_carets(err, 4),
        f"{_module_of(err)}.Boom: kaboom x",
        "error: workflow failing failed at task explode#0: Boom: kaboom x",
    ]
    async with httpx.AsyncClient(base_url=live.url) as c:
        status = (await c.get(f"/workflows/failing/status/{eid}?detailed=true")).json()
    assert status["output"]["message"] == "kaboom x"
    assert "in explode" in status["output"]["traceback"]
    failed = [e for e in status["events"] if e["type"] == "TASK_FAILED"]
    assert "in explode" in failed[0]["value"]["traceback"]


def _module_of(err: list[str]) -> str:
    return re.search(r'File "<([^>]+)>"', "\n".join(err))[1]


def _carets(err: list[str], index: int) -> list[str]:
    """The caret line at ``index`` of ``err`` if there is one (their shape is Python's)."""
    if index < len(err) and re.fullmatch(r"\s*[\^~]+\s*", err[index]):
        return [err[index]]
    return []


# ---------------------------------------------------------------------------- 2. flux run


def test_run_prints_the_id_first_a_line_per_outcome_and_the_output_last(local):
    out = local("run", "wfs.py:slow", "3", "--execution-id", "p1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[0, 10, 20]\n"
    err = out.stderr.splitlines()
    assert err[0] == "execution p1: running workflow slow"
    for i, line in enumerate(err[1:4]):
        assert re.fullmatch(rf"  {CLOCK}  step#{i} +completed +{i * 10}", line), line
    assert err[4:] == ["execution p1: COMPLETED"]
    quiet = local("run", "wfs.py:slow", "2", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "[0, 10]\n", "")
    again = local("run", "wfs.py:slow", "--execution-id", "p1")  # finished: shown as it is
    assert again.stdout == "[0, 10, 20]\n"
    assert again.stderr.splitlines() == ["execution p1: COMPLETED"]


def _read_until(fd: int, pattern: str, seen: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, "".join(seen)):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {''.join(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child is gone
                return
            if not chunk:
                return
            seen.append(chunk.decode())


def _read_to_end(fd: int, seen: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        seen.append(chunk.decode())
    raise AssertionError(f"still running: {''.join(seen)!r}")


def test_run_under_a_terminal_shows_progress_live_and_ctrl_c_leaves_it_resumable(local):
    (local.work / "wfs.py").write_text("STEP = 0.6\n" + WORKFLOWS)
    env = {**local.env, "COLUMNS": "200"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: on the terminal, in the work directory
        try:
            os.chdir(local.work)
            os.execve(FLUX, [FLUX, "run", "wfs.py:slow", "5", "--execution-id", "tty1"], env)
        finally:
            os._exit(127)
    seen: list[str] = []
    try:
        # progress is shown while it runs: two outcomes, long before the end (5 x 0.6 s)
        _read_until(fd, r"step#1 +completed +10\r?\n", seen)
        assert "COMPLETED" not in "".join(seen) and "[0, 10" not in "".join(seen)
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
        _read_to_end(fd, seen)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130
    # the terminal echoes Ctrl-C as ^C
    lines = [line.removeprefix("^C") for line in "".join(seen).replace("\r", "").splitlines()]
    resume = f"flux run wfs.py:slow --execution-id tty1 --db {local.db}"
    assert lines[0] == "execution tty1: running workflow slow"
    assert re.fullmatch(rf"  {CLOCK}  step#0 +completed +0", lines[1])
    assert re.fullmatch(rf"  {CLOCK}  step#1 +completed +10", lines[2])
    tail = lines[3:]
    if tail and re.fullmatch(rf"  {CLOCK}  step#2 +completed +20", tail[0]):
        tail = tail[1:]  # Ctrl-C landed just after the third outcome
    assert tail == ["interrupted: execution tty1 stopped where it was", f"resume with: {resume}"]
    # the history stays as it was: nothing cancelled, nothing failed, resumable
    assert state_of(local.db, "tty1") == "RUNNING"
    kinds = {t for t, _ in events_of(local.db, "tty1")}
    assert not kinds & {"TASK_CANCELLED", "TASK_FAILED", "WORKFLOW_CANCELLED", "WORKFLOW_FAILED"}
    done_before = [c for t, c in events_of(local.db, "tty1") if t == "TASK_COMPLETED"]

    words = shlex.split(resume)
    assert words[0] == "flux"
    resumed = subprocess.run(
        [FLUX, *words[1:]], cwd=local.work, env=local.env, capture_output=True, text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == "[0, 10, 20, 30, 40]\n"
    err = resumed.stderr.splitlines()
    assert err[0] == "execution tty1: recovering workflow slow"
    redone = [re.search(r"step#\d", line)[0] for line in err[1:-1]]
    assert redone == [f"step#{i}" for i in range(len(done_before), 5)]  # none twice
    assert err[-1] == "execution tty1: COMPLETED"


def test_sigint_from_another_process_also_prints_the_resume_command(local):
    (local.work / "wfs.py").write_text("STEP = 0.5\n" + WORKFLOWS)
    proc = subprocess.Popen(
        [FLUX, "run", "wfs.py:slow", "5", "--execution-id", "s1", "--db", "other.db"],
        cwd=local.work, env=local.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not [t for t, _ in _events_if(local.work / "other.db", "s1") if t == "TASK_COMPLETED"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and out == ""
    assert err.splitlines()[-2:] == [
        "interrupted: execution s1 stopped where it was",
        "resume with: flux run wfs.py:slow --execution-id s1 --db other.db",
    ]


def _events_if(db: Path, execution_id: str) -> list[tuple[str, str]]:
    try:
        return events_of(str(db), execution_id) if db.exists() else []
    except sqlite3.OperationalError:  # not created yet
        return []


# ---------------------------------------------------------------------------- 3. self-running files

SEED = textwrap.dedent(
    """
    from flux import ExecutionContext, task, workflow


    @task
    async def say_hello(name: str) -> str:
        return f"Hello, {name}"


    @workflow
    async def hello_world(ctx: ExecutionContext[str]):
        return await say_hello(ctx.input)


    ctx = hello_world.run("World")
    print(ctx.output)
    ctx = hello_world.run("again")
    """
)


def test_a_file_that_runs_itself_is_run_by_flux_run(local, tmp_path):
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "hello_world.py").write_text(SEED)
    out = local("run", str(seed_dir / "hello_world.py"), '"Bob"', "--execution-id", "h1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["None", "Hello, Bob"]  # the module's print, then ours
    err = out.stderr.splitlines()
    assert err[0] == (
        f"warning: hello_world.run() was called at the top level of {seed_dir / 'hello_world.py'} "
        'while Flux loaded it, and did not run; put such calls under `if __name__ == "__main__":`'
    )
    assert err[1] == "execution h1: running workflow hello_world"
    assert re.fullmatch(rf"  {CLOCK}  say_hello#0 +completed +Hello, Bob", err[2])
    assert err[3:] == ["execution h1: COMPLETED"]
    assert sorted(os.listdir(seed_dir)) == ["__pycache__", "hello_world.py"] or sorted(
        os.listdir(seed_dir)
    ) == ["hello_world.py"]  # no stray .flux/flux.db next to it
    listed = json.loads(local("executions", "list", "--json").stdout)
    assert [r["execution_id"] for r in listed] == ["h1"]  # the module's runs never ran
    # run as a script, the same file still runs itself
    direct = subprocess.run(
        [sys.executable, "hello_world.py"], cwd=seed_dir, env=local.env, capture_output=True,
        text=True, timeout=60,
    )
    assert direct.returncode == 0 and direct.stdout == "Hello, World\n", direct.stderr


@pytest.mark.trio
async def test_a_worker_loading_a_self_running_upload_does_not_run_it(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    async with httpx.AsyncClient(base_url=live.url) as c:
        r = await c.post("/workflows", files={"file": ("hello_world.py", SEED.encode())})
        assert r.status_code == 200, r.text
        with pytest.warns(RuntimeWarning, match="did not run") as warned:
            done = await c.post("/workflows/hello_world/run/sync", json="Ann", timeout=30)
    assert done.json()["output"] == "Hello, Ann"
    assert len([w for w in warned if "did not run" in str(w.message)]) == 1  # once per load
    listed = (await httpx.AsyncClient(base_url=live.url).get("/executions")).json()
    assert [e["workflow_name"] for e in listed["executions"]] == ["hello_world"]
    # a top-level run would have opened the store FLUX_DB names (the server's is api.db)
    assert os.environ["FLUX_DB"] == str(tmp_path / "flux.db")
    assert not (tmp_path / "flux.db").exists()


# ---------------------------------------------------------------------------- 4. start-up errors


def test_a_port_in_use_is_one_line(local):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = local("start", "server", "--port", str(port), timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    err = out.stderr.splitlines()
    assert err[-1] == f"error: cannot listen on 127.0.0.1:{port}: address already in use"
    assert len(err) <= 2 and "Traceback" not in out.stderr  # at most the loopback notice before
    bad_store = local("start", "server", "--port", "0", "--db", "/proc/no/such/dir/x.db")
    assert bad_store.returncode == 1
    assert bad_store.stderr.splitlines()[-1].startswith(
        "error: cannot open the store /proc/no/such/dir/x.db: "
    )
    assert "Traceback" not in bad_store.stderr


def test_the_worker_says_why_it_cannot_connect(local):
    port = free_port()
    proc = subprocess.Popen(
        [FLUX, "start", "worker", "--server-url", f"http://127.0.0.1:{port}"],
        cwd=local.work, env=local.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        while "lost or refused" not in line:
            assert line, "the worker stopped without a reconnect line"
            line = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    reason = line.split("lost or refused: ", 1)[1].strip()
    assert reason == f"HandshakeError: all attempts to connect to 127.0.0.1:{port} failed"


# ---------------------------------------------------------------------------- 5. waiting


@pytest.mark.trio
async def test_no_worker_connected_is_said_once(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False, upload_source=False)
    await upload(live.url)
    env = subprocess_env(tmp_path)
    env["FLUX_SERVER_URL"] = live.url
    done = await flux_async(
        "workflow", "run", "hello", "2", "--mode", "async", env=env, cwd=tmp_path
    )
    assert done.returncode == 0
    err = done.stderr.decode().splitlines()
    assert err[0] == (
        "no worker is connected: the run is queued and starts when a worker connects "
        "(flux start worker)"
    )
    assert re.fullmatch(r"execution \w+: SCHEDULED", err[1])
    eid = done.stdout.decode().strip()
    assert err[2:] == [f"follow with: flux executions follow {eid}"]


# ---------------------------------------------------------------------------- 6. one place to look


@pytest.mark.trio
async def test_execution_commands_agree_on_where_they_look(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    await upload(live.url)
    env = subprocess_env(tmp_path)
    env.pop("FLUX_SERVER_URL", None)
    env["FLUX_DB"] = str(tmp_path / "nothing-here" / "flux.db")  # no local store at all
    async with httpx.AsyncClient(base_url=live.url) as c:
        eid = (await c.post("/workflows/hello/run/sync", json=4)).json()["execution_id"]
    remote = {**env, "FLUX_SERVER_URL": live.url}
    listed = await flux_async("executions", "list", env=remote, cwd=tmp_path)
    rows = listed.stdout.decode().splitlines()
    assert rows[0].split() == ["EXECUTION", "ID", "WORKFLOW", "STATE", "DURATION", "UPDATED"]
    assert rows[1].split()[:3] == [eid, "hello", "COMPLETED"] and len(rows) == 2
    assert re.fullmatch(r"\d+\.\ds", rows[1].split()[3])
    shown = await flux_async("executions", "show", eid, env=remote, cwd=tmp_path)
    assert shown.stdout.decode().splitlines()[2:5] == [
        "state      COMPLETED",
        "input      4",
        'output     {"doubled": 8}',
    ]
    followed = await flux_async(
        "executions", "follow", eid, "--from", "3", env=remote, cwd=tmp_path
    )
    assert followed.stdout.decode().splitlines()[-1] == '{"doubled": 8}'
    cancelled = await flux_async("executions", "cancel", eid, env=remote, cwd=tmp_path)
    assert cancelled.returncode == 1  # the server answered (409), the local store was not read
    assert cancelled.stderr.decode().startswith("error: 409 conflict: ")
    # without a server URL they look at the local store, and never create it
    for args in (["list"], ["show", eid], ["follow", eid], ["cancel", eid]):
        done = await flux_async("executions", *args, env=env, cwd=tmp_path)
        assert done.returncode == 1 and done.stdout == b"", args
        what = "" if args == ["list"] else f"no execution with id {eid!r}: "
        assert done.stderr.decode() == (
            f"error: {what}no Flux database at {env['FLUX_DB']} (nothing has run with this "
            "store yet; --db, --store or FLUX_STORE names another, --server-url asks a "
            "server)\n"
        ), args
    assert not (tmp_path / "nothing-here").exists()


def test_local_follow_and_cancel(local):
    (local.work / "wfs.py").write_text("STEP = 0.3\n" + WORKFLOWS)
    proc = subprocess.Popen(
        [FLUX, "run", "wfs.py:slow", "3", "--execution-id", "fl1"],
        cwd=local.work, env=local.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not _events_if(Path(local.db), "fl1"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    followed = local("executions", "follow", "fl1")
    proc.communicate(timeout=30)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == [
        "WORKFLOW_STARTED",
        *["TASK_STARTED", "TASK_COMPLETED"] * 3,
        "WORKFLOW_COMPLETED",
    ]
    assert lines[-1] == "[0, 10, 20]"
    assert followed.stderr == "execution fl1: COMPLETED\n"
    gone = local("executions", "cancel", "nope")
    assert gone.returncode == 1 and gone.stderr == "error: no execution with id 'nope'\n"


# ---------------------------------------------------------------------------- 8. redaction


def test_short_secret_warns_and_never_garbles(local):
    out = local("secrets", "set", "PIN", "k")
    assert out.returncode == 0 and out.stdout == "secret PIN set\n"
    assert out.stderr == (
        "warning: secret 'PIN' is only 1 character long: values shorter than 8 are masked in "
        "errors and logs only where they stand as a whole word\n"
    )
    assert local("secrets", "set", "EMPTY", "").stderr == (
        "error: the value of secret 'EMPTY' must not be empty\n"
    )
    (local.work / "leak.py").write_text(
        textwrap.dedent(
            """
            from flux import task, workflow

            @task.with_options(secret_requests=["PIN"])
            async def my_task(secrets):
                raise PermissionError(f"my_task() refused key {secrets['PIN']}")

            @workflow
            async def leak(ctx):
                return await my_task()
            """
        )
    )
    failed = local("run", "leak.py", "--execution-id", "l1")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        "error: workflow leak failed at task my_task#0: PermissionError: my_task() refused key ***"
    )
    data = json.loads(local("executions", "show", "l1", "--json", "--events").stdout)
    assert data["output"]["message"] == "my_task() refused key ***"
    assert "PermissionError: my_task() refused key ***" in local("executions", "show", "l1").stdout


# ---------------------------------------------------------------------------- 11. small things


def test_json_input_errors_and_the_wrong_key_message_as_documented(local):
    out = local("run", "wfs.py:calc", '"abc')
    assert out.returncode == 2
    assert out.stderr == (
        "error: INPUT_JSON is not valid JSON (Unterminated string starting at column 1): "
        "'\"abc'\n"
    )
    assert local("secrets", "set", "T", "a-long-enough-value").returncode == 0
    (Path(local.db).parent / "secret.key").write_text(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    )
    wrong = local("secrets", "get", "T")
    assert wrong.returncode == 1
    documented = Path(ROOT, "docs", "secrets.md").read_text()
    assert wrong.stderr.strip() in documented.splitlines()


@pytest.mark.trio
async def test_root_redirects_to_the_console_and_the_docs_page_needs_no_script(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False, upload_source=False)
    async with httpx.AsyncClient(base_url=live.url) as c:
        root = await c.get("/")
        page = await c.get("/docs")
    assert root.status_code == 302 and root.headers["location"] == "/ui"  # the console (issue 12)
    html = page.text
    without_scripts = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    # everything is in the HTML itself: routes, the run body's schema, schemas
    assert "Loading" not in without_scripts
    assert "/workflows/{name}/run/sync" in without_scripts
    assert "<code>ctx.input</code>" in without_scripts  # Markdown rendered, no raw backticks
    assert "`" not in re.sub(r"<pre>.*?</pre>", "", without_scripts, flags=re.S)
    assert "Examples: <code>&quot;World&quot;</code>" in without_scripts
    assert 'id="schema-ErrorValue"' in without_scripts


@pytest.mark.trio
async def test_the_python_client_snippet_of_the_cli_docs_runs_as_written(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, upload_source=False)
    docs = Path(ROOT, "docs", "cli.md").read_text()
    snippet = re.search(r"### From Python.*?```python\n(.*?)```", docs, re.S)[1]
    (tmp_path / "workflows.py").write_text(
        "from flux import task, workflow\n\n@task\nasync def say(n):\n    return f'Hello, {n}'\n"
        "\n@workflow\nasync def greeter(ctx):\n    return await say(ctx.input)\n"
    )
    script = (
        "import anyio\n\nasync def main():\n"
        + textwrap.indent(snippet.replace("http://127.0.0.1:8000", live.url), "    ")
        + "\nanyio.run(main)\n"
    )
    (tmp_path / "snippet.py").write_text(script)
    env = subprocess_env(tmp_path)
    done = await trio.run_process(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_stdout=True,
        capture_stderr=True, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert re.fullmatch(r"execution \w+: SCHEDULED|execution \w+: RUNNING", lines[0])
    assert [line.split()[2] for line in lines[1:-1]] == [
        "WORKFLOW_STARTED", "TASK_STARTED", "TASK_COMPLETED", "WORKFLOW_COMPLETED"
    ]
    assert re.fullmatch(r"execution \w+: COMPLETED", lines[-1])


# ---------------------------------------------------------------------------- 9. a 0.2.7 file


def test_the_0_2_7_example_runs_as_a_script_and_with_flux_run(local):
    example = os.path.join(ROOT, "examples", "from_0_2_7.py")
    direct = subprocess.run(
        [sys.executable, example], cwd=local.work, env=local.env, capture_output=True, text=True,
        timeout=60,
    )
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.splitlines() == [
        "store True, serializer msgpack",
        "Hello, World (default, caught empty name)",
        "FAILED TaskTimeoutError is an ExecutionError: True, inner_exception: None",
    ]
    out = local("run", f"{example}:compat", '"Ann"', "--execution-id", "c1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "store True, serializer msgpack",
        "None",  # the skipped top-level run's output
        "Hello, Ann (default, caught empty name)",
    ]
    err = out.stderr.splitlines()
    assert err[0].startswith("warning: compat.run() was called at the top level of ")
    assert err[1] == "execution c1: running workflow compat"
    assert [line.split()[1:3] for line in err[2:5]] == [
        ["slow_lookup#0", "failed"],
        ["check#1", "failed"],
        ["greet#2", "completed"],
    ]
    assert err[5:] == ["execution c1: COMPLETED"]


GROUP = textwrap.dedent(
    """
    from flux import ExecutionContext, task, workflow
    from flux.tasks import parallel


    @task
    async def bad(i):
        raise ValueError(f"bad {i}")


    @workflow
    async def group(ctx: ExecutionContext):
        return await parallel(bad(1), bad(2))


    @workflow
    async def body(ctx: ExecutionContext):
        raise RuntimeError("first line\\nsecond line")
    """
)


def test_several_failures_at_once_and_a_failing_workflow_body(local):
    (local.work / "group.py").write_text(GROUP)
    path = local.work / "group.py"
    out = local("run", "group.py:group", "--execution-id", "g1", "--quiet")
    assert out.returncode == 1 and out.stdout == ""
    expected = []
    for n in (1, 2):
        expected += [
            f"failure {n} of 2 at task parallel#0/bad#{n - 1}: ValueError: bad {n}",
            "  Traceback (most recent call last):",
            f'    File "{path}", line 8, in bad',
            '      raise ValueError(f"bad {i}")',
            f"  ValueError: bad {n}",
        ]
    expected.append(
        "error: workflow group failed: ExceptionGroup: parallel: 2 calls failed (2 sub-exceptions)"
    )
    assert out.stderr.splitlines() == expected
    shown = local("executions", "show", "g1").stdout.splitlines()
    assert shown[4:6] == [
        "error      ExceptionGroup: parallel: 2 calls failed (2 sub-exceptions)",
        "failed at  parallel#0/bad#0, parallel#0/bad#1",
    ]
    assert shown[6:] == expected[:-1]

    body = local("run", "group.py:body", "-q")
    assert body.returncode == 1
    assert body.stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{path}", line 18, in body',
        '    raise RuntimeError("first line\\nsecond line")',
        "RuntimeError: first line",
        "second line",
        "error: workflow body failed: RuntimeError: first line ...",  # one line
    ]


def test_secrets_reading_commands_never_create_a_store(local, tmp_path):
    db = tmp_path / "none" / "flux.db"
    listed = local("secrets", "list", "--db", str(db))
    assert listed.returncode == 1 and listed.stderr == (
        f"error: no Flux database at {db} (nothing has run with this store yet; --db, "
        "--store or FLUX_STORE names another, --server-url asks a server)\n"
    )
    got = local("secrets", "get", "API_KEY", "--db", str(db))
    assert got.returncode == 1
    assert got.stderr == f"error: secret 'API_KEY' is not set: no Flux database at {db}\n"
    assert not (tmp_path / "none").exists()


def test_following_a_paused_local_execution_says_how_to_resume_it(local):
    (local.work / "ask.py").write_text(
        "from flux import workflow\nfrom flux.tasks import pause\n\n"
        "@workflow\nasync def ask(ctx):\n    return await pause('approve')\n"
    )
    assert local("run", "ask.py", "--execution-id", "a1").returncode == 0
    followed = local("executions", "follow", "a1")
    assert followed.returncode == 0
    assert [line.split()[2] for line in followed.stdout.splitlines()] == [
        "WORKFLOW_STARTED",
        "TASK_PAUSED",
        "WORKFLOW_PAUSED",
    ]
    assert followed.stderr.splitlines() == [
        "execution a1: PAUSED",
        "paused; resume with: flux run FILE --execution-id a1 [VALUE]",
    ]


def test_retries_and_fallbacks_read_as_sentences(local):
    (local.work / "flaky.py").write_text(
        textwrap.dedent(
            """
            from flux import task, workflow

            @task.with_options(retry_max_attempts=1, retry_delay=0.01, fallback=lambda: "plan b")
            async def flaky():
                raise ConnectionError("down")

            @workflow
            async def w(ctx):
                return await flaky()
            """
        )
    )
    out = local("run", "flaky.py", "--execution-id", "r1")
    assert out.returncode == 0 and out.stdout == "plan b\n"
    shown = [re.sub(rf"^  {CLOCK}  ", "", line) for line in out.stderr.splitlines()[1:-1]]
    assert [re.sub(r"\s{2,}", " | ", line) for line in shown] == [
        "flaky#0 | retrying | retry 1 after 0.01s (ConnectionError: down)",
        "flaky#0 | retry failed | ConnectionError: down",
        "flaky#0 | falling back | ConnectionError: down",
        "flaky#0 | completed | plan b",
    ]
