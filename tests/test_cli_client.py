"""The CLI's client commands (``flux workflow ...``, ``flux executions follow``, ``flux secrets
... --server-url``), run in-process with asyncclick's runner against a real in-process server and,
for the routes of issue 5, against the fake app of test_client; plus the real entry point as a
subprocess."""

from __future__ import annotations

import json

import pytest
import trio
from asyncclick.testing import CliRunner, Result

from flux.cli import cli

from . import test_client
from .conftest_net import PYTHON, ROOT, free_port, net_env
from .test_client import EVENTS, SOURCE, Fake, Real, has_route, needs  # noqa: F401

#: the servers of test_client: a real one (with a worker) and the fake of issue 5's routes
real = test_client.real
fake = test_client.fake
no_client_environment = test_client.no_client_environment


async def flux(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run ``flux ARGS`` in this process (and this trio loop)."""
    env = {"FLUX_SERVER_URL": None, "FLUX_API_TOKEN": None, **(env or {})}
    return await CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r


def failed(r: Result, code: int, message: str) -> None:
    """One ``error: ...`` line on stderr, exit ``code``."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], r.stderr


def at(server: Real | Fake) -> tuple[str, str]:
    return ("--server-url", server.url)


# ---------------------------------------------------------------------------- real server


@pytest.mark.trio
async def test_register_list_show(real, tmp_path):
    path = tmp_path / "flows.py"
    path.write_text(SOURCE)
    out = ok(await flux("workflow", "register", str(path), *at(real))).stdout.splitlines()
    assert "registered hello version 2" in out and len(out) == 4
    table = ok(await flux("workflow", "list", *at(real))).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "CREATED"]
    assert [row.split()[:2] for row in table[1:]] == [
        ["asker", "2"],
        ["failing", "2"],
        ["hello", "2"],
        ["slow", "2"],
    ]
    listed = json.loads(ok(await flux("workflow", "list", "--json", *at(real))).stdout)
    assert {w["name"] for w in listed} == {"asker", "failing", "hello", "slow"}
    shown = ok(await flux("workflow", "show", "hello", *at(real))).stdout
    assert "name       hello" in shown and "versions   1, 2" in shown
    source = ok(await flux("workflow", "show", "hello", "--source", *at(real))).stdout
    assert source == SOURCE
    as_json = json.loads(ok(await flux("workflow", "show", "hello", "--json", *at(real))).stdout)
    assert as_json["version"] == 2

    failed(
        await flux("workflow", "show", "nope", *at(real)),
        1,
        "error: 404 workflow-not-found: no workflow named 'nope'",
    )
    missing = await flux("workflow", "register", str(tmp_path / "missing.py"), *at(real))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("from flux import workflow\n\n@workflow\nasync def x(ctx)\n  pass\n")
    failed(await flux("workflow", "register", str(bad), *at(real)), 1, "400 bad-source: ")


@pytest.mark.trio
async def test_run_sync_async_and_status(real):
    r = ok(await flux("workflow", "run", "hello", "21", *at(real)))
    assert r.stdout == '{"doubled": 42}\n'
    assert r.stderr.startswith("execution ") and r.stderr.endswith(": COMPLETED\n")

    detailed = ok(await flux("workflow", "run", "hello", "2", "--detailed", *at(real)))
    kinds = [line.split()[2] for line in detailed.stderr.splitlines()[:4]]
    assert kinds == ["WORKFLOW_STARTED", "TASK_STARTED", "TASK_COMPLETED", "WORKFLOW_COMPLETED"]
    assert detailed.stdout == '{"doubled": 4}\n'

    started = ok(await flux("workflow", "run", "hello", "5", "--mode", "async", *at(real)))
    eid = started.stdout.strip()
    assert len(eid) == 32 and f"flux executions follow {eid}" in started.stderr
    with trio.fail_after(20):
        while True:
            status = ok(await flux("workflow", "status", "hello", eid, "--json", *at(real)))
            if json.loads(status.stdout)["state"] == "COMPLETED":
                break
            await trio.sleep(0.02)
    shown = ok(await flux("workflow", "status", "hello", eid, "--detailed", *at(real))).stdout
    lines = shown.splitlines()
    assert lines[:5] == [
        f"execution  {eid}",
        "workflow   hello",
        "state      COMPLETED",
        "input      5",
        'output     {"doubled": 10}',
    ]
    assert [line.split()[2] for line in lines[5:]][-1] == "WORKFLOW_COMPLETED"
    no_input = ok(await flux("workflow", "run", "asker", *at(real)))  # no INPUT: null
    assert "PAUSED" in no_input.stderr

    # the local inspection commands ask the server with --server-url
    listed = json.loads(
        ok(await flux("executions", "list", "--workflow", "hello", "--json", *at(real))).stdout
    )
    assert eid in [row["execution_id"] for row in listed]
    assert all(row["workflow_name"] == "hello" for row in listed)
    paused = json.loads(
        ok(await flux("executions", "list", "--state", "paused", "--json", *at(real))).stdout
    )
    assert paused and all(row["state"] == "PAUSED" for row in paused)
    table = ok(await flux("executions", "list", "--workflow", "hello", *at(real))).stdout
    header = ["EXECUTION", "ID", "WORKFLOW", "STATE", "DURATION", "UPDATED"]
    assert table.splitlines()[0].split() == header
    shown = ok(await flux("executions", "show", eid, "--events", *at(real))).stdout.splitlines()
    assert shown[2] == "state      COMPLETED" and "WORKFLOW_COMPLETED" in shown[-1]
    as_json = json.loads(ok(await flux("executions", "show", eid, "--json", *at(real))).stdout)
    assert as_json["output"] == {"doubled": 10} and "events" not in as_json
    failed(await flux("executions", "show", "no-such-id", *at(real)), 1, "no-such-id")


@pytest.mark.trio
async def test_run_errors(real):
    failed(
        await flux("workflow", "run", "hello", "notjson", *at(real)),
        2,
        "error: INPUT is not valid JSON (Expecting value at column 1): 'notjson'",
    )
    failed(
        await flux("workflow", "run", "nope", "1", *at(real)),
        1,
        "error: 404 workflow-not-found: no workflow named 'nope'",
    )
    failed(
        await flux("workflow", "run", "failing", *at(real)),
        1,
        "error: workflow failing failed at task explode#0: Boom: kaboom",
    )
    failed(
        await flux("workflow", "status", "hello", "nope", *at(real)),
        1,
        "error: 404 execution-not-found: no execution 'nope' of workflow 'hello'",
    )
    big = json.dumps("x" * 100_000)
    failed(await flux("workflow", "run", "hello", big, *at(real)), 1, "error: 413 ")
    mode = await flux("workflow", "run", "hello", "1", "--mode", "later", *at(real))
    assert mode.exit_code == 2 and "'later' is not one of" in mode.stderr


@pytest.mark.trio
async def test_pause_and_resume(real):
    paused = ok(await flux("workflow", "run", "asker", *at(real)))
    eid = paused.stderr.split()[1].rstrip(":")
    assert f"paused; resume with: flux workflow resume asker {eid} [VALUE]" in paused.stderr
    done = ok(await flux("workflow", "resume", "asker", eid, '"yes"', *at(real)))
    assert done.stdout == '{"answer": "yes"}\n' and f"execution {eid}: COMPLETED" in done.stderr
    failed(
        await flux("workflow", "resume", "asker", eid, "1", *at(real)),
        1,
        f"error: 409 conflict: execution {eid} is COMPLETED",
    )
    failed(await flux("workflow", "resume", "asker", eid, "{x", *at(real)), 2, "VALUE is not")
    second = ok(await flux("workflow", "run", "asker", *at(real))).stderr.split()[1].rstrip(":")
    quick = ok(await flux("workflow", "resume", "asker", second, "--no-wait", *at(real)))
    assert quick.stdout.startswith(f"execution {second}: ")


@pytest.mark.trio
async def test_unreachable_and_bad_url():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ("workflow", "list"),
        ("workflow", "run", "hello", "1"),
        ("executions", "follow", "e1"),
        ("secrets", "list", "--server-url", url),
    ):
        r = await flux(*args, env={"FLUX_SERVER_URL": url})
        failed(r, 1, f"error: cannot reach the Flux server at {url}: ")
    failed(await flux("workflow", "list", "--server-url", "ftp://x"), 2, "must be http(s)://")


@needs("stream", "follow")
@pytest.mark.trio
async def test_real_stream_and_follow(real):
    streamed = ok(await flux("workflow", "run", "hello", "21", "--mode", "stream", *at(real)))
    assert streamed.stdout == '{"doubled": 42}\n'
    assert "WORKFLOW_COMPLETED" in streamed.stderr
    eid = [line for line in streamed.stderr.splitlines() if line.startswith("execution ")][-1]
    eid = eid.split()[1].rstrip(":")
    followed = ok(await flux("executions", "follow", eid, *at(real)))
    lines = followed.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == [
        "WORKFLOW_STARTED",
        "TASK_STARTED",
        "TASK_COMPLETED",
        "WORKFLOW_COMPLETED",
    ]
    assert lines[-1] == '{"doubled": 42}' and followed.stderr == f"execution {eid}: COMPLETED\n"
    # past the end: no events, then the execution as it is
    past = ok(await flux("executions", "follow", eid, "--from", "99", *at(real)))
    assert past.stdout == '{"doubled": 42}\n'
    paused = ok(await flux("workflow", "run", "asker", "--mode", "stream", *at(real)))
    assert "WORKFLOW_PAUSED" in paused.stderr and "paused; resume with: " in paused.stderr
    failed(
        await flux("executions", "follow", "no-such-id", *at(real)),
        1,
        "error: 404 execution-not-found: no execution 'no-such-id'",
    )


@needs("cancel", "execution")
@pytest.mark.trio
async def test_real_cancel(real):
    eid = ok(await flux("workflow", "run", "slow", "30", "--mode", "async", *at(real))).stdout
    eid = eid.strip()
    with trio.fail_after(10):
        while True:  # until its task runs
            r = ok(await flux("workflow", "status", "slow", eid, "--detailed", *at(real)))
            if "TASK_STARTED" in r.stdout:
                break
            await trio.sleep(0.02)
    done = ok(await flux("workflow", "cancel", eid, "--wait", *at(real)))
    assert done.stdout == f"execution {eid}: CANCELLED\n"
    failed(
        await flux("workflow", "cancel", "no-such-id", *at(real)),
        1,
        "error: 404 execution-not-found",
    )


@pytest.mark.trio
async def test_the_entry_point_in_a_process(real, tmp_path):
    """``python -m flux.cli``: the real process, its streams and exit codes."""
    env = net_env(tmp_path)
    env["FLUX_SERVER_URL"] = real.url
    done = await trio.run_process(
        [PYTHON, "-m", "flux.cli", "workflow", "run", "hello", "21"],
        env=env,
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"doubled": 42}\n'
    gone = await trio.run_process(
        [PYTHON, "-m", "flux.cli", "workflow", "show", "nope"],
        env=env,
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert gone.returncode == 1 and gone.stdout == b""
    assert gone.stderr == b"error: 404 workflow-not-found: no workflow named 'nope'\n"


# ---------------------------------------------------------------------------- fake (issue 5)


@pytest.mark.trio
async def test_stream_mode(fake):
    r = ok(await flux("workflow", "run", "hello", "21", "--mode", "stream", *at(fake)))
    assert r.stdout == '{"doubled": 42}\n'
    lines = r.stderr.splitlines()
    assert lines[0] == "execution e1: SCHEDULED"
    assert [line.split()[2] for line in lines[1:5]] == [e["type"] for e in EVENTS]
    assert lines[5:] == ["execution e1: COMPLETED"]
    assert r.output.splitlines()[-1] == '{"doubled": 42}'  # the output comes last
    failed(
        await flux("workflow", "run", "boom", "1", "--mode", "stream", *at(fake)),
        1,
        "error: internal: store broke",
    )
    failed(
        await flux("workflow", "run", "nope", "1", "--mode", "stream", *at(fake)),
        1,
        "error: 404 workflow-not-found",
    )


@pytest.mark.trio
async def test_follow(fake):
    r = ok(await flux("executions", "follow", "e1", *at(fake)))
    lines = r.stdout.splitlines()
    assert [line.split()[2] for line in lines[:4]] == [e["type"] for e in EVENTS]
    assert lines[4:] == ['{"doubled": 42}'] and r.stderr == "execution e1: COMPLETED\n"
    later = ok(await flux("executions", "follow", "e1", "--from", "3", *at(fake)))
    assert [line.split()[0] for line in later.stdout.splitlines()] == ["4", '{"doubled":']
    assert fake.seen[-1][2] == {"from": "3"}
    short = ok(await flux("executions", "follow", "short", *at(fake)))  # asks for the state
    assert "not finished yet; check with: flux workflow status hello short" in short.stderr
    assert fake.paths()[-1] == "GET /executions/short"
    failed(
        await flux("executions", "follow", "zzz", *at(fake)),
        1,
        "error: 404 execution-not-found: no execution 'zzz'",
    )
    failed(await flux("executions", "follow", "bad", *at(fake)), 1, "error: 409 conflict: ")
    bad_from = await flux("executions", "follow", "e1", "--from", "-1", *at(fake))
    assert bad_from.exit_code == 2


@pytest.mark.trio
async def test_cancel(fake):
    assert ok(await flux("workflow", "cancel", "e1", *at(fake))).stdout == (
        "execution e1: CANCELLED\n"
    )
    failed(await flux("workflow", "cancel", "done", *at(fake)), 1, "error: 409 conflict: ")
    failed(await flux("workflow", "cancel", "zzz", *at(fake)), 1, "error: 404 ")


@pytest.mark.trio
async def test_token_and_url_from_the_environment(fake):
    fake.token = "t0k"
    env = {"FLUX_SERVER_URL": fake.url, "FLUX_API_TOKEN": "t0k"}
    ok(await flux("workflow", "cancel", "e1", env=env))
    assert fake.seen[-1][3] == "Bearer t0k"
    ok(await flux("workflow", "cancel", "e1", "--token", "t0k", *at(fake)))
    failed(
        await flux("workflow", "cancel", "e1", "--token", "nope", *at(fake)),
        1,
        "error: 403 forbidden: the API token is not valid",
    )
    failed(
        await flux("executions", "follow", "e1", env={**env, "FLUX_API_TOKEN": "x"}),
        1,
        "error: 403 forbidden",
    )


@pytest.mark.trio
async def test_secrets_over_http(fake):
    remote = at(fake)
    assert (
        ok(await flux("secrets", "set", "API_KEY", "v1", *remote)).stdout == "secret API_KEY set\n"
    )
    assert fake.secrets == {"API_KEY": "v1"}
    assert ok(await flux("secrets", "list", *remote)).stdout == "API_KEY\n"
    assert ok(await flux("secrets", "get", "API_KEY", *remote)).stdout == "v1\n"
    # without --server-url the local store is used, even with FLUX_SERVER_URL set (here there
    # is none, and reading does not create one)
    failed(
        await flux("secrets", "list", env={"FLUX_SERVER_URL": fake.url}), 1, "no Flux database"
    )
    assert ok(await flux("secrets", "remove", "API_KEY", *remote)).stdout == (
        "secret API_KEY removed\n"
    )
    failed(
        await flux("secrets", "remove", "API_KEY", *remote),
        1,
        "error: 404 secret-not-found: secret 'API_KEY' is not set",
    )
    failed(await flux("secrets", "get", "API_KEY", *remote), 1, "error: 404 secret-not-found")
    fake.token = "t"
    failed(await flux("secrets", "list", *remote, "--token", "u"), 1, "error: 403 forbidden")
    failed(await flux("secrets", "list", *remote), 1, "error: 401 unauthorized")
    assert ok(await flux("secrets", "list", *remote, "--token", "t")).stdout == ""


def test_help_lists_the_client_commands():
    import subprocess

    out = subprocess.run(
        [PYTHON, "-m", "flux.cli", "workflow", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for command in ("register", "list", "show", "run", "status", "resume", "cancel"):
        assert f"  {command} " in out.stdout
