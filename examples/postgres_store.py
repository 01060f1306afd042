"""Two engines, one history in PostgreSQL: what application processes on several machines share.

    pip install 'flux-core[postgres]'
    FLUX_STORE=postgresql://user:password@host:5432/database python examples/postgres_store.py

The first engine starts an order workflow, which pauses for an approval; the second engine, with
its own connection pool as another process or machine would have, finds the paused execution in
the shared store and resumes it; the first one then reads the finished execution back, unchanged.
"""

import os
import sys

import anyio

from flux import ExecutionContext, open_engine, task, workflow
from flux.tasks import pause


@task
async def reserve(item: str) -> str:
    return f"reserved {item}"


@workflow
async def order(ctx: ExecutionContext[str]) -> str:
    reserved = await reserve(ctx.input)
    approver = await pause("approval")
    return f"{reserved}, approved by {approver}"


async def main(url: str) -> None:
    async with open_engine(store=url) as here, open_engine(store=url) as elsewhere:
        paused = await order.arun("a book", engine=here)
        print("first engine:", paused.state.value)
        done = await order.arun(
            execution_id=paused.execution_id, resume_value="Grace", engine=elsewhere
        )
        print("second engine:", done.state.value, done.output)
        again = await order.arun(execution_id=paused.execution_id, engine=here)
        print("first engine reads it back:", again.state.value, again.output == done.output)


if __name__ == "__main__":
    store = os.environ.get("FLUX_STORE", "")
    if not store.startswith(("postgresql://", "postgres://")):
        sys.exit("set FLUX_STORE=postgresql://user:password@host:port/database to run this")
    anyio.run(main, store, backend="trio")
