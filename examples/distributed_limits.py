"""Distributed mode's limits, seen from a workflow: a value too large for the server fails its
task (once, catchable), and a secret's value is never recorded.

A server with a 256 KiB frame limit, one worker and a client run in one trio process (port 0).
The worker learns the limits in the session's ``welcome``: a task returning more than fits fails
where its value is encoded, with an error naming the task, the size and the limit, and the
workflow can catch it. A secret handed to a task is masked (``***``) in everything recorded, even
when the task returns it. Run: ``python examples/distributed_limits.py``.
"""

from __future__ import annotations

import functools
import os
import tempfile

import httpx
import trio

from flux import ExecutionContext, SerializationError, task, workflow


@task
async def export_rows(rows: int) -> str:
    return "id,name,amount\n" * rows


@task.with_options(secret_requests=["API_KEY"])
async def sign_in(secrets: dict) -> str:
    return f"signed in with {secrets['API_KEY']}"  # a careless task: the value is masked


@workflow
async def nightly(ctx: ExecutionContext[int]) -> dict:
    try:
        export = await export_rows(ctx.input)
        size = f"{len(export)} characters"
    except SerializationError as exc:  # the task failed once; the workflow decides
        size = f"too large: {exc}"
    return {"export": size, "session": await sign_in()}


async def main() -> None:
    from flux import Settings
    from flux.net.server import ServerSettings, serve_server
    from flux.net.worker import serve_worker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            db_path=os.path.join(tmp, "flux.db"),
            secret_key_file=os.path.join(tmp, "secret.key"),
        )
        server_settings = ServerSettings(port=0, max_frame_size=256 * 1024)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                functools.partial(serve_server, settings, server_settings)
            )
            await nursery.start(functools.partial(serve_worker, "example", address.url, 1))
            async with httpx.AsyncClient(base_url=address.url, timeout=30) as client:
                with open(__file__, "rb") as f:
                    await client.post("/workflows", files={"file": f})
                secret = {"name": "API_KEY", "value": "hunter2-0f1e2d"}
                await client.post("/admin/secrets", json=secret)
                small = (await client.post("/workflows/nightly/run/sync", json=100)).json()
                print("100 rows:", small["state"], small["output"]["export"])
                big = (await client.post("/workflows/nightly/run/sync", json=100_000)).json()
                print("100000 rows:", big["state"], big["output"]["export"])
                print("session:", big["output"]["session"])
                events = await client.get(
                    f"/executions/{big['execution_id']}", params={"detailed": "true"}
                )
                print("secret in the history:", secret["value"] in events.text)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
