"""Distributed mode in one script: a server, a worker, and a client, on 127.0.0.1.

In production the three are separate processes, usually on separate machines::

    flux start server --db flux.db                     # machine A
    flux start worker --server-url http://A:8000       # machines B, C, ...
    curl -F file=@examples/distributed_hello.py http://A:8000/workflows
    curl -X POST -d '"world"' http://A:8000/workflows/greet/run/sync

Here ``serve_server`` and ``serve_worker`` run in one trio process (port 0: any free port) and
``httpx`` plays the client. Run: ``python examples/distributed_hello.py``.
"""

from __future__ import annotations

import functools
import os
import tempfile

import httpx
import trio

from flux import ExecutionContext, task, workflow
from flux.tasks import call, pause


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def shout(ctx: ExecutionContext[str]) -> str:
    return ctx.input.upper()


@workflow
async def greet(ctx: ExecutionContext[str]) -> dict:
    greeting = await say_hello(ctx.input)
    loud = await call(shout, greeting)  # a subworkflow: an execution of its own
    approved = await pause("approve")  # the worker is released until someone resumes
    return {"greeting": greeting, "loud": loud, "approved": approved}


async def main() -> None:
    from flux import Settings
    from flux.net.server import ServerSettings, serve_server
    from flux.net.worker import serve_worker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(db_path=os.path.join(tmp, "flux.db"))
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                functools.partial(serve_server, settings, ServerSettings(port=0))
            )
            await nursery.start(functools.partial(serve_worker, "example", address.url, 1))
            async with httpx.AsyncClient(base_url=address.url, timeout=30) as client:
                with open(__file__, "rb") as f:
                    uploaded = await client.post("/workflows", files={"file": f})
                print("uploaded:", [w["name"] for w in uploaded.json()])
                paused = (await client.post("/workflows/greet/run/sync", json="world")).json()
                print("run/sync:", paused["state"])
                eid = paused["execution_id"]
                done = await client.post(f"/workflows/greet/resume/{eid}?wait=true", json=True)
                print("resumed:", done.json()["state"], done.json()["output"])
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
