"""Cache a task's result (the seed README's "Task Caching" snippet).

    python examples/cache.py

With ``cache=True`` the result of a call is stored under a digest of the task's identity (its
qualified name, and the values its function closes over) and its arguments. Any later call with
the same arguments, in any execution and any process using the same database, returns the stored
result without running the body. Falsy results (0, "", None, []) are cached too.
``cache=timedelta(...)`` (or seconds) makes entries expire.

The script runs the workflow twice (two executions): the bodies run in the first one only. (Run
the script again on the same database and none run at all: the cache is in the store.) Then two
tasks made by one factory (``make_multiplier(2)`` and ``(3)``) show that they keep apart.
"""

from datetime import timedelta

from flux import ExecutionContext, task, workflow

body_runs = 0


def complex_calculation(input_data: int) -> int:
    return sum(i * i for i in range(input_data + 1))


@task.with_options(cache=True)
async def expensive_computation(input_data):
    global body_runs
    body_runs += 1
    # Results will be cached based on input
    return complex_calculation(input_data)


@task.with_options(cache=timedelta(hours=1))
async def is_even(n: int) -> bool:
    global body_runs
    body_runs += 1
    return n % 2 == 0  # False is cached like any value


@workflow
async def cache_workflow(ctx: ExecutionContext[list[int]]):
    return [await expensive_computation(n) for n in ctx.input] + [await is_even(3)]


def make_multiplier(factor: int):
    # Tasks made by one factory share a qualified name; their cache entries are keyed on the
    # values they close over too, so double and triple never read each other's results.
    @task.with_options(cache=True)
    async def multiply(x: int) -> int:
        return x * factor

    return multiply


double, triple = make_multiplier(2), make_multiplier(3)


@workflow
async def factory_workflow(ctx: ExecutionContext[int]):
    return [await double(ctx.input), await triple(ctx.input)]


if __name__ == "__main__":
    first = cache_workflow.run([3, 4])
    print(f"first execution:  {first.output}  bodies run: {body_runs}")
    before = body_runs
    second = cache_workflow.run([3, 4])
    print(f"second execution: {second.output}  bodies run: {body_runs - before}")
    # the second execution still records each call (TASK_STARTED, TASK_COMPLETED)
    calls = [e.source_id for e in second.events if e.type.value == "TASK_COMPLETED"]
    print(f"recorded calls of the second execution: {calls}")
    print(f"second execution ran {body_runs - before} task bodies: {second.state.value}")
    print(f"tasks made by one factory: {factory_workflow.run(5).output}")
