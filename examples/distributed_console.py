"""Workflows to look at in the console (docs/console.md), and a script that fills a server.

    flux start server --db flux.db
    flux start worker w1 --server-url http://127.0.0.1:8000
    python examples/distributed_console.py http://127.0.0.1:8000
    # then open http://127.0.0.1:8000/ui

The script uploads this file and starts one execution of each workflow: an order that retries,
falls back, rolls back, sleeps, fans out, calls a child workflow and pauses for an approval
(resume it from its page); a workflow that fails with a traceback; one that runs for a minute
(cancel it). It prints the id of each execution it started. With ``FLUX_API_TOKEN`` set it sends
that token.
"""

from __future__ import annotations

import os
import sys

import anyio
import httpx

from flux import ExecutionContext, task, workflow
from flux.tasks import call, parallel, pause, sleep

_flaky_calls: dict[str, int] = {}


@task.with_options(retry_max_attempts=2, retry_delay=0.05)
async def fetch_stock(item: str) -> int:
    # fails the first time on each worker process, so the timeline shows a retry
    _flaky_calls[item] = _flaky_calls.get(item, 0) + 1
    print(f"asking the stock service about {item} (try {_flaky_calls[item]})")  # task logs
    if _flaky_calls[item] == 1:
        raise ConnectionError(f"the stock service timed out for {item}")
    return len(item)


@task.with_options(retry_max_attempts=1, retry_delay=0.05, fallback=lambda item: 0)
async def loyalty_points(item: str) -> int:
    raise RuntimeError("the loyalty service is down")


async def release(item: str) -> None:
    await anyio.sleep(0.02)


@task.with_options(rollback=release)
async def reserve_gift(item: str) -> str:
    await anyio.sleep(0.02)
    raise ValueError(f"no gift wrapping left for {item}")


@task
async def price(item: str) -> int:
    await anyio.sleep(0.05)
    return 10 * len(item)


@workflow
async def invoice(ctx: ExecutionContext[list]) -> int:
    return sum(ctx.input)


@workflow
async def order(ctx: ExecutionContext[dict]) -> dict:
    items = ctx.input["items"]
    stock = await fetch_stock(items[0])
    points = await loyalty_points(items[0])
    try:
        await reserve_gift(items[0])
    except ValueError:
        pass
    await sleep(0.1)
    prices = await parallel(*(price(i) for i in items))
    total = await call(invoice, prices)
    approved_by = await pause("approval")
    return {"total": total, "stock": stock, "points": points, "approved_by": approved_by}


class OutOfStock(Exception):
    pass


@task
async def check(item: str) -> None:
    raise OutOfStock(f"{item} is out of stock")


@workflow
async def doomed(ctx: ExecutionContext[str]) -> None:
    await check(ctx.input)


@task
async def tick(i: int) -> int:
    print(f"tick {i}")  # shown live in the execution's logs panel
    await anyio.sleep(0.5)
    return i


@workflow
async def long_haul(ctx: ExecutionContext[int]) -> int:
    done = 0
    for i in range(ctx.input or 120):
        done += await tick(i)
    return done


def fill(url: str, token: str | None = None) -> dict[str, str]:
    """Upload this file to the server at ``url`` and start one execution of each workflow."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        with open(__file__, "rb") as f:
            client.post("/workflows", files={"file": ("console.py", f)}).raise_for_status()
        started = {}
        for name, value in (
            ("order", {"items": ["tea", "scones", "jam"]}),
            ("doomed", "marmalade"),
            ("long_haul", 120),
        ):
            r = client.post(f"/workflows/{name}/run/async", json=value)
            r.raise_for_status()
            started[name] = r.json()["execution_id"]
        return started


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    for wf, eid in fill(target, os.environ.get("FLUX_API_TOKEN")).items():
        print(f"{wf}: {target}/ui/executions/{eid}")
