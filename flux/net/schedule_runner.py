"""The server's schedule loop: starts due executions and queues them on the dispatcher.

Runs in the app's nursery (:meth:`flux.net.server.FluxServer.start`). Every schedule is the
server's (``pin_version``: an execution runs the latest uploaded version of its workflow); on
PostgreSQL, several servers run this loop on one database and each due time still starts one
execution (see :mod:`flux.runtime.schedule_store`). Woken when a schedule changes through this
server's API and when an execution a schedule started ends (a buffered due time may start).
"""

from __future__ import annotations

from typing import Any

import trio

from flux.runtime.records import ExecutionRecord
from flux.runtime.schedule_store import Started
from flux.runtime.scheduler import REFRESH, ScheduleLoop

__all__ = ["ServerSchedules"]


#: The longest sleep on a SQLite store: this server is its only writer, so every change of a
#: schedule comes through its API and wakes the loop at once.
SQLITE_REFRESH = 3600.0


class ServerSchedules:
    def __init__(self, store: Any, dispatcher: Any, *, refresh: float | None = None):
        from flux.runtime.store import Store

        if refresh is None:  # PostgreSQL: other servers change schedules too
            refresh = SQLITE_REFRESH if isinstance(store, Store) else REFRESH
        self.dispatcher = dispatcher
        self.loop = ScheduleLoop(
            store, self._start, clock=dispatcher.wall, pin_version=True, refresh=refresh
        )
        dispatcher.on_end.append(self._ended)

    async def _start(self, started: Started) -> None:
        self.dispatcher.submit(started.execution_id)

    def _ended(self, rec: ExecutionRecord) -> None:
        if rec.execution_id.startswith("sched-"):
            self.loop.wake()

    def changed(self) -> None:
        """A schedule changed (created, resumed, triggered...): look again now."""
        self.loop.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.loop.run()
