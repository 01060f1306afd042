"""Cancel an embedded execution by cancelling the scope around ``await wf.arun(...)``.

    python examples/cancellation.py

An application that embeds Flux cancels an execution the way it cancels anything in anyio: by
cancelling an enclosing cancel scope (here ``anyio.move_on_after``). The running tasks are
cancelled and record TASK_CANCELLED, each one's rollback runs first in a shielded scope, and the
execution ends CANCELLED (WORKFLOW_CANCELLED). Tasks that had already completed keep their
results; their rollbacks do not run.

``arun`` does not return when cancelled (the cancellation propagates, as it should), so the
script chooses the execution id itself and reads the final state back from the store with
``open_engine()``. (From a shell: ``flux executions cancel ID``.)
"""

import uuid

import anyio

from flux import ExecutionContext, open_engine, task, workflow
from flux.tasks import parallel

rolled_back: list[str] = []


@task
async def reserve_room(guest: str) -> str:
    return f"room for {guest}"


async def undo_charge(guest: str, amount: int) -> None:
    rolled_back.append(f"refund {amount} to {guest}")


@task.with_options(rollback=undo_charge)
async def charge_card(guest: str, amount: int) -> str:
    await anyio.sleep(10)  # a slow payment provider
    return "charged"


async def undo_email(guest: str) -> None:
    rolled_back.append(f"recall email to {guest}")


@task.with_options(rollback=undo_email)
async def send_email(guest: str) -> str:
    await anyio.sleep(10)
    return "sent"


@workflow
async def book_stay(ctx: ExecutionContext[str]):
    room = await reserve_room(ctx.input)
    await parallel(charge_card(ctx.input, 120), send_email(ctx.input))
    return room


async def main() -> None:
    execution_id = uuid.uuid4().hex
    with anyio.move_on_after(0.2):  # the application gives up after 0.2 s
        await book_stay.arun("Ada", execution_id=execution_id)
        print("not reached: the execution was cancelled")

    async with open_engine() as engine:  # the store named by FLUX_DB
        ctx = await engine.get(execution_id)
    for event in ctx.events:
        print(f"  {event.type.value:24} {event.source_id}")
    print("rollbacks run:", sorted(rolled_back))
    print(ctx.state.value, ctx.is_cancelled)


if __name__ == "__main__":
    anyio.run(main)  # asyncio; anyio.run(main, backend="trio") works the same
