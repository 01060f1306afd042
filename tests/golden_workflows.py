"""Workflows whose recorded histories are kept in tests/golden/ (do not change their calls:
the golden tests prove that a change of calls is caught as nondeterminism)."""

from __future__ import annotations

from flux import ExecutionContext, task, workflow
from flux.tasks import parallel, pause

ran: list[str] = []


@task
async def reserve(item: str) -> str:
    ran.append(f"reserve:{item}")
    return f"reserved-{item}"


@task
async def charge(amount: int) -> dict:
    ran.append(f"charge:{amount}")
    return {"charged": amount}


@task
async def notify(who: str) -> str:
    ran.append(f"notify:{who}")
    return f"notified-{who}"


@workflow.with_options(name="golden_order")
async def golden_order(ctx: ExecutionContext[dict]):
    items = await parallel(*(reserve(i) for i in ctx.input["items"]))
    payment = await charge(ctx.input["amount"])
    approved = await pause("approval")
    note = await notify(ctx.input["customer"])
    return {"items": items, "payment": payment, "approved": approved, "note": note}


@workflow.with_options(name="golden_order")
async def golden_order_changed(ctx: ExecutionContext[dict]):
    """The same workflow after an incompatible edit: charge now comes before the reservations."""
    payment = await charge(ctx.input["amount"])
    items = await parallel(*(reserve(i) for i in ctx.input["items"]))
    approved = await pause("approval")
    note = await notify(ctx.input["customer"])
    return {"items": items, "payment": payment, "approved": approved, "note": note}


@workflow.with_options(name="golden_order")
async def golden_order_compatible(ctx: ExecutionContext[dict]):
    """A compatible edit: only code after the recorded calls changed."""
    items = await parallel(*(reserve(i) for i in ctx.input["items"]))
    payment = await charge(ctx.input["amount"])
    approved = await pause("approval")
    note = await notify(ctx.input["customer"].upper())
    return {"items": items, "payment": payment, "approved": approved, "note": note, "v": 2}


# ---------------------------------------------------------------------------- a Graph
# tests/golden/golden_graph_*.json were recorded before Graph.run recorded GRAPH_STARTED.


@task
async def screen(applicant: dict) -> dict:
    ran.append(f"screen:{applicant['name']}")
    return {"name": applicant["name"], "score": applicant["score"]}


@task
async def approve(result: dict) -> str:
    ran.append(f"approve:{result['name']}")
    return f"approved-{result['name']}"


@task
async def decline(result: dict) -> str:
    ran.append(f"decline:{result['name']}")
    return f"declined-{result['name']}"


@task
async def archive(outcome: str) -> str:
    ran.append(f"archive:{outcome}")
    return f"archived-{outcome}"


def _good(r: dict) -> bool:
    return r["score"] >= 600


def _bad(r: dict) -> bool:
    return r["score"] < 600


def golden_graph():
    from flux.tasks import Graph

    return (
        Graph("review")
        .add_node("screen", screen)
        .add_node("approve", approve)
        .add_node("decline", decline)
        .add_node("archive", archive)
        .add_edge("screen", "approve", condition=_good)
        .add_edge("screen", "decline", condition=_bad)
        .add_edge("approve", "archive")
        .add_edge("decline", "archive")
        .start_with("screen")
        .end_with("archive")
    )


@workflow.with_options(name="golden_review")
async def golden_review(ctx: ExecutionContext[dict]):
    outcome = await golden_graph()(ctx.input)
    signed = await pause("sign")
    return {"outcome": outcome, "signed": signed}
