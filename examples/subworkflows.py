"""Compose workflows: a parent calls child workflows with ``call`` (subworkflows).

    python examples/subworkflows.py

``await call(child, input)`` runs ``child`` as an execution of its own and returns its output.
The child's execution id is derived from the parent's id and the call id, so replaying the parent
(here: resuming it after a pause) returns the recorded result and never starts the child again.
A child that fails raises its error in the parent, where it can be caught.
"""

import anyio

from flux import ExecutionContext, call, open_engine, task, workflow
from flux.tasks import pause

child_runs = 0


@task
async def check_stock(item: str) -> int:
    global child_runs
    child_runs += 1
    if item == "unicorn":
        raise LookupError(f"no such item: {item}")
    return len(item)


@workflow
async def stock_level(ctx: ExecutionContext[str]):
    return await check_stock(ctx.input)


@workflow
async def restock(ctx: ExecutionContext[list[str]]):
    levels = {}
    for item in ctx.input:
        try:
            levels[item] = await call(stock_level, item)
        except LookupError as e:  # the child's failure, with its original type
            levels[item] = f"failed: {e}"
    await pause("confirm")
    return levels


if __name__ == "__main__":
    paused = restock.run(["apple", "unicorn"])
    for event in paused.events:
        if event.type.value.startswith("TASK_"):
            value = event.value.get("child_id") if event.type.value == "TASK_STARTED" else None
            detail = f"child execution {value}" if value else repr(event.value)
            print(f"  {event.type.value:16} {event.source_id:14} {detail}")

    async def child_states(ids: list[str]) -> list[str]:
        async with open_engine() as engine:  # the store named by FLUX_DB
            children = [await engine.get(i) for i in ids]
        return [f"{c.workflow_name} {c.state}" for c in children]

    ids = [e.value["child_id"] for e in paused.events if e.type.value == "TASK_STARTED"]
    print("children:", anyio.run(child_states, ids))

    done = restock.run(execution_id=paused.execution_id)  # replays: children are not run again
    print(f"child task bodies run: {child_runs}")
    print(done.state.value, done.output)
