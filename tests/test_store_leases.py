"""The lease queries of several servers on one database (``reserve_due``, ``ready_executions``)
and the notifications between them, against both stores."""

from __future__ import annotations

import pytest
import trio

from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord, Write
from flux.runtime.store import open_store
from flux.runtime.store_leases import is_reservation

S = ExecutionState
pytestmark = pytest.mark.trio


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "flux.db")
    return request.getfixturevalue("pg_url")


def rec(eid: str, **fields) -> ExecutionRecord:
    return ExecutionRecord(execution_id=eid, workflow_name="wf", input=b"\x00", **fields)


async def insert(store, *records: ExecutionRecord) -> None:
    await store.commit(*(Write(r.execution_id, insert=r) for r in records))


async def test_reserve_due_takes_due_sleeps_and_expired_leases_once(location):
    now = 1000.0
    async with open_store(location) as store:
        await insert(
            store,
            rec("sleep-due", state=S.SCHEDULED, wake_at=now - 1),
            rec("sleep-later", state=S.SCHEDULED, wake_at=now + 60),
            rec("queued", state=S.SCHEDULED),
            rec("run-expired", state=S.RUNNING, lease_owner="a/w", lease_epoch=3,
                lease_expires_at=now - 0.5),
            rec("run-live", state=S.RUNNING, lease_owner="a/w", lease_epoch=1,
                lease_expires_at=now + 5),
            rec("cancelling-expired", state=S.CANCELLING, lease_owner="a/w",
                lease_expires_at=now - 3, cancel_requested=True),
            rec("done", state=S.COMPLETED, lease_expires_at=now - 9, wake_at=now - 9),
            rec("paused", state=S.PAUSED, lease_expires_at=now - 9),
        )
        got = await store.reserve_due(owner="b/", now=now, expires_at=now + 5)
        assert sorted(r.execution_id for r in got) == [
            "cancelling-expired",
            "run-expired",
            "sleep-due",
        ]
        by_id = {r.execution_id: r for r in got}
        assert by_id["run-expired"].lease_epoch == 4
        assert by_id["run-expired"].state is S.RUNNING
        assert all(r.lease_owner == "b/" and r.lease_expires_at == now + 5 for r in got)
        stored = await store.get_execution("sleep-due")
        assert stored.lease_owner == "b/" and stored.wake_at == now - 1
        # reserved: another server polling now gets none of them
        assert await store.reserve_due(owner="c/", now=now, expires_at=now + 5) == []
        # once the reservation expires (the reserving server died), another takes it over
        again = await store.reserve_due(owner="c/", now=now + 6, expires_at=now + 11, limit=10)
        assert {r.execution_id for r in again} >= {"sleep-due", "run-expired", "run-live"}
        assert (await store.get_execution("run-expired")).lease_epoch == 5
        assert is_reservation("c/") and not is_reservation("c/w1") and not is_reservation(None)


async def test_reserve_due_leaves_the_callers_own_workers_leases_alone(location):
    now = 10.0
    async with open_store(location) as store:
        await insert(
            store,
            rec("mine", state=S.RUNNING, lease_owner="b/w1", lease_expires_at=now - 1),
            rec("my-reservation", state=S.RUNNING, lease_owner="b/", lease_expires_at=now - 1),
            rec("theirs", state=S.RUNNING, lease_owner="bb/w1", lease_expires_at=now - 1),
        )
        got = await store.reserve_due(owner="b/", now=now, expires_at=now + 5)
        assert sorted(r.execution_id for r in got) == ["my-reservation", "theirs"]
        # another server takes it (server b died: its renewals stopped)
        (other,) = await store.reserve_due(owner="c/", now=now, expires_at=now + 5)
        assert other.execution_id == "mine" and other.lease_owner == "c/"


async def test_reserve_due_limit_and_ready_executions(location):
    now = 50.0
    async with open_store(location) as store:
        await insert(
            store,
            *(rec(f"s{i}", state=S.SCHEDULED, wake_at=now - 10 + i) for i in range(5)),
        )
        first = await store.reserve_due(owner="a/", now=now, expires_at=now + 5, limit=2)
        assert [r.execution_id for r in first] == ["s0", "s1"]  # earliest wake time first
        await insert(
            store,
            rec("new", state=S.CREATED, updated_at=1.0, created_at=1.0),
            rec("resumed", state=S.SCHEDULED, updated_at=2.0, created_at=0.5),
            rec("leased", state=S.SCHEDULED, lease_owner="a/", lease_expires_at=now + 1,
                updated_at=0.1),
            rec("lapsed", state=S.SCHEDULED, lease_owner="a/", lease_expires_at=now - 1,
                updated_at=3.0),
            rec("running", state=S.RUNNING, lease_owner="a/w", lease_expires_at=now + 1),
        )
        ready = await store.ready_executions(now=now)
        assert [r.execution_id for r in ready] == ["new", "resumed", "lapsed"]
        assert [r.execution_id for r in await store.ready_executions(now=now, limit=1)] == [
            "new"
        ]


async def test_notifications_reach_every_listener(location):
    async with open_store(location) as a, open_store(location) as b:
        got_a: list[str] = []
        got_b: list[str] = []
        started = [trio.Event(), trio.Event()]

        def into(box, ready):
            def deliver(payloads):
                box.extend(payloads)
                if "*" in payloads:
                    ready.set()
            return deliver

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.listen, into(got_a, started[0]))
            nursery.start_soon(b.listen, into(got_b, started[1]))
            if not a.shared:  # SQLite: nobody else listens, notify does nothing
                await a.notify(["x"])
                await trio.sleep(0.3)
                assert got_a == got_b == []
                nursery.cancel_scope.cancel()
                return
            with trio.fail_after(10):
                for event in started:
                    await event.wait()
            await a.notify(["one", "two"])
            await b.notify(["three"])
            with trio.fail_after(10):
                while len(got_a) < 4 or len(got_b) < 4:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert got_a == got_b == ["*", "one", "two", "three"]
