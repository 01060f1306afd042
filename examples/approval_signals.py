"""An expense approval that waits for a signal, with a timeout: the execution waits durably
(released from its runner, nothing held in memory) until a manager's decision arrives, and is
escalated if none comes within two days.

    python examples/approval_signals.py

Part 1 sends the decision as a signal (``engine.send_signal``; from a shell it would be
``flux executions signal ID decision '{"approved": true, "by": "Grace"}'``, or
``POST /executions/ID/signals/decision`` on a server). Part 2 lets the two days pass in virtual
time with ``flux.testing`` to show the timeout.
"""

from datetime import timedelta

import anyio

import flux.testing
from flux import ExecutionContext, task, workflow
from flux.errors import SignalTimeoutError
from flux.runtime.engine import open_engine
from flux.tasks import receive


@task
async def file_request(expense: dict) -> str:
    print(f"  filing expense {expense['id']} for {expense['amount']} EUR (runs once)")
    return f"EXP-{expense['id']}"


@task
async def pay(reference: str, approver: str) -> str:
    return f"{reference} paid, approved by {approver}"


@workflow
async def expense_approval(ctx: ExecutionContext[dict]):
    reference = await file_request(ctx.input)
    try:
        decision = await receive("decision", timeout=timedelta(days=2))
    except SignalTimeoutError:
        return f"{reference} escalated: no decision in 2 days"
    if not decision["approved"]:
        return f"{reference} rejected by {decision['by']}"
    return await pay(reference, decision["by"])


async def main() -> None:
    async with open_engine() as engine:
        ctx = await engine.run(expense_approval, {"id": 7, "amount": 420})
        print(f"{ctx.state.value}: waiting for 'decision'; execution id {ctx.execution_id}")
        await engine.send_signal(ctx.execution_id, "decision", {"approved": True, "by": "Grace"})
        for woken in await engine.wake_due():  # what a long-running app's loop does
            print(woken.state.value, woken.output)

    async with flux.testing.engine() as t:  # nobody answers: two days pass in no time
        ctx = await t.start(expense_approval, {"id": 8, "amount": 99})
        await t.advance(timedelta(days=2))
        done = await t.get(ctx.execution_id)
        print(done.state.value, done.output)


if __name__ == "__main__":
    anyio.run(main, backend="trio")
