"""The DAG of each ``Graph`` an execution ran, laid out for the execution page's SVG.

A graph records its shape when it starts (a ``GRAPH_STARTED`` event: nodes with their call
ids, edges with their conditions' names, start and end; see flux.runtime.graph). Each node's
state comes from its call's events:

- ``running`` (TASK_STARTED, no outcome yet), ``completed``, ``failed``, ``cancelled`` (a
  sibling failed), ``paused``;
- ``skipped``: the node never ran and cannot any more: every upstream of it was skipped, or the
  graph is over (its end node has an outcome, the execution moved on past the graph, or it
  settled) and ended without a failure;
- ``pending``: the node has not run yet (or never will, in a graph that failed).

Layout: a node's column is its longest path from the start node (so every edge points right),
its row its place among the nodes of that column in definition order. No I/O here: the caller
hands in the events (only the GRAPH_STARTED values are decoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from flux.runtime import codec
from flux.runtime.errors import SerializationError
from flux.runtime.records import StoredEvent

__all__ = ["Dag", "DagEdge", "DagNode", "build_dags"]

#: node box and spacing, in SVG user units
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 44, 70, 22, 12
#: the most nodes a drawn graph may have (bigger ones are listed, not drawn)
MAX_NODES = 200

_OUTCOMES = {
    "TASK_COMPLETED": "completed",
    "TASK_FAILED": "failed",
    "TASK_CANCELLED": "cancelled",
    "TASK_RESUMED": "running",
}


@attrs.define
class DagNode:
    name: str
    task: str
    call_id: str
    column: int = 0
    row: int = 0
    state: str = "pending"
    x: float = 0.0
    y: float = 0.0

    @property
    def cx(self) -> float:
        return self.x + NODE_W / 2


@attrs.define
class DagEdge:
    upstream: str
    downstream: str
    condition: str | None
    #: SVG path from the upstream's right side to the downstream's left side
    path: str = ""
    label_x: float = 0.0
    label_y: float = 0.0
    #: taken (upstream done, downstream ran), not taken (downstream skipped), or open
    state: str = "open"


@attrs.define
class Dag:
    graph_id: str
    name: str
    start: str
    end: str
    nodes: list[DagNode]
    edges: list[DagEdge]
    width: float = 0.0
    height: float = 0.0
    #: too big to draw: the page lists its nodes instead
    drawn: bool = True

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes:
            out[node.state] = out.get(node.state, 0) + 1
        return out


def _shape(event: StoredEvent) -> dict[str, Any] | None:
    if event.value is None:
        return None
    try:
        value = codec.decode(event.value, plain=True)
    except SerializationError:
        return None
    if not isinstance(value, dict):
        return None
    nodes, edges = value.get("nodes"), value.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return None
    return value


def _states(events: Sequence[StoredEvent], prefix: str) -> dict[str, str]:
    """The state of every call under ``prefix`` that has events."""
    out: dict[str, str] = {}
    for e in events:
        if not e.call_id.startswith(prefix) or not e.type.startswith("TASK_"):
            continue
        if e.type == "TASK_STARTED":
            out.setdefault(e.call_id, "running")
        elif e.type in _OUTCOMES:
            out[e.call_id] = _OUTCOMES[e.type]
        elif e.type == "TASK_PAUSED":
            out[e.call_id] = "paused"
    return out


def _moved_on(events: Sequence[StoredEvent], graph_id: str, after_seq: int) -> bool:
    """Did the execution record a call outside the graph after the graph's own events?"""
    prefix = graph_id + "/"
    return any(
        e.seq > after_seq and e.type.startswith("TASK_") and not e.call_id.startswith(prefix)
        for e in events
    )


def build_dags(events: Sequence[StoredEvent], settled: bool) -> list[Dag]:
    """One laid-out Dag per GRAPH_STARTED in ``events`` (``settled``: the execution ended)."""
    dags: list[Dag] = []
    for e in events:
        if e.type != "GRAPH_STARTED":
            continue
        shape = _shape(e)
        if shape is not None:
            try:
                dags.append(_build(shape, e, events, settled))
            except (KeyError, TypeError, ValueError):
                continue  # a shape this console cannot read: no drawing, the events show it
    return dags


def _build(
    shape: dict[str, Any], started: StoredEvent, events: Sequence[StoredEvent], settled: bool
) -> Dag:
    graph_id = started.call_id
    nodes = [
        DagNode(str(n["name"]), str(n.get("task") or n["name"]), str(n["call_id"]))
        for n in shape["nodes"]
    ]
    by_name = {n.name: n for n in nodes}
    edges = [
        DagEdge(str(d["from"]), str(d["to"]), d.get("condition"))
        for d in shape["edges"]
        if d.get("from") in by_name and d.get("to") in by_name
    ]
    ups: dict[str, list[str]] = {n.name: [] for n in nodes}
    for edge in edges:
        ups[edge.downstream].append(edge.upstream)
    order = _topological(nodes, edges)
    prefix = graph_id + "/"
    states = _states(events, prefix)
    own = [ev.seq for ev in events if ev.call_id.startswith(prefix)]
    end = str(shape.get("end") or "")
    end_call = by_name[end].call_id if end in by_name else None
    failed = any(s in ("failed", "cancelled") for s in states.values())
    over = settled or (end_call is not None and states.get(end_call) == "completed")
    over = over or _moved_on(events, graph_id, max(own, default=started.seq))
    for name in order:
        node = by_name[name]
        if node.call_id in states:
            node.state = states[node.call_id]
        elif ups[name] and all(by_name[u].state == "skipped" for u in ups[name]):
            node.state = "skipped"
        elif over and not failed:
            node.state = "skipped"
        else:
            node.state = "pending"
    for edge in edges:
        up, down = by_name[edge.upstream], by_name[edge.downstream]
        if up.state == "completed" and down.state not in ("pending", "skipped"):
            edge.state = "taken"
        elif down.state == "skipped" or (up.state == "completed" and over and not failed):
            edge.state = "not-taken"
    dag = Dag(graph_id, started.name, str(shape.get("start") or ""), end, nodes, edges)
    if len(nodes) > MAX_NODES:
        dag.drawn = False
        return dag
    _layout(dag, order, ups)
    return dag


def _topological(nodes: list[DagNode], edges: list[DagEdge]) -> list[str]:
    """Node names in an order where every upstream comes first (definition order among
    equals); nodes on a cycle (a shape no Graph makes) come last."""
    incoming = {n.name: 0 for n in nodes}
    outs: dict[str, list[str]] = {n.name: [] for n in nodes}
    for edge in edges:
        incoming[edge.downstream] += 1
        outs[edge.upstream].append(edge.downstream)
    ready = [n.name for n in nodes if incoming[n.name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for down in outs[name]:
            incoming[down] -= 1
            if incoming[down] == 0:
                ready.append(down)
    order += [n.name for n in nodes if n.name not in order]
    return order


def _layout(dag: Dag, order: list[str], ups: dict[str, list[str]]) -> None:
    by_name = {n.name: n for n in dag.nodes}
    for name in order:
        node = by_name[name]
        node.column = max((by_name[u].column + 1 for u in ups[name]), default=0)
    rows: dict[int, int] = {}
    for node in dag.nodes:  # definition order within a column
        node.row = rows.get(node.column, 0)
        rows[node.column] = node.row + 1
    for node in dag.nodes:
        node.x = PAD + node.column * (NODE_W + GAP_X)
        node.y = PAD + node.row * (NODE_H + GAP_Y)
    for edge in dag.edges:
        up, down = by_name[edge.upstream], by_name[edge.downstream]
        x1, y1 = up.x + NODE_W, up.y + NODE_H / 2
        x2, y2 = down.x - 4, down.y + NODE_H / 2
        bend = max((x2 - x1) / 2, 20)
        edge.path = f"M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2:g},{y2:g}"
        edge.label_x, edge.label_y = (x1 + x2) / 2, (y1 + y2) / 2 - 4
    columns = max((n.column for n in dag.nodes), default=0) + 1
    dag.width = 2 * PAD + columns * NODE_W + (columns - 1) * GAP_X
    dag.height = 2 * PAD + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
