"""Golden histories recorded by an earlier run, replayed against the current code."""

from __future__ import annotations

import json
import os

import pytest

from flux import ExecutionState, NondeterminismError, open_engine
from flux.runtime import codec
from flux.runtime.store import ExecutionRecord, StoredEvent, Write

from . import golden_workflows as gw

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


async def load_golden(engine, name: str) -> dict:
    with open(os.path.join(GOLDEN, name)) as f:  # (an absolute name is used as is)
        doc = json.load(f)
    record = ExecutionRecord(
        execution_id=doc["execution_id"],
        workflow_name=doc["workflow_name"],
        input=codec.encode(doc["input"]),
        state=ExecutionState(doc["state"]),
        lease_epoch=1,
    )
    events = [
        StoredEvent(
            doc["execution_id"],
            e["seq"],
            e["type"],
            e["call_id"],
            e["name"],
            codec.encode(e["value"]),
            e["time"],
        )
        for e in doc["events"]
    ]
    await engine.store.commit(Write(doc["execution_id"], events, insert=record))
    return doc


@pytest.fixture(autouse=True)
def _clear():
    gw.ran.clear()


@pytest.mark.trio
async def test_golden_history_resumes_with_the_original_code():
    async with open_engine() as engine:
        doc = await load_golden(engine, "golden_order_paused.json")
        ctx = await gw.golden_order.arun(
            execution_id=doc["execution_id"], resume_value="yes", engine=engine
        )
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == {
        "items": ["reserved-apple", "reserved-pear"],
        "payment": {"charged": 42},
        "approved": "yes",
        "note": "notified-ada",
    }
    assert gw.ran == ["notify:ada"]  # everything before the pause came from the history


@pytest.mark.trio
async def test_golden_history_against_changed_code_is_nondeterminism():
    async with open_engine() as engine:
        doc = await load_golden(engine, "golden_order_paused.json")
        with pytest.raises(NondeterminismError) as info:
            await gw.golden_order_changed.arun(
                execution_id=doc["execution_id"], resume_value="yes", engine=engine
            )
        record = await engine.store.get_execution(doc["execution_id"])
        events = await engine.store.load_events(doc["execution_id"])
    message = str(info.value)
    assert "parallel#0" in message or "charge" in message
    assert "recorded" in message and "current" in message
    assert gw.ran == []  # stopped before running any body
    # the stored history is untouched apart from the resume request
    assert [e.type for e in events[: len(doc["events"])]] == [e["type"] for e in doc["events"]]
    assert record.state is not ExecutionState.FAILED


@pytest.mark.trio
async def test_golden_history_with_a_compatible_change():
    async with open_engine() as engine:
        doc = await load_golden(engine, "golden_order_paused.json")
        ctx = await gw.golden_order_compatible.arun(
            execution_id=doc["execution_id"], resume_value=True, engine=engine
        )
    assert ctx.output["note"] == "notified-ADA" and ctx.output["v"] == 2
    assert gw.ran == ["notify:ADA"]


@pytest.mark.trio
async def test_golden_graph_history_from_before_graph_shapes_replays_unchanged():
    """A Graph's history recorded before GRAPH_STARTED existed: resuming it replays the graph's
    nodes (none runs again) and records no GRAPH_STARTED into the old history."""
    async with open_engine() as engine:
        doc = await load_golden(engine, "golden_graph_paused.json")
        assert "GRAPH_STARTED" not in [e["type"] for e in doc["events"]]
        ctx = await gw.golden_review.arun(
            execution_id=doc["execution_id"], resume_value="ok", engine=engine
        )
        events = await engine.store.load_events(doc["execution_id"])
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == {"outcome": "archived-approved-ada", "signed": "ok"}
    assert gw.ran == []
    assert "GRAPH_STARTED" not in [e.type for e in events]


@pytest.mark.trio
async def test_golden_graph_history_crashed_midway_recovers_without_a_shape():
    """The same old history cut inside the graph (a crash after screen completed, approve
    started): the recovery runs approve and archive only, and adds no GRAPH_STARTED."""
    with open(os.path.join(GOLDEN, "golden_graph_paused.json")) as f:
        doc = json.load(f)
    doc["events"] = doc["events"][:4]
    doc["state"] = "RUNNING"
    doc["execution_id"] = "golden-review-midway"
    path = os.path.join(os.environ["FLUX_DB"] + ".golden.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    async with open_engine() as engine:
        await load_golden(engine, path)
        ctx = await gw.golden_review.arun(execution_id=doc["execution_id"], engine=engine)
        events = await engine.store.load_events(doc["execution_id"])
    assert ctx.state is ExecutionState.PAUSED
    assert gw.ran == ["approve:ada", "archive:approved-ada"]
    assert "GRAPH_STARTED" not in [e.type for e in events]


@pytest.mark.trio
async def test_a_new_graph_run_records_its_shape_once():
    async with open_engine() as engine:
        ctx = await gw.golden_review.arun({"name": "bob", "score": 100}, engine=engine)
        assert ctx.state is ExecutionState.PAUSED
        done = await gw.golden_review.arun(
            execution_id=ctx.execution_id, resume_value="ok", engine=engine
        )
    assert done.output == {"outcome": "archived-declined-bob", "signed": "ok"}
    shapes = [e for e in done.events if e.type.value == "GRAPH_STARTED"]
    assert len(shapes) == 1  # not again on the resume's replay
    assert shapes[0].source_id == "review#0" and shapes[0].name == "review"
    assert shapes[0].value == {
        "nodes": [
            {"name": "screen", "task": "screen", "call_id": "review#0/screen#0"},
            {"name": "approve", "task": "approve", "call_id": "review#0/approve#1"},
            {"name": "decline", "task": "decline", "call_id": "review#0/decline#2"},
            {"name": "archive", "task": "archive", "call_id": "review#0/archive#3"},
        ],
        "edges": [
            {"from": "screen", "to": "approve", "condition": "_good"},
            {"from": "screen", "to": "decline", "condition": "_bad"},
            {"from": "approve", "to": "archive", "condition": None},
            {"from": "decline", "to": "archive", "condition": None},
        ],
        "start": "screen",
        "end": "archive",
    }
    # it comes first, before any node's call
    types = [e.type.value for e in done.events]
    assert types.index("GRAPH_STARTED") < types.index("TASK_STARTED")
