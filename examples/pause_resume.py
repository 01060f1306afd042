"""Pause a workflow for a human decision, then resume it, possibly from another process.

    python examples/pause_resume.py            # starts, pauses, prints the execution id
    python examples/pause_resume.py ID yes     # resumes ID with the value "yes"

Run without arguments twice in a row to see the whole flow in one go.
"""

import sys

from flux import ExecutionContext, task, workflow
from flux.tasks import pause


@task
async def prepare_order(order: dict) -> dict:
    print(f"  preparing order {order['id']} (runs once)")
    return {**order, "total": sum(order["prices"])}


@task
async def ship(order: dict, approved_by: str) -> str:
    return f"order {order['id']} shipped, {order['total']} EUR, approved by {approved_by}"


@workflow
async def order_approval(ctx: ExecutionContext[dict]):
    order = await prepare_order(ctx.input)
    approver = await pause("manager_approval")
    if not approver:
        return f"order {order['id']} rejected"
    return await ship(order, approver)


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        value = sys.argv[2] if len(sys.argv) > 2 else None
        ctx = order_approval.run(execution_id=sys.argv[1], resume_value=value)
        print(ctx.state.value, ctx.output)
    else:
        ctx = order_approval.run({"id": 7, "prices": [10, 32]})
        print(f"{ctx.state.value}: waiting at 'manager_approval'; execution id {ctx.execution_id}")
        ctx = order_approval.run(execution_id=ctx.execution_id, resume_value="Grace")
        print(ctx.state.value, ctx.output)
