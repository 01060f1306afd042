"""Move a store: a paused execution in a SQLite file, copied into another store, resumed there.

    python examples/store_copy.py                          # SQLite file -> another SQLite file
    python examples/store_copy.py postgresql://user:pass@host:5432/db   # -> PostgreSQL

The same as ``flux store copy FROM TO`` on the command line. The target must be empty; the
secrets stay encrypted with the source's key file, so both engines here use the same one.
"""

import os
import sys
import tempfile

import anyio

from flux import ExecutionContext, open_engine, task, workflow
from flux.runtime.settings import Settings
from flux.runtime.store_copy import copy_store_locations
from flux.tasks import pause


@task
async def reserve(item: str) -> str:
    print(f"  reserving {item} (runs once, before the move)")
    return f"reserved {item}"


@workflow
async def order(ctx: ExecutionContext[str]) -> str:
    reserved = await reserve(ctx.input)
    approver = await pause("approval")
    return f"{reserved}, approved by {approver}"


async def main() -> None:
    here = tempfile.mkdtemp(prefix="flux-copy-")
    key_file = os.path.join(here, "secret.key")
    source = os.path.join(here, "old.db")
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "new.db")

    def settings(store: str) -> Settings:
        return Settings.from_env(environ={}, store=store, secret_key_file=key_file)

    async with open_engine(settings(source)) as engine:
        await engine.secrets.set("WAREHOUSE_TOKEN", "tok-1234567890")
        paused = await order.arun("a lamp", engine=engine)
        print(f"in {os.path.basename(source)}: {paused.state.value}, id {paused.execution_id}")

    result = await copy_store_locations(source, target)
    print(f"copied {result.summary()}")

    async with open_engine(settings(target)) as engine:
        done = await engine.run(order, execution_id=paused.execution_id, resume_value="Grace")
        print(f"resumed in the copy: {done.state.value} {done.output}")
        print(f"secret readable in the copy: {await engine.secrets.get('WAREHOUSE_TOKEN')}")


if __name__ == "__main__":
    anyio.run(main, backend="trio")
