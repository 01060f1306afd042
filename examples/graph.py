"""A graph (DAG) of tasks with conditional edges: review a loan application.

                      +--> credit_check --+
    validate_input ---+                   +--> decide --(approved)--> notify
                      +--> fraud_check ---+          `-(rejected)--> explain

``credit_check`` and ``fraud_check`` run at the same time; ``decide`` gets
``{"credit_check": ..., "fraud_check": ...}``; exactly one of ``notify`` / ``explain`` runs (the
other is skipped), and ``summarize`` gets the output of whichever ran.

Run it: ``python examples/graph.py``
"""

from __future__ import annotations

from flux import ExecutionContext, task, workflow
from flux.tasks import Graph


@task
async def validate_input(application: dict) -> dict:
    if application["amount"] <= 0:
        raise ValueError(f"amount must be positive, got {application['amount']}")
    return application


@task
async def credit_check(application: dict) -> int:
    return min(850, 500 + application["income"] // 1000)


@task
async def fraud_check(application: dict) -> bool:
    return application["name"].lower() != "mallory"


@task
async def decide(checks: dict) -> dict:
    approved = checks["credit_check"] >= 650 and checks["fraud_check"]
    return {"approved": approved, "score": checks["credit_check"]}


@task
async def notify(decision: dict) -> str:
    return f"approved (score {decision['score']})"


@task
async def explain(decision: dict) -> str:
    return f"rejected (score {decision['score']})"


@task
async def summarize(message: str) -> str:
    return message.upper()


loan_review = (
    Graph("loan_review")
    .add_node("validate_input", validate_input)
    .add_node("credit_check", credit_check)
    .add_node("fraud_check", fraud_check)
    .add_node("decide", decide)
    .add_node("notify", notify)
    .add_node("explain", explain)
    .add_node("summarize", summarize)
    .add_edge("validate_input", "credit_check")
    .add_edge("validate_input", "fraud_check")
    .add_edge("credit_check", "decide")
    .add_edge("fraud_check", "decide")
    .add_edge("decide", "notify", condition=lambda d: d["approved"])
    .add_edge("decide", "explain", condition=lambda d: not d["approved"])
    .add_edge("notify", "summarize")
    .add_edge("explain", "summarize")
    .start_with("validate_input")
    .end_with("summarize")
)


@workflow
async def review(ctx: ExecutionContext[dict]) -> str:
    return await loan_review(ctx.input)


if __name__ == "__main__":
    for application in (
        {"name": "Alice", "amount": 10_000, "income": 240_000},
        {"name": "Bob", "amount": 5_000, "income": 60_000},
    ):
        ctx = review.run(application)
        print(f"{application['name']}: {ctx.state} -> {ctx.output}")
