"""How schedules are shown: the views the API, the CLI and ``engine.schedules`` return."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import codec
from .schedules import (
    ScheduleFireRecord,
    ScheduleNotFoundError,
    ScheduleRecord,
    format_every,
)

if TYPE_CHECKING:
    from .store_api import StoreAPI

__all__ = ["Schedule", "ScheduleDetails", "ScheduleFire", "details", "view"]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------- views


@attrs.frozen
class Schedule:
    """A schedule as the API, the CLI and ``engine.schedules`` show it (times: ISO 8601 UTC)."""

    name: str
    workflow: str
    cron: str | None
    timezone: str | None
    every: str | None
    every_seconds: int | None
    input: Any
    overlap: str
    catch_up: str
    paused: bool
    created_at: str
    updated_at: str
    next_due_at: str | None
    last_due_at: str | None
    last_execution_id: str | None
    buffered_at: str | None
    trigger_pending: bool


@attrs.frozen
class ScheduleFire:
    """One recorded decision of a schedule, with the state of the execution it started."""

    due_at: str
    outcome: str
    execution_id: str | None
    state: str | None
    detail: str
    recorded_at: str


@attrs.frozen
class ScheduleDetails:
    """``show``: the schedule, its next due times and its latest decisions (newest first)."""

    schedule: Schedule
    upcoming: list[str]
    recent: list[ScheduleFire]


def view(rec: ScheduleRecord) -> Schedule:
    return Schedule(
        name=rec.name,
        workflow=rec.workflow,
        cron=rec.cron,
        timezone=rec.timezone,
        every=None if rec.every is None else format_every(rec.every),
        every_seconds=rec.every,
        input=codec.decode(rec.input),
        overlap=rec.overlap,
        catch_up=rec.catch_up,
        paused=bool(rec.paused),
        created_at=_iso(rec.created_at) or "",
        updated_at=_iso(rec.updated_at) or "",
        next_due_at=None if rec.paused else _iso(rec.next_due_at),
        last_due_at=_iso(rec.last_due_at),
        last_execution_id=rec.last_execution_id,
        buffered_at=_iso(rec.buffered_at),
        trigger_pending=rec.trigger_at is not None,
    )


def _fire(fire: ScheduleFireRecord, state: str | None) -> ScheduleFire:
    return ScheduleFire(
        due_at=_iso(fire.due_at) or "",
        outcome=fire.outcome,
        execution_id=fire.execution_id,
        state=state,
        detail=fire.detail,
        recorded_at=_iso(fire.recorded_at) or "",
    )


async def details(
    store: StoreAPI, name: str, now: float, *, upcoming: int = 5, recent: int = 20
) -> ScheduleDetails:
    """What ``show NAME`` prints; ScheduleNotFoundError."""
    rec = await store.get_schedule(name)
    if rec is None:
        raise ScheduleNotFoundError(name)
    times: list[float] = []
    if not rec.paused:
        first = rec.next_due_at if rec.next_due_at is not None else rec.spec.next_after(now)
        times = [first, *rec.spec.upcoming(first, upcoming - 1)] if upcoming > 0 else []
    fires = await store.schedule_fires(name, recent)
    return ScheduleDetails(
        view(rec), [_iso(t) or "" for t in times], [_fire(f, s) for f, s in fires]
    )
