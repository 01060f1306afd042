"""Streaming: run/stream (Server-Sent Events) and the WebSocket event stream from any offset.

The key property: a subscriber that joins at any point gets every event after its offset exactly
once, in order, then the stream ends when the execution ends (or pauses)."""

from __future__ import annotations

import functools
import json
import random

import httpx
import pytest
import trio
import trio_websocket

from flux.net.dispatch import Dispatcher
from flux.net.streams import follow
from flux.runtime.events import ExecutionState
from flux.runtime.store import ExecutionRecord, StoredEvent, Write, open_store
from tests.conftest_net import Live, start_live

pytestmark = pytest.mark.trio


@pytest.fixture
async def live(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path)


def ws_url(live: Live, eid: str, after: int | None = None) -> str:
    url = live.url.replace("http://", "ws://") + f"/executions/{eid}/events"
    return url if after is None else f"{url}?from={after}"


async def collect(url: str, headers=None) -> tuple[list[dict], int | None, str]:
    """Every message of a WebSocket stream until the server closes it."""
    got = []
    async with trio_websocket.open_websocket_url(url, extra_headers=headers or []) as ws:
        try:
            with trio.fail_after(30):
                while True:
                    got.append(json.loads(await ws.get_message()))
        except trio_websocket.ConnectionClosed as exc:
            return got, exc.reason.code, exc.reason.reason or ""
    raise AssertionError("unreachable")


async def history(c: httpx.AsyncClient, eid: str) -> list[dict]:
    return (await c.get(f"/executions/{eid}", params={"detailed": "true"})).json()["events"]


async def sse(c: httpx.AsyncClient, path: str, body) -> list[tuple[str, dict]]:
    out, event, data = [], "message", []
    async with c.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line == "":
                if data:
                    out.append((event, json.loads("\n".join(data))))
                event, data = "message", []
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
    return out


async def test_run_stream_sends_summary_events_summary(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        messages = await sse(c, "/workflows/ticker/run/stream", {"n": 3, "seconds": 0.01})
        kinds = [k for k, _ in messages]
        assert kinds[0] == kinds[-1] == "execution" and set(kinds[1:-1]) == {"message"}
        first, last = messages[0][1], messages[-1][1]
        assert first["state"] == "SCHEDULED" and last["state"] == "COMPLETED"
        assert last["output"] == [0, 1, 2]
        events = [m for k, m in messages if k == "message"]
        assert events == await history(c, first["execution_id"])
        # a pause ends the stream too, with the PAUSED summary last
        paused = await sse(c, "/workflows/asker/run/stream", None)
        assert paused[-2][1]["type"] == "WORKFLOW_PAUSED" and paused[-1][1]["state"] == "PAUSED"
        failed = await sse(c, "/workflows/hello/run/stream", None)  # None * 2 fails
        assert failed[-2][1]["type"] == "WORKFLOW_FAILED" and failed[-1][1]["state"] == "FAILED"


async def test_late_subscriber_gets_every_event_once_in_order(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        r = await c.post("/workflows/ticker/run/async", json={"n": 12, "seconds": 0.05})
        eid = r.json()["execution_id"]
        with trio.fail_after(10):
            while len(await history(c, eid)) < 5:
                await trio.sleep(0.005)
        got, code, reason = await collect(ws_url(live, eid, 0))
        assert len(await history(c, eid)) == 12 * 2 + 2
        assert code == 1000 and reason == "execution COMPLETED"
        assert got == await history(c, eid)
        assert [e["id"] for e in got] == list(range(1, len(got) + 1))
        # from an offset: only what comes after it; from the end: closed at once
        later, code, _ = await collect(ws_url(live, eid, 5))
        assert later == got[5:] and code == 1000
        none, code, _ = await collect(ws_url(live, eid, len(got)))
        assert none == [] and code == 1000


async def test_many_subscribers_joining_at_random_points(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        r = await c.post("/workflows/ticker/run/async", json={"n": 15, "seconds": 0.02})
        eid = r.json()["execution_id"]
        results: list[tuple[int, list[dict]]] = []

        async def subscriber(delay: float, after: int) -> None:
            await trio.sleep(delay)
            got, code, _ = await collect(ws_url(live, eid, after))
            assert code == 1000
            results.append((after, got))

        rnd = random.Random(5)
        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(subscriber, rnd.uniform(0, 0.4), rnd.choice([0, 0, 2, 7]))
        full = await history(c, eid)
        assert full[-1]["type"] == "WORKFLOW_COMPLETED"
        for after, got in results:
            assert got == full[after:], after


async def test_paused_stream_ends_and_resumes_from_offset(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        paused = (await c.post("/workflows/asker/run/sync")).json()
        eid = paused["execution_id"]
        got, code, reason = await collect(ws_url(live, eid))
        assert got[-1]["type"] == "WORKFLOW_PAUSED" and code == 1000
        assert reason == "execution PAUSED"
        seen = got[-1]["id"]

        async with trio.open_nursery() as n:
            later: list = []

            async def follower() -> None:
                # registered before the resume, but the stream of a paused execution ends:
                # a follower that wants what comes next subscribes again after the resume
                later.append(await collect(ws_url(live, eid, seen)))

            n.start_soon(follower)
            await trio.sleep(0.1)
            await c.post(f"/workflows/asker/resume/{eid}", json="ok", params={"wait": "1"})
        assert later[0][0] == []
        rest, code, _ = await collect(ws_url(live, eid, seen))
        assert [e["type"] for e in rest][-1] == "WORKFLOW_COMPLETED" and code == 1000
        assert rest == (await history(c, eid))[seen:]


async def test_stream_refusals_are_http_errors(live):
    for url, status in (
        (ws_url(live, "nope"), 404),
        (ws_url(live, "nope") + "?from=-1", 400),
        (ws_url(live, "nope") + "?from=x", 400),
    ):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url):
                pass
        assert info.value.status_code == status
        body = json.loads(info.value.body)
        assert set(body) == {"error", "detail"}


async def test_follow_falls_back_to_the_store_when_a_listener_overflows(tmp_path, nursery):
    """Unit: a listener that overflows (or sees a gap) reads the store: still no gap, no
    duplicate. Events are committed through the dispatcher as workers' batches are."""
    store = open_store(str(tmp_path / "f.db"), durability="normal")
    await store.__aenter__()
    dispatcher = Dispatcher(store)
    dispatcher.listen = functools.partial(Dispatcher.listen, dispatcher, limit=3)
    await nursery.start(dispatcher.run)
    eid = "e1"
    rec = ExecutionRecord(execution_id=eid, workflow_name="w", input=b"\xc0", state="RUNNING")

    def ev(seq: int, kind: str = "TASK_STARTED") -> StoredEvent:
        return StoredEvent(eid, seq, kind, f"t#{seq}", "t", None, float(seq))

    await store.commit(Write(eid, [ev(1, "WORKFLOW_STARTED")], insert=rec))
    got: list[int] = []

    async def reader(task_status=trio.TASK_STATUS_IGNORED) -> None:
        stream = follow(dispatcher, store, eid, 0)
        task_status.started()
        async for e in stream:
            got.append(e.seq)

    async with trio.open_nursery() as n:
        await n.start(reader)
        seq = 1
        for size in (1, 5, 2, 7, 1, 3):  # batches of 5 and 7 overflow the listener
            batch = [ev(seq + i + 1) for i in range(size)]
            seq += size
            await dispatcher._commit(Write(eid, batch))
            await trio.sleep(0.01 if size % 2 else 0)
        end = ev(seq + 1, "WORKFLOW_COMPLETED")
        await dispatcher._commit(
            Write(eid, [end], update={"state": ExecutionState.COMPLETED.value})
        )
    assert got == list(range(1, seq + 2))
    await store.aclose()
