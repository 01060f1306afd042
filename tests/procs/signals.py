"""A process of the signal crash and race tests (tests/test_signals_procs.py).

``python -m tests.procs.signals ROLE DB EXECUTION_ID [ARGS...]``:

- ``start``: run ``collector`` (or ``crasher``) until it first waits, print its state;
- ``run``: run the execution until it ends or waits (waiting for a live runner), print state;
- ``recover N``: keep running it (a lease held by a live runner is waited for) until COMPLETED;
- ``send TOPIC FIRST COUNT``: send COUNT signals FIRST, FIRST+1, ... on TOPIC, one at a time.
"""

from __future__ import annotations

import os
import sys

import anyio

from flux import task, workflow
from flux.runtime.engine import open_engine
from flux.runtime.events import ExecutionState
from flux.tasks import receive

TOTAL = int(os.environ.get("SIGNALS_TOTAL", "20"))


@task
async def slow_step(marker: str) -> str:
    with open(marker, "a") as f:
        f.write("started\n")
    await anyio.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
    return "stepped"


@workflow
async def crasher(ctx):
    first = await receive("a")
    step = await slow_step(ctx.input)
    second = await receive("b")
    return [first, step, second]


@workflow
async def collector(ctx):
    return [await receive("n") for _ in range(TOTAL)]


WORKFLOWS = {"crasher": crasher, "collector": collector}


async def main(role: str, db: str, execution_id: str, *args: str) -> None:
    async with open_engine(db=db, lease_ttl=2.0, cancel_poll=0.2) as engine:
        if role == "start":
            wf = WORKFLOWS[args[0]]
            given = args[1] if len(args) > 1 else None
            ctx = await engine.run(wf, given, execution_id=execution_id)
            print(ctx.state.value, flush=True)
        elif role == "run":
            wf = WORKFLOWS[args[0]]
            ctx = await engine.run(wf, execution_id=execution_id, wait=True)
            print(ctx.state.value, flush=True)
        elif role == "recover":
            wf = WORKFLOWS[args[0]]
            while True:
                ctx = await engine.run(wf, execution_id=execution_id, wait=True)
                if ctx.state is ExecutionState.COMPLETED:
                    print("COMPLETED", flush=True)
                    return
                await anyio.sleep(0.01)
        elif role == "send":
            topic, first, count = args[0], int(args[1]), int(args[2])
            for n in range(first, first + count):
                await engine.send_signal(execution_id, topic, n)
            print("SENT", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:], backend="trio")
