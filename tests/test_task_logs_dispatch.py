"""The server's side of task logs, with the dispatcher in virtual time and fake workers: the
lines of the lease holder are stored (secrets masked again, within the limit), anything else is
dropped without a reject, and a store fault touches nothing else."""

from __future__ import annotations

import pytest

from flux.net import protocol as p
from flux.runtime import codec
from flux.runtime.errors import StoreError
from tests.test_dispatch import FakeWorker, clock, dispatcher  # noqa: F401 - fixtures

pytestmark = pytest.mark.trio


def logs(eid: str, epoch: int, *messages: str, limit: int | None = None) -> p.Logs:
    return p.Logs(
        execution_id=eid,
        epoch=epoch,
        lines=[["t#0", 1, "INFO", "stdout", 1.0, m] for m in messages],
        limit=limit,
    )


async def test_only_the_lease_holder_at_its_epoch_is_heard(dispatcher, clock):  # noqa: F811
    w1 = FakeWorker(dispatcher, "w1")
    rec = await dispatcher.start("wf", codec.encode(1))
    (lease,) = await w1.leases()
    w2 = FakeWorker(dispatcher, "w2")  # connected after the grant: holds nothing
    holder, other = w1, w2
    eid = lease.execution_id
    assert eid == rec.execution_id and dispatcher.lease_of(eid) == ("w1", 1)
    await holder.send(logs(eid, lease.epoch, "from the holder"))
    await holder.send(logs(eid, lease.epoch + 1, "a future epoch"))
    await other.send(logs(eid, lease.epoch, "from another worker"))
    await other.send(logs("no-such-execution", 1, "nobody's"))
    stored = await dispatcher.store.load_logs(eid)
    assert [r.message for r in stored] == ["from the holder"]
    assert not holder.of(p.Reject) and not other.of(p.Reject)  # dropped quietly


async def test_secrets_are_masked_again_and_the_limit_holds(dispatcher, clock):  # noqa: F811
    w = FakeWorker(dispatcher, "w1")
    await dispatcher.start("wf", codec.encode(1))
    (lease,) = await w.leases()
    eid = lease.execution_id
    dispatcher._leases[eid].secrets.add("tok-5f4e3d2c")
    await w.send(logs(eid, 1, "key tok-5f4e3d2c leaked by a worker", "x" * 50, limit=60))
    stored = await dispatcher.store.load_logs(eid)
    assert stored[0].message == "key *** leaked by a worker"
    assert stored[1].logger == "flux.logs" and "1 later line(s) (50 bytes) cut" in stored[1].message


async def test_a_store_fault_drops_the_batch_and_nothing_else(dispatcher, clock):  # noqa: F811
    w = FakeWorker(dispatcher, "w1")
    await dispatcher.start("wf", codec.encode(1))
    (lease,) = await w.leases()
    eid = lease.execution_id

    async def broken(*args, **kwargs):
        raise StoreError("disk full")

    real = dispatcher.store.append_logs
    dispatcher.store.append_logs = broken
    await w.send(logs(eid, 1, "lost"))
    dispatcher.store.append_logs = real
    await w.send(logs(eid, 1, "kept"))
    assert [r.message for r in await dispatcher.store.load_logs(eid)] == ["kept"]
    assert dispatcher.lease_of(eid) == ("w1", 1)
    assert not w.of(p.Reject)
