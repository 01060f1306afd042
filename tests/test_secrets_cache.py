"""Secrets (encrypted, requested, redacted) and the task cache (across executions and processes)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import textwrap
from datetime import timedelta
from typing import Any

import pytest

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.runtime.errors import SecretNotFoundError
from flux.runtime.secrets import SecretKeyError

from .conftest import PYTHON, subprocess_env

SECRET = "sk-live-7f3a9c1e5b2d4a6f8e0c"
seen: list = []


@pytest.fixture(autouse=True)
def _reset():
    seen.clear()


@task.with_options(secret_requests=["API_KEY"])
async def secure_task(secrets: dict[str, Any] = {}):  # noqa: B006 - the 0.2.7 signature
    seen.append(dict(secrets))
    return f"used key of length {len(secrets['API_KEY'])}"


@task.with_options(secret_requests=["API_KEY"])
async def leaky_task(secrets: dict[str, Any] = {}):  # noqa: B006
    raise RuntimeError(f"the server refused key {secrets['API_KEY']}")


@workflow
async def uses_secret(ctx: ExecutionContext):
    return await secure_task()


@workflow
async def leaks_secret(ctx: ExecutionContext):
    return await leaky_task()


@pytest.mark.trio
async def test_task_gets_exactly_the_requested_secrets(db_path):
    async with open_engine() as engine:
        await engine.secrets.set("API_KEY", SECRET)
        await engine.secrets.set("OTHER", "not-for-you")
        ctx = await uses_secret.arun(engine=engine)
    assert ctx.output == f"used key of length {len(SECRET)}"
    assert seen == [{"API_KEY": SECRET}]


@pytest.mark.trio
async def test_missing_secret_fails_before_the_body_naming_it():
    ctx = await uses_secret.arun()
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, SecretNotFoundError)
    assert "API_KEY" in str(ctx.output)
    assert seen == []  # the body never ran


@pytest.mark.trio
async def test_secret_values_never_reach_events_json_logs_or_the_file(db_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with open_engine() as engine:
        await engine.secrets.set("API_KEY", SECRET)
        ok = await uses_secret.arun(engine=engine)
        bad = await leaks_secret.arun(engine=engine)
    assert bad.state is ExecutionState.FAILED
    assert "***" in str(bad.output)  # the recorded error is redacted
    for ctx in (ok, bad):
        assert SECRET not in ctx.to_json()
        for event in ctx.events:
            assert SECRET not in repr(event.value)
            assert SECRET not in str(getattr(event.value, "__flux_traceback__", ""))
    assert SECRET not in caplog.text
    # the database file (and its WAL) never hold the value in clear
    for suffix in ("", "-wal", "-shm"):
        path = db_path + suffix
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert SECRET.encode() not in f.read()


def test_key_file_is_created_with_mode_0600(flux_home):
    from flux.secret_managers import SecretManager

    SecretManager.current().save("TOKEN", "v")
    key_file = flux_home / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert SecretManager.current().get(["TOKEN"]) == {"TOKEN": "v"}
    assert SecretManager.current().all() == ["TOKEN"]
    SecretManager.current().remove("TOKEN")
    assert SecretManager.current().all() == []
    with pytest.raises(ValueError, match="TOKEN"):
        SecretManager.current().get(["TOKEN"])


@pytest.mark.trio
async def test_wrong_key_is_a_clear_error(monkeypatch, flux_home):
    async with open_engine() as engine:
        await engine.secrets.set("A", "1")
    (flux_home / "secret.key").unlink()
    async with open_engine() as engine:
        with pytest.raises(SecretKeyError, match="cannot be decrypted"):
            await engine.secrets.get("A")
    monkeypatch.setenv("FLUX_SECRET_KEY", "too-short")
    async with open_engine() as engine:
        with pytest.raises(SecretKeyError, match="FLUX_SECRET_KEY"):
            await engine.secrets.get("A")


# --------------------------------------------------------------------------- cache

body_runs: list = []


@task.with_options(cache=True)
async def expensive(x: int) -> int | None:
    body_runs.append(x)
    return None if x == 0 else x * 100


@workflow
async def cached(ctx: ExecutionContext[int]):
    return await expensive(ctx.input)


@pytest.mark.trio
async def test_cache_hits_across_executions_including_falsy_values():
    body_runs.clear()
    async with open_engine() as engine:
        a = await cached.arun(3, engine=engine)
        b = await cached.arun(3, engine=engine)
        c = await cached.arun(0, engine=engine)
        d = await cached.arun(0, engine=engine)
        e = await cached.arun(4, engine=engine)
    assert [a.output, b.output, c.output, d.output, e.output] == [300, 300, None, None, 400]
    assert body_runs == [3, 0, 4]
    # a hit is recorded in the history like any completion
    assert [ev.type for ev in b.events if ev.source_id == "expensive#0"] == [
        E.TASK_STARTED,
        E.TASK_COMPLETED,
    ]


@pytest.mark.trio
async def test_cache_expiry():
    ticks = {"now": 1_000_000.0}
    runs = []

    @task.with_options(cache=timedelta(minutes=5))
    async def fresh(x: int) -> int:
        runs.append(x)
        return x

    @workflow
    async def wf(ctx: ExecutionContext):
        return await fresh(1)

    async with open_engine(clock=lambda: ticks["now"]) as engine:
        await wf.arun(engine=engine)
        ticks["now"] += 299
        await wf.arun(engine=engine)
        assert runs == [1]  # still fresh after 4:59
        ticks["now"] += 2
        await wf.arun(engine=engine)
        assert runs == [1, 1]  # expired after 5:01, ran and cached again
        await wf.arun(engine=engine)
    assert runs == [1, 1]


def test_cache_hits_across_processes(tmp_path):
    script = tmp_path / "cached.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from flux import task, workflow, ExecutionContext

            @task.with_options(cache=True)
            async def costly(x: int) -> int:
                with open(sys.argv[1], "a") as f:
                    f.write(f"ran {x}\\n")
                return x * 2

            @workflow
            async def wf(ctx: ExecutionContext[int]):
                return await costly(ctx.input)

            print(wf.run(21).output)
            """
        )
    )
    marker = tmp_path / "runs.txt"
    env = subprocess_env(tmp_path)
    outputs = []
    for _ in range(2):
        out = subprocess.run(
            [PYTHON, str(script), str(marker)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout.strip())
    assert outputs == ["42", "42"]
    assert marker.read_text() == "ran 21\n"  # the second process hit the cache


@pytest.mark.trio
async def test_secret_in_an_exception_attribute_is_not_recorded():
    class ApiError(Exception):
        def __init__(self, message, headers):
            super().__init__(message)
            self.headers = headers

    @task.with_options(secret_requests=["API_KEY"])
    async def call_api(secrets: dict[str, Any] = {}):  # noqa: B006
        raise ApiError("401 unauthorized", {"Authorization": f"Bearer {secrets['API_KEY']}"})

    @workflow
    async def wf(ctx: ExecutionContext):
        return await call_api()

    async with open_engine() as engine:
        await engine.secrets.set("API_KEY", SECRET)
        ctx = await wf.arun(engine=engine)
        stored = await engine.get(ctx.execution_id)
    assert ctx.has_failed and "401 unauthorized" in str(ctx.output)
    for event in stored.events:
        assert SECRET not in repr(event.value)
        assert SECRET not in repr(getattr(event.value, "__dict__", {}))


@pytest.mark.trio
async def test_redacted_error_keeps_its_type_on_replay():
    from flux.tasks import pause

    @task.with_options(secret_requests=["API_KEY"])
    async def refused(secrets: dict[str, Any] = {}):  # noqa: B006
        raise PermissionError(f"refused {secrets['API_KEY']}")

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await refused()
        except PermissionError as e:
            caught = str(e)
        await pause("p")
        return caught.replace(SECRET, "<the secret>")

    async with open_engine() as engine:
        await engine.secrets.set("API_KEY", SECRET)
        paused = await wf.arun(engine=engine)
        done = await wf.arun(execution_id=paused.execution_id, engine=engine)
    assert done.state is ExecutionState.COMPLETED
    assert done.output == "refused ***"  # replayed: the recorded (masked) error, same type


@pytest.mark.trio
async def test_fallback_values_are_not_cached():
    calls = []

    @task.with_options(cache=True, fallback=lambda x: "fallback")
    async def sometimes(x: int) -> str:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first call fails")
        return "real"

    @workflow
    async def wf(ctx: ExecutionContext):
        return await sometimes(1)

    async with open_engine() as engine:
        assert (await wf.arun(engine=engine)).output == "fallback"
        assert (await wf.arun(engine=engine)).output == "real"
        assert (await wf.arun(engine=engine)).output == "real"
    assert calls == [1, 1]
