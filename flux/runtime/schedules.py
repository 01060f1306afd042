"""Schedules: when a schedule is due, and what one look at it decides (sans-IO, no clock).

A schedule starts executions of one workflow on a cron expression in a time zone, or every
fixed interval. Everything here is pure: times are Unix seconds (UTC), passed in by the caller.
The store (:mod:`flux.runtime.schedule_store`) applies a :class:`Plan` atomically, and the
runners (:mod:`flux.runtime.scheduler`) decide when to look.

Rules (see docs/schedules.md):

- **Cron** due times are whole minutes of local wall-clock time in the schedule's time zone
  (zoneinfo). A local time that does not exist (the hour skipped when clocks go forward) is due
  at the instant the clocks jump; a local time that occurs twice (the hour repeated when clocks
  go back) is due once, at its first occurrence. Several local times that fall on one instant
  are one due time: each due instant fires once.
- **Intervals** are whole seconds, aligned on the Unix epoch (``--every 1h`` is due on every
  hour, UTC), so every process computes the same due times.
- A due time is **on time** while it is less than :data:`GRACE` seconds old and the next due
  time has not come yet; older ones were **missed** (the runner was down) and the catch-up
  policy says what to do with them: ``none`` skips them, ``last`` starts one execution for the
  latest, ``all`` starts one for each, at most :data:`MAX_CATCH_UP` (the latest ones).
- **Overlap**, while the schedule's previous execution has not finished (PAUSED counts as not
  finished): ``skip`` records the due time as skipped, ``allow`` starts it anyway,
  ``buffer-one`` keeps one due time waiting (later ones are skipped) and starts it when the
  running one ends.
- Each due time starts at most one execution, with the id :func:`execution_id` derives from
  the schedule's name and the due time, so a second start anywhere is refused by the store.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from .errors import WorkflowError

__all__ = [
    "CATCH_UP_POLICIES",
    "FIRE_COLUMNS",
    "SCHEDULE_COLUMNS",
    "ScheduleExistsError",
    "ScheduleFireRecord",
    "ScheduleNotFoundError",
    "ScheduleRecord",
    "GRACE",
    "MAX_CATCH_UP",
    "OVERLAP_POLICIES",
    "Due",
    "Plan",
    "ScheduleError",
    "ScheduleSpec",
    "check_name",
    "execution_id",
    "new_record",
    "parse_every",
    "plan",
    "scheduled_time",
    "trigger_execution_id",
]

#: How long after its time a due time still counts as on time (seconds).
GRACE = 60.0
#: The most executions one catch-up with policy ``all`` starts (the latest missed due times).
MAX_CATCH_UP = 100
OVERLAP_POLICIES = ("skip", "allow", "buffer-one")
#: The longest interval (seconds): 3660 days.
MAX_EVERY = 3660 * 86400
CATCH_UP_POLICIES = ("none", "last", "all")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVERY = re.compile(r"(\d+)\s*([smhdw])")
#: Longest stretch of local time a DST change moves (seconds); Troll station moves 2 h.
_SHIFT = 3 * 3600


class ScheduleError(WorkflowError):
    """A schedule given wrong: bad name, cron expression, time zone, interval or policy."""


class ScheduleNotFoundError(ScheduleError):
    def __init__(self, name: str):
        super().__init__(f"no schedule named {name!r}")
        self.name = name


class ScheduleExistsError(ScheduleError):
    def __init__(self, name: str):
        super().__init__(f"a schedule named {name!r} already exists")
        self.name = name


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ScheduleError(
            f"schedule name {name!r} is not valid: 1 to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_every(text: object) -> int:
    """An interval in whole seconds from ``30s``, ``5m``, ``1h30m``, ``2d``, ``1w`` or a bare
    number of seconds; ScheduleError for anything else, zero or less included."""
    if isinstance(text, bool):
        raise ScheduleError(f"interval {text!r} is not a duration")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text != int(text) or text <= 0:
            raise ScheduleError(
                f"interval {text!r} must be a whole number of seconds greater than 0"
            )
        return parse_every(str(int(text)))
    if isinstance(text, timedelta):
        return parse_every(text.total_seconds())
    if not isinstance(text, str):
        raise ScheduleError(f"interval {text!r} is not a duration")
    words = text.strip().lower()
    if re.fullmatch(r"\d+", words):
        seconds = int(words)
    else:
        compact = words.replace(" ", "")
        parts = _EVERY.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ScheduleError(
                f"interval {text!r} is not a duration like 30s, 5m, 1h30m, 2d or 1w "
                "(whole seconds at least)"
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ScheduleError(f"interval {text!r} must be greater than 0 seconds")
    if seconds > MAX_EVERY:
        raise ScheduleError(f"interval {text!r} is longer than the limit of 3660 days")
    return seconds


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin or UTC)"
        ) from None


def _cron(expr: object) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError(f"cron expression {expr!r} is empty")
    text = " ".join(expr.split())
    text = _ALIASES.get(text.lower(), text)
    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    if len(text.split()) != 5:
        raise ScheduleError(
            f"bad cron expression {expr!r}: expected 5 fields (minute hour day month weekday)"
        )
    return text


@attrs.frozen
class ScheduleSpec:
    """When a schedule is due: ``cron`` in ``timezone``, or ``every`` seconds."""

    cron: str | None = None
    timezone: str | None = None
    every: int | None = None

    @classmethod
    def build(
        cls, *, cron: str | None = None, timezone: str | None = None, every: object = None
    ) -> ScheduleSpec:
        """A checked spec, or ScheduleError naming what is wrong."""
        if (cron is None) == (every is None):
            raise ScheduleError("a schedule needs either a cron expression or an interval")
        if every is not None:
            if timezone is not None:
                raise ScheduleError("a time zone applies to cron schedules, not to intervals")
            return cls(every=parse_every(every))
        zone = timezone if timezone is not None else "UTC"
        _zone(zone)
        return cls(cron=_cron(cron), timezone=zone)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone or "UTC")

    def describe(self) -> str:
        if self.every is not None:
            return f"every {format_every(self.every)}"
        return f"cron {self.cron!r} ({self.timezone})"

    # ----------------------------------------------------------------------- due times

    def next_after(self, t: float) -> float:
        """The first due time strictly after ``t``."""
        if self.every is not None:
            return float((math.floor(t) // self.every + 1) * self.every)
        zone = self.zone
        start = _wall(t, zone)
        for wall in CronSim(self.cron, start):
            due = _instant(wall, zone)
            if due > t:
                return due
        raise AssertionError("unreachable: cron iteration ended")

    def at_or_before(self, t: float) -> float:
        """The latest due time at or before ``t``."""
        if self.every is not None:
            return float(math.floor(t) // self.every * self.every)
        zone = self.zone
        # local wall time is not monotonic in UTC time when clocks go back: start late enough
        start = _wall(t, zone) + timedelta(seconds=_SHIFT + 60)
        for wall in CronSim(self.cron, start, reverse=True):
            due = _instant(wall, zone)
            if due <= t:
                return due
        raise AssertionError("unreachable: cron iteration ended")

    def upcoming(self, t: float, count: int) -> list[float]:
        """The next ``count`` due times after ``t``."""
        found: list[float] = []
        for _ in range(count):
            t = self.next_after(t)
            found.append(t)
        return found

    def due_between(self, after: float, until: float, limit: int) -> tuple[list[float], bool]:
        """Due times in ``[after, until]``, ascending: the latest ``limit`` of them, and whether
        there were more (older ones left out)."""
        found: list[float] = []
        t = self.at_or_before(until)
        while t >= after and len(found) <= limit:
            found.append(t)
            t = self.at_or_before(t - 1)
        more = len(found) > limit
        return found[:limit][::-1], more


def format_every(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _wall(t: float, zone: ZoneInfo) -> datetime:
    """The local wall-clock time (naive, whole seconds) at instant ``t``."""
    return datetime.fromtimestamp(math.floor(t), zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: ZoneInfo) -> float:
    """The instant a local wall-clock time is due: its first occurrence when it occurs twice,
    the instant the clocks jump when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0)
    t = first.timestamp()
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return t
    # nonexistent: fold=0 reads it with the offset from before the jump (an instant after it),
    # fold=1 with the offset after it (an instant before): the jump lies between
    low = wall.replace(tzinfo=zone, fold=1).timestamp()
    high = t
    if low > high:
        low, high = high, low
    low, high = math.floor(low), math.ceil(high)
    while high - low > 1:  # the first instant whose local time is past ``wall``
        mid = (low + high) // 2
        if _wall(mid, zone) > wall:
            high = mid
        else:
            low = mid
    return float(high)


def execution_id(name: str, due: float) -> str:
    """The id of the execution that due time ``due`` of schedule ``name`` starts."""
    stamp = datetime.fromtimestamp(math.floor(due), UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"sched-{name}-{stamp}"


def trigger_execution_id(name: str, at: float) -> str:
    """The id of the execution a manual trigger at ``at`` starts (microseconds: two triggers
    a second apart are two executions)."""
    when = datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"sched-{name}-trigger-{when}"


def scheduled_time(execution_id: str) -> datetime | None:
    """The due time (UTC) an execution a schedule started was started for, read from its id
    (a trigger's: when it was asked for); None for an execution no schedule started. The same
    on every replay, so a workflow may use it (``scheduled_time(ctx.execution_id)``)."""
    if not isinstance(execution_id, str) or not execution_id.startswith("sched-"):
        return None
    stamp = execution_id.rsplit("-", 1)[-1]
    for form in ("%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S.%fZ"):
        try:
            return datetime.strptime(stamp, form).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------------------------- decisions


@attrs.frozen
class Due:
    """One decision about one due time: ``outcome`` is ``started``, ``buffered``, ``skipped``
    (overlap) or ``missed`` (catch-up); ``count`` is how many due times a ``missed`` line
    stands for (``more``: at least that many)."""

    due_at: float
    outcome: str
    detail: str = ""


@attrs.frozen
class Plan:
    """What one look at a schedule decided: due times to start now (in order), the decisions
    to record, and the schedule's new state."""

    start: tuple[float, ...]
    record: tuple[Due, ...]
    next_due_at: float | None
    last_due_at: float | None
    buffered_at: float | None

    @property
    def changed(self) -> bool:
        return bool(self.start or self.record)


def plan(
    spec: ScheduleSpec,
    *,
    now: float,
    next_due_at: float | None,
    last_due_at: float | None,
    buffered_at: float | None,
    overlap: str,
    catch_up: str,
    running: bool,
) -> Plan:
    """Decide what schedule ``spec`` does at ``now``.

    ``running``: the schedule's latest execution has not finished. A buffered due time starts
    first once nothing runs; then the due times from ``next_due_at`` up to ``now`` go through
    the catch-up policy, then through the overlap policy in order (an execution started here
    counts as running for the due times after it)."""
    start: list[float] = []
    record: list[Due] = []
    if buffered_at is not None and not running:
        start.append(buffered_at)
        record.append(Due(buffered_at, "started", "buffered due time, after the previous run"))
        buffered_at = None
        running = True
    if next_due_at is None or next_due_at > now:
        return Plan(tuple(start), tuple(record), next_due_at, last_due_at, buffered_at)
    due, more = spec.due_between(next_due_at, now, MAX_CATCH_UP)
    new_next = spec.next_after(now)
    if not due:
        return Plan(tuple(start), tuple(record), new_next, last_due_at, buffered_at)
    latest = due[-1]
    on_time = now < min(latest + GRACE, new_next)
    if catch_up == "all":
        fire = due
        missed: list[float] = []
    elif catch_up == "last" or on_time:
        fire, missed = [latest], due[:-1]
    else:
        fire, missed = [], due
    if missed:
        since = datetime.fromtimestamp(missed[0], UTC)
        record.append(
            Due(
                missed[-1],
                "missed",
                f"{len(missed)}{'+' if more else ''} due time(s) missed since "
                f"{since:%Y-%m-%dT%H:%M:%SZ} (catch-up {catch_up})",
            )
        )
    elif more:
        record.append(
            Due(
                due[0],
                "missed",
                f"more than {MAX_CATCH_UP} due times were missed: catch-up all starts the "
                f"latest {MAX_CATCH_UP}",
            )
        )
    for t in fire:
        if overlap == "allow" or not running:
            start.append(t)
            record.append(Due(t, "started"))
            running = True
        elif overlap == "buffer-one" and buffered_at is None:
            buffered_at = t
            record.append(Due(t, "buffered", "the previous execution is still running"))
        else:
            why = "another due time is already buffered" if overlap == "buffer-one" else (
                "the previous execution is still running"
            )
            record.append(Due(t, "skipped", why))
    return Plan(tuple(start), tuple(record), new_next, latest, buffered_at)



# ---------------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class ScheduleRecord:
    """One row of the ``schedules`` table. ``input`` is codec-encoded; times are Unix seconds;
    ``paused`` is 0 or 1 (an integer on both stores)."""

    name: str
    workflow: str
    cron: str | None = None
    timezone: str | None = None
    every: int | None = None
    input: bytes
    overlap: str = "skip"
    catch_up: str = "none"
    paused: int = 0
    created_at: float
    updated_at: float
    #: the first due time not looked at yet (None: paused before its first)
    next_due_at: float | None = None
    #: the latest due time that was looked at (started, skipped or missed)
    last_due_at: float | None = None
    #: the id of the latest execution this schedule started
    last_execution_id: str | None = None
    #: a due time waiting for the running execution to end (overlap buffer-one)
    buffered_at: float | None = None
    #: when a manual trigger was asked for and not served yet
    trigger_at: float | None = None
    #: how many decisions were recorded (the seq of the latest ``schedule_fires`` row)
    fire_count: int = 0

    @property
    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(cron=self.cron, timezone=self.timezone, every=self.every)


@attrs.frozen
class ScheduleFireRecord:
    """One row of the ``schedule_fires`` table: what one due time (or trigger) of a schedule
    did. ``outcome``: ``started``, ``triggered``, ``buffered``, ``skipped``, ``missed``,
    ``duplicate`` (its execution id already existed) or ``error``."""

    schedule_name: str
    seq: int
    due_at: float
    outcome: str
    execution_id: str | None
    detail: str
    recorded_at: float


SCHEDULE_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(ScheduleRecord))
FIRE_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(ScheduleFireRecord))


def new_record(
    name: object,
    workflow: object,
    *,
    input: bytes,
    now: float,
    cron: str | None = None,
    timezone: str | None = None,
    every: object = None,
    overlap: object = "skip",
    catch_up: object = "none",
    paused: bool = False,
) -> ScheduleRecord:
    """A checked new schedule (``input`` already encoded by the codec); its first due time is
    the first one after ``now``. ScheduleError naming what is wrong."""
    check_name(name)
    if not isinstance(workflow, str) or not workflow.strip():
        raise ScheduleError(f"a schedule needs a workflow name, got {workflow!r}")
    if overlap not in OVERLAP_POLICIES:
        raise ScheduleError(
            f"overlap policy {overlap!r} is not one of {', '.join(OVERLAP_POLICIES)}"
        )
    if catch_up not in CATCH_UP_POLICIES:
        raise ScheduleError(
            f"catch-up policy {catch_up!r} is not one of {', '.join(CATCH_UP_POLICIES)}"
        )
    spec = ScheduleSpec.build(cron=cron, timezone=timezone, every=every)
    assert isinstance(name, str)
    return ScheduleRecord(
        name=name,
        workflow=workflow,
        cron=spec.cron,
        timezone=spec.timezone,
        every=spec.every,
        input=input,
        overlap=overlap,  # type: ignore[arg-type]
        catch_up=catch_up,  # type: ignore[arg-type]
        paused=int(bool(paused)),
        created_at=now,
        updated_at=now,
        next_due_at=spec.next_after(now),
    )
