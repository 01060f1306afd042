"""Several dispatchers (servers) in one process on one PostgreSQL database: grants fenced across
servers, wake-ups by notification, and the poll that makes a lost notification a delay only.

Real time (the store works in threads on a real PostgreSQL server), short leases.
"""

from __future__ import annotations

import contextlib

import pytest
import trio

from flux.net import protocol as p
from flux.net.dispatch import Dispatcher, DispatchSettings, source_hash
from flux.runtime import codec
from flux.runtime.events import ExecutionState
from flux.runtime.store import open_store

pytestmark = pytest.mark.trio

SOURCE = "from flux import workflow\n\n@workflow\nasync def wf(ctx):\n    return 1\n"
TTL = 1.0


class Worker:
    """A fake worker link: records what its dispatcher sends it."""

    def __init__(self, dispatcher: Dispatcher, name: str, capacity: int = 4):
        self.sent: list[p.Message] = []
        self.link = dispatcher.add_worker(name, name, capacity, self.sent.append)

    def of(self, kind: type) -> list:
        return [m for m in self.sent if isinstance(m, kind)]

    async def heartbeats(self, dispatcher: Dispatcher) -> None:
        """Heartbeat every lease it got, as a live worker does, until cancelled."""
        while True:
            held = [(m.execution_id, m.epoch) for m in self.of(p.Lease)]
            await dispatcher.on_heartbeat(self.link, p.Heartbeat(leases=held, running=0))
            await trio.sleep(TTL / 4)


@contextlib.asynccontextmanager
async def servers(url: str, n: int, poll_interval: float = 0.2):
    """``n`` dispatchers, each on its own store object (its own pool) on one database."""
    settings = DispatchSettings(lease_ttl=TTL, poll_interval=poll_interval)
    stores = [open_store(url) for _ in range(n)]
    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            await stack.enter_async_context(store)
        await stores[0].save_workflow("wf", SOURCE, source_hash(SOURCE))
        async with trio.open_nursery() as nursery:
            found = []
            for store in stores:
                d = Dispatcher(store, settings)
                scope = trio.CancelScope()
                found.append((d, scope))

                async def run(d=d, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
                    with scope:
                        await d.run(task_status=task_status)

                await nursery.start(run)
            yield found
            nursery.cancel_scope.cancel()


async def wait_until(predicate, timeout: float = 10.0) -> float:
    """Seconds until ``predicate()`` held (fails after ``timeout``)."""
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
    return trio.current_time() - t0


async def test_started_through_a_server_without_workers_runs_on_another_at_once(pg_url):
    # a poll far away: only the notification can move it this fast
    async with servers(pg_url, 2, poll_interval=30) as ((a, _), (b, _)):
        await trio.sleep(0.3)  # both listening
        w = Worker(b, "w")
        rec = await a.start("wf", codec.encode(None))
        took = await wait_until(lambda: w.of(p.Lease))
        assert took < 2
        (lease,) = w.of(p.Lease)
        assert lease.execution_id == rec.execution_id and lease.epoch == 1
        stored = await b.store.get_execution(rec.execution_id)
        assert stored.lease_owner == f"{b.server_id}/w" and stored.state is ExecutionState.RUNNING


async def test_a_lost_notification_only_delays_the_work(pg_url):
    async with servers(pg_url, 2) as ((a, _), (b, _)):

        async def lost(payloads):  # every notification of A is lost
            return None

        a.store.notify = lost
        w = Worker(b, "w")
        rec = await a.start("wf", codec.encode(None))
        await wait_until(lambda: w.of(p.Lease), timeout=5)  # B's poll found it
        assert w.of(p.Lease)[0].execution_id == rec.execution_id
        assert a.statistics().leases == 0


async def test_two_servers_granting_one_execution_exactly_one_wins(pg_url):
    async with servers(pg_url, 2, poll_interval=30) as ((a, _), (b, _)):
        wa, wb = Worker(a, "wa", capacity=100), Worker(b, "wb", capacity=100)
        await trio.sleep(0.3)
        eids = []
        for _ in range(20):
            rec = await a.start("wf", codec.encode(None))
            eids.append(rec.execution_id)
            b.submit(rec.execution_id)  # B was told too: both grant at once
        await wait_until(lambda: len(wa.of(p.Lease)) + len(wb.of(p.Lease)) >= 20)
        await trio.sleep(0.5)  # a second grant of any of them would have happened by now
        granted = [m.execution_id for m in wa.of(p.Lease) + wb.of(p.Lease)]
        assert sorted(granted) == sorted(eids)  # each exactly once
        for eid in eids:
            stored = await a.store.get_execution(eid)
            assert stored.lease_epoch == 1


async def test_the_expired_leases_of_a_dead_server_are_taken_over_once(pg_url):
    async with servers(pg_url, 3) as ((a, a_scope), (b, _), (c, _)):
        wa = Worker(a, "wa")
        rec = await a.start("wf", codec.encode(None))
        await wait_until(lambda: wa.of(p.Lease))
        a_scope.cancel()  # server A dies: nobody heartbeats or renews its lease any more
        wb, wc = Worker(b, "wb"), Worker(c, "wc")
        async with trio.open_nursery() as beating:
            beating.start_soon(wb.heartbeats, b)
            beating.start_soon(wc.heartbeats, c)
            took = await wait_until(lambda: wb.of(p.Lease) or wc.of(p.Lease), timeout=10)
            assert took >= TTL * 0.5  # not before the lease expired in the store
            await trio.sleep(2 * TTL)  # a second takeover would have happened by now
            beating.cancel_scope.cancel()
        leases = wb.of(p.Lease) + wc.of(p.Lease)
        assert [m.execution_id for m in leases] == [rec.execution_id]
        # epoch 1 granted by A, 2 reserved by the taker, 3 granted by it
        assert leases[0].epoch == 3 and leases[0].resume is False
        stored = await b.store.get_execution(rec.execution_id)
        assert stored.lease_epoch == 3


async def test_a_cancel_through_another_server_reaches_the_worker(pg_url):
    async with servers(pg_url, 2, poll_interval=30) as ((a, _), (b, _)):
        wa = Worker(a, "wa")
        await trio.sleep(0.3)
        rec = await a.start("wf", codec.encode(None))
        await wait_until(lambda: wa.of(p.Lease))
        done = await b.cancel(rec.execution_id)
        assert done.state is ExecutionState.CANCELLING
        took = await wait_until(lambda: wa.of(p.Cancel), timeout=5)
        assert took < 2  # the notification, not the (30 s) poll
        assert wa.of(p.Cancel)[0].epoch == 1
        stored = await a.store.get_execution(rec.execution_id)
        assert stored.state is ExecutionState.CANCELLING and stored.cancel_requested


async def test_listening_survives_its_connection_being_killed(pg_url):
    import psycopg

    async with servers(pg_url, 2, poll_interval=30) as ((a, _), (b, _)):
        await trio.sleep(0.3)

        def kill_listeners() -> int:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                return len(
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
                    ).fetchall()
                )

        assert await trio.to_thread.run_sync(kill_listeners) == 2
        await trio.sleep(1.5)  # both reconnect (and poll at once: they may have missed some)
        w = Worker(b, "w")
        # hostile or stale payloads are hints only: an unknown execution is dropped
        b.peers.deliver(["someone\nr no-such-execution\nc nope\ne nope\ns nope\nbogus"])
        rec = await a.start("wf", codec.encode(None))
        took = await wait_until(lambda: w.of(p.Lease), timeout=5)
        assert took < 2  # heard through the new listening connection, not the 30 s poll
        assert [m.execution_id for m in w.of(p.Lease)] == [rec.execution_id]


async def test_a_server_without_workers_keeps_offering_and_forgets_what_was_taken(pg_url):
    # regression: past 200 executions the server without workers offered only its oldest
    # queued ones (already taken elsewhere) and every new one waited for the other's poll
    async with servers(pg_url, 2, poll_interval=30) as ((a, _), (b, _)):
        await trio.sleep(0.3)
        w = Worker(b, "w", capacity=1000)
        for i in range(250):
            rec = await a.start("wf", codec.encode(i))
            await wait_until(
                lambda eid=rec.execution_id: any(m.execution_id == eid for m in w.of(p.Lease)),
                timeout=5,
            )
        await wait_until(lambda: not a._queued)  # told "taken" for each: nothing left queued
        assert len(a._ready) <= 100 + 2 * len(a._queued)
        assert len({m.execution_id for m in w.of(p.Lease)}) == 250  # (expired ones re-leased)
