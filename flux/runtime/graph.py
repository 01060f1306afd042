"""``Graph``: a DAG of tasks whose edges may carry conditions on the upstream output.

Build it once, run it like a task::

    g = (
        Graph("order")
        .add_node("check", check)
        .add_node("ship", ship)
        .add_node("refund", refund)
        .add_edge("check", "ship", condition=lambda r: r["ok"])
        .add_edge("check", "refund", condition=lambda r: not r["ok"])
        .start_with("check")
        .end_with("ship")
    )
    result = await g(order)          # or: await g.run(order)

Every structural mistake (duplicate node, dangling edge, cycle, unknown or misplaced start/end,
unreachable node) raises :class:`GraphError` while the graph is built or validated, never halfway
through a run.

Semantics of a run:

- the start node gets the graph's input; every other node runs once all its incoming edges are
  resolved and at least one of them is *active* (its condition, evaluated on the upstream's
  output, was true; an edge without condition is always active);
- a node's input is the output of its single active upstream, or ``{upstream: output}`` (in the
  order the edges were added) when several are active;
- a node with no active incoming edge is *skipped*: it does not run, records nothing, and all its
  outgoing edges are inactive (skipping propagates);
- all nodes whose inputs are ready run concurrently in one anyio task group; the first failure
  cancels the running siblings (they record TASK_CANCELLED) and raises from the graph;
- the graph returns the end node's output, or ``None`` if the end node was skipped.

Identity: the graph is a frame of its own, ``name#N`` (N its ordinal among the parent's calls),
and each node's call id is ``name#N/<node>#K``: the node's (escaped) name and K its place in the
graph's definition (``add_node`` order), never the order in which nodes happen to run.
Conditions are evaluated on the recorded (or replayed) outputs, so a replay takes exactly the
same branches without running completed nodes again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any

import anyio

from . import frames
from .errors import WorkflowError
from .events import ExecutionEventType as E
from .patterns import _unwrap
from .task import task

Condition = Callable[[Any], bool]

#: The start node is called without arguments when the graph is awaited without an input.
_NO_INPUT: Any = type("NoInput", (), {"__repr__": lambda self: "NO_INPUT"})()


class GraphError(WorkflowError, ValueError):
    """A graph is malformed: duplicate node, dangling edge, cycle, bad start/end, unreachable node.

    Raised while the graph is built (or by :meth:`Graph.validate`), never in the middle of a run.
    Also a ``ValueError``, so ``except ValueError`` catches it.
    """


class GraphCycleError(GraphError):
    """Adding an edge would close a cycle; ``cycle`` lists the nodes on it, first node repeated."""

    def __init__(self, message: str, cycle: list[str]):
        super().__init__(message)
        self.cycle = cycle


class Graph:
    """A directed acyclic graph of tasks, awaited like a task inside a workflow (or outside one)."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise GraphError(f"a graph needs a non-empty name, got {name!r}")
        self.name = name
        self._nodes: dict[str, task] = {}
        # upstream -> {downstream: condition}, downstream -> [upstream, ...] (insertion order)
        self._out: dict[str, dict[str, Condition | None]] = {}
        self._in: dict[str, list[str]] = {}
        self._start: str | None = None
        self._end: str | None = None
        self._valid = False

    # ------------------------------------------------------------------ building

    def add_node(self, name: str, node: task) -> Graph:
        """Add a node running ``node`` (a ``@task``); node names are unique in a graph."""
        if not isinstance(name, str) or not name:
            raise GraphError(f"graph {self.name!r}: a node needs a non-empty name, got {name!r}")
        if name in self._nodes:
            raise GraphError(f"graph {self.name!r}: duplicate node {name!r}")
        if not isinstance(node, task):
            raise GraphError(f"graph {self.name!r}: node {name!r} must be a @task, got {node!r}")
        self._nodes[name] = node
        self._out[name] = {}
        self._in[name] = []
        self._valid = False
        return self

    def add_edge(self, upstream: str, downstream: str, condition: Condition | None = None) -> Graph:
        """Add the edge ``upstream -> downstream``; with ``condition``, the edge is active only
        when ``condition(upstream_output)`` is true. Rejects unknown nodes and cycles now."""
        for role, node in (("upstream", upstream), ("downstream", downstream)):
            if node not in self._nodes:
                raise GraphError(
                    f"graph {self.name!r}: dangling edge {upstream!r} -> {downstream!r}: "
                    f"{role} node {node!r} does not exist (nodes: {self._known()})"
                )
        if condition is not None and not callable(condition):
            raise GraphError(
                f"graph {self.name!r}: the condition of edge {upstream!r} -> {downstream!r} "
                f"must be callable, got {condition!r}"
            )
        if downstream in self._out[upstream]:
            raise GraphError(f"graph {self.name!r}: duplicate edge {upstream!r} -> {downstream!r}")
        path = self._path(downstream, upstream)
        if path is not None:
            cycle = [upstream, *path]
            raise GraphCycleError(
                f"graph {self.name!r}: edge {upstream!r} -> {downstream!r} would close the cycle "
                + " -> ".join(cycle),
                cycle,
            )
        if downstream == self._start:
            raise GraphError(
                f"graph {self.name!r}: edge {upstream!r} -> {downstream!r} leads into the start "
                f"node {downstream!r}, which takes the graph's input and has no upstream"
            )
        if upstream == self._end:
            raise GraphError(
                f"graph {self.name!r}: edge {upstream!r} -> {downstream!r} leaves the end "
                f"node {upstream!r}, whose output is the graph's output"
            )
        self._out[upstream][downstream] = condition
        self._in[downstream].append(upstream)
        self._valid = False
        return self

    def start_with(self, name: str) -> Graph:
        """Make ``name`` the start node: it gets the graph's input."""
        self._check_known(name, "start")
        if self._start is not None and self._start != name:
            raise GraphError(
                f"graph {self.name!r}: start node already set to {self._start!r}, "
                f"cannot also start with {name!r}"
            )
        if self._in[name]:
            raise GraphError(
                f"graph {self.name!r}: start node {name!r} has incoming edges from "
                f"{', '.join(map(repr, self._in[name]))}; the start node takes the graph's input"
            )
        self._start = name
        self._valid = False
        return self

    def end_with(self, name: str) -> Graph:
        """Make ``name`` the end node: its output is the graph's output."""
        self._check_known(name, "end")
        if self._end is not None and self._end != name:
            raise GraphError(
                f"graph {self.name!r}: end node already set to {self._end!r}, "
                f"cannot also end with {name!r}"
            )
        if self._out[name]:
            raise GraphError(
                f"graph {self.name!r}: end node {name!r} has outgoing edges to "
                f"{', '.join(map(repr, self._out[name]))}; the end node's output is the "
                "graph's output"
            )
        self._end = name
        self._valid = False
        return self

    def validate(self) -> Graph:
        """Check what only the whole graph can tell: start and end set, every node reachable
        from the start. Runs on the first await as well (and again after any change)."""
        if self._valid:
            return self
        if self._start is None:
            raise GraphError(f"graph {self.name!r} has no start node: call start_with(name)")
        if self._end is None:
            raise GraphError(f"graph {self.name!r} has no end node: call end_with(name)")
        reached = {self._start}
        todo = [self._start]
        while todo:
            for down in self._out[todo.pop()]:
                if down not in reached:
                    reached.add(down)
                    todo.append(down)
        unreachable = [n for n in self._nodes if n not in reached]
        if unreachable:
            raise GraphError(
                f"graph {self.name!r}: node(s) {', '.join(map(repr, unreachable))} cannot be "
                f"reached from the start node {self._start!r}"
            )
        self._valid = True
        return self

    # ------------------------------------------------------------------ introspection

    @property
    def nodes(self) -> dict[str, task]:
        return dict(self._nodes)

    @property
    def edges(self) -> list[tuple[str, str, Condition | None]]:
        return [(u, d, c) for u, outs in self._out.items() for d, c in outs.items()]

    @property
    def start(self) -> str | None:
        return self._start

    @property
    def end(self) -> str | None:
        return self._end

    def __repr__(self) -> str:
        return f"<Graph {self.name} nodes={len(self._nodes)} edges={len(self.edges)}>"

    # ------------------------------------------------------------------ running

    def __call__(self, input: Any = _NO_INPUT) -> GraphCall:
        """An awaitable run of this graph on ``input``."""
        return GraphCall(self, input)

    async def run(self, input: Any = _NO_INPUT) -> Any:
        """Run the graph on ``input`` and return the end node's output (``None`` if skipped)."""
        self.validate()
        parent = frames.current()
        if parent is None:
            return await _Run(self, None, None).run(input)
        graph_id = parent.next_id(self.name)
        parent.execution.check_position(graph_id, self.name, concurrent=True)
        _record_shape(self, parent.execution, graph_id)
        held = parent.execution._release(parent)
        try:
            return await _Run(self, parent, graph_id).run(input)
        finally:
            parent.execution._acquire(held)

    # ------------------------------------------------------------------ helpers

    def _known(self) -> str:
        return ", ".join(map(repr, self._nodes)) or "none"

    def _check_known(self, name: str, role: str) -> None:
        if name not in self._nodes:
            raise GraphError(
                f"graph {self.name!r}: {role} node {name!r} does not exist (nodes: {self._known()})"
            )

    def _path(self, src: str, dst: str) -> list[str] | None:
        """A path ``src -> ... -> dst`` along existing edges (both ends included), or None."""
        if src == dst:
            return [src]
        parents: dict[str, str] = {}
        todo = [src]
        seen = {src}
        while todo:
            node = todo.pop(0)
            for down in self._out[node]:
                if down in seen:
                    continue
                parents[down] = node
                if down == dst:
                    path = [dst]
                    while path[-1] != src:
                        path.append(parents[path[-1]])
                    return path[::-1]
                seen.add(down)
                todo.append(down)
        return None


def shape(graph: Graph, graph_id: str) -> dict[str, Any]:
    """The graph's shape as GRAPH_STARTED records it: nodes (name, task, call id) in
    definition order, edges (from, to, the condition's name or None), start and end."""
    index = {n: k for k, n in enumerate(graph._nodes)}
    return {
        "nodes": [
            {
                "name": n,
                "task": t.name,
                "call_id": f"{graph_id}/{frames._escape(n)}#{index[n]}",
            }
            for n, t in graph._nodes.items()
        ],
        "edges": [
            {"from": u, "to": d, "condition": None if c is None else _condition_name(c)}
            for u, d, c in graph.edges
        ],
        "start": graph._start,
        "end": graph._end,
    }


def _condition_name(condition: Condition) -> str:
    name = getattr(condition, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        return "condition"
    return name


def _record_shape(graph: Graph, execution: Any, graph_id: str) -> None:
    """Record GRAPH_STARTED when this graph runs for the first time in this execution.

    Never on a replay: not when the history already has it, and not when the history holds
    calls of this graph without it (recorded before graphs recorded their shape), so old
    histories replay exactly as before. It is not a call (no TASK_ type), so replay's position
    rules and the retry's cut do not see it."""
    if execution.recorded_under(graph_id):
        return
    for e in execution.ctx.events:
        if e.type is E.GRAPH_STARTED and e.source_id == graph_id:
            return
    execution.record(E.GRAPH_STARTED, graph_id, graph.name, shape(graph, graph_id))


class GraphCall:
    """One pending run of a graph; awaiting it runs the graph (usable in ``parallel`` too)."""

    __slots__ = ("graph", "input", "_awaited")

    def __init__(self, graph: Graph, input: Any):
        self.graph = graph
        self.input = input
        self._awaited = False

    @property
    def __name__(self) -> str:
        """The graph's name (so ``parallel`` names this child after the graph)."""
        return self.graph.name

    def __await__(self) -> Generator[Any, None, Any]:
        if self._awaited:
            raise RuntimeError(f"this run of graph {self.graph.name!r} was already awaited")
        self._awaited = True
        return self.graph.run(self.input).__await__()

    def __repr__(self) -> str:
        return f"<run of graph {self.graph.name}>"


class _Run:
    """The state of one run of a graph: which edges are resolved, active, which nodes are done."""

    def __init__(self, graph: Graph, parent: frames.Frame | None, graph_id: str | None):
        self.graph = graph
        self.parent = parent
        self.graph_id = graph_id
        self.index = {n: k for k, n in enumerate(graph._nodes)}
        self.remaining = {n: len(ups) for n, ups in graph._in.items()}
        self.active: dict[str, set[str]] = {n: set() for n in graph._nodes}
        self.outputs: dict[str, Any] = {}
        self.skipped: set[str] = set()
        self.tg: anyio.abc.TaskGroup | None = None

    def node_id(self, node: str) -> str | None:
        """The call id of ``node``: ``<graph frame>/<escaped node name>#<k>``, where ``k`` is the
        node's place in the graph's definition (``add_node`` order). It depends on the graph
        alone, never on the order in which nodes run; ``k`` keeps the position of each node
        distinct, so replay can tell a renamed node from a new one."""
        if self.graph_id is None:
            return None
        return f"{self.graph_id}/{frames._escape(node)}#{self.index[node]}"

    async def run(self, input: Any) -> Any:
        g = self.graph
        assert g._start is not None and g._end is not None
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                args = () if input is _NO_INPUT else (input,)
                tg.start_soon(self.run_node, g._start, args, name=f"{g.name}/{g._start}")
        except BaseExceptionGroup as group_error:
            error = _unwrap(group_error, f"graph {g.name}")
            if error is group_error:
                raise
            raise error from None
        return self.outputs.get(g._end)

    async def run_node(self, node: str, args: tuple) -> None:
        g = self.graph
        call = g._nodes[node](*args)
        call_id = self.node_id(node)
        if self.parent is None:
            output = await call.run()
        else:
            token = frames.enter(self.parent.child(call_id))  # type: ignore[arg-type]
            try:
                output = await call.run(call_id)
            finally:
                frames.leave(token)
        self.outputs[node] = output
        self.resolve(node, output)

    def resolve(self, node: str, output: Any) -> None:
        """Resolve the outgoing edges of ``node`` (done with ``output``), launching the nodes
        that become ready and propagating skips (iteratively, so long chains are fine)."""
        g = self.graph
        todo = [(node, output)]
        launches: list[tuple[str, Any]] = []  # started once every skip is known to be right
        while todo:
            current, value = todo.pop()
            skipped = current in self.skipped
            # evaluate every condition first, so a failing one launches nothing
            decisions = [
                (down, not skipped and self.condition(current, down, cond, value))
                for down, cond in g._out[current].items()
            ]
            for down, active in decisions:
                self.remaining[down] -= 1
                if active:
                    self.active[down].add(current)
                if self.remaining[down]:
                    continue
                ups = [u for u in g._in[down] if u in self.active[down]]
                if not ups:
                    self._check_skip(down)
                    self.skipped.add(down)
                    todo.append((down, None))
                    continue
                arg = self.outputs[ups[0]] if len(ups) == 1 else {u: self.outputs[u] for u in ups}
                launches.append((down, arg))
        assert self.tg is not None or not launches
        for down, arg in launches:
            self.tg.start_soon(self.run_node, down, (arg,), name=f"{g.name}/{down}")  # type: ignore[union-attr]

    def _check_skip(self, node: str) -> None:
        """Replay: a node the history records as run must not be skipped now (a condition
        changed): stop before the graph launches anything on the other branch."""
        if self.parent is None:
            return
        call_id = self.node_id(node)
        execution = self.parent.execution
        if call_id is not None and execution.recorded_under(call_id):
            execution.nondeterministic(
                call_id,
                f"node {node!r} ran",
                f"node {node!r} skipped",
                f"graph {self.graph.name!r} skips node {node!r} ({call_id}), which the history "
                "records as run: a condition or an upstream output changed",
            )

    def condition(self, up: str, down: str, cond: Condition | None, output: Any) -> bool:
        if cond is None:
            return True
        try:
            result = cond(output)
        except Exception as e:
            e.add_note(
                f"while evaluating the condition of edge {up!r} -> {down!r} "
                f"in graph {self.graph.name!r}"
            )
            raise
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise GraphError(
                f"graph {self.graph.name!r}: the condition of edge {up!r} -> {down!r} returned "
                "an awaitable; conditions must be plain functions of the upstream output"
            )
        return bool(result)


__all__ = ["Graph", "GraphCall", "GraphCycleError", "GraphError"]
