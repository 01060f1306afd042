"""Retry a failed execution without redoing its work.

An order is reserved, charged and shipped. The payment provider is down, so ``charge`` fails
(after its own retries) and the execution FAILED, with the stock already reserved. Once the
provider is back, ``engine.retry(id, wf)`` makes a NEW execution whose history is the failed
one's up to the failure: ``reserve`` is not run again (its recorded outcome is replayed),
``charge`` runs again and succeeds, ``ship`` runs. The failed execution stays as it was, linked
to its retry both ways.

On a server the same is ``flux executions retry ID --server-url URL`` or
``POST /executions/{id}/retry``.

Run it: ``python examples/retry_failed.py``
"""

from __future__ import annotations

import anyio

from flux import ExecutionContext, open_engine, task, workflow

PROVIDER = {"up": False}
RAN: list[str] = []


@task
async def reserve(order: dict) -> str:
    RAN.append("reserve")
    return f"reserved {order['item']}"


@task.with_options(retry_max_attempts=2, retry_delay=0.01)
async def charge(order: dict) -> str:
    RAN.append("charge")
    if not PROVIDER["up"]:
        raise ConnectionError("payment provider unreachable")
    return f"charged {order['amount']} EUR"


@task
async def ship(order: dict) -> str:
    RAN.append("ship")
    return f"shipped to {order['to']}"


@workflow
async def order(ctx: ExecutionContext[dict]):
    return [await reserve(ctx.input), await charge(ctx.input), await ship(ctx.input)]


async def main() -> None:
    async with open_engine(db="retry_failed.db") as engine:
        failed = await engine.run(order, {"item": "lamp", "amount": 42, "to": "Grace"})
        print(f"first run: {failed.state.value} ({failed.output}), ran {RAN}")

        PROVIDER["up"] = True
        RAN.clear()
        retried = await engine.retry(failed.execution_id, order)
        print(f"retry: {retried.state.value} {retried.output}, ran {RAN}")

        original = await engine.get(failed.execution_id)
        print(
            f"linked both ways: {original.retried_by == [retried.execution_id]} "
            f"and {retried.retry_of == failed.execution_id}"
        )


if __name__ == "__main__":
    anyio.run(main)
