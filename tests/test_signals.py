"""Signals embedded: receive, send_signal, the queue in both stores, flux.testing's clock."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import trio

import flux.testing
from flux import workflow
from flux.errors import (
    ExecutionConflictError,
    ExecutionNotFoundError,
    NondeterminismError,
    SerializationError,
    SignalTimeoutError,
)
from flux.runtime.events import ExecutionEventType as E
from flux.runtime.events import ExecutionState as S
from flux.runtime.records import ExecutionRecord, StaleWriteError, Write
from flux.runtime.store import open_store
from flux.task import task
from flux.tasks import parallel, receive, send_signal, sleep


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "signals.db")
    return request.getfixturevalue("pg_url")


def types(ctx, *wanted):
    return [(e.type.value, e.source_id, e.name) for e in ctx.events if e.type.value in wanted]


@workflow
async def approval(ctx):
    try:
        decision = await receive("approval", timeout=timedelta(days=2))
    except SignalTimeoutError as e:
        return {"timed_out": e.topic}
    return {"decision": decision}


@workflow
async def with_default(ctx):
    return await receive("answer", timeout=30, default="no answer")


@workflow
async def forever(ctx):
    return await receive("go")


@workflow
async def three_in_a_row(ctx):
    return [await receive("n"), await receive("n"), await receive("n")]


@workflow
async def two_topics(ctx):
    return await parallel(receive("a", timeout=60), receive("b", timeout=60))


@workflow
async def same_topic_parallel(ctx):
    return await parallel(receive("x"), receive("x"), receive("x"))


# -- the queue, both stores ----------------------------------------------------------------------


@pytest.mark.trio
async def test_store_queue_accepts_orders_and_delivers_once(location):
    async with open_store(location) as store:
        await store.commit(
            Write("e1", insert=ExecutionRecord(execution_id="e1", workflow_name="w", input=b""))
        )
        assert await store.add_signal("nope", "t", b"v", 1.0) == (None, None)
        state, first = await store.add_signal("e1", "t", b"one", 1.0)
        assert state is S.CREATED and first.value == b"one" and first.delivered_at is None
        _, second = await store.add_signal("e1", "u", b"two", 2.0, "k")
        _, again = await store.add_signal("e1", "u", b"other", 3.0, "k")
        assert again == second  # same key: not queued twice
        pending = await store.pending_signals("e1")
        assert [(s.topic, s.value) for s in pending] == [("t", b"one"), ("u", b"two")]
        assert pending[0].id < pending[1].id
        await store.commit(Write("e1", signals=[first.id]))
        with pytest.raises(StaleWriteError, match="not queued any more"):
            await store.commit(Write("e1", update={"state": "RUNNING"}, signals=[first.id]))
        # the refused write stored nothing
        assert (await store.get_execution("e1")).state is S.CREATED
        assert [s.value for s in await store.pending_signals("e1")] == [b"two"]
        await store.commit(Write("e1", update={"state": "COMPLETED"}))
        state, refused = await store.add_signal("e1", "t", b"late", 4.0)
        assert state is S.COMPLETED and refused is None
        assert await store.count_rows("signals") == 2


# -- receive ------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_signal_sent_before_receive_is_taken_at_once(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(forever, execution_id="early")  # waits, nothing queued
        assert ctx.state is S.SCHEDULED
        rec = await t.engine.store.get_execution("early")
        assert rec.wake_at is None and rec.lease_owner is None  # released, waits for ever
        sent = await t.engine.send_signal("early", "go", {"n": 1})
        assert sent.topic == "go"
        done = await t.engine.run(forever, execution_id="early")
        assert done.state is S.COMPLETED and done.output == {"n": 1}
        assert types(done, "SIGNAL_RECEIVED") == [("SIGNAL_RECEIVED", "receive#0", "go")]
        assert await t.engine.store.pending_signals("early") == []


@pytest.mark.trio
async def test_queued_signal_consumed_without_suspending(autojump_clock):
    @workflow.with_options(name="gets_queued")
    async def gets_queued(ctx):
        await sleep(0)  # the signal is queued before this receive is reached
        return await receive("go")

    async with flux.testing.engine() as t:
        # create it first so that the signal has an execution to go to
        await t.engine.store.commit(
            Write(
                "q1",
                insert=ExecutionRecord(
                    execution_id="q1", workflow_name="gets_queued", input=b"\xc0", state=S.SCHEDULED
                ),
            )
        )
        await t.engine.send_signal("q1", "go", 5)
        ctx = await t.start(gets_queued, execution_id="q1")
        assert ctx.state is S.COMPLETED and ctx.output == 5


@pytest.mark.trio
async def test_signal_after_release_wakes_it(autojump_clock):
    async with flux.testing.engine(approval) as t:
        ctx = await t.start(approval)
        assert ctx.state is S.SCHEDULED
        await t.advance(timedelta(hours=5))
        assert (await t.get(ctx.execution_id)).state is S.SCHEDULED
        await t.send_signal(ctx.execution_id, "approval", "yes")
        done = await t.get(ctx.execution_id)
        assert done.state is S.COMPLETED and done.output == {"decision": "yes"}
        kinds = [e.type for e in done.events]
        assert kinds.count(E.SIGNAL_RECEIVED) == 1
        assert kinds[-3:] == [E.SIGNAL_RECEIVED, E.TASK_COMPLETED, E.WORKFLOW_COMPLETED]


@pytest.mark.trio
async def test_timeout_raises_signal_timeout_in_virtual_time(autojump_clock):
    began = time.monotonic()
    async with flux.testing.engine() as t:
        start = t.clock()
        done = await t.run(approval)
        assert done.output == {"timed_out": "approval"}
        assert t.clock() - start == pytest.approx(2 * 86400, abs=1)
        failed = [e for e in done.events if e.type is E.TASK_FAILED]
        assert isinstance(failed[0].value, SignalTimeoutError)
        assert failed[0].value.timeout == 2 * 86400
        # a signal after the timeout is kept, and refused once the execution has finished
        with pytest.raises(ExecutionConflictError, match="COMPLETED") as info:
            await t.engine.send_signal(done.execution_id, "approval", "late")
        assert info.value.state == "COMPLETED"
    assert time.monotonic() - began < 10


@pytest.mark.trio
async def test_timeout_with_default_returns_it(autojump_clock):
    async with flux.testing.engine() as t:
        done = await t.run(with_default)
        assert done.state is S.COMPLETED and done.output == "no answer"


@pytest.mark.trio
async def test_signal_before_the_timeout_wins(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(with_default)
        await t.advance(29)
        await t.send_signal(ctx.execution_id, "answer", 42)
        assert (await t.get(ctx.execution_id)).output == 42
        await t.advance(3600)
        assert (await t.get(ctx.execution_id)).output == 42


@pytest.mark.trio
async def test_timeout_none_waits_for_ever(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.run(forever)
        assert ctx.state is S.SCHEDULED  # nothing time can bring
        await t.advance(timedelta(days=365))
        assert (await t.get(ctx.execution_id)).state is S.SCHEDULED
        await t.send_signal(ctx.execution_id, "go", "now")
        assert (await t.get(ctx.execution_id)).output == "now"


@pytest.mark.trio
async def test_several_signals_on_one_topic_queue_in_order(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(three_in_a_row)
        for n in (1, 2, 3):
            await t.engine.send_signal(ctx.execution_id, "n", n)
        await t.engine.wake_due()
        done = await t.get(ctx.execution_id)
        assert done.output == [1, 2, 3]


@pytest.mark.trio
async def test_parallel_receives_on_different_topics(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(two_topics)
        await t.send_signal(ctx.execution_id, "b", "B")
        assert (await t.get(ctx.execution_id)).state is S.SCHEDULED
        await t.send_signal(ctx.execution_id, "a", "A")
        done = await t.get(ctx.execution_id)
        assert done.output == ["A", "B"]


@pytest.mark.trio
async def test_parallel_receives_on_one_topic_get_signals_in_call_order(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(same_topic_parallel)
        for v in ("first", "second", "third"):
            await t.engine.send_signal(ctx.execution_id, "x", v)
        await t.engine.wake_due()
        done = await t.get(ctx.execution_id)
        assert done.output == ["first", "second", "third"]
        delivered = [e.source_id for e in done.events if e.type is E.SIGNAL_RECEIVED]
        assert delivered == sorted(delivered)  # program order, whatever order they started in


@pytest.mark.trio
async def test_live_receive_next_to_a_running_task(settled_clock):
    @task
    async def slow():
        await trio.sleep(100)
        return "slow"

    @workflow.with_options(name="live")
    async def live(ctx):
        return await parallel(receive("stop"), slow())

    async with flux.testing.engine() as t:
        async with trio.open_nursery() as nursery:
            box = {}

            async def go():
                box["ctx"] = await t.engine.run(live, execution_id="live1")

            nursery.start_soon(go)
            await trio.sleep(10)  # the task runs, the receive waits inside the run
            assert t.engine._running.get("live1") is not None
            await t.engine.send_signal("live1", "stop", "now")
            await trio.sleep(1)
            events = t.engine._running["live1"].ctx.events
            assert [e.type for e in events if e.source_id.endswith("receive#0")][-1] is (
                E.TASK_COMPLETED
            )
        assert box["ctx"].output == ["now", "slow"]


@pytest.mark.trio
async def test_replay_returns_the_recorded_value_and_edited_code_is_caught(autojump_clock):
    async with flux.testing.engine() as t:
        await t.start(forever, execution_id="r1")
        await t.send_signal("r1", "go", [1, 2])
        done = await t.get("r1")
        again = await t.engine.run(forever, execution_id="r1")
        assert again.output == [1, 2] and len(again.events) == len(done.events)

        @workflow.with_options(name="forever")
        async def edited(ctx):
            return await receive("other")

        await t.engine.store.commit(
            Write(
                "r2",
                insert=ExecutionRecord(
                    execution_id="r2", workflow_name="forever", input=b"\xc0", state=S.SCHEDULED
                ),
            )
        )
        await t.start(forever, execution_id="r2")
        with pytest.raises(NondeterminismError, match="receive"):
            await t.engine.run(edited, execution_id="r2")


@pytest.mark.trio
async def test_send_signal_errors(autojump_clock):
    async with flux.testing.engine() as t:
        with pytest.raises(ExecutionNotFoundError):
            await t.engine.send_signal("missing", "go", 1)
        ctx = await t.start(forever)
        with pytest.raises(ValueError, match="invalid signal topic"):
            await t.engine.send_signal(ctx.execution_id, "no/slash", 1)
        with pytest.raises(TypeError, match="topic is a string"):
            await t.engine.send_signal(ctx.execution_id, 5, 1)
        with pytest.raises(SerializationError, match="value of signal 'go'"):
            await t.engine.send_signal(ctx.execution_id, "go", object())
        assert await t.engine.store.pending_signals(ctx.execution_id) == []


@pytest.mark.trio
async def test_receive_argument_errors(autojump_clock):
    @workflow.with_options(name="bad_receive")
    async def bad_receive(ctx):
        return await receive("go", timeout=ctx.input)

    async with flux.testing.engine() as t:
        negative = await t.run(bad_receive, -1)
        assert negative.state is S.FAILED and "timeout >= 0" in str(negative.output)
        wrong = await t.run(bad_receive, "soon")
        assert wrong.state is S.FAILED and "seconds or a timedelta" in str(wrong.output)
    with pytest.raises(Exception, match="inside a running workflow"):
        await receive("go")


# -- send_signal from a workflow -----------------------------------------------------------------


@workflow
async def sender(ctx):
    await send_signal(ctx.input, "approval", "from a workflow")
    return "sent"


@workflow
async def sends_to_nobody(ctx):
    try:
        await send_signal("no-such-execution", "go", 1)
    except ExecutionNotFoundError:
        return "not found"


@pytest.mark.trio
async def test_workflow_sends_a_signal_once(autojump_clock):
    async with flux.testing.engine(approval) as t:
        target = await t.start(approval)
        sent = await t.start(sender, target.execution_id)
        assert sent.output == "sent"
        # replay of the sender does not send again
        await t.engine.run(sender, execution_id=sent.execution_id)
        await t.engine.wake_due()
        done = await t.get(target.execution_id)
        assert done.output == {"decision": "from a workflow"}
        missing = await t.start(sends_to_nobody)
        assert missing.output == "not found"


@pytest.mark.trio
async def test_workflow_send_is_idempotent_across_a_crash(autojump_clock):
    """The send happened, its record did not (a crash in between): running the sender again
    sends with the same key, which the queue refuses to store twice."""
    async with flux.testing.engine(approval, three_in_a_row) as t:
        target = await t.start(three_in_a_row)
        sent = await t.start(sender, target.execution_id)
        # forget the sender's outcome: as if it crashed after the send
        key = f"{sent.execution_id}/send_signal#0"
        state, first = await t.engine.store.add_signal(
            target.execution_id, "approval", b"\xa1x", t.clock(), key
        )
        assert first.value != b"\xa1x"  # the send already stored under that key
        assert [s.topic for s in await t.engine.store.pending_signals(target.execution_id)] == [
            "approval"
        ]


# -- flux.testing -------------------------------------------------------------------------------


@workflow
async def week_of_sleep(ctx):
    await sleep(timedelta(days=7))
    return "rested"


@pytest.mark.trio
async def test_a_week_of_sleep_in_virtual_time(autojump_clock):
    began = time.monotonic()
    async with flux.testing.engine() as t:
        start = t.clock()
        done = await t.run(week_of_sleep)
        assert done.output == "rested"
        assert t.clock() - start == pytest.approx(7 * 86400, abs=1)
        assert t.virtual
    assert time.monotonic() - began < 10


@pytest.mark.trio
async def test_advance_runs_what_comes_due(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(week_of_sleep)
        assert ctx.state is S.SCHEDULED
        await t.advance(timedelta(days=6))
        assert (await t.get(ctx.execution_id)).state is S.SCHEDULED
        woke = await t.advance(timedelta(days=1, seconds=1))
        assert [c.output for c in woke] == ["rested"]
        with pytest.raises(ValueError, match="forward only"):
            await t.advance(-1)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_flux_testing_on_asyncio_moves_the_engine_clock(anyio_backend):
    began = time.monotonic()
    async with flux.testing.engine() as t:
        assert not t.virtual
        start = t.clock()
        done = await t.run(week_of_sleep)
        assert done.output == "rested" and t.clock() - start >= 7 * 86400
        timed = await t.run(approval)
        assert timed.output == {"timed_out": "approval"}
        waiting = await t.start(approval)
        await t.send_signal(waiting.execution_id, "approval", "ok")
        assert (await t.get(waiting.execution_id)).output == {"decision": "ok"}
    assert time.monotonic() - began < 10


@pytest.mark.trio
async def test_due_sources_ride_the_same_pass(autojump_clock):
    """What a scheduler plugs into: its wake_due runs in every pass, its next_wake counts."""

    class Nightly:
        def __init__(self, at):
            self.at, self.fired = at, []

        async def next_wake(self, engine):
            return self.at

        async def wake_due(self, engine):
            if engine.clock() >= self.at:
                self.fired.append(engine.clock())
                self.at += 86400
            return []

    async with flux.testing.engine() as t:
        nightly = Nightly(t.clock() + 3600)
        t.engine.due_sources.append(nightly)
        await t.advance(timedelta(days=3))
        assert len(nightly.fired) == 3
        assert nightly.fired[0] == pytest.approx(nightly.fired[1] - 86400)


@workflow
async def child_waiter(ctx):
    return await receive("child-topic", timeout=600, default="child timed out")


@workflow
async def parent_of_waiter(ctx):
    from flux.tasks import call

    return {"child": await call(child_waiter, None)}


@pytest.mark.trio
async def test_a_subworkflow_waiting_for_a_signal_wakes_through_its_parent(autojump_clock):
    async with flux.testing.engine() as t:
        parent = await t.start(parent_of_waiter)
        assert parent.state is S.SCHEDULED
        children = await t.engine.store.list_executions(parent_id=parent.execution_id)
        assert [c.state for c in children] == [S.SCHEDULED]
        await t.send_signal(children[0].execution_id, "child-topic", "hello child")
        assert (await t.get(parent.execution_id)).output == {"child": "hello child"}
        # and the child's timeout wakes the parent too
        other = await t.run(parent_of_waiter)
        assert other.output == {"child": "child timed out"}


@pytest.mark.trio
async def test_cancel_while_waiting_in_receive(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(forever)
        cancelled = await t.engine.cancel(ctx.execution_id)
        assert cancelled.state is S.CANCELLED
        with pytest.raises(ExecutionConflictError, match="CANCELLED"):
            await t.engine.send_signal(ctx.execution_id, "go", 1)


@pytest.mark.trio
async def test_receive_and_delivery_on_both_stores(location, autojump_clock):
    async with flux.testing.engine(store=location) as t:
        ctx = await t.start(three_in_a_row)
        for n in (1, 2):
            await t.engine.send_signal(ctx.execution_id, "n", n)
        await t.engine.wake_due()
        assert (await t.get(ctx.execution_id)).state is S.SCHEDULED  # two of three
        await t.send_signal(ctx.execution_id, "n", 3)
        done = await t.get(ctx.execution_id)
        assert done.output == [1, 2, 3]
        assert await t.engine.store.pending_signals(ctx.execution_id) == []
        timed = await t.run(approval)
        assert timed.output == {"timed_out": "approval"}


@pytest.mark.trio
async def test_a_flood_of_signals_is_read_a_topic_at_a_time(autojump_clock):
    async with flux.testing.engine() as t:
        ctx = await t.start(two_topics)
        for n in range(300):
            await t.engine.send_signal(ctx.execution_id, "a", n)
        got = await t.engine.store.pending_signals(ctx.execution_id, topic="a", limit=2)
        assert [s.value for s in got] == [s.value for s in got[:2]] and len(got) == 2
        assert await t.engine.store.pending_signals(ctx.execution_id, topic="b") == []
        await t.send_signal(ctx.execution_id, "b", "B")
        done = await t.get(ctx.execution_id)
        assert done.output == [0, "B"]
        assert len(await t.engine.store.pending_signals(ctx.execution_id)) == 299


@workflow
async def poller(ctx):
    return [await receive("p", timeout=0, default="none queued") for _ in range(2)]


@pytest.mark.trio
async def test_timeout_zero_takes_what_is_queued_or_gives_up_at_once(autojump_clock):
    async with flux.testing.engine() as t:
        start = t.clock()
        nothing = await t.start(poller)
        assert nothing.output == ["none queued", "none queued"] and t.clock() - start < 1
        await t.engine.store.commit(
            Write(
                "p1",
                insert=ExecutionRecord(
                    execution_id="p1", workflow_name="poller", input=b"\xc0", state=S.SCHEDULED
                ),
            )
        )
        await t.engine.send_signal("p1", "p", "here")
        one = await t.start(poller, execution_id="p1")
        assert one.output == ["here", "none queued"]


@workflow
async def talks_to_itself(ctx):
    await send_signal(ctx.execution_id, "self", "note to self")
    return await receive("self", timeout=10)


@pytest.mark.trio
async def test_a_workflow_signals_itself(autojump_clock):
    async with flux.testing.engine() as t:
        done = await t.start(talks_to_itself)
        assert done.state is S.COMPLETED and done.output == "note to self"
        replayed = await t.engine.run(talks_to_itself, execution_id=done.execution_id)
        assert replayed.output == "note to self"
        assert await t.engine.store.count_rows("signals") == 1
