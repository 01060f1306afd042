"""Task logs: what task bodies print and log is kept with the execution.

    python examples/task_logs.py

Inside a task body, ``print`` and ``logging`` go where they always went (your terminal, your
handlers) and are also captured as lines of the execution, tagged with the call id and the
attempt that wrote them, so two tasks running in parallel never mix. Read them back with
``await engine.logs(execution_id)``, ``flux executions logs ID [--follow]``, the HTTP API
(``GET /executions/{id}/logs``) or the console. Each execution keeps at most ``log_limit``
bytes (FLUX_LOG_LIMIT, 1 MiB by default); what is cut past it is counted in one marker line.
"""

import logging
import sys

import anyio

from flux import ExecutionContext, task, workflow
from flux.runtime.engine import open_engine
from flux.tasks import parallel

log = logging.getLogger("shop")
attempts = 0


@task
async def fetch_prices(region: str) -> int:
    for step in ("connecting", "reading", "done"):
        print(f"{region}: {step}")
        await anyio.sleep(0.01)  # the other region prints meanwhile
    log.info("prices of %s fetched", region)
    return len(region)


@task
def crunch(total: int) -> int:
    # a sync task body runs in a thread: still captured, still its own call
    log.warning("crunching %d rows in a thread", total)
    return total * 2


@task.with_options(retry_max_attempts=1, retry_delay=0.01)
async def flaky_upload() -> str:
    global attempts
    attempts += 1
    print(f"upload attempt {attempts}")
    if attempts == 1:
        try:
            raise ConnectionError("the bucket went away")
        except ConnectionError:
            log.exception("upload failed")
            raise
    return "uploaded"


@task
async def chatty() -> None:
    for i in range(100):
        print(f"noise {i:03d} " + "x" * 40)


@workflow
async def report(ctx: ExecutionContext):
    eu, us = await parallel(fetch_prices("eu"), fetch_prices("us"))
    doubled = await crunch(eu + us)
    return [doubled, await flaky_upload()]


@workflow.with_options(log_limit=1000)
async def noisy(ctx: ExecutionContext):
    await chatty()


async def main() -> None:
    async with open_engine() as engine:
        ctx = await report.arun(engine=engine)
        print("---", ctx.state.value, ctx.output)
        for line in await engine.logs(ctx.execution_id):
            first = line.message.splitlines()[0]
            print(f"  {line.seq:2} {line.call_id:28} #{line.attempt} {line.level:7} {first}")
        ctx = await noisy.arun(engine=engine)
        lines = await engine.logs(ctx.execution_id)
        print("--- noisy kept", len(lines) - 1, "lines; last:", lines[-1].message)


if __name__ == "__main__":
    # your own logging set-up keeps working: records of task bodies reach it as before
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[own handler] %(message)s")
    anyio.run(main, backend="trio")
