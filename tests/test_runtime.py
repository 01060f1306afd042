"""The embedded engine: runs, history, replay, determinism, failures."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

from flux import (
    ExecutionContext,
    ExecutionState,
    NondeterminismError,
    SerializationError,
    open_engine,
    task,
    workflow,
)
from flux.domain.events import ExecutionEventType as E
from flux.runtime import codec

runs: list[str] = []


@pytest.fixture(autouse=True)
def _reset_runs():
    runs.clear()


@task
async def say_hello(name: str) -> str:
    runs.append(f"hello:{name}")
    return f"Hello, {name}"


@task
def shout(text: str) -> str:  # a sync task runs in a thread
    runs.append(f"shout:{text}")
    return text.upper()


class Boom(Exception):
    pass


@task
async def explode(x: int) -> int:
    runs.append(f"explode:{x}")
    raise Boom(f"boom {x}")


@workflow
async def hello_world(ctx: ExecutionContext[str]):
    return await say_hello(ctx.input)


@workflow
async def two_steps(ctx: ExecutionContext[str]):
    greeting = await say_hello(ctx.input)
    return await shout(greeting)


def types_of(ctx: ExecutionContext) -> list[tuple[str, str]]:
    return [(e.type.value, e.source_id) for e in ctx.events]


def test_hello_world_sync_run():
    result = hello_world.run("World")
    assert result.output == "Hello, World"
    assert result.state is ExecutionState.COMPLETED
    assert result.has_started and result.has_finished and result.has_succeeded
    assert not result.has_failed and not result.is_paused and not result.is_cancelled
    assert types_of(result) == [
        ("WORKFLOW_STARTED", "hello_world"),
        ("TASK_STARTED", "say_hello#0"),
        ("TASK_COMPLETED", "say_hello#0"),
        ("WORKFLOW_COMPLETED", "hello_world"),
    ]
    assert result.events[0].value == "World"
    assert result.events[2].value == "Hello, World"
    assert all(e.time is not None and e.time.tzinfo is not None for e in result.events)
    assert [e.id for e in result.events] == [1, 2, 3, 4]


@pytest.mark.trio
async def test_sync_task_and_history_in_store(db_path):
    ctx = await two_steps.arun("ann")
    assert ctx.output == "HELLO, ANN"
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "select seq, type, call_id from events where execution_id=? order by seq",
        (ctx.execution_id,),
    ).fetchall()
    assert rows == [
        (1, "WORKFLOW_STARTED", "two_steps"),
        (2, "TASK_STARTED", "say_hello#0"),
        (3, "TASK_COMPLETED", "say_hello#0"),
        (4, "TASK_STARTED", "shout#1"),
        (5, "TASK_COMPLETED", "shout#1"),
        (6, "WORKFLOW_COMPLETED", "two_steps"),
    ]
    state, output = conn.execute(
        "select state, output from executions where execution_id=?", (ctx.execution_id,)
    ).fetchone()
    assert state == "COMPLETED" and codec.decode(output) == "HELLO, ANN"


@pytest.mark.trio
async def test_finished_execution_is_returned_unchanged():
    first = await two_steps.arun("bo")
    assert runs == ["hello:bo", "shout:Hello, bo"]
    again = await two_steps.arun(execution_id=first.execution_id)
    assert runs == ["hello:bo", "shout:Hello, bo"]  # nothing ran again
    assert again.output == first.output
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert again.state is ExecutionState.COMPLETED


@pytest.mark.trio
async def test_outcome_is_committed_before_the_workflow_sees_it(db_path):
    seen: list[list[tuple]] = []

    @task
    def peek(execution_id: str) -> int:
        # another connection, as another process would see the file
        conn = sqlite3.connect(db_path)
        seen.append(
            conn.execute(
                "select type, call_id from events where execution_id=? and type='TASK_COMPLETED'",
                (execution_id,),
            ).fetchall()
        )
        return 0

    @workflow
    async def wf(ctx: ExecutionContext):
        await say_hello("x")
        await peek(ctx.execution_id)

    await wf.arun()
    assert seen == [[("TASK_COMPLETED", "say_hello#0")]]


@pytest.mark.trio
async def test_failure_is_recorded():
    @workflow
    async def failing(ctx: ExecutionContext[int]):
        await say_hello("a")
        return await explode(ctx.input)

    ctx = await failing.arun(7)
    assert ctx.state is ExecutionState.FAILED
    assert ctx.has_failed and ctx.has_finished and not ctx.has_succeeded
    last = ctx.events[-1]
    assert last.type is E.WORKFLOW_FAILED
    assert isinstance(last.value, Boom) and str(last.value) == "boom 7"
    assert isinstance(ctx.output, Boom)
    assert '"boom 7"' in ctx.to_json()
    assert (E.TASK_FAILED.value, "explode#1") in types_of(ctx)
    # the same from the store, in a fresh engine
    async with open_engine() as engine:
        loaded = await engine.get(ctx.execution_id)
    assert loaded.state is ExecutionState.FAILED
    assert isinstance(loaded.output, Boom) and loaded.output.args == ("boom 7",)


@pytest.mark.trio
async def test_caught_task_error_lets_the_workflow_go_on():
    @workflow
    async def recovering(ctx: ExecutionContext):
        try:
            await explode(1)
        except Boom as e:
            return f"recovered from {e}"

    ctx = await recovering.arun()
    assert ctx.output == "recovered from boom 1"
    assert ctx.state is ExecutionState.COMPLETED


@pytest.mark.trio
async def test_unencodable_output_fails_the_task_naming_it():
    class Opaque:
        pass

    @task
    async def make_opaque():
        return Opaque()

    @workflow
    async def wf(ctx: ExecutionContext):
        return await make_opaque()

    ctx = await wf.arun()
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, SerializationError)
    message = str(ctx.output)
    assert "make_opaque" in message and "Opaque" in message
    failed = [e for e in ctx.events if e.type is E.TASK_FAILED]
    assert failed and failed[0].source_id == "make_opaque#0"


@pytest.mark.trio
async def test_unencodable_argument_raises_serialization_error_naming_task():
    @workflow
    async def wf(ctx: ExecutionContext):
        return await say_hello(object())

    ctx = await wf.arun()
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, SerializationError)
    assert "say_hello" in str(ctx.output) and "object" in str(ctx.output)
    assert runs == []


@pytest.mark.trio
async def test_unencodable_input_is_refused_before_anything_is_stored(db_path):
    await hello_world.arun("first")
    with pytest.raises(SerializationError, match="hello_world"):
        await hello_world.arun(object())
    conn = sqlite3.connect(db_path)
    assert conn.execute("select count(*) from executions").fetchone() == (1,)
    assert conn.execute("select count(*) from events").fetchone() == (4,)


@pytest.mark.trio
async def test_recorded_outcomes_replay_without_running_bodies():
    """Crash simulation: a RUNNING execution whose history holds completed tasks."""

    @workflow
    async def chain(ctx: ExecutionContext):
        a = await say_hello("a")
        try:
            await explode(2)
        except Boom as e:
            b = str(e)
        c = await say_hello("c")
        return [a, b, c]

    first = await chain.arun()
    assert runs == ["hello:a", "explode:2", "hello:c"]
    runs.clear()
    # rewind: keep the first 5 events (a completed, explode failed), mark running
    async with open_engine() as engine:
        await _truncate(engine, first.execution_id, 5)
        again = await chain.arun(execution_id=first.execution_id, engine=engine)
    assert again.output == ["Hello, a", "boom 2", "Hello, c"]
    assert runs == ["hello:c"]  # a and explode replayed from the record


async def _truncate(engine, execution_id: str, keep: int) -> None:
    def cut(conn):
        conn.execute("delete from events where execution_id=? and seq>?", (execution_id, keep))
        conn.execute(
            "update executions set state='RUNNING', output=NULL where execution_id=?",
            (execution_id,),
        )

    await engine.store._run(cut)


@pytest.mark.trio
async def test_nondeterminism_is_detected_with_side_by_side_message():
    @workflow.with_options(name="drifting")
    async def v1(ctx: ExecutionContext):
        await say_hello("a")
        return await say_hello("b")

    @workflow.with_options(name="drifting")
    async def v2(ctx: ExecutionContext):
        await shout("a")  # a different task at say_hello#0
        return await say_hello("b")

    first = await v1.arun()
    async with open_engine() as engine:
        await _truncate(engine, first.execution_id, 3)
        with pytest.raises(NondeterminismError) as info:
            await v2.arun(execution_id=first.execution_id, engine=engine)
        message = str(info.value)
        assert "say_hello#0" in message
        assert "recorded" in message and "current" in message
        assert "say_hello('a')" in message and "shout('a')" in message
        # the history is left as it was: the original code still completes it
        record = await engine.store.get_execution(first.execution_id)
        assert record.state is ExecutionState.RUNNING
        assert await engine.store.last_seq(first.execution_id) == 3
        ok = await v1.arun(execution_id=first.execution_id, engine=engine)
    assert ok.output == "Hello, b"


@pytest.mark.trio
async def test_nondeterminism_on_changed_arguments_even_if_caught():
    @workflow.with_options(name="args_drift")
    async def v1(ctx: ExecutionContext):
        return await say_hello("a")

    @workflow.with_options(name="args_drift")
    async def v2(ctx: ExecutionContext):
        try:
            return await say_hello("zzz")
        except Exception:  # user code cannot swallow it
            return "swallowed"

    first = await v1.arun()
    async with open_engine() as engine:
        await _truncate(engine, first.execution_id, 3)
        with pytest.raises(NondeterminismError, match="say_hello#0"):
            await v2.arun(execution_id=first.execution_id, engine=engine)


@pytest.mark.trio
async def test_removed_call_is_nondeterminism():
    @workflow.with_options(name="shrinking")
    async def v1(ctx: ExecutionContext):
        await say_hello("a")
        await say_hello("b")
        return "done"

    @workflow.with_options(name="shrinking")
    async def v2(ctx: ExecutionContext):
        await say_hello("a")
        return "done"

    first = await v1.arun()
    async with open_engine() as engine:
        await _truncate(engine, first.execution_id, 5)
        with pytest.raises(NondeterminismError, match="say_hello#1"):
            await v2.arun(execution_id=first.execution_id, engine=engine)


@pytest.mark.trio
async def test_call_ids_are_structural_and_nested():
    @task
    async def inner(x: int) -> int:
        return x + 1

    @task
    async def outer(x: int) -> int:
        return await inner(x) + await inner(x + 10)

    @workflow
    async def nested(ctx: ExecutionContext):
        return [await outer(1), await inner(5)]

    ctx = await nested.arun()
    assert ctx.output == [14, 6]
    started = [e.source_id for e in ctx.events if e.type is E.TASK_STARTED]
    assert started == ["outer#0", "outer#0/inner#0", "outer#0/inner#1", "inner#1"]


@pytest.mark.trio
async def test_custom_name_with_arguments():
    @task.with_options(name="fetch_{url}")
    async def fetch(url: str) -> str:
        return url[::-1]

    @workflow
    async def wf(ctx: ExecutionContext):
        return await fetch("a/b#c")

    ctx = await wf.arun()
    assert ctx.output == "c#b/a"
    started = next(e for e in ctx.events if e.type is E.TASK_STARTED)
    assert started.name == "fetch_a/b#c"
    assert started.source_id == "fetch_a%2Fb%23c#0"


@pytest.mark.trio
async def test_task_outside_a_workflow_runs_plainly():
    assert await say_hello("z") == "Hello, z"
    assert runs == ["hello:z"]


def test_bad_workflow_definitions_are_refused():
    from flux.runtime.errors import WorkflowError

    with pytest.raises(WorkflowError, match="async"):

        @workflow
        def not_async(ctx):
            return 1

    with pytest.raises(WorkflowError, match="exactly one argument"):

        @workflow
        async def two_args(ctx, other):
            return 1


@pytest.mark.trio
async def test_a_live_lease_is_refused_and_an_expired_one_taken_over_and_fenced():
    """A second runner is refused while the first one's lease is live; once it expired (the
    first runner stalled in a task body, renewing nothing), the second takes over with a new
    epoch, and the first one's late outcome is refused: it stops, uncatchable, writing nothing."""
    from flux.runtime.errors import ExecutionLeasedError, LeaseLostError

    gate = anyio.Event()
    entered = anyio.Event()
    calls = []
    caught = []

    @task
    async def slow() -> str:
        calls.append(1)
        if len(calls) == 1:  # the first runner hangs here until the second has finished
            entered.set()
            await gate.wait()
        return "slow"

    @workflow
    async def contested(ctx: ExecutionContext):
        await say_hello("x")
        try:
            return await slow()
        except Exception as e:  # a stop must never land here
            caught.append(e)
            return "compensated"

    results = {}
    # no heartbeat task (cancel_poll=None): a body that runs past the ttl lets the lease expire
    async with (
        open_engine(cancel_poll=None, lease_ttl=0.5) as engine,
        open_engine(lease_ttl=0.5) as other,
    ):

        async def first():
            try:
                results["first"] = await contested.arun(execution_id="contested-1", engine=engine)
            except LeaseLostError as e:
                results["first"] = e

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await entered.wait()
            with pytest.raises(ExecutionLeasedError, match="embedded runner pid"):
                await contested.arun(execution_id="contested-1", engine=other)
            # once the stalled runner's lease expired, "another process" takes it over
            second = await contested.arun(execution_id="contested-1", engine=other, wait=5)
            before = await engine.store.load_events("contested-1")
            gate.set()
        final = await engine.get("contested-1")
        after = await engine.store.load_events("contested-1")
    assert second.output == "slow"
    assert runs == ["hello:x"]  # replayed by the second runner, not run again
    assert isinstance(results["first"], LeaseLostError)
    assert "took it over" in str(results["first"])
    assert caught == []
    assert after == before  # the fenced runner wrote nothing
    assert final.state is ExecutionState.COMPLETED
    assert [e.type for e in final.events].count(E.WORKFLOW_COMPLETED) == 1
    assert [e.type for e in final.events].count(E.TASK_COMPLETED) == 2


def test_exports_and_compat_import_paths():
    import flux
    import flux.decorators
    import flux.domain.events
    import flux.task
    import flux.tasks
    from flux.decorators import TaskMetadata
    from flux.task import TaskMetadata as TM2

    assert TaskMetadata is TM2 is flux.task.TaskMetadata
    assert flux.decorators.task is flux.task is flux.runtime.task.task
    assert flux.domain.events.ExecutionState.PAUSED.value == "PAUSED"
    names = {e.value for e in flux.domain.events.ExecutionEventType}
    for legacy in [
        "WORKFLOW_SCHEDULED",
        "WORKFLOW_CLAIMED",
        "WORKFLOW_STARTED",
        "WORKFLOW_COMPLETED",
        "WORKFLOW_FAILED",
        "WORKFLOW_PAUSED",
        "WORKFLOW_RESUMED",
        "WORKFLOW_CANCELLED",
        "TASK_STARTED",
        "TASK_COMPLETED",
        "TASK_FAILED",
        "TASK_PAUSED",
        "TASK_RESUMED",
        "TASK_CANCELLED",
        "TASK_RETRY_STARTED",
        "TASK_RETRY_COMPLETED",
        "TASK_RETRY_FAILED",
        "TASK_FALLBACK_STARTED",
        "TASK_FALLBACK_COMPLETED",
        "TASK_FALLBACK_FAILED",
        "TASK_ROLLBACK_STARTED",
        "TASK_ROLLBACK_COMPLETED",
        "TASK_ROLLBACK_FAILED",
    ]:
        assert legacy in names
    for name in flux.__all__:
        assert getattr(flux, name) is not None
    for name in flux.tasks.__all__:
        assert callable(getattr(flux.tasks, name))
    assert {s.value for s in flux.ExecutionState} == {
        "CREATED",
        "SCHEDULED",
        "CLAIMED",
        "RUNNING",
        "PAUSED",
        "COMPLETED",
        "FAILED",
        "CANCELLING",
        "CANCELLED",
    }


@pytest.mark.trio
async def test_nondeterminism_on_resume_leaves_the_paused_execution_untouched():
    from flux.tasks import pause

    @workflow.with_options(name="resumable")
    async def v1(ctx: ExecutionContext):
        a = await say_hello("a")
        return [a, await pause("p")]

    @workflow.with_options(name="resumable")
    async def v2(ctx: ExecutionContext):
        a = await say_hello("changed")
        return [a, await pause("p")]

    async with open_engine() as engine:
        paused = await v1.arun(engine=engine)
        before = await engine.store.load_events(paused.execution_id)
        with pytest.raises(NondeterminismError):
            await v2.arun(execution_id=paused.execution_id, resume_value="first", engine=engine)
        record = await engine.store.get_execution(paused.execution_id)
        after = await engine.store.load_events(paused.execution_id)
        assert record.state is ExecutionState.PAUSED
        assert after == before  # no resume events were written
        done = await v1.arun(execution_id=paused.execution_id, resume_value="second", engine=engine)
    assert done.output == ["Hello, a", "second"]


@pytest.mark.trio
async def test_cancel_requested_while_no_process_ran_it_is_honoured_on_recovery():
    @workflow
    async def recover_me(ctx: ExecutionContext):
        return await say_hello("r")

    async with open_engine() as engine:
        first = await recover_me.arun(engine=engine)
        await _truncate(engine, first.execution_id, 1)  # "crashed" right after starting
        ctx = await engine.cancel(first.execution_id)
        assert ctx.state is ExecutionState.RUNNING  # only requested: nobody runs it
        runs.clear()
        recovered = await recover_me.arun(execution_id=first.execution_id, engine=engine)
    assert recovered.state is ExecutionState.CANCELLED
    assert recovered.events[-1].type is E.WORKFLOW_CANCELLED
    assert runs == []


def test_a_task_call_never_awaited_warns():
    import gc

    with pytest.warns(RuntimeWarning, match="say_hello.*never awaited"):
        say_hello("forgotten")
        gc.collect()
    assert runs == []


def test_every_parse_of_a_source_takes_the_one_parse_lock():
    # CPython 3.11 can fail two ASTs built at once by two threads (python/cpython#106905):
    # the server's upload check, the secrets scan and the loader must parse one at a time
    import threading

    from flux.net.security import declared_secrets
    from flux.net.uploads import workflow_names
    from flux.runtime import loader

    source = "from flux import workflow\n\n@workflow\nasync def wf(ctx):\n    return 1\n"
    for parse in (workflow_names, declared_secrets, loader.check_source):
        done = threading.Event()
        with loader._PARSE_LOCK:
            thread = threading.Thread(target=lambda p=parse, d=done: (p(source), d.set()))
            thread.start()
            assert not done.wait(0.2), f"{parse.__name__} parsed without the lock"
        assert done.wait(10), f"{parse.__name__} never finished"
        thread.join()
