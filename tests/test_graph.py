"""Tests of flux.runtime.graph: building (validation at build time) and running a Graph of tasks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from flux import task, workflow
from flux.runtime.errors import WorkflowError
from flux.runtime.events import ExecutionEventType as E
from flux.runtime.events import ExecutionState
from flux.runtime.graph import Graph, GraphCycleError, GraphError
from flux.tasks import parallel

ROOT = Path(__file__).resolve().parent.parent

#: names of the task bodies that ran (in the order they ran), reset for every test
RUNS: list[str] = []
#: anyio events the concurrency tests wait on, created inside each test's trio run
SIGNALS: dict[str, anyio.Event] = {}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUX_DB", str(tmp_path / "flux.db"))
    RUNS.clear()
    SIGNALS.clear()
    yield
    RUNS.clear()
    SIGNALS.clear()


# -- tasks --------------------------------------------------------------------------------------


@task
async def inc(x):
    RUNS.append("inc")
    return x + 1


@task
async def double(x):
    RUNS.append("double")
    return x * 2


@task
async def square(x):
    RUNS.append("square")
    return x * x


@task
async def negate(x):
    RUNS.append("negate")
    return -x


@task
async def total(parts):
    RUNS.append("total")
    return sum(parts.values())


@task
async def echo(x):
    RUNS.append("echo")
    return x


@task
async def constant():
    RUNS.append("constant")
    return 42


@task
async def left(x):
    # runs only if `right` runs at the same time: each waits for the other's signal
    RUNS.append("left")
    SIGNALS["left"].set()
    await SIGNALS["right"].wait()
    return ("left", x)


@task
async def right(x):
    RUNS.append("right")
    SIGNALS["right"].set()
    await SIGNALS["left"].wait()
    return ("right", x)


@task
async def slow(x):
    RUNS.append("slow:start")
    SIGNALS["slow"].set()
    await anyio.sleep(3600)
    RUNS.append("slow:done")
    return x


@task
async def boom(x):
    await SIGNALS["slow"].wait()
    RUNS.append("boom")
    raise ValueError(f"boom on {x}")


@task
async def after(x):
    RUNS.append("after")
    return {"result": x}


def run_in_workflow(graph: Graph, name: str = "graph_wf") -> workflow:
    async def body(ctx):
        return await graph(ctx.input)

    body.__name__ = name
    body.__qualname__ = name
    return workflow(body)


def of_type(ctx, type_: E) -> list[str]:
    return [e.source_id for e in ctx.events if e.type is type_]


# -- running ------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_linear_graph_runs_in_order_with_name_based_ids():
    g = (
        Graph("linear")
        .add_node("first", inc)
        .add_node("second", double)
        .add_node("third", inc)
        .add_edge("first", "second")
        .add_edge("second", "third")
        .start_with("first")
        .end_with("third")
    )
    ctx = await run_in_workflow(g).arun(1)
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == 5  # (1 + 1) * 2 + 1
    assert RUNS == ["inc", "double", "inc"]
    assert of_type(ctx, E.TASK_COMPLETED) == [
        "linear#0/first#0",
        "linear#0/second#1",
        "linear#0/third#2",
    ]


@pytest.mark.trio
async def test_graph_outside_a_workflow_runs_without_recording():
    g = (
        Graph("plain")
        .add_node("a", inc)
        .add_node("b", double)
        .add_edge("a", "b")
        .start_with("a")
        .end_with("b")
    )
    assert await g(3) == 8
    assert await g.run(4) == 10
    assert RUNS == ["inc", "double", "inc", "double"]


@pytest.mark.trio
async def test_start_node_without_input_is_called_without_arguments():
    g = (
        Graph("noinput")
        .add_node("c", constant)
        .add_node("i", inc)
        .add_edge("c", "i")
        .start_with("c")
        .end_with("i")
    )
    assert await g() == 43

    @workflow
    async def no_input(ctx):
        return await g()

    ctx = await no_input.arun()
    assert ctx.output == 43


@pytest.mark.trio
async def test_diamond_branches_run_concurrently_and_join_as_a_dict():
    SIGNALS["left"] = anyio.Event()
    SIGNALS["right"] = anyio.Event()

    @task
    async def join(parts):
        RUNS.append("join")
        return parts

    g = (
        Graph("diamond")
        .add_node("top", inc)
        .add_node("left", left)
        .add_node("right", right)
        .add_node("bottom", join)
        .add_edge("top", "left")
        .add_edge("top", "right")
        .add_edge("right", "bottom")  # added first: comes first in the dict
        .add_edge("left", "bottom")
        .start_with("top")
        .end_with("bottom")
    )
    # left and right each wait for the other: this only finishes if they run at the same time
    with anyio.fail_after(30):
        ctx = await run_in_workflow(g).arun(1)
    assert ctx.state is ExecutionState.COMPLETED, ctx.output
    assert ctx.output == {"right": ("right", 2), "left": ("left", 2)}
    assert list(ctx.output) == ["right", "left"]
    assert set(of_type(ctx, E.TASK_COMPLETED)) == {
        "diamond#0/top#0",
        "diamond#0/left#1",
        "diamond#0/right#2",
        "diamond#0/bottom#3",
    }
    assert RUNS[0] == "inc" and RUNS[-1] == "join"


def branching() -> Graph:
    #           +--(x > 0)--> pos --> pos_after
    #   start --+
    #           +--(x <= 0)-> neg --> neg_after
    return (
        Graph("branch")
        .add_node("start", echo)
        .add_node("pos", double)
        .add_node("pos_after", inc)
        .add_node("neg", negate)
        .add_node("neg_after", square)
        .add_edge("start", "pos", condition=lambda x: x > 0)
        .add_edge("start", "neg", condition=lambda x: x <= 0)
        .add_edge("pos", "pos_after")
        .add_edge("neg", "neg_after")
        .start_with("start")
        .end_with("pos_after")
    )


@pytest.mark.trio
async def test_true_condition_runs_the_branch_false_condition_skips_it_and_its_descendants():
    ctx = await run_in_workflow(branching()).arun(5)
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output == 11
    assert sorted(RUNS) == ["double", "echo", "inc"]
    started = of_type(ctx, E.TASK_STARTED)
    assert "branch#0/pos#1" in started and "branch#0/pos_after#2" in started
    # skipped nodes record nothing at all
    assert not [e for e in ctx.events if "neg" in e.source_id]


@pytest.mark.trio
async def test_conditions_the_other_way_and_a_skipped_end_node_gives_none():
    ctx = await run_in_workflow(branching()).arun(-3)
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output is None  # the end node pos_after was skipped
    assert sorted(RUNS) == ["echo", "negate", "square"]
    assert not [e for e in ctx.events if "pos" in e.source_id]
    assert set(of_type(ctx, E.TASK_COMPLETED)) == {
        "branch#0/start#0",
        "branch#0/neg#3",
        "branch#0/neg_after#4",
    }


@pytest.mark.trio
async def test_conditions_see_the_upstream_output_not_the_graph_input():
    seen = []

    def big(value):
        seen.append(value)
        return value > 10

    g = (
        Graph("sees")
        .add_node("a", double)
        .add_node("b", inc)
        .add_edge("a", "b", condition=big)
        .start_with("a")
        .end_with("b")
    )
    assert await g(6) == 13
    assert await g(5) is None
    assert seen == [12, 10]


@task
async def show(x):
    RUNS.append("show")
    return x


def fan(cond_c, sink) -> Graph:
    return (
        Graph("fan")
        .add_node("a", echo)
        .add_node("b", double)
        .add_node("c", square)
        .add_node("d", inc)  # its condition is always false: a skipped upstream of the sink
        .add_node("sink", sink)
        .add_edge("a", "b")
        .add_edge("a", "c", condition=cond_c)
        .add_edge("a", "d", condition=lambda x: False)
        .add_edge("b", "sink")
        .add_edge("c", "sink")
        .add_edge("d", "sink")
        .start_with("a")
        .end_with("sink")
    )


@pytest.mark.trio
async def test_multi_upstream_input_is_a_dict_of_the_active_upstreams_only():
    ctx = await run_in_workflow(fan(lambda x: True, show)).arun(3)
    assert ctx.output == {"b": 6, "c": 9}  # d was skipped: not in the dict
    assert await fan(lambda x: True, total)(3) == 6 + 9


@pytest.mark.trio
async def test_a_single_active_upstream_passes_its_output_as_is():
    ctx = await run_in_workflow(fan(lambda x: False, show)).arun(3)
    assert ctx.output == 6
    assert sorted(RUNS) == ["double", "echo", "show"]


@pytest.mark.trio
async def test_skip_propagates_through_a_join_whose_upstreams_are_all_skipped():
    g = (
        Graph("allskip")
        .add_node("a", echo)
        .add_node("b", double)
        .add_node("c", square)
        .add_node("join", total)
        .add_node("tail", inc)
        .add_edge("a", "b", condition=lambda x: x > 100)
        .add_edge("a", "c", condition=lambda x: x > 100)
        .add_edge("b", "join")
        .add_edge("c", "join")
        .add_edge("join", "tail")
        .start_with("a")
        .end_with("tail")
    )
    ctx = await run_in_workflow(g).arun(1)
    assert ctx.state is ExecutionState.COMPLETED
    assert ctx.output is None
    assert RUNS == ["echo"]


@pytest.mark.trio
async def test_ids_come_from_names_and_definition_order_escaped_graph_frames_take_ordinals():
    g = (
        Graph("g/x")
        .add_node("a/b#c", inc)
        .add_node("50%", double)
        .add_edge("a/b#c", "50%")
        .start_with("a/b#c")
        .end_with("50%")
    )

    @workflow
    async def twice(ctx):
        first = await g(1)
        both = await parallel(g(2), inc(0))
        return [first, both]

    ctx = await twice.arun()
    assert ctx.output == [4, [6, 1]]
    assert of_type(ctx, E.TASK_STARTED)[:2] == ["g%2Fx#0/a%2Fb%23c#0", "g%2Fx#0/50%25#1"]
    assert set(of_type(ctx, E.TASK_STARTED)[2:]) == {
        "parallel#1/g%2Fx#0/g%2Fx#0/a%2Fb%23c#0",
        "parallel#1/g%2Fx#0/g%2Fx#0/50%25#1",
        "parallel#1/inc#1",
    }


@pytest.mark.trio
async def test_a_failing_node_cancels_a_slow_sibling_which_records_task_cancelled():
    SIGNALS["slow"] = anyio.Event()
    g = (
        Graph("fails")
        .add_node("a", echo)
        .add_node("slow", slow)
        .add_node("boom", boom)
        .add_node("end", total)
        .add_edge("a", "slow")
        .add_edge("a", "boom")
        .add_edge("slow", "end")
        .add_edge("boom", "end")
        .start_with("a")
        .end_with("end")
    )
    with anyio.fail_after(30):
        ctx = await run_in_workflow(g).arun(7)
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, ValueError) and str(ctx.output) == "boom on 7"
    assert of_type(ctx, E.TASK_FAILED) == ["fails#0/boom#2"]
    assert of_type(ctx, E.TASK_CANCELLED) == ["fails#0/slow#1"]
    assert "fails#0/slow#1" not in of_type(ctx, E.TASK_COMPLETED)
    assert "fails#0/end#3" not in of_type(ctx, E.TASK_STARTED)
    assert "slow:start" in RUNS and "slow:done" not in RUNS and "total" not in RUNS


@pytest.mark.trio
async def test_the_failure_is_catchable_in_the_workflow():
    SIGNALS["slow"] = anyio.Event()
    g = (
        Graph("caught")
        .add_node("a", echo)
        .add_node("slow", slow)
        .add_node("boom", boom)
        .add_edge("a", "slow")
        .add_edge("a", "boom")
        .start_with("a")
        .end_with("slow")
    )

    @workflow
    async def catches(ctx):
        try:
            return await g(1)
        except ValueError as e:
            return f"caught {e}"

    ctx = await catches.arun()
    assert ctx.output == "caught boom on 1"
    assert of_type(ctx, E.TASK_CANCELLED) == ["caught#0/slow#1"]


@pytest.mark.trio
async def test_a_failing_condition_fails_the_graph_naming_the_edge():
    def broken(value):
        raise KeyError("missing")

    g = (
        Graph("cond")
        .add_node("a", echo)
        .add_node("b", inc)
        .add_edge("a", "b", condition=broken)
        .start_with("a")
        .end_with("b")
    )
    with pytest.raises(KeyError) as info:
        await g(1)
    assert any("'a' -> 'b'" in note for note in info.value.__notes__)
    assert RUNS == ["echo"]


# -- crash and resume ---------------------------------------------------------------------------


def crashy_graph() -> Graph:
    return (
        Graph("crashy")
        .add_node("fetch", echo)
        .add_node("double", double)
        .add_node("square", square)
        .add_node("neg", negate)  # condition false: skipped
        .add_node("combine", total)
        .add_edge("fetch", "double")
        .add_edge("fetch", "square", condition=lambda x: x > 0)
        .add_edge("fetch", "neg", condition=lambda x: x < 0)
        .add_edge("double", "combine")
        .add_edge("square", "combine")
        .add_edge("neg", "combine")
        .start_with("fetch")
        .end_with("combine")
    )


CRASHY = crashy_graph()


@workflow
async def crashy(ctx):
    combined = await CRASHY(ctx.input)
    return await after(combined)


def crash_after(db: str, execution_id: str, keep: int) -> list[tuple[str, str]]:
    """Simulate a crash: keep the first ``keep`` events, the execution left RUNNING."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE execution_id = ? AND seq > ?", (execution_id, keep))
        conn.execute(
            "UPDATE executions SET state = 'RUNNING', output = NULL WHERE execution_id = ?",
            (execution_id,),
        )
        kept = conn.execute(
            "SELECT type, call_id FROM events WHERE execution_id = ? ORDER BY seq", (execution_id,)
        ).fetchall()
    conn.close()
    return kept


@pytest.mark.trio
async def test_crash_and_resume_in_the_middle_of_a_graph_never_reruns_a_completed_node():
    db = os.environ["FLUX_DB"]
    full = await crashy.arun(3)
    assert full.output == {"result": 6 + 9}
    total_events = len(full.events)
    assert total_events > 8
    body_of = {
        "crashy#0/fetch#0": "echo",
        "crashy#0/double#1": "double",
        "crashy#0/square#2": "square",
        "crashy#0/combine#4": "total",
        "after#1": "after",
    }
    assert set(of_type(full, E.TASK_COMPLETED)) == set(body_of)

    for keep in range(1, total_events):  # every possible crash point
        RUNS.clear()
        first = await crashy.arun(3)
        assert first.output == {"result": 15}
        kept = crash_after(db, first.execution_id, keep)
        done = {call_id for type_, call_id in kept if type_ == "TASK_COMPLETED"}

        RUNS.clear()
        resumed = await crashy.arun(execution_id=first.execution_id)
        assert resumed.state is ExecutionState.COMPLETED, (keep, resumed.output)
        assert resumed.output == {"result": 15}
        rerun = sorted(RUNS)
        assert rerun == sorted(body_of[c] for c in body_of if c not in done), (keep, kept)
        assert "negate" not in RUNS
        # the resumed history completes every call exactly once
        completed = of_type(resumed, E.TASK_COMPLETED)
        assert sorted(completed) == sorted(body_of)


FAILING = (
    Graph("failing")
    .add_node("a", echo)
    .add_node("slow", slow)
    .add_node("boom", boom)
    .add_node("end", total)
    .add_edge("a", "slow")
    .add_edge("a", "boom")
    .add_edge("slow", "end")
    .add_edge("boom", "end")
    .start_with("a")
    .end_with("end")
)


@workflow
async def failing(ctx):
    return await FAILING(ctx.input)


@pytest.mark.trio
async def test_crash_and_resume_of_a_failing_graph_replays_the_failure_and_the_cancellation():
    db = os.environ["FLUX_DB"]
    SIGNALS["slow"] = anyio.Event()
    full = await failing.arun(2)
    assert full.state is ExecutionState.FAILED
    body_of = {"failing#0/a#0": "echo", "failing#0/boom#2": "boom"}

    for keep in range(1, len(full.events)):
        SIGNALS["slow"] = anyio.Event()
        first = await failing.arun(2)
        assert first.state is ExecutionState.FAILED
        kept = crash_after(db, first.execution_id, keep)
        outcome = {call_id: type_ for type_, call_id in kept if type_ != "TASK_STARTED"}

        RUNS.clear()
        SIGNALS["slow"] = anyio.Event()
        with anyio.fail_after(30):
            resumed = await failing.arun(execution_id=first.execution_id)
        assert resumed.state is ExecutionState.FAILED, (keep, kept)
        assert isinstance(resumed.output, ValueError) and str(resumed.output) == "boom on 2"
        for call_id, body in body_of.items():
            if call_id in outcome:
                assert body not in RUNS, (keep, kept, RUNS)
        if outcome.get("failing#0/slow#1") == "TASK_CANCELLED":
            assert "slow:start" not in RUNS  # a call recorded as cancelled never runs again
        assert "slow:done" not in RUNS and "total" not in RUNS
        assert of_type(resumed, E.TASK_CANCELLED) == ["failing#0/slow#1"]
        assert of_type(resumed, E.TASK_FAILED) == ["failing#0/boom#2"]


# -- building: errors at build time -------------------------------------------------------------


def test_builder_methods_chain_and_describe_the_graph():
    g = Graph("g")
    assert g.add_node("a", inc) is g
    assert g.add_node("b", inc) is g
    cond = lambda x: True  # noqa: E731
    assert g.add_edge("a", "b", condition=cond) is g
    assert g.start_with("a") is g
    assert g.end_with("b") is g
    assert g.validate() is g
    assert list(g.nodes) == ["a", "b"]
    assert g.edges == [("a", "b", cond)]
    assert (g.start, g.end) == ("a", "b")


def test_duplicate_node_is_rejected():
    g = Graph("dup").add_node("a", inc)
    with pytest.raises(GraphError, match="duplicate node 'a'"):
        g.add_node("a", double)


def test_graph_errors_are_workflow_errors_and_value_errors():
    assert issubclass(GraphError, WorkflowError) and issubclass(GraphError, ValueError)
    assert issubclass(GraphCycleError, GraphError)


def test_a_node_must_be_a_task():
    async def plain(x):
        return x

    with pytest.raises(GraphError, match="node 'a' must be a @task"):
        Graph("g").add_node("a", plain)
    with pytest.raises(GraphError, match="non-empty name"):
        Graph("g").add_node("", inc)
    with pytest.raises(GraphError, match="non-empty name"):
        Graph("")


@pytest.mark.parametrize(
    ("up", "down", "missing"),
    [("a", "nope", "downstream node 'nope'"), ("nope", "a", "upstream node 'nope'")],
)
def test_dangling_edge_is_rejected_when_added(up, down, missing):
    g = Graph("dangle").add_node("a", inc)
    with pytest.raises(GraphError, match="dangling edge") as info:
        g.add_edge(up, down)
    assert missing in str(info.value)
    assert g.edges == []


def test_cycle_is_rejected_when_the_closing_edge_is_added_naming_the_cycle():
    g = Graph("cyc")
    for n in "abcd":
        g.add_node(n, inc)
    g.add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")
    with pytest.raises(GraphCycleError) as info:
        g.add_edge("d", "b")
    assert "d -> b -> c -> d" in str(info.value)
    assert info.value.cycle == ["d", "b", "c", "d"]
    assert ("d", "b", None) not in g.edges  # the graph is left as it was
    with pytest.raises(GraphCycleError, match="a -> a"):
        g.add_edge("a", "a")
    g.add_edge("a", "d")  # a shortcut is no cycle


def test_duplicate_edge_and_bad_condition_are_rejected():
    g = Graph("e").add_node("a", inc).add_node("b", inc).add_edge("a", "b")
    with pytest.raises(GraphError, match="duplicate edge 'a' -> 'b'"):
        g.add_edge("a", "b")
    g.add_node("c", inc)
    with pytest.raises(GraphError, match="must be callable"):
        g.add_edge("a", "c", condition=True)


def test_unknown_start_or_end_is_rejected():
    g = Graph("se").add_node("a", inc)
    with pytest.raises(GraphError, match="start node 'x' does not exist"):
        g.start_with("x")
    with pytest.raises(GraphError, match="end node 'y' does not exist"):
        g.end_with("y")


def test_start_and_end_must_be_set_before_running():
    g = Graph("unset").add_node("a", inc)
    with pytest.raises(GraphError, match="no start node"):
        g.validate()
    g.start_with("a")
    with pytest.raises(GraphError, match="no end node"):
        g.validate()
    g.end_with("a")
    g.validate()


def test_start_has_no_upstream_and_end_no_downstream():
    g = Graph("se").add_node("a", inc).add_node("b", inc).add_edge("a", "b")
    with pytest.raises(GraphError, match="start node 'b' has incoming edges"):
        g.start_with("b")
    with pytest.raises(GraphError, match="end node 'a' has outgoing edges"):
        g.end_with("a")
    g.start_with("a").end_with("b").add_node("c", inc)
    with pytest.raises(GraphError, match="leads into the start node"):
        g.add_edge("c", "a")
    with pytest.raises(GraphError, match="leaves the end node"):
        g.add_edge("b", "c")
    with pytest.raises(GraphError, match="start node already set to 'a'"):
        g.start_with("c")
    with pytest.raises(GraphError, match="end node already set to 'b'"):
        g.end_with("c")


@pytest.mark.trio
async def test_unreachable_nodes_are_rejected_by_validate_and_on_first_await():
    g = (
        Graph("island")
        .add_node("a", inc)
        .add_node("b", inc)
        .add_node("lost", inc)
        .add_node("lost2", inc)
        .add_edge("a", "b")
        .add_edge("lost", "lost2")
        .start_with("a")
        .end_with("b")
    )
    with pytest.raises(GraphError, match="'lost', 'lost2' cannot be reached"):
        g.validate()
    with pytest.raises(GraphError, match="cannot be reached"):
        await g(1)
    ctx = await run_in_workflow(g, "island_wf").arun(1)
    assert ctx.state is ExecutionState.FAILED
    assert isinstance(ctx.output, GraphError)
    assert RUNS == []
    g.add_edge("a", "lost")  # now every node is reachable
    assert await g(1) == 3


@pytest.mark.trio
async def test_a_graph_run_is_awaited_once():
    g = Graph("once").add_node("a", inc).start_with("a").end_with("a")
    call = g(1)
    assert await call == 2
    with pytest.raises(RuntimeError, match="already awaited"):
        await call


# -- the example --------------------------------------------------------------------------------


def test_the_graph_example_runs(tmp_path):
    env = dict(os.environ, FLUX_DB=str(tmp_path / "example.db"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "graph.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Alice: COMPLETED -> APPROVED (SCORE 740)",
        "Bob: COMPLETED -> REJECTED (SCORE 560)",
    ]
