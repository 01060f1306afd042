"""The HTTP API's typed models: what the server answers, what the client returns, what the
OpenAPI document describes and what the console shows are the same classes
(``flux.net.models``).

This script starts a server and a worker in this process on 127.0.0.1 (port 0, a temporary
store), registers this file and runs ``checkout`` through ``FluxClient``. The answer is an
``Execution``: typed attributes (``state`` an ``ExecutionState``, ``events`` a list of
``Event``) and, at the same time, the read-only dict of the JSON the server sent
(``done["state"]``, ``json.dumps(done)``). The OpenAPI schema of ``Event`` is generated from the
model, and every answer validates against it. Run: ``python examples/api_models.py``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import trio

from flux import ExecutionContext, task, workflow


@task
async def price(item: str) -> int:
    return {"lamp": 40, "desk": 120}.get(item, 0)


@workflow
async def checkout(ctx: ExecutionContext[list[str]]) -> dict:
    prices = [await price(item) for item in ctx.input]
    return {"items": len(prices), "total": sum(prices)}


async def main() -> None:
    from flux import ExecutionState, Settings
    from flux.net.client import FluxClient
    from flux.net.models import Event, Execution, to_json
    from flux.net.models_schema import schema_of, validate
    from flux.net.server import ServerSettings, serve_server
    from flux.net.worker import serve_worker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(db_path=os.path.join(tmp, "flux.db"))
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                functools.partial(serve_server, settings, ServerSettings(port=0))
            )
            await nursery.start(functools.partial(serve_worker, "example", address.url, 1))
            async with FluxClient(address.url) as flux:
                await flux.register(__file__)
                done = await flux.run("checkout", ["lamp", "desk"], detailed=True)
                assert isinstance(done, Execution) and done.state is ExecutionState.COMPLETED
                print("typed:", done.state.name, done.output["total"], len(done.events), "events")
                print("as JSON:", done["state"], json.dumps(done["output"]))
                first: Event = done.events[0]
                print("first event:", first.id, first.type, first.source_id)
                schema = schema_of(Event)
                print("Event schema requires:", ", ".join(schema["required"]))
                spec = (await flux.http.get("/openapi.json")).json()
                schemas = spec["components"]["schemas"]
                problems = validate(to_json(done), schemas["Execution"], schemas)
                print("the answer matches its OpenAPI schema:", not problems)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
