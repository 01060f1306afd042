"""The console's Retry button and a Graph's DAG, over HTTP (an in-process server and worker),
and the DAG's states computed from histories."""

from __future__ import annotations

import os
import re

import httpx
import pytest
import trio

from flux.net.console.dag import build_dags
from flux.runtime import codec
from flux.runtime.records import StoredEvent
from tests.conftest_net import start_live

#: a review graph whose ``check`` node fails while ``<log>.fail`` exists
GRAPH_SOURCE = """
import os

import anyio

from flux import task, workflow
from flux.tasks import Graph


def note(log, line):
    with open(log, "a") as f:
        f.write(line + "\\n")


@task
async def screen(a):
    note(a["log"], "screen")
    return a


@task
async def check(a):
    note(a["log"], "check")
    if os.path.exists(a["log"] + ".fail"):
        raise RuntimeError("the checker is down")
    await anyio.sleep(a.get("hold", 0))
    return a["score"]


@task
async def approve(score):
    return f"approved {score}"


@task
async def decline(score):
    return f"declined {score}"


def good(score):
    return score >= 600


def bad(score):
    return score < 600


@workflow
async def review(ctx):
    g = (
        Graph("review")
        .add_node("screen", screen)
        .add_node("check", check)
        .add_node("approve", approve)
        .add_node("decline", decline)
        .add_edge("screen", "check")
        .add_edge("check", "approve", condition=good)
        .add_edge("check", "decline", condition=bad)
        .start_with("screen")
        .end_with("approve")
    )
    return await g(ctx.input)
"""


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found
    return found.group(1)


def _nodes(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-node="([^"]+)" data-state="([^"]+)"', html))


async def _settle(c: httpx.AsyncClient, eid: str) -> dict:
    for _ in range(400):
        body = (await c.get(f"/executions/{eid}")).json()
        if body["state"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return body
        await trio.sleep(0.05)
    raise AssertionError(f"{eid} did not settle")


@pytest.mark.trio
async def test_console_retries_a_failed_graph_and_draws_its_dag(nursery, tmp_path):
    live = await start_live(nursery, tmp_path)
    log = str(tmp_path / "review.log")
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        files = {"file": ("review.py", GRAPH_SOURCE.encode())}
        assert (await c.post("/workflows", files=files)).status_code == 200
        open(log + ".fail", "w").close()
        r = await c.post("/workflows/review/run/sync", json={"log": log, "score": 700})
        failed = r.json()
        assert failed["state"] == "FAILED"
        eid = failed["execution_id"]

        page = await c.get(f"/ui/executions/{eid}")
        assert page.status_code == 200
        assert _nodes(page.text) == {
            "screen": "completed",
            "check": "failed",
            "approve": "pending",
            "decline": "pending",
        }
        assert 'class="dag-svg"' in page.text and ">good</text>" in page.text
        assert 'id="retry"' in page.text
        # the strict CSP holds on the page with the DAG: no inline style, handler or script
        assert "style=" not in page.text and not re.search(r"\son[a-z]+=", page.text)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)

        os.remove(log + ".fail")
        token = _csrf(page.text)
        r = await c.post(f"/ui/executions/{eid}/retry", data={"csrf": token})
        assert r.status_code == 303
        new_id = r.headers["location"].split("/ui/executions/")[1].split("?")[0]
        assert new_id != eid
        assert (await _settle(c, new_id))["output"] == "approved 700"
        with open(log) as f:
            assert f.read().split() == ["screen", "check", "check"]  # screen ran once

        page = await c.get(f"/ui/executions/{new_id}")
        assert f'id="retry-of" class="mono" href="/ui/executions/{eid}"' in page.text
        assert 'id="retry"' not in page.text  # it completed: nothing to retry
        assert _nodes(page.text) == {
            "screen": "completed",
            "check": "completed",
            "approve": "completed",
            "decline": "skipped",
        }
        original = await c.get(f"/ui/executions/{eid}")
        assert f'href="/ui/executions/{new_id}">{new_id}</a>' in original.text
        # a second retry while the first one stands (completed) is refused with a page
        r = await c.post(f"/ui/executions/{eid}/retry", data={"csrf": token})
        assert r.status_code == 409 and "already retried by" in r.text
        r = await c.post(f"/ui/executions/{new_id}/retry", data={"csrf": token})
        assert r.status_code == 409 and "not FAILED" in r.text
        r = await c.post("/ui/executions/nope/retry", data={"csrf": token})
        assert r.status_code == 404
        r = await c.post(f"/ui/executions/{eid}/retry", data={})
        assert r.status_code == 403  # no CSRF token: refused before anything happens


@pytest.mark.trio
async def test_the_dag_is_live_while_the_graph_runs(nursery, tmp_path):
    live = await start_live(nursery, tmp_path)
    log = str(tmp_path / "live.log")
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        files = {"file": ("review.py", GRAPH_SOURCE.encode())}
        assert (await c.post("/workflows", files=files)).status_code == 200
        body = {"log": log, "score": 100, "hold": 3}
        eid = (await c.post("/workflows/review/run/async", json=body)).json()["execution_id"]
        seen: dict[str, str] = {}
        for _ in range(200):
            part = await c.get(f"/ui/executions/{eid}/live")
            seen = _nodes(part.text)
            if seen.get("check") == "running":
                break
            await trio.sleep(0.02)
        assert seen == {
            "screen": "completed",
            "check": "running",
            "approve": "pending",
            "decline": "pending",
        }
        assert (await _settle(c, eid))["state"] == "COMPLETED"
        part = await c.get(f"/ui/executions/{eid}/live")
        # approve (the end node) was skipped: the graph returns None
        assert _nodes(part.text) == {
            "screen": "completed",
            "check": "completed",
            "approve": "skipped",
            "decline": "completed",
        }


def _ev(seq: int, type_: str, call_id: str, value=None) -> StoredEvent:
    data = None if value is None else codec.encode(value)
    return StoredEvent("e", seq, type_, call_id, call_id.split("/")[-1].split("#")[0], data, seq)


_SHAPE = {
    "nodes": [
        {"name": "a", "task": "a", "call_id": "g#0/a#0"},
        {"name": "b", "task": "b", "call_id": "g#0/b#1"},
        {"name": "c", "task": "c", "call_id": "g#0/c#2"},
        {"name": "d", "task": "d", "call_id": "g#0/d#3"},
    ],
    "edges": [
        {"from": "a", "to": "b", "condition": "yes"},
        {"from": "a", "to": "c", "condition": "no"},
        {"from": "c", "to": "d", "condition": None},
    ],
    "start": "a",
    "end": "b",
}


def test_dag_states_and_layout():
    events = [
        _ev(1, "WORKFLOW_STARTED", "wf"),
        _ev(2, "GRAPH_STARTED", "g#0", _SHAPE),
        _ev(3, "TASK_STARTED", "g#0/a#0", {"args": []}),
    ]
    (dag,) = build_dags(events, settled=False)
    assert [(n.name, n.state) for n in dag.nodes] == [
        ("a", "running"),
        ("b", "pending"),
        ("c", "pending"),
        ("d", "pending"),
    ]
    assert [(n.name, n.column, n.row) for n in dag.nodes] == [
        ("a", 0, 0),
        ("b", 1, 0),
        ("c", 1, 1),
        ("d", 2, 0),
    ]
    assert dag.width > 3 * 150 and all(e.path.startswith("M") for e in dag.edges)
    events += [
        _ev(4, "TASK_COMPLETED", "g#0/a#0", 1),
        _ev(5, "TASK_STARTED", "g#0/b#1", {"args": [1]}),
        _ev(6, "TASK_COMPLETED", "g#0/b#1", 2),
    ]
    (dag,) = build_dags(events, settled=False)  # the end node completed: the graph is over
    assert {n.name: n.state for n in dag.nodes} == {
        "a": "completed",
        "b": "completed",
        "c": "skipped",
        "d": "skipped",
    }
    assert [e.state for e in dag.edges] == ["taken", "not-taken", "not-taken"]
    # a failed graph: nodes that never ran stay pending (they were not skipped by a condition)
    failed = events[:4] + [
        _ev(5, "TASK_STARTED", "g#0/c#2", {"args": [1]}),
        _ev(6, "TASK_FAILED", "g#0/c#2", {"type": "E", "message": "m"}),
        _ev(7, "WORKFLOW_FAILED", "wf"),
    ]
    (dag,) = build_dags(failed, settled=True)
    assert {n.name: n.state for n in dag.nodes} == {
        "a": "completed",
        "b": "pending",
        "c": "failed",
        "d": "pending",
    }
    # hostile or broken shapes draw nothing and never raise
    junk = [
        _ev(1, "GRAPH_STARTED", "g#0", {"nodes": "x", "edges": []}),
        _ev(2, "GRAPH_STARTED", "g#1", [1, 2]),
        _ev(3, "GRAPH_STARTED", "g#2", {"nodes": [{"nope": 1}], "edges": []}),
    ]
    assert build_dags(junk, settled=True) == []
