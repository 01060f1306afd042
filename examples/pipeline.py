"""Chain tasks with ``pipeline`` (the seed README's "Pipeline Processing" snippet).

    python examples/pipeline.py

``pipeline(t1, t2, t3, input=x)`` feeds ``x`` to ``t1``, its output to ``t2``, and so on, and
returns the last output: here ((5 * 2) + 3) ** 2 = 169. The steps run one after the other, each
recorded under the ``pipeline#0`` frame.
"""

from flux import ExecutionContext, task, workflow
from flux.tasks import pipeline


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
async def pipeline_workflow(ctx: ExecutionContext[int]):
    result = await pipeline(
        multiply_by_two,
        add_three,
        square,
        input=ctx.input,
    )
    return result


if __name__ == "__main__":
    ctx = pipeline_workflow.run(5)
    for event in ctx.events:
        if event.type.value == "TASK_COMPLETED":
            print(f"  {event.source_id:28} -> {event.value!r}")
    print(ctx.state.value, ctx.output)
