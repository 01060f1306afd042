"""Schedules: run workflows on a cron expression in a time zone, or every interval.

Manage them with ``engine.schedules`` (:class:`~flux.runtime.scheduler.Schedules`), ``flux
schedules ...`` or the server's ``/schedules`` routes; run them with ``async with
engine.scheduler():``, ``flux start scheduler FILE`` or a server. See docs/schedules.md.
"""

from flux.runtime.scheduler import Schedule, ScheduleDetails, ScheduleFire, Schedules
from flux.runtime.schedules import (
    CATCH_UP_POLICIES,
    MAX_CATCH_UP,
    OVERLAP_POLICIES,
    ScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    execution_id,
    scheduled_time,
)

__all__ = [
    "CATCH_UP_POLICIES",
    "MAX_CATCH_UP",
    "OVERLAP_POLICIES",
    "Schedule",
    "ScheduleDetails",
    "ScheduleError",
    "ScheduleExistsError",
    "ScheduleFire",
    "ScheduleNotFoundError",
    "Schedules",
    "execution_id",
    "scheduled_time",
]
