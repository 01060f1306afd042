"""A file written for flux-core 0.2.7, run unchanged: its import paths, its error names, its
configuration, and a run() at the top level with no ``if __name__ == "__main__":`` guard.

    python examples/from_0_2_7.py              # runs itself, as under 0.2.7
    flux run examples/from_0_2_7.py '"Ann"'    # Flux skips the top-level run (one warning)
                                               # and runs the workflow with "Ann"

What differs on purpose (docs/migration.md): a task's own error reaches the workflow unwrapped,
so ``except ValueError:`` catches it; 0.2.7's ``ExecutionTimeoutError`` still catches a task's
timeout, since Flux's ``TaskTimeoutError`` is one.
"""

import anyio

from flux import ExecutionContext, task, workflow
from flux.config import Configuration
from flux.errors import ExecutionError, ExecutionTimeoutError


@task.with_options(timeout=0.05)
async def slow_lookup(name: str) -> str:
    await anyio.sleep(5)
    return f"{name} from the directory"


@task
async def check(name: str) -> str:
    if not name.strip():
        raise ValueError("empty name")
    return name


@task
async def greet(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def compat(ctx: ExecutionContext[str]):
    try:
        source = await slow_lookup(ctx.input)
    except ExecutionTimeoutError:  # 0.2.7's name for Flux's TaskTimeoutError
        source = "default"
    try:
        await check("  ")
        checked = "checked"
    except ValueError as e:  # the task's own error, not an ExecutionError around it
        checked = f"caught {e}"
    return f"{await greet(ctx.input)} ({source}, {checked})"


@workflow
async def always_late(ctx: ExecutionContext):
    return await slow_lookup("nobody")


settings = Configuration.get().settings
print(f"store {settings.database_url.startswith('sqlite:///')}, serializer {settings.serializer}")

ctx = compat.run("World")
print(ctx.output)

late = always_late.run()
if late.has_failed:  # under `flux run` this run was skipped: a context that never started
    error = late.output
    print(
        f"{late.state.value} {type(error).__name__} is an ExecutionError: "
        f"{isinstance(error, ExecutionError)}, inner_exception: {error.inner_exception}"
    )
