"""The embedding API on both anyio backends, including a plain asyncio program."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap

import anyio
import pytest

from flux import ExecutionContext, ExecutionState, open_engine, task, workflow
from flux.tasks import now, parallel, pause

from .conftest import PYTHON, subprocess_env


@task
async def double(x: int) -> int:
    await anyio.sleep(0)
    return x * 2


@task
def triple(x: int) -> int:
    return x * 3


@workflow
async def arithmetic(ctx: ExecutionContext[int]):
    a = await double(ctx.input)
    b = await triple(a)
    both = await parallel(double(b), triple(b))
    stamp = await now()
    resumed = await pause("check")
    return {"values": both, "resumed": resumed, "has_time": stamp is not None}


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_arun_on_each_backend(anyio_backend):
    ctx = await arithmetic.arun(2)
    assert ctx.state is ExecutionState.PAUSED
    ctx = await arithmetic.arun(execution_id=ctx.execution_id, resume_value=anyio_backend)
    assert ctx.output == {"values": [24, 36], "resumed": anyio_backend, "has_time": True}


@pytest.mark.anyio
async def test_shared_engine_on_each_backend(anyio_backend):
    async with open_engine() as engine:
        results = []

        async def one(i):
            ctx = await arithmetic.arun(i, engine=engine)
            results.append(ctx.state)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
        assert results == [ExecutionState.PAUSED] * 20
        stats = engine.store.statistics()
        # concurrent runs share transactions (group commit)
        assert stats.commits < stats.writes_committed


@pytest.mark.anyio
async def test_cancelling_the_enclosing_scope_cancels_the_execution(anyio_backend):
    started = anyio.Event()

    @task
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    @workflow
    async def hangs(ctx: ExecutionContext):
        await double(1)
        await forever()

    holder = {}
    async with open_engine() as engine:
        with anyio.CancelScope() as scope:

            async def watcher():
                await started.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher)
                holder["ctx"] = await hangs.arun(execution_id="to-cancel", engine=engine)
        assert "ctx" not in holder
        ctx = await engine.get("to-cancel")
    assert ctx.state is ExecutionState.CANCELLED and ctx.is_cancelled
    types = [(e.type.value, e.source_id) for e in ctx.events]
    assert ("TASK_CANCELLED", "forever#1") in types
    assert types[-1] == ("WORKFLOW_CANCELLED", "hangs")


def test_plain_asyncio_program(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            from flux import task, workflow, ExecutionContext

            @task
            async def greet(name: str) -> str:
                await asyncio.sleep(0)  # asyncio code inside a task is fine on asyncio
                return f"Hello, {name}"

            @workflow
            async def hello(ctx: ExecutionContext[str]):
                return await greet(ctx.input)

            async def main():
                ctx = await hello.arun("asyncio")
                print(ctx.output, ctx.state.value)

            asyncio.run(main())
            """
        )
    )
    out = subprocess.run(
        [PYTHON, str(script)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Hello, asyncio COMPLETED"


def test_run_inside_asyncio_run_via_anyio():
    async def main():
        return await arithmetic.arun(1)

    ctx = asyncio.run(main())
    assert ctx.state is ExecutionState.PAUSED
