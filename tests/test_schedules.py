"""Schedule rules without I/O: intervals, cron in time zones across DST, and what one look at a
schedule decides under every overlap and catch-up policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flux.runtime.schedules import (
    GRACE,
    MAX_CATCH_UP,
    ScheduleError,
    ScheduleSpec,
    check_name,
    execution_id,
    new_record,
    parse_every,
    plan,
    trigger_execution_id,
)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("45", 45),
     (" 1h 15m ", 4500), (90, 90)],
)
def test_parse_every(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["0s", "0", "-5s", "1.5s", "abc", "10x", "", "5m3", 0, -1, 1.5, True, None, [30],
     "99999999w", 10**30, float("inf"), float("nan")],
)
def test_parse_every_refuses_bad_intervals(text):
    with pytest.raises(ScheduleError, match="interval"):
        parse_every(text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 \\* \\* \\* \\*': Bad minute"),
        ({"cron": "* * *"}, "bad cron expression"),
        ({"cron": "0 0 30 2 *"}, "bad cron expression"),
        ({"cron": "   "}, "empty"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 2 * * *", "timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"cron": "0 2 * * *", "timezone": ""}, "unknown time zone"),
        ({"every": "1m", "timezone": "UTC"}, "time zone applies to cron"),
        ({}, "either a cron expression or an interval"),
        ({"cron": "@daily", "every": "1h"}, "either a cron expression or an interval"),
        ({"every": "0s"}, "greater than 0"),
    ],
)
def test_spec_errors_name_what_is_wrong(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        ScheduleSpec.build(**kwargs)


def test_cron_aliases_and_default_zone():
    spec = ScheduleSpec.build(cron="@hourly")
    assert spec == ScheduleSpec(cron="0 * * * *", timezone="UTC")
    assert iso(spec.next_after(utc("2026-05-01T10:00:00"))) == "2026-05-01T11:00:00"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 101, "é", "a/b", None, 3])
def test_bad_schedule_names(name):
    with pytest.raises(ScheduleError, match="schedule name"):
        check_name(name)


def test_new_record_checks_policies_and_workflow():
    base = {"input": b"\xc0", "now": 0.0, "every": "1m"}
    with pytest.raises(ScheduleError, match="overlap policy 'sometimes'"):
        new_record("a", "wf", overlap="sometimes", **base)
    with pytest.raises(ScheduleError, match="catch-up policy 'most'"):
        new_record("a", "wf", catch_up="most", **base)
    with pytest.raises(ScheduleError, match="needs a workflow name"):
        new_record("a", "", **base)
    rec = new_record("a", "wf", **base)
    assert rec.next_due_at == 60.0 and rec.paused == 0


# -- due times -------------------------------------------------------------------------------


def test_intervals_are_aligned_on_the_epoch():
    spec = ScheduleSpec.build(every="1h")
    t = utc("2026-05-01T10:17:03")
    assert iso(spec.next_after(t)) == "2026-05-01T11:00:00"
    assert iso(spec.at_or_before(t)) == "2026-05-01T10:00:00"
    assert spec.next_after(utc("2026-05-01T11:00:00")) == utc("2026-05-01T12:00:00")
    assert spec.at_or_before(utc("2026-05-01T11:00:00")) == utc("2026-05-01T11:00:00")


def test_berlin_spring_forward_nonexistent_time_fires_once_at_the_jump():
    # 2026-03-29: clocks go from 02:00 CET to 03:00 CEST (01:00 UTC); 02:30 does not exist
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone="Europe/Berlin")
    got = [iso(t) for t in spec.upcoming(utc("2026-03-27T12:00:00"), 3)]
    assert got == ["2026-03-28T01:30:00", "2026-03-29T01:00:00", "2026-03-30T00:30:00"]
    hourly = ScheduleSpec.build(cron="30 * * * *", timezone="Europe/Berlin")
    got = [iso(t) for t in hourly.upcoming(utc("2026-03-28T23:00:00"), 4)]
    # 00:30 CET, 01:30 CET, (02:30 does not exist: at the jump), 03:30 CEST
    assert got == [
        "2026-03-28T23:30:00",
        "2026-03-29T00:30:00",
        "2026-03-29T01:00:00",
        "2026-03-29T01:30:00",
    ]
    # several skipped local times on one instant are one due time
    every_quarter = ScheduleSpec.build(cron="*/15 * * * *", timezone="Europe/Berlin")
    got = every_quarter.upcoming(utc("2026-03-29T00:40:00"), 4)
    assert [iso(t) for t in got] == [
        "2026-03-29T00:45:00",
        "2026-03-29T01:00:00",
        "2026-03-29T01:15:00",
        "2026-03-29T01:30:00",
    ]
    assert len(set(got)) == len(got)


def test_berlin_fall_back_repeated_time_fires_once_at_its_first_occurrence():
    # 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET (01:00 UTC); 02:30 occurs twice
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone="Europe/Berlin")
    got = [iso(t) for t in spec.upcoming(utc("2026-10-24T12:00:00"), 2)]
    assert got == ["2026-10-25T00:30:00", "2026-10-26T01:30:00"]
    hourly = ScheduleSpec.build(cron="30 * * * *", timezone="Europe/Berlin")
    got = [iso(t) for t in hourly.upcoming(utc("2026-10-24T23:00:00"), 4)]
    assert got == [
        "2026-10-24T23:30:00",  # 01:30 CEST
        "2026-10-25T00:30:00",  # 02:30 CEST, the first 02:30
        "2026-10-25T02:30:00",  # 03:30 CET (the second 02:30, 01:30 UTC, does not fire)
        "2026-10-25T03:30:00",
    ]


def test_new_york_dst_both_ways():
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone="America/New_York")
    # 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC)
    got = [iso(t) for t in spec.upcoming(utc("2026-03-07T00:00:00"), 3)]
    assert got == ["2026-03-07T07:30:00", "2026-03-08T07:00:00", "2026-03-09T06:30:00"]
    # 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC): 01:30 occurs twice
    early = ScheduleSpec.build(cron="30 1 * * *", timezone="America/New_York")
    got = [iso(t) for t in early.upcoming(utc("2026-10-31T00:00:00"), 3)]
    assert got == ["2026-10-31T05:30:00", "2026-11-01T05:30:00", "2026-11-02T06:30:00"]


@pytest.mark.parametrize(
    "zone, around",
    [
        ("Europe/Berlin", "2026-03-29T01:00:00"),
        ("Europe/Berlin", "2026-10-25T01:00:00"),
        ("America/New_York", "2026-03-08T07:00:00"),
        ("America/New_York", "2026-11-01T06:00:00"),
        ("Australia/Lord_Howe", "2026-04-04T15:00:00"),  # a 30-minute shift
    ],
)
def test_next_and_previous_agree_across_dst(zone, around):
    spec = ScheduleSpec.build(cron="*/10 * * * *", timezone=zone)
    t = utc(around) - 4 * 3600
    seen = []
    while t < utc(around) + 4 * 3600:
        n = spec.next_after(t)
        assert n > t
        assert spec.at_or_before(n) == n
        assert spec.at_or_before(n - 1) <= t or spec.at_or_before(n - 1) == t
        seen.append(n)
        t = n
    assert seen == sorted(set(seen))  # strictly increasing: each instant once


def test_execution_ids_are_deterministic():
    t = utc("2026-12-01T02:00:00")
    assert execution_id("nightly", t) == "sched-nightly-20261201T020000Z"
    assert execution_id("nightly", t) == execution_id("nightly", t + 0.4)
    assert trigger_execution_id("n", t + 0.25) == "sched-n-trigger-20261201T020000.250000Z"


# -- decisions -------------------------------------------------------------------------------

MINUTE = ScheduleSpec.build(every="1m")


def decide(now, next_due, *, overlap="skip", catch_up="none", running=False, buffered=None):
    return plan(
        MINUTE,
        now=now,
        next_due_at=next_due,
        last_due_at=None,
        buffered_at=buffered,
        overlap=overlap,
        catch_up=catch_up,
        running=running,
    )


def test_nothing_is_due_before_its_time():
    p = decide(59.0, 60.0)
    assert p.start == () and p.record == () and p.next_due_at == 60.0


def test_on_time_due_time_starts_and_advances():
    p = decide(60.5, 60.0)
    assert p.start == (60.0,)
    assert [d.outcome for d in p.record] == ["started"]
    assert p.next_due_at == 120.0 and p.last_due_at == 60.0


@pytest.mark.parametrize("catch_up", ["none", "last", "all"])
def test_catch_up_after_downtime(catch_up):
    # down from 60 to 10 minutes past: due times 60..600 passed; 600 is 30 s old, on time
    now = 630.0
    p = decide(now, 60.0, catch_up=catch_up, overlap="allow")
    if catch_up == "all":
        assert p.start == tuple(float(t) for t in range(60, 601, 60))
    else:
        assert p.start == (600.0,)
    missed = [d for d in p.record if d.outcome == "missed"]
    assert len(missed) == (0 if catch_up == "all" else 1)
    assert p.next_due_at == 660.0


def test_catch_up_none_skips_a_due_time_that_is_late():
    # the latest due time is more than GRACE old: missed under none, started under last
    spec = ScheduleSpec.build(every="1h")
    late = plan(
        spec, now=3600 * 3 + GRACE + 5, next_due_at=3600.0, last_due_at=None, buffered_at=None,
        overlap="skip", catch_up="none", running=False,
    )
    assert late.start == ()
    assert [d.outcome for d in late.record] == ["missed"]
    assert "3 due time(s) missed" in late.record[0].detail
    last = plan(
        spec, now=3600 * 3 + GRACE + 5, next_due_at=3600.0, last_due_at=None, buffered_at=None,
        overlap="skip", catch_up="last", running=False,
    )
    assert last.start == (10800.0,)


def test_catch_up_all_is_bounded():
    p = decide(60.0 * 1000 + 1, 60.0, catch_up="all", overlap="allow")
    assert len(p.start) == MAX_CATCH_UP
    assert p.start[-1] == 60000.0 and p.start[0] == 60000.0 - 60 * (MAX_CATCH_UP - 1)
    assert any(d.outcome == "missed" and "more than" in d.detail for d in p.record)


def test_overlap_skip_records_the_skip():
    p = decide(60.5, 60.0, running=True)
    assert p.start == ()
    assert [(d.due_at, d.outcome) for d in p.record] == [(60.0, "skipped")]
    assert p.next_due_at == 120.0


def test_overlap_allow_starts_anyway():
    assert decide(60.5, 60.0, running=True, overlap="allow").start == (60.0,)


def test_overlap_buffer_one_keeps_one_and_starts_it_when_free():
    p = decide(60.5, 60.0, running=True, overlap="buffer-one")
    assert p.start == () and p.buffered_at == 60.0
    p2 = decide(120.5, 120.0, running=True, overlap="buffer-one", buffered=60.0)
    assert p2.start == () and p2.buffered_at == 60.0
    assert [d.outcome for d in p2.record] == ["skipped"]
    p3 = decide(130.0, 180.0, running=False, overlap="buffer-one", buffered=60.0)
    assert p3.start == (60.0,) and p3.buffered_at is None
    # a buffered one starting counts as running for a due time in the same look
    p4 = decide(180.5, 180.0, running=False, overlap="buffer-one", buffered=60.0)
    assert p4.start == (60.0,) and p4.buffered_at == 180.0


def test_catch_up_all_with_skip_starts_the_earliest_only():
    p = decide(300.5, 60.0, catch_up="all", overlap="skip")
    assert p.start == (60.0,)
    assert [d.outcome for d in p.record].count("skipped") == 4


def test_scheduled_time_reads_the_due_time_from_the_id():
    from flux.schedules import scheduled_time

    t = utc("2026-12-01T02:00:00")
    assert scheduled_time(execution_id("a-b.c", t)).timestamp() == t
    assert scheduled_time(trigger_execution_id("x", t + 0.5)).timestamp() == t + 0.5
    assert scheduled_time("0123abcd") is None
    assert scheduled_time("sched-x-garbage") is None
