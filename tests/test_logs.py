"""Task logs embedded: capture per execution and call (parallel, map, several executions,
threads), redaction, limits and markers, hostile values, store faults, the hooks' lifecycle."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import textwrap

import anyio
import pytest
import trio

from flux import ExecutionContext, task, workflow
from flux.runtime import logs
from flux.runtime.engine import open_engine
from flux.runtime.errors import ExecutionNotFoundError, StoreError, TaskTimeoutError
from flux.runtime.logs import LogSink
from flux.runtime.store_logs import MARKER_LOGGER, LogEntry
from flux.tasks import parallel
from tests.conftest import PYTHON, subprocess_env

app_log = logging.getLogger("tests.app")
app_log.setLevel(logging.INFO)  # pytest's root logger is at WARNING: the app says what it logs


def messages(lines, call_id=None):
    return [r.message for r in lines if call_id is None or r.call_id == call_id]


@task
async def talker(name: str, n: int) -> str:
    for i in range(n):
        print(f"{name} says {i}")
        await anyio.sleep(0)  # let the sibling print in between
        app_log.info("%s logged %d", name, i)
    return name


@workflow
async def two_talkers(ctx: ExecutionContext):
    return await parallel(talker("ann", 5), talker("bob", 5))


@pytest.mark.trio
async def test_parallel_tasks_printing_interleaved_lines_get_their_own_call_ids():
    async with open_engine() as engine:
        ctx = await two_talkers.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    ann, bob = "parallel#0/talker#0", "parallel#0/talker#1"
    assert {r.call_id for r in lines} == {ann, bob}
    for call, name in ((ann, "ann"), (bob, "bob")):
        assert messages(lines, call) == [
            m for i in range(5) for m in (f"{name} says {i}", f"{name} logged {i}")
        ]
    # they did interleave (so attribution is not trivially by order)
    order = [r.call_id for r in lines]
    assert order != sorted(order)
    assert [r.seq for r in lines] == list(range(1, 21))
    printed = [r for r in lines if r.logger == "stdout"]
    assert {r.level for r in printed} == {"INFO"} and {r.attempt for r in lines} == {1}
    logged = [r for r in lines if r.logger == "tests.app"]
    assert len(logged) == 10 and all(r.time > 0 for r in logged)


@workflow
async def one_talker(ctx: ExecutionContext):
    return await talker(ctx.input, 3)


@pytest.mark.trio
async def test_several_executions_at_once_never_mix():
    async with open_engine() as engine:
        results: dict[str, ExecutionContext] = {}

        async def run(name):
            results[name] = await one_talker.arun(name, engine=engine)

        async with anyio.create_task_group() as tg:
            for name in ("x", "y", "z"):
                tg.start_soon(run, name)
        for name, ctx in results.items():
            lines = await engine.logs(ctx.execution_id)
            assert messages(lines) == [
                m for i in range(3) for m in (f"{name} says {i}", f"{name} logged {i}")
            ]


@task
def sync_body(n: int) -> int:
    print("from the sync body", n)
    app_log.warning("warned from thread %d", n)
    return n


@task
async def async_with_threads() -> None:
    def in_thread(tag: str) -> None:
        print(f"printed in {tag}")
        app_log.info("logged in %s", tag)

    await anyio.to_thread.run_sync(in_thread, "anyio")
    await trio.to_thread.run_sync(in_thread, "trio")


@workflow
async def threaded(ctx: ExecutionContext):
    await sync_body(7)
    await async_with_threads()


@pytest.mark.trio
async def test_sync_bodies_and_threads_started_by_a_task_are_captured():
    async with open_engine() as engine:
        ctx = await threaded.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    assert [(r.call_id, r.level, r.logger, r.message) for r in lines] == [
        ("sync_body#0", "INFO", "stdout", "from the sync body 7"),
        ("sync_body#0", "WARNING", "tests.app", "warned from thread 7"),
        ("async_with_threads#1", "INFO", "stdout", "printed in anyio"),
        ("async_with_threads#1", "INFO", "tests.app", "logged in anyio"),
        ("async_with_threads#1", "INFO", "stdout", "printed in trio"),
        ("async_with_threads#1", "INFO", "tests.app", "logged in trio"),
    ]


class Hostile:
    def __str__(self):
        raise RuntimeError("no str for you")

    def __repr__(self):
        raise RuntimeError("no repr either")


@task
async def hostile_logger() -> str:
    app_log.info("value: %s", Hostile())
    app_log.info("%d items", "not a number")
    print(Hostile.__name__, "survived")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        app_log.exception("division went wrong")
    sys.stderr.write("partial line without newline")
    return "done"


@workflow
async def hostile(ctx: ExecutionContext):
    return await hostile_logger()


@pytest.mark.trio
async def test_hostile_arguments_and_exceptions_never_fail_the_task(monkeypatch):
    # pytest's own capture handler fails a test on a record it cannot format (its
    # handleError raises): take it away, this test is about the capture
    from _pytest.logging import LogCaptureHandler

    root = logging.getLogger()
    kept = [h for h in root.handlers if not isinstance(h, LogCaptureHandler)]
    monkeypatch.setattr(root, "handlers", kept)
    async with open_engine() as engine:
        ctx = await hostile.arun(engine=engine)
        assert ctx.state.value == "COMPLETED" and ctx.output == "done"
        lines = await engine.logs(ctx.execution_id)
    texts = messages(lines)
    assert texts[0].startswith("[flux: this log message could not be formatted: RuntimeError(")
    assert "Hostile whose repr raised RuntimeError" in texts[0]
    assert texts[1].startswith("[flux: this log message could not be formatted: TypeError(")
    assert texts[2] == "Hostile survived"
    assert texts[3].startswith("division went wrong\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in texts[3]
    assert lines[3].level == "ERROR"
    # the unfinished stderr line is kept when the body ends
    assert (lines[4].logger, lines[4].level, texts[4]) == (
        "stderr",
        "WARNING",
        "partial line without newline",
    )


@task.with_options(secret_requests=["API_KEY"])
async def uses_key(secrets: dict) -> None:
    print(f"calling with key {secrets['API_KEY']}")
    app_log.warning("auth header: Bearer %s", secrets["API_KEY"])


@workflow
async def with_secret(ctx: ExecutionContext):
    await uses_key()


@pytest.mark.trio
async def test_secret_values_are_redacted_before_anything_is_stored(db_path):
    secret = "s3cr3t-value-123"
    async with open_engine() as engine:
        await engine.secrets.set("API_KEY", secret)
        ctx = await with_secret.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    assert messages(lines) == ["calling with key ***", "auth header: Bearer ***"]
    with open(db_path, "rb") as f:
        raw = f.read()
    for suffix in ("-wal", ""):
        path = db_path + suffix
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw += f.read()
    assert secret.encode() not in raw


@task
async def chatty(n: int) -> None:
    for i in range(n):
        print(f"line {i:03d} " + "x" * 40)  # 49 bytes each


@workflow.with_options(log_limit=500)
async def limited(ctx: ExecutionContext):
    await chatty(30)


@task
async def long_liner() -> None:
    print("é" * 40_000)  # 80,000 bytes


@workflow
async def long_line(ctx: ExecutionContext):
    await long_liner()


@pytest.mark.trio
async def test_a_workflow_limit_cuts_lines_past_it_and_one_marker_says_how_much():
    async with open_engine() as engine:
        ctx = await limited.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    kept, marker = lines[:-1], lines[-1]
    assert messages(kept) == [f"line {i:03d} " + "x" * 40 for i in range(10)]  # 490 bytes
    assert marker.logger == MARKER_LOGGER and marker.call_id == ""
    assert marker.message == (
        "[flux] log limit of 500 bytes reached: 20 later line(s) (980 bytes) cut"
    )


@pytest.mark.trio
async def test_the_settings_limit_and_a_long_line_cut_with_a_marker(monkeypatch):
    monkeypatch.setenv("FLUX_LOG_LINE_LIMIT", "1000")
    async with open_engine() as engine:
        ctx = await long_line.arun(engine=engine)
        (line,) = await engine.logs(ctx.execution_id)
    assert line.message == "é" * 500 + " [flux: line cut, 79000 more bytes]"
    monkeypatch.setenv("FLUX_LOG_LIMIT", "100")
    async with open_engine() as engine:
        ctx = await limited_by_env.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    assert len(lines) == 3 and "28 later line(s)" in lines[-1].message


@workflow
async def limited_by_env(ctx: ExecutionContext):
    await chatty(30)


@task.with_options(timeout=0.3)
async def prints_forever() -> None:
    i = 0
    while True:
        print(f"spin {i}")
        i += 1
        await anyio.sleep(0)


@workflow.with_options(log_limit=10_000)
async def forever(ctx: ExecutionContext):
    try:
        await prints_forever()
    except TaskTimeoutError as e:
        return str(e)


@pytest.mark.trio
async def test_a_task_printing_in_a_loop_forever_is_stopped_by_its_timeout_and_bounded():
    async with open_engine() as engine:
        with anyio.fail_after(20):
            ctx = await forever.arun(engine=engine)
        assert ctx.state.value == "COMPLETED" and "timed out after 0.3s" in ctx.output
        lines = await engine.logs(ctx.execution_id)
    assert sum(len(r.message.encode()) for r in lines[:-1]) <= 10_000
    assert lines[0].message == "spin 0"
    assert "later line(s)" in lines[-1].message and lines[-1].logger == MARKER_LOGGER


@task.with_options(retry_max_attempts=2, retry_delay=0.01)
async def flaky() -> str:
    flaky.calls = getattr(flaky, "calls", 0) + 1
    print(f"try {flaky.calls}")
    if flaky.calls < 3:
        raise ValueError("not yet")
    return "ok"


def rollback_body() -> None:
    print("rolling back")


def fallback_body() -> str:
    print("falling back")
    return "fallback"


@task.with_options(fallback=fallback_body, rollback=rollback_body)
async def broken() -> None:
    print("about to break")
    raise RuntimeError("broken")


@workflow
async def attempts_wf(ctx: ExecutionContext):
    print("the workflow body itself is not a task: not captured")
    return [await flaky(), await broken()]


@pytest.mark.trio
async def test_attempts_fallbacks_and_rollbacks_are_told_apart():
    flaky.calls = 0
    async with open_engine() as engine:
        ctx = await attempts_wf.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
    assert [(r.call_id, r.attempt, r.message) for r in lines] == [
        ("flaky#0", 1, "try 1"),
        ("flaky#0", 2, "try 2"),
        ("flaky#0", 3, "try 3"),
        ("broken#1", 1, "about to break"),
        ("broken#1", 0, "falling back"),
    ]
    async with open_engine() as engine:
        assert [r.message for r in await engine.logs(ctx.execution_id, call_id="broken#1")] == [
            "about to break",
            "falling back",
        ]
        assert [r.seq for r in await engine.logs(ctx.execution_id, after=3, limit=1)] == [4]
        with pytest.raises(ExecutionNotFoundError):
            await engine.logs("no-such-execution")


@task
async def slow_second() -> None:
    await anyio.sleep(0.6)  # the flusher writes the first task's line meanwhile: it fails
    print("after the fault")


@task
async def first_print() -> None:
    print("lost in the fault")


@workflow
async def faulty(ctx: ExecutionContext):
    await first_print()
    await slow_second()
    return "finished"


@pytest.mark.trio
async def test_a_store_fault_while_writing_logs_drops_them_with_a_marker_not_a_stop():
    async with open_engine() as engine:
        real = engine.store.append_logs
        calls = []

        async def flaky_append(execution_id, entries, **kw):
            calls.append(len(entries))
            if len(calls) == 1:
                raise StoreError("disk on fire")
            return await real(execution_id, entries, **kw)

        engine.store.append_logs = flaky_append  # type: ignore[method-assign]
        ctx = await faulty.arun(engine=engine)
        assert ctx.state.value == "COMPLETED" and ctx.output == "finished"
        lines = await engine.logs(ctx.execution_id)
    assert messages(lines) == [
        "[flux] 1 log line(s) (17 bytes) lost: writing them failed: disk on fire",
        "after the fault",
    ]
    assert lines[0].logger == MARKER_LOGGER


@pytest.mark.trio
async def test_a_full_buffer_drops_lines_with_a_marker_and_never_blocks():
    written = []

    async def write(execution_id, entries, limit, cut_lines, cut_bytes):
        written.append((execution_id, [e.message for e in entries], cut_lines))

    sink = LogSink(write, buffer_limit=25)
    for i in range(5):
        sink.add("e", LogEntry("c#0", 1, "INFO", "stdout", 0.0, f"line {i}"))  # 6 bytes
    await sink.flush()
    (eid, texts, cut), = written
    assert texts[:4] == ["line 0", "line 1", "line 2", "line 3"]
    assert texts[4].startswith("[flux] 1 log line(s) (6 bytes) dropped: the log buffer")
    assert sink.dropped == 1


@pytest.mark.trio
async def test_follow_logs_yields_lines_as_they_come_and_ends_with_the_execution():
    gate = anyio.Event()

    @task
    async def waits() -> None:
        print("before")
        await gate.wait()
        print("after")

    @workflow
    async def followed(ctx: ExecutionContext):
        await waits()

    async with open_engine() as engine:
        seen: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(followed.arun, engine=engine))
            with anyio.fail_after(10):
                while not engine._running:
                    await anyio.sleep(0.01)
            (eid,) = list(engine._running)
            await engine.store.flush()  # its creation is queued until its first outcome
            async for page in engine.follow_logs(eid, poll=0.05):
                seen += [r.message for r in page or ()]
                if seen == ["before"]:
                    gate.set()
        assert seen == ["before", "after"]


@pytest.mark.trio
async def test_the_hooks_are_installed_once_and_restored_when_the_last_engine_closes():
    before_out, before_err = sys.stdout, sys.stderr
    root_handlers = list(logging.getLogger().handlers)
    call_handlers = logging.Logger.callHandlers
    async with open_engine() as one:
        assert logs.installed()
        proxy = sys.stdout
        assert proxy is not before_out
        async with open_engine() as two:
            assert sys.stdout is proxy  # not wrapped twice
            assert one is not two
        assert sys.stdout is proxy
    assert sys.stdout is before_out and sys.stderr is before_err
    assert logging.getLogger().handlers == root_handlers
    assert logging.Logger.callHandlers is call_handlers
    assert not logs.installed()


@pytest.mark.trio
async def test_echo_writes_captured_lines_to_the_real_stream_unless_turned_off(
    capsys, monkeypatch
):
    async with open_engine() as engine:
        ctx = await one_talker.arun("echoed", engine=engine)
    assert "echoed says 0" in capsys.readouterr().out
    monkeypatch.setenv("FLUX_LOG_ECHO", "0")
    async with open_engine() as engine:
        print("outside a task: always printed")
        ctx = await one_talker.arun("quiet", engine=engine)
        lines = await engine.logs(ctx.execution_id)
    out = capsys.readouterr().out
    assert "quiet says" not in out and "outside a task: always printed" in out
    assert "quiet says 2" in messages(lines)


def test_an_unconfigured_process_keeps_its_output_and_gets_info_captured(tmp_path):
    """No logging set-up at all (no pytest handlers): warnings still reach stderr once, prints
    stdout once, INFO is captured; and a handler made after the install does not double lines."""
    script = textwrap.dedent(
        """
        import logging, sys
        import anyio
        from flux import task, workflow
        from flux.runtime.engine import open_engine

        log = logging.getLogger("app")

        @task
        async def body():
            print("printed once")
            log.info("info captured")
            log.warning("warning shown once")

        @workflow
        async def wf(ctx):
            await body()

        async def main():
            async with open_engine() as engine:
                ctx = await wf.arun(engine=engine)
                logging.basicConfig(stream=sys.stderr, format="late handler: %(message)s")
                ctx2 = await wf.arun(engine=engine)
                for c in (ctx, ctx2):
                    for line in await engine.logs(c.execution_id):
                        print("LOG", line.logger, line.message)
            print("root level back:", logging.getLogger().level)

        anyio.run(main, backend="trio")
        """
    )
    out = subprocess.run(
        [PYTHON, "-c", script],
        env=subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("printed once") == 2 + 2  # echoed twice, listed twice
    assert out.stderr.splitlines() == ["warning shown once", "late handler: warning shown once"]
    logged = [line for line in out.stdout.splitlines() if line.startswith("LOG")]
    assert logged == [
        "LOG stdout printed once",
        "LOG app info captured",
        "LOG app warning shown once",
    ] * 2
    assert "root level back: 30" in out.stdout


@task
def sync_printer(n: int) -> int:
    for i in range(n):
        print(f"asyncio thread line {i}")
    return n


@workflow
async def on_asyncio(ctx: ExecutionContext):
    return await sync_printer(3)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_capture_and_the_background_writer_work_on_asyncio(anyio_backend):
    async with open_engine() as engine:
        ctx = await on_asyncio.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
        assert messages(lines) == [f"asyncio thread line {i}" for i in range(3)]
        # a line added from another thread wakes the background writer through the loop
        sink = engine.log_sink
        written = sink.written
        await anyio.to_thread.run_sync(
            sink.add, ctx.execution_id, LogEntry("x#9", 1, "INFO", "stdout", 0.0, "late")
        )
        with anyio.fail_after(5):
            while sink.written == written:
                await anyio.sleep(0.02)
        assert messages(await engine.logs(ctx.execution_id))[-1] == "late"
