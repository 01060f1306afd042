"""A process for the ownership tests: runs one workflow on the store named by FLUX_DB.

    python -m tests.procs.owners WORKFLOW EXECUTION_ID [INPUT_JSON] [--wait] [--resume JSON]

Every task body appends ``<pid> <event> <key>`` to the file named by FLUX_TEST_LOG (``start``
when it begins, ``end`` when it returns), so a test can tell which process ran what. Prints one
JSON line: the final state and output, or the error's type and message (exit 3 then).
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio

from flux import ExecutionContext, task, workflow
from flux.tasks import parallel, pause


def log(event: str, key: str) -> None:
    path = os.environ["FLUX_TEST_LOG"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {event} {key}\n".encode())
    finally:
        os.close(fd)


@task
async def step(key: str, seconds: float = 0.0) -> str:
    log("start", key)
    if seconds:
        await anyio.sleep(seconds)
    log("end", key)
    return key


@task
async def compensate(key: str) -> str:
    log("start", f"compensate:{key}")
    return f"compensated:{key}"


async def _undo(key: str, seconds: float = 0.0) -> None:
    log("start", f"rollback:{key}")


@task.with_options(rollback=_undo)
async def reversible(key: str, seconds: float = 0.0) -> str:
    log("start", key)
    await anyio.sleep(seconds)
    log("end", key)
    return key


@workflow
async def chain(ctx: ExecutionContext):
    n, seconds = ctx.input
    return [await step(f"s{i}", seconds) for i in range(n)]


@workflow
async def saga(ctx: ExecutionContext):
    seconds = ctx.input
    done = [await step("book", 0.0)]
    try:
        done.append(await step("pay", seconds))
    except Exception:  # a lost lease must never land here
        done.append(await compensate("pay"))
    done.append(await step("ship", 0.0))
    return done


@workflow
async def fan(ctx: ExecutionContext):
    seconds = ctx.input
    return await parallel(*(reversible(f"r{i}", seconds) for i in range(3)))


@workflow
async def approval(ctx: ExecutionContext):
    value = await pause("approve")
    return await step(f"work:{value}")


WORKFLOWS = {w.name: w for w in (chain, saga, fan, approval)}


def main(argv: list[str]) -> int:
    name, execution_id = argv[0], argv[1]
    rest = argv[2:]
    wait = "--wait" in rest
    rest = [a for a in rest if a != "--wait"]
    resume = None
    if "--resume" in rest:
        i = rest.index("--resume")
        resume = json.loads(rest[i + 1])
        rest = rest[:i] + rest[i + 2 :]
    input_ = json.loads(rest[0]) if rest else None
    go = os.environ.get("FLUX_TEST_GO")
    while go and not os.path.exists(go):  # start together with the other processes
        time.sleep(0.002)
    wf = WORKFLOWS[name]
    try:
        if resume is not None:
            ctx = wf.run(execution_id=execution_id, resume_value=resume, wait=wait)
        else:
            ctx = wf.run(input_, execution_id=execution_id, wait=wait)
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        return 3
    print(json.dumps({"state": ctx.state.value, "output": ctx.output}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
