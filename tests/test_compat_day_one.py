"""Issue 10 in the library: 0.2.7's error names and configuration, options checked when a task
is declared, redaction that never garbles, and runs skipped while Flux loads a file."""

from __future__ import annotations

import warnings

import pytest

import flux.errors as errors
from flux import ExecutionContext, task, workflow
from flux.config import Configuration
from flux.runtime import codec
from flux.runtime.engine import open_engine
from flux.runtime.executor import redact_error
from flux.runtime.failures import describe_failure, trim_traceback
from flux.runtime.loader import RunWhileLoadingWarning, load_source
from flux.runtime.secrets import ShortSecretWarning, holds_secret, mask_secrets

# ---------------------------------------------------------------------------- 9. flux.errors


def test_the_names_of_0_2_7_are_exported_and_mapped_onto_the_tree():
    for name in (
        "ExecutionError",
        "ExecutionTimeoutError",
        "RetryError",
        "PauseRequested",
        "WorkflowNotFoundError",
        "ExecutionContextNotFoundError",
        "WorkflowCatalogError",
        "WorkflowAlreadyExistError",
        "TaskNotFoundError",
        "WorkerNotFoundError",
        "DatabaseConnectionError",
        "PostgreSQLConnectionError",
        "FluxError",
        "TaskTimeoutError",
        "NondeterminismError",
    ):
        assert name in errors.__all__, name
        assert issubclass(getattr(errors, name), Exception)
    assert issubclass(errors.TaskTimeoutError, errors.ExecutionTimeoutError)
    assert issubclass(errors.TaskTimeoutError, TimeoutError)
    assert issubclass(errors.ExecutionTimeoutError, errors.ExecutionError)
    assert issubclass(errors.WorkflowNotFoundError, errors.ExecutionError)
    assert errors.ExecutionContextNotFoundError is errors.ExecutionNotFoundError
    assert issubclass(errors.SecretNotFoundError, errors.ExecutionError)
    assert issubclass(errors.PostgreSQLConnectionError, errors.StoreError)
    assert not issubclass(errors.NondeterminismError, errors.ExecutionError)  # a stop


def test_0_2_7_constructors_and_properties():
    inner = ValueError("bad")
    e = errors.ExecutionError(inner)
    assert e.inner_exception is inner and str(e) == "ValueError: bad"
    e = errors.ExecutionError(message="plain")
    assert e.message == "plain" and e.inner_exception is None and str(e) == "plain"
    t = errors.ExecutionTimeoutError("Task", "fetch", "fetch#0", 5)
    assert str(t) == "Task fetch (fetch#0) timed out (5s)." and t.timeout == 5
    r = errors.RetryError(inner, 3, 1, 2)
    assert (r.retry_attempts, r.retry_delay, r.inner_exception) == (3, 1, inner)
    assert str(r) == "gave up after 3 attempts: ValueError: bad"
    p = errors.PauseRequested("approve", {"x": 1})
    assert (p.name, p.output) == ("approve", {"x": 1})
    w = errors.WorkflowNotFoundError("w", "mod")
    assert str(w) == "no workflow named 'w' in module mod" and w.name == "w"
    n = errors.ExecutionContextNotFoundError("e1")
    assert n.execution_id == "e1" and n.message == "no execution with id 'e1'"
    d = errors.PostgreSQLConnectionError("down", inner)
    assert (d.database_type, d.original_error) == ("postgresql", inner)
    # every Flux error has message and inner_exception, the cause by default
    try:
        try:
            raise KeyError("k")
        except KeyError as cause:
            raise errors.StoreError("the store broke") from cause
    except errors.StoreError as stored:
        assert stored.message == "the store broke"
        assert isinstance(stored.inner_exception, KeyError)


def test_flux_errors_survive_the_codec():
    for error in (
        errors.TaskTimeoutError("task t#0 timed out"),
        errors.WorkflowNotFoundError("w"),
        errors.TaskFailedError("x.Boom", "kaboom", "tb"),
    ):
        back = codec.decode(codec.encode(error))
        assert type(back) is type(error) and back.message == error.message


@task.with_options(timeout=0.01)
async def too_slow():
    import anyio

    await anyio.sleep(5)


@workflow
async def times_out(ctx: ExecutionContext):
    return await too_slow()


@task
async def raises_value_error():
    raise ValueError("nope")


@workflow
async def catches(ctx: ExecutionContext):
    try:
        await raises_value_error()
    except ValueError as e:  # unwrapped, unlike 0.2.7's ExecutionError around it
        return f"caught {e}"


@pytest.mark.trio
async def test_a_timed_out_run_is_an_execution_timeout_and_task_errors_arrive_unwrapped(
    db_path, autojump_clock
):
    async with open_engine(db=db_path) as engine:
        failed = await times_out.arun(engine=engine)
        caught = await catches.arun(engine=engine)
        again = await engine.get(failed.execution_id)
    assert failed.has_failed and isinstance(failed.output, errors.ExecutionTimeoutError)
    assert isinstance(again.output, errors.ExecutionTimeoutError)  # replayed from the store
    assert again.output.inner_exception is None and "timed out" in again.output.message
    assert caught.output == "caught nope"


# ---------------------------------------------------------------------------- 9. flux.config


def test_configuration_get_settings(tmp_path):
    env = {
        "FLUX_DB": str(tmp_path / "data" / "f.db"),
        "FLUX_SERVER_PORT": "9001",
        "FLUX_DEBUG": "yes",
        "FLUX_LOG_LEVEL": "debug",
    }
    settings = Configuration.get(env).settings
    assert settings.home == str(tmp_path / "data")
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'f.db'}"
    assert (settings.server_host, settings.server_port) == ("127.0.0.1", 9001)
    assert settings.api_url == "http://127.0.0.1:9001"
    assert settings.debug is True and settings.log_level == "DEBUG"
    assert settings.durability == "full"
    assert settings.runtime_settings().db_path == str(tmp_path / "data" / "f.db")
    assert not (tmp_path / "data").exists()  # reading settings creates nothing
    other = Configuration.get(env).override(server_port=1234)
    assert other.settings.server_port == 1234 and settings.server_port == 9001
    with pytest.raises(TypeError, match="unknown setting: nope"):
        Configuration.get(env).override(nope=1)
    with pytest.raises(ValueError, match="FLUX_SERVER_PORT='x'"):
        Configuration.get({"FLUX_SERVER_PORT": "x"})
    with pytest.raises(ValueError, match="FLUX_DEBUG='maybe'"):
        Configuration.get({"FLUX_DEBUG": "maybe"})


def test_configuration_reads_the_environment_each_time(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUX_DB", str(tmp_path / "a.db"))
    first = Configuration.get().settings.database_path
    monkeypatch.setenv("FLUX_DB", str(tmp_path / "b.db"))
    assert (first, Configuration.get().settings.database_path) == (
        str(tmp_path / "a.db"),
        str(tmp_path / "b.db"),
    )


# ---------------------------------------------------------------------------- 7. declared options


def test_secret_requests_and_metadata_need_a_parameter_to_receive_them():
    with pytest.raises(TypeError) as no_secrets:

        @task.with_options(secret_requests=["API_KEY"])
        async def fetch(url):
            return url

    assert str(no_secrets.value) == (
        "task 'test_secret_requests_and_metadata_need_a_parameter_to_receive_them.<locals>."
        "fetch' is declared with secret_requests but has no 'secrets' parameter to receive it: "
        "add `secrets` (or **kwargs) to its parameters"
    )
    with pytest.raises(TypeError, match="metadata=True but has no 'metadata' parameter"):

        @task.with_options(metadata=True)
        def sync_one(x):
            return x

    with pytest.raises(TypeError, match="no 'secrets' parameter"):

        @task.with_options(secret_requests=["A"])
        async def positional_only(secrets, /):
            return secrets

    # the ways that receive them are accepted
    @task.with_options(secret_requests=["A"], metadata=True)
    async def named(x, secrets=None, metadata=None):
        return x

    @task.with_options(secret_requests=["A"], metadata=True)
    async def keyword_only(x, *, secrets, metadata):
        return x

    @task.with_options(secret_requests=["A"], metadata=True)
    async def anything(x, **kwargs):
        return x

    assert {named.name, keyword_only.name, anything.name} == {"named", "keyword_only", "anything"}


# ---------------------------------------------------------------------------- 8. redaction


def test_masking_never_rewrites_text_inside_other_words():
    assert mask_secrets("my_task() failed with key k.", ["k"]) == "my_task() failed with key ***."
    assert mask_secrets("task_1 got 1, 12 and (1)", ["1"]) == "task_1 got ***, 12 and (***)"
    assert mask_secrets("token=abc123&x=abc1234", ["abc123"]) == "token=***&x=abc1234"
    long = "s3cr3t-value"
    assert mask_secrets(f"x{long}y and {long}", [long]) == "x***y and ***"  # long: anywhere
    assert mask_secrets("a-b", ["-"]) == "a***b"  # no word characters: nothing to be inside
    assert mask_secrets("overlap abcdefgh", ["abcdefgh", "abc"]) == "overlap ***"
    assert mask_secrets("nothing", []) == "nothing" and mask_secrets("x", [""]) == "x"
    assert holds_secret({"message": ["my_task()"]}, ["k"]) is False
    assert holds_secret({"message": ["bad k"]}, ["k"]) is True
    assert holds_secret({"args": [b"raw k bytes"]}, ["k"]) is True


def test_redact_error_keeps_errors_without_a_whole_word_secret_as_they_are():
    error = ValueError("my_task() failed")
    assert redact_error(error, ["k"]) is error
    masked = redact_error(PermissionError("refused key k"), ["k"])
    assert type(masked) is PermissionError and str(masked) == "refused key ***"


@pytest.mark.trio
async def test_setting_a_short_secret_warns_and_an_empty_one_is_refused(db_path):
    async with open_engine(db=db_path) as engine:
        with pytest.warns(ShortSecretWarning, match="'PIN' is only 4 characters long"):
            await engine.secrets.set("PIN", "1234")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await engine.secrets.set("LONG", "12345678")  # no warning
        with pytest.raises(ValueError, match="must not be empty"):
            await engine.secrets.set("EMPTY", "")
        assert await engine.secrets.get("PIN") == "1234"
        assert await engine.secrets.names() == ["LONG", "PIN"]


# ---------------------------------------------------------------------------- 3. loading


SELF_RUNNING = """
from flux import task, workflow

@task
async def hi(name):
    return "hi " + name

@workflow
async def greet(ctx):
    return await hi(ctx.input)

first = greet.run("a")
second = greet.run("b", execution_id="fixed")
"""


def test_a_run_at_the_top_level_of_loaded_source_is_skipped_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(RunWhileLoadingWarning) as warned:
        module = load_source(SELF_RUNNING, "flux_test_self_running")
    assert len(warned) == 1
    assert str(warned[0].message) == (
        "greet.run() was called at the top level of uploaded source flux_test_self_running "
        'while Flux loaded it, and did not run; put such calls under `if __name__ == "__main__":`'
    )
    assert module.first.state.value == "CREATED" and not module.first.has_started
    assert module.first.events == [] and module.first.input == "a"
    assert module.second.execution_id == "fixed"
    assert list(tmp_path.iterdir()) == []  # nothing was opened or created
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module.greet.run("c").output == "hi c"  # outside loading it runs


# ---------------------------------------------------------------------------- 1. failures


def test_trim_traceback_keeps_the_user_frames():
    text = (
        "Traceback (most recent call last):\n"
        '  File "/site-packages/flux/runtime/executor.py", line 620, in run\n'
        "    output = await wf.func(ctx)\n"
        "             ^^^^^^^^^^^^^^^^^^\n"
        '  File "/home/me/wf.py", line 9, in calc\n'
        "    return await divide(1, 0)\n"
        '  File "/venv/lib/python3.11/site-packages/trio/_core/_run.py", line 1, in x\n'
        "    pass\n"
        '  File "/home/me/wf.py", line 5, in divide\n'
        "    return a / b\n"
        "ZeroDivisionError: division by zero\n"
    )
    assert trim_traceback(text).splitlines() == [
        "Traceback (most recent call last):",
        '  File "/home/me/wf.py", line 9, in calc',
        "    return await divide(1, 0)",
        '  File "/home/me/wf.py", line 5, in divide',
        "    return a / b",
        "ZeroDivisionError: division by zero",
    ]
    only_flux = '  File "/x/flux/runtime/a.py", line 1, in f\n    g()\nE: e'
    assert trim_traceback(only_flux) == only_flux  # nothing of the user's: kept whole


def test_describe_failure_finds_the_first_task_that_failed_with_that_error():
    error = {"type": "builtins.ValueError", "message": "bad", "traceback": "tb"}
    events = [
        {"type": "TASK_FAILED", "source_id": "other#0", "value": {"type": "x.E", "message": "m"}},
        {"type": "TASK_FAILED", "source_id": "parallel#1/a#0", "value": error},
        {"type": "TASK_FAILED", "source_id": "parallel#1", "value": error},
    ]
    failure = describe_failure(error, events)
    assert (failure.call_id, failure.headline, failure.traceback) == (
        "parallel#1/a#0",
        "ValueError: bad",
        "tb",
    )
    assert describe_failure(error, []).call_id is None


def test_the_failures_of_a_group_are_described_in_program_order():
    def err(message):
        return {"type": "builtins.ValueError", "message": message, "traceback": ""}

    group = {
        "type": "builtins.ExceptionGroup",
        "message": "parallel: 3 calls failed",
        "exceptions": [err("ten"), err("two"), err("body")],
    }
    events = [
        {"type": "TASK_FAILED", "source_id": "parallel#0/b#2", "value": err("two")},
        {"type": "TASK_FAILED", "source_id": "parallel#0/a#10", "value": err("ten")},
    ]
    parts = describe_failure(group, events).parts
    assert [(p.call_id, p.message) for p in parts] == [
        ("parallel#0/b#2", "two"),
        ("parallel#0/a#10", "ten"),
        (None, "body"),
    ]
