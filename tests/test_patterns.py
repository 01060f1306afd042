"""parallel, map, pipeline and subworkflows: ids, concurrency bounds, cancellation, replay."""

from __future__ import annotations

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, call, open_engine, task, workflow
from flux.domain.events import ExecutionEventType as E
from flux.tasks import parallel, pause, pipeline

log: list = []


@pytest.fixture(autouse=True)
def _reset():
    log.clear()


@task
async def say_hi(name: str) -> str:
    return f"Hi, {name}"


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@task
async def say_hola(name: str) -> str:
    return f"Hola, {name}"


@workflow
async def parallel_workflow(ctx: ExecutionContext[str]):
    return await parallel(say_hi(ctx.input), say_hello(ctx.input), say_hola(ctx.input))


@pytest.mark.trio
async def test_parallel_results_in_argument_order_and_structural_ids():
    ctx = await parallel_workflow.arun("Joe")
    assert ctx.output == ["Hi, Joe", "Hello, Joe", "Hola, Joe"]
    ids = sorted(e.source_id for e in ctx.events if e.type is E.TASK_COMPLETED)
    assert ids == ["parallel#0/say_hello#1", "parallel#0/say_hi#0", "parallel#0/say_hola#2"]


@pytest.mark.trio
async def test_map_and_pipeline():
    @task
    async def upper(item: str) -> str:
        return item.upper()

    @task
    async def multiply_by_two(x):
        return x * 2

    @task
    async def add_three(x):
        return x + 3

    @task
    async def square(x):
        return x * x

    @workflow
    async def wf(ctx: ExecutionContext):
        mapped = await upper.map(["a", "b", "c"])
        piped = await pipeline(multiply_by_two, add_three, square, input=4)
        return [mapped, piped]

    ctx = await wf.arun()
    assert ctx.output == [["A", "B", "C"], 121]
    started = [e.source_id for e in ctx.events if e.type is E.TASK_STARTED]
    assert started[-3:] == [
        "pipeline#1/multiply_by_two#0",
        "pipeline#1/add_three#1",
        "pipeline#1/square#2",
    ]
    assert sorted(started[:3]) == ["map#0/upper#0", "map#0/upper#1", "map#0/upper#2"]


@pytest.mark.trio
async def test_first_failure_cancels_siblings_which_roll_back(settled_clock):
    async def undo_slow(i):
        # rollback runs shielded even though the task was cancelled
        await anyio.sleep(1)
        log.append(("rolled back", i))

    @task.with_options(rollback=undo_slow)
    async def slow(i: int) -> int:
        log.append(("slow started", i))
        await anyio.sleep(60)
        log.append(("slow finished", i))  # must never happen
        return i

    @task
    async def failing() -> None:
        await anyio.sleep(1)
        raise KeyError("broken")

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await parallel(slow(1), failing(), slow(2))
        except KeyError as e:
            return f"caught {e}"

    start = anyio.current_time()
    async with open_engine(cancel_poll=None) as engine:
        ctx = await wf.arun(engine=engine)
    assert ctx.output == "caught 'broken'"
    assert anyio.current_time() - start < 10  # the slow siblings did not run to their end
    assert ("slow finished", 1) not in log and ("slow finished", 2) not in log
    assert sorted(x for x in log if x[0] == "rolled back") == [
        ("rolled back", 1),
        ("rolled back", 2),
    ]
    by_id = {}
    for e in ctx.events:
        by_id.setdefault(e.source_id, []).append(e.type.value)
    assert by_id["parallel#0/failing#1"] == ["TASK_STARTED", "TASK_FAILED"]
    for sid in ("parallel#0/slow#0", "parallel#0/slow#2"):
        assert by_id[sid] == [
            "TASK_STARTED",
            "TASK_ROLLBACK_STARTED",
            "TASK_ROLLBACK_COMPLETED",
            "TASK_CANCELLED",
        ]


@pytest.mark.trio
async def test_several_real_failures_raise_an_exception_group():
    barrier = anyio.Event()
    arrived = []

    @task
    async def fail_together(i: int) -> None:
        arrived.append(i)
        if len(arrived) == 2:
            barrier.set()
        await barrier.wait()
        raise ValueError(f"fail {i}")

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await parallel(fail_together(1), fail_together(2))
        except ExceptionGroup as eg:
            return sorted(str(e) for e in eg.exceptions)

    ctx = await wf.arun()
    assert ctx.output == ["fail 1", "fail 2"]


@pytest.mark.trio
async def test_bounded_concurrency_never_exceeds_its_bound(autojump_clock):
    running = {"now": 0, "max": 0}

    @task
    async def work(i: int) -> int:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        await anyio.sleep(0.1 * (i % 3 + 1))
        running["now"] -= 1
        return i

    @workflow
    async def wf(ctx: ExecutionContext):
        a = await work.map(range(30), max_concurrency=4)
        b = await parallel(*(work(i) for i in range(10)), max_concurrency=2)
        return [a, b]

    async with open_engine(cancel_poll=None) as engine:
        ctx = await wf.arun(engine=engine)
    assert ctx.output == [list(range(30)), list(range(10))]
    assert running["max"] == 4  # reached, never exceeded (2 for the second group)


@pytest.mark.trio
async def test_max_concurrency_is_validated():
    @workflow
    async def wf(ctx: ExecutionContext):
        await parallel(say_hi("a"), max_concurrency=0)

    ctx = await wf.arun()
    assert ctx.has_failed and "max_concurrency" in str(ctx.output)


@pytest.mark.trio
async def test_crash_in_the_middle_of_a_fan_out():
    @task
    async def item(i: int) -> int:
        log.append(i)
        return i * i

    @workflow
    async def fan(ctx: ExecutionContext):
        return sum(await item.map(range(20)))

    async with open_engine() as engine:
        full = await fan.arun(engine=engine)
        completed = [e for e in full.events if e.type is E.TASK_COMPLETED]
        cut = completed[9].id  # ten of twenty items completed before the "crash"
        kept_done = {e.source_id for e in full.events if e.type is E.TASK_COMPLETED and e.id <= cut}

        def rewind(conn):
            conn.execute(
                "delete from events where execution_id=? and seq>?", (full.execution_id, cut)
            )
            conn.execute(
                "update executions set state='RUNNING' where execution_id=?", (full.execution_id,)
            )

        await engine.store._run(rewind)
        log.clear()
        again = await fan.arun(execution_id=full.execution_id, engine=engine)
    assert again.output == full.output == sum(i * i for i in range(20))
    rerun_ids = {f"map#0/item#{i}" for i in log}
    assert len(log) == 10 and not (rerun_ids & kept_done)


# --------------------------------------------------------------------------- subworkflows


@task
async def child_step(x: int) -> int:
    log.append(("child_step", x))
    return x + 1


@workflow
async def child(ctx: ExecutionContext[int]):
    return await child_step(ctx.input) * 10


@workflow
async def failing_child(ctx: ExecutionContext[int]):
    raise LookupError(f"child cannot handle {ctx.input}")


@workflow
async def pausing_child(ctx: ExecutionContext[int]):
    answer = await pause("child_question")
    return f"child got {answer}"


@workflow
async def parent(ctx: ExecutionContext[int]):
    a = await call(child, ctx.input)
    try:
        await call(failing_child, 5)
    except LookupError as e:
        b = str(e)
    c = await pause("parent_gate")
    return [a, b, c]


@pytest.mark.trio
async def test_subworkflow_runs_as_its_own_execution_and_is_not_started_twice():
    async with open_engine() as engine:
        first = await parent.arun(2, engine=engine)
        assert first.state is ExecutionState.PAUSED
        started = [e for e in first.events if e.type is E.TASK_STARTED]
        child_id = started[0].value["child_id"]
        child_ctx = await engine.get(child_id)
        assert child_ctx.workflow_name == "child" and child_ctx.output == 30
        assert child_ctx.parent_id == first.execution_id
        failed_ctx = await engine.get(started[1].value["child_id"])
        assert failed_ctx.state is ExecutionState.FAILED
        done = await parent.arun(execution_id=first.execution_id, resume_value="ok", engine=engine)
        children = await engine.store.list_executions(parent_id=first.execution_id)
    assert done.output == [30, "child cannot handle 5", "ok"]
    assert log == [("child_step", 2)]  # the child ran once, replaying the parent did not restart it
    assert len(children) == 2


@pytest.mark.trio
async def test_a_paused_child_pauses_the_parent_and_resumes_with_it():
    @workflow
    async def asking_parent(ctx: ExecutionContext):
        return await call(pausing_child, 1)

    async with open_engine() as engine:
        ctx = await asking_parent.arun(engine=engine)
        assert ctx.state is ExecutionState.PAUSED
        child_id = next(e for e in ctx.events if e.type is E.TASK_STARTED).value["child_id"]
        assert (await engine.get(child_id)).state is ExecutionState.PAUSED
        done = await asking_parent.arun(
            execution_id=ctx.execution_id, resume_value=42, engine=engine
        )
        child_done = await engine.get(child_id)
    assert done.output == "child got 42"
    assert child_done.state is ExecutionState.COMPLETED


@pytest.mark.trio
async def test_map_failure_cancels_the_other_items(settled_clock):
    @task
    async def item(i: int) -> int:
        if i == 3:
            await anyio.sleep(1)
            raise ValueError("item 3 is bad")
        await anyio.sleep(60)
        log.append(("finished", i))  # must never happen
        return i

    @workflow
    async def wf(ctx: ExecutionContext):
        try:
            await item.map(range(6))
        except ValueError as e:
            return str(e)

    async with open_engine(cancel_poll=None) as engine:
        ctx = await wf.arun(engine=engine)
    assert ctx.output == "item 3 is bad"
    assert log == []
    cancelled = sorted(e.source_id for e in ctx.events if e.type is E.TASK_CANCELLED)
    assert cancelled == [f"map#0/item#{i}" for i in (0, 1, 2, 4, 5)]
    assert not [e for e in ctx.events if e.type is E.TASK_COMPLETED]
