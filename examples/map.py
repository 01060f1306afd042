"""Apply one task to every item of a list with ``task.map`` (the seed README's "Task Mapping"
snippet), then the same with a bound on concurrency.

    python examples/map.py

``process_item.map(items)`` runs one call per item concurrently and returns the results in item
order. ``max_concurrency=2`` keeps at most two calls running at once (the peak is printed).
"""

import anyio

from flux import ExecutionContext, task, workflow


@task
async def process_item(item: str):
    return item.upper()


@workflow
async def map_workflow(ctx: ExecutionContext[list[str]]):
    results = await process_item.map(ctx.input)
    return results


running = 0
peak = 0


@task
async def slow_double(n: int) -> int:
    global running, peak
    running += 1
    peak = max(peak, running)
    await anyio.sleep(0.01)
    running -= 1
    return n * 2


@workflow
async def bounded_map(ctx: ExecutionContext[list[int]]):
    return await slow_double.map(ctx.input, max_concurrency=2)


if __name__ == "__main__":
    ctx = map_workflow.run(["apple", "banana", "cherry"])
    print(ctx.state.value, ctx.output)

    ctx = bounded_map.run([1, 2, 3, 4, 5, 6])
    print(ctx.state.value, ctx.output, f"peak concurrency {peak}")
