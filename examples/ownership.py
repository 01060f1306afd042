"""One runner per execution: two processes racing on one execution id, and a saga that a lost
lease cannot trick into compensating.

    python examples/ownership.py

1. This script starts a second copy of itself that runs execution "order-42" (a slow payment).
2. Meanwhile this process tries to run the same id: it is refused with ExecutionLeasedError,
   naming the process that holds the lease; it then waits for it (``wait=True``) and gets the
   finished execution, whose tasks ran once, in the other process.
3. ``except Exception`` in the saga never sees a stop (lease lost, nondeterminism, store
   faults): those are not failures of the workflow, so it never compensates for them.
"""

import os
import subprocess
import sys

import anyio

from flux import ExecutionContext, task, workflow
from flux.errors import ExecutionLeasedError


@task
async def reserve(order: int) -> str:
    print(f"[pid {os.getpid()}] reserving stock for order {order}", flush=True)
    return "reserved"


@task
async def pay(order: int) -> str:
    print(f"[pid {os.getpid()}] charging order {order}", flush=True)
    await anyio.sleep(2)
    return "paid"


@task
async def release_stock(order: int) -> str:
    print(f"[pid {os.getpid()}] releasing stock of order {order}", flush=True)
    return "released"


@workflow
async def checkout(ctx: ExecutionContext[int]):
    steps = [await reserve(ctx.input)]
    try:
        steps.append(await pay(ctx.input))
    except Exception:  # a payment that failed; never a stop of this run
        steps.append(await release_stock(ctx.input))
    return steps


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        checkout.run(42, execution_id="order-42")
        sys.exit(0)
    child = subprocess.Popen(
        [sys.executable, __file__, "--child"], stdout=subprocess.PIPE, text=True
    )
    print(child.stdout.readline(), end="")  # the other process has claimed order-42
    try:
        checkout.run(42, execution_id="order-42")
    except ExecutionLeasedError as e:
        print("refused:", str(e).split(";")[0])
    done = checkout.run(42, execution_id="order-42", wait=True)
    print(child.stdout.read(), end="")
    child.wait()
    print(done.state.value, done.output)
