"""The hello-world of Flux: one task, one workflow, run embedded (no server).

python examples/hello_world.py
"""

from flux import ExecutionContext, task, workflow


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def hello_world(ctx: ExecutionContext[str]):
    return await say_hello(ctx.input)


if __name__ == "__main__":
    result = hello_world.run("World")
    print(result.output)  # "Hello, World"
    print(f"execution {result.execution_id}: {result.state.value}")
    for event in result.events:
        print(f"  {event.id:>2} {event.type.value:20} {event.source_id:14} {event.value!r}")
