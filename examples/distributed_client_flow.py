"""The client side of distributed mode: drive a running Flux server with ``FluxClient``.

Start a server and a worker, then run this script against the server (default
``http://127.0.0.1:8000``, or ``$FLUX_SERVER_URL``, or the first argument)::

    flux start server --db flux.db &
    flux start worker &
    python examples/distributed_client_flow.py http://127.0.0.1:8000

It registers this very file (its workflows below), then runs one workflow synchronously, one
asynchronously (polling its status), one with live events (Server-Sent Events), pauses and
resumes one, and cancels one while its task runs. The same steps from a shell::

    flux workflow register examples/distributed_client_flow.py
    flux workflow run greeter '"World"'
    flux workflow run greeter '"async"' --mode async
    flux workflow run greeter '"stream"' --mode stream
    flux workflow run approval '"Grace"'                  # PAUSED: prints the resume command
    flux workflow resume approval ID '"approved"'
    flux workflow run long_job 60 --mode async && flux workflow cancel ID

The client is anyio code: this script runs it on asyncio; the ``flux`` command runs it on trio.
"""

from __future__ import annotations

import os
import sys

import anyio

from flux import ExecutionContext, task, workflow
from flux.tasks import pause


@task
async def say_hello(name: str) -> str:
    return f"Hello, {name}"


@workflow
async def greeter(ctx: ExecutionContext[str]) -> str:
    return await say_hello(ctx.input)


@workflow
async def approval(ctx: ExecutionContext[str]) -> str:
    greeting = await say_hello(ctx.input)
    answer = await pause("approve")  # the worker is released until someone resumes
    return f"{greeting}: {answer}"


@task
async def long_step(seconds: float) -> str:
    await anyio.sleep(seconds)  # cancelled long before this ends
    return "finished"


@workflow
async def long_job(ctx: ExecutionContext[float]) -> str:
    return await long_step(ctx.input)


async def wait_for(flux, name: str, execution_id: str, states: set[str], events: int = 0) -> dict:
    """Poll an execution's status until it is in one of ``states`` (with that many events)."""
    with anyio.fail_after(60):
        while True:
            status = await flux.status(name, execution_id, detailed=events > 0)
            if status["state"] in states and len(status.get("events", ())) >= events:
                return status
            await anyio.sleep(0.05)


async def main(server_url: str) -> None:
    from flux.net.client import FluxClient, Progress, event_line

    async with FluxClient(server_url) as flux:
        registered = await flux.register(__file__)
        print("registered:", ", ".join(f"{w['name']} v{w['version']}" for w in registered))

        done = await flux.run("greeter", "World")  # sync: returns when it completes
        print("sync:", done["state"], done["output"])

        started = await flux.run("greeter", "async", mode="async")  # returns at once
        print("async:", started["execution_id"], started["state"])
        later = await wait_for(flux, "greeter", started["execution_id"], {"COMPLETED", "FAILED"})
        print("async:", later["state"], later["output"])

        progress = Progress()
        async for message in flux.stream("greeter", "stream"):  # one event per message
            progress.update(message)
            print("  stream |", event_line(message))
        print("stream:", progress.state, progress.output)

        paused = await flux.run("approval", "Grace")  # sync returns on a pause, too
        print("pause:", paused["state"])
        resumed = await flux.resume("approval", paused["execution_id"], "approved", wait=True)
        print("resume:", resumed["state"], resumed["output"])

        job = await flux.run("long_job", 60, mode="async")
        await wait_for(flux, "long_job", job["execution_id"], {"RUNNING"}, events=2)
        await flux.cancel(job["execution_id"])  # the worker stops the running task at once
        cancelled = await wait_for(
            flux, "long_job", job["execution_id"], {"CANCELLED", "COMPLETED", "FAILED"}
        )
        print("cancel:", cancelled["state"])

    print(
        f"client flow: sync {done['state']}, async {later['state']}, stream {progress.state}, "
        f"resume {resumed['state']}, cancel {cancelled['state']}"
    )


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FLUX_SERVER_URL")
    anyio.run(main, url or "http://127.0.0.1:8000")
