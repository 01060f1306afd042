"""The task log tables of both stores: append with seqs and one limit per execution, the marker
of what was cut, reads by page and call, hostile text, concurrent appends, and store copy."""

from __future__ import annotations

import anyio
import pytest

from flux.runtime.events import ExecutionState
from flux.runtime.store import ExecutionRecord, Write, open_store
from flux.runtime.store_copy import copy_store
from flux.runtime.store_logs import MARKER_LOGGER, LogEntry

pytestmark = pytest.mark.trio


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "logs.db")
    return request.getfixturevalue("pg_url")


def entry(message: str, call_id: str = "t#0", attempt: int = 1, level: str = "INFO") -> LogEntry:
    return LogEntry(call_id, attempt, level, "stdout", 1_700_000_000.5, message)


async def test_append_numbers_lines_per_execution_and_reads_pages(location):
    async with open_store(location) as store:
        assert await store.append_logs("a", [entry("one"), entry("two")], limit=1000) == 2
        assert await store.append_logs("b", [entry("other")], limit=1000) == 1
        assert await store.append_logs("a", [entry("three", "u#1", 2, "ERROR")], limit=1000) == 1
        lines = await store.load_logs("a")
        assert [(r.seq, r.message) for r in lines] == [(1, "one"), (2, "two"), (3, "three")]
        third = lines[2]
        assert (third.execution_id, third.call_id, third.attempt, third.level) == (
            "a",
            "u#1",
            2,
            "ERROR",
        )
        assert third.logger == "stdout" and third.time == 1_700_000_000.5
        assert [r.seq for r in await store.load_logs("a", after=1, limit=1)] == [2]
        assert await store.load_logs("a", after=3) == []
        assert [r.message for r in await store.load_logs("b")] == ["other"]
        assert await store.load_logs("nobody") == []


async def test_call_filter_takes_the_call_and_the_calls_below_it(location):
    async with open_store(location) as store:
        await store.append_logs(
            "a",
            [
                entry("x", "parallel#0"),
                entry("y", "parallel#0/fetch#0"),
                entry("z", "parallel#01"),  # not below parallel#0
                entry("w", "other#1"),
            ],
            limit=1000,
        )
        found = await store.load_logs("a", call_id="parallel#0")
        assert [r.message for r in found] == ["x", "y"]
        found = await store.load_logs("a", call_id="parallel#0/fetch#0")
        assert [r.message for r in found] == ["y"]


async def test_the_limit_keeps_whole_lines_and_one_marker_counts_what_was_cut(location):
    async with open_store(location) as store:
        kept = await store.append_logs("a", [entry("a" * 40), entry("b" * 40)], limit=100)
        assert kept == 2
        # this one crosses the limit: it and all after it are cut, even a small one
        kept = await store.append_logs("a", [entry("c" * 40), entry("d")], limit=100)
        assert kept == 0
        lines = await store.load_logs("a")
        assert [r.seq for r in lines] == [1, 2, 3]
        marker = lines[2]
        assert marker.logger == MARKER_LOGGER and marker.level == "WARNING"
        assert marker.call_id == "" and marker.attempt == 0
        assert "2 later line(s) (41 bytes) cut" in marker.message
        # later batches (and what the capture cut itself) rewrite the same marker
        assert await store.append_logs("a", [entry("e" * 9)], limit=100, cut_lines=5,
                                       cut_bytes=1000) == 0
        lines = await store.load_logs("a")
        assert len(lines) == 3
        assert "8 later line(s) (1.0 KiB) cut" in lines[2].message


async def test_cut_counts_alone_add_the_marker(location):
    async with open_store(location) as store:
        assert await store.append_logs("a", [], limit=100, cut_lines=3, cut_bytes=300) == 0
        (marker,) = await store.load_logs("a")
        assert "3 later line(s) (300 bytes) cut" in marker.message


async def test_hostile_text_is_stored_and_never_breaks_the_batch(location):
    async with open_store(location) as store:
        hostile = ["nul\x00inside", "lone \udc80 surrogate", "emoji 🙂", "", "x" * 5000]
        kept = await store.append_logs("a", [entry(m) for m in hostile], limit=10**6)
        assert kept == len(hostile)
        lines = await store.load_logs("a")
        assert lines[0].message == "nul\\x00inside"
        assert lines[1].message == "lone ? surrogate"
        assert [r.message for r in lines[2:]] == hostile[2:]


async def test_bad_queries_are_refused_naming_the_parameter(location):
    async with open_store(location) as store:
        with pytest.raises(ValueError, match="after"):
            await store.load_logs("a", after=-1)
        with pytest.raises(ValueError, match="limit"):
            await store.load_logs("a", limit=0)


async def test_concurrent_appends_to_one_execution_get_distinct_consecutive_seqs(location):
    # two store objects: two connections (PostgreSQL: two sessions racing on the row lock)
    async with open_store(location) as one, open_store(location) as two:
        await one.append_logs("a", [entry("warm")], limit=10**6)

        async def writer(store, tag):
            for i in range(20):
                await store.append_logs("a", [entry(f"{tag}{i}"), entry(f"{tag}{i}+")], limit=10**6)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, one, "p")
            tg.start_soon(writer, two, "q")
        lines = await one.load_logs("a")
        assert [r.seq for r in lines] == list(range(1, 82))
        # each batch stays together, in order
        for tag in "pq":
            mine = [r for r in lines if r.message.startswith(tag)]
            assert [r.message for r in mine] == [
                m for i in range(20) for m in (f"{tag}{i}", f"{tag}{i}+")
            ]
            seqs = [r.seq for r in mine]
            assert all(seqs[k + 1] == seqs[k] + 1 for k in range(0, len(seqs), 2))


async def test_store_copy_moves_the_logs(location, tmp_path):
    async with open_store(location) as source:
        record = ExecutionRecord(
            execution_id="a",
            workflow_name="wf",
            input=b"\xc0",
            state=ExecutionState.COMPLETED,
            created_at=1.0,
        )
        await source.commit(Write("a", insert=record))
        await source.append_logs("a", [entry("kept"), entry("y" * 200)], limit=100)
        target_path = str(tmp_path / "copy.db")
        async with open_store(target_path) as target:
            counts = await copy_store(source, target)
            assert counts["logs"] == 2 and counts["log_totals"] == 1
            lines = await target.load_logs("a")
            assert [r.message for r in lines][0] == "kept"
            assert lines[1].logger == MARKER_LOGGER
            # the copy goes on where the original stopped: same seqs, same limit state
            await target.append_logs("a", [entry("z")], limit=100)
            lines = await target.load_logs("a")
            assert len(lines) == 2 and "2 later line(s)" in lines[1].message
