"""Embedded and distributed record the same events: the same workflows run both ways (in this
process through an engine, and through a server and a worker), and their histories are compared
event by event (type, call id, name, value)."""

from __future__ import annotations

import httpx
import pytest
import trio

from flux import open_engine
from flux.runtime import codec
from flux.runtime.loader import load_source, workflows_in
from flux.runtime.store import open_store
from tests.conftest_net import start_live

SOURCE = """
import anyio
from flux import task, workflow
from flux.tasks import Graph, call, parallel, pause, sleep


class Refused(Exception):
    pass


@task
async def double(x):
    return x * 2


@task
async def refuse(x):
    raise Refused(f"no {x}")


async def fallback_value(x):
    return -x


@task.with_options(retry_max_attempts=2, retry_delay=0.01, fallback=fallback_value)
async def flaky(x):
    raise Refused(f"flaky {x}")


async def undo(x):
    return None


@task.with_options(rollback=undo)
async def doomed(x):
    raise Refused(f"doomed {x}")


@workflow
async def kid(ctx):
    return await double(ctx.input)


@workflow
async def bad_kid(ctx):
    await refuse(ctx.input)


@workflow
async def paused_kid(ctx):
    return {"kid": await pause("kid-ok"), "x": await double(ctx.input)}


graph = (
    Graph("g")
    .add_node("a", double)
    .add_node("b", double)
    .add_edge("a", "b", condition=lambda out: out > 2)
    .start_with("a")
    .end_with("b")
)


@workflow
async def everything(ctx):
    out = [await double(1), await flaky(3)]
    try:
        await parallel(double(2), doomed(4))
    except Refused as e:
        out.append(str(e))
    out.append(await double.map([5, 6]))
    out.append(await graph(2))
    out.append(await call(kid, 7))
    try:
        await call(bad_kid, 8)
    except Refused as e:
        out.append(f"child: {e}")
    await sleep(0.01)
    out.append(await pause("approve"))
    out.append(await call(paused_kid, 9))
    return out
"""


def shape(events) -> list[tuple]:
    """What must agree: type, call id, name, and the value (exceptions by type and message;
    wake times and other clock readings left out)."""
    out = []
    for e in events:
        value = codec.decode(e.value) if e.value is not None else None
        if isinstance(value, BaseException):
            value = (type(value).__name__, str(value))
        elif isinstance(value, dict) and isinstance(value.get("args"), dict):
            value = {"args": {k: v for k, v in value["args"].items() if k != "wake_at"}}
        elif isinstance(value, dict) and "child_id" in value:
            value = {k: v for k, v in value.items() if k != "child_id"}
        out.append((e.type, e.call_id, e.name, repr(value)))
    return out


async def embedded(tmp_path) -> tuple[list[tuple], list[list[tuple]]]:
    module = load_source(SOURCE, "same_history_flows")
    flows = workflows_in(module)
    async with open_engine(db=str(tmp_path / "embedded.db"), durability="normal") as engine:
        ctx = await flows["everything"].arun(engine=engine)
        while ctx.state.value == "PAUSED":
            ctx = await flows["everything"].arun(
                execution_id=ctx.execution_id, resume_value="yes", engine=engine
            )
        assert ctx.state.value == "COMPLETED", ctx.output
        parent = shape(await engine.store.load_events(ctx.execution_id))
        children = [
            shape(await engine.store.load_events(c.execution_id))
            for c in sorted(
                await engine.store.list_executions(parent_id=ctx.execution_id),
                key=lambda c: c.workflow_name,
            )
        ]
        return parent, children


async def distributed(tmp_path) -> tuple[list[tuple], list[list[tuple]]]:
    async with trio.open_nursery() as nursery:
        live = await start_live(nursery, tmp_path, upload_source=False)
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            r = await c.post("/workflows", files={"file": ("same.py", SOURCE.encode())})
            assert r.status_code == 200, r.text
            summary = (await c.post("/workflows/everything/run/sync", json=None)).json()
            eid = summary["execution_id"]
            while summary["state"] == "PAUSED":
                summary = (
                    await c.post(
                        f"/workflows/everything/resume/{eid}", json="yes", params={"wait": "true"}
                    )
                ).json()
            assert summary["state"] == "COMPLETED", summary
        nursery.cancel_scope.cancel()
    async with open_store(str(tmp_path / "api.db")) as store:
        parent = shape(await store.load_events(eid))
        children = [
            shape(await store.load_events(c.execution_id))
            for c in sorted(
                await store.list_executions(parent_id=eid), key=lambda c: c.workflow_name
            )
        ]
    return parent, children


@pytest.mark.trio
async def test_embedded_and_distributed_record_the_same_events(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "d").mkdir()
    local_parent, local_children = await embedded(tmp_path / "e")
    remote_parent, remote_children = await distributed(tmp_path / "d")
    assert len(local_children) == len(remote_children) == 3
    for local, remote in zip(
        [local_parent, *local_children], [remote_parent, *remote_children], strict=True
    ):
        # concurrent calls (parallel, map, graph) interleave in any order: compare each call's
        # own events in order, and the calls in the order they first appear per frame
        assert by_call(local) == by_call(remote)
        assert len(local) == len(remote)
    assert len(local_parent) == 41  # with the graph's GRAPH_STARTED


def by_call(history: list[tuple]) -> dict[str, list[tuple]]:
    calls: dict[str, list[tuple]] = {}
    for type_, call_id, name, value in history:
        calls.setdefault(call_id, []).append((type_, name, value))
    return calls


PAUSER = """
from flux import workflow
from flux.tasks import pause


@workflow
async def waits(ctx):
    return await pause("approval")
"""


def row(rec) -> tuple:
    return (
        rec.state.value,
        codec.decode(rec.output) if rec.output is not None else "no output column",
        rec.lease_owner,
        rec.lease_expires_at,
        rec.wake_at,
        rec.cancel_requested,
    )


@pytest.mark.trio
async def test_create_resume_and_cancel_write_the_same_rows_embedded_and_on_a_server(tmp_path):
    # one execution service (flux.runtime.executions) builds these writes for both
    flows = workflows_in(load_source(PAUSER, "same_service_flows"))
    (tmp_path / "d").mkdir()
    async with open_engine(db=str(tmp_path / "embedded.db"), durability="normal") as engine:
        paused = await flows["waits"].arun(engine=engine)
        again = await flows["waits"].arun(engine=engine)
        resumed = await flows["waits"].arun(
            execution_id=paused.execution_id, resume_value="yes", engine=engine
        )
        assert resumed.output == "yes"
        await engine.cancel(again.execution_id)
        local = [
            (row(await engine.store.get_execution(e)), shape(await engine.store.load_events(e)))
            for e in (paused.execution_id, again.execution_id)
        ]
    async with trio.open_nursery() as nursery:
        live = await start_live(nursery, tmp_path / "d", upload_source=False)
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            r = await c.post("/workflows", files={"file": ("p.py", PAUSER.encode())})
            assert r.status_code == 200, r.text
            first = (await c.post("/workflows/waits/run/sync", json=None)).json()
            second = (await c.post("/workflows/waits/run/sync", json=None)).json()
            assert first["state"] == second["state"] == "PAUSED"
            done = await c.post(
                f"/workflows/waits/resume/{first['execution_id']}",
                json="yes",
                params={"wait": "true"},
            )
            assert done.json()["output"] == "yes"
            r = await c.post(f"/executions/{second['execution_id']}/cancel")
            assert r.json()["state"] == "CANCELLED"
        nursery.cancel_scope.cancel()
    async with open_store(str(tmp_path / "d" / "api.db")) as store:
        remote = [
            (row(await store.get_execution(e)), shape(await store.load_events(e)))
            for e in (first["execution_id"], second["execution_id"])
        ]
    assert local == remote
    assert local[1][0] == ("CANCELLED", None, None, None, None, True)
    assert [t for t, *_ in local[1][1]][-1] == "WORKFLOW_CANCELLED"
