"""Run several tasks at the same time with ``parallel`` (the seed README's "Parallel Task
Execution" snippet).

    python examples/parallel.py

The three greetings run concurrently; the results come back in argument order, whatever order
the tasks finished in. Each call gets a structural id under the ``parallel#0`` frame
(``parallel#0/say_hi#0``, ``parallel#0/say_hello#1``, ...), assigned when ``parallel`` is
called, so a replay finds every recorded result at the same place.
"""

from flux import ExecutionContext, task, workflow
from flux.tasks import parallel


@task
async def say_hi(name: str):
    return f"Hi, {name}"


@task
async def say_hello(name: str):
    return f"Hello, {name}"


@task
async def say_hola(name: str):
    return f"Hola, {name}"


@workflow
async def parallel_workflow(ctx: ExecutionContext[str]):
    results = await parallel(
        say_hi(ctx.input),
        say_hello(ctx.input),
        say_hola(ctx.input),
    )
    return results


if __name__ == "__main__":
    ctx = parallel_workflow.run("World")
    # the order of TASK_STARTED/TASK_COMPLETED events between siblings may vary from run to run;
    # the call ids and the output do not
    done = {e.source_id: e.value for e in ctx.events if e.type.value == "TASK_COMPLETED"}
    for call_id in sorted(done, key=lambda c: int(c.rpartition("#")[2])):
        print(f"  {call_id:24} {done[call_id]!r}")
    print(ctx.state.value, ctx.output)
