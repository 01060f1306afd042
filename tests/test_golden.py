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
    with open(os.path.join(GOLDEN, name)) as f:
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
