"""The time-skipping engine of ``flux.testing`` (see docs/testing.md)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from flux.runtime import wakes
from flux.runtime.context import ExecutionContext
from flux.runtime.engine import Engine, open_engine
from flux.runtime.events import ExecutionState
from flux.runtime.records import SignalRecord
from flux.runtime.settings import Settings
from flux.runtime.workflow import MISSING, workflow

__all__ = ["TestEngine", "engine"]


def _mock_clock() -> Any:
    """trio's MockClock when the test runs under one (pytest-trio's ``autojump_clock``)."""
    try:
        import trio
        import trio.testing

        clock = trio.lowlevel.current_clock()  # RuntimeError outside trio (asyncio)
    except (ImportError, RuntimeError):
        return None
    return clock if isinstance(clock, trio.testing.MockClock) else None


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"time moves forward only: seconds >= 0 or a timedelta, got {value!r}")
    return float(seconds)


class TestEngine:
    """An embedded engine whose clock is virtual; build it with :func:`engine`.

    ``engine`` is the :class:`~flux.runtime.engine.Engine` itself (pass it as
    ``wf.arun(..., engine=t.engine)`` or call its methods). The helpers run workflows and move
    time: a run is taken on until it ends or waits for something that time cannot bring (a
    signal with no timeout, a resume), so a workflow that sleeps a week tests in milliseconds.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start: float):
        self._start = start
        self._t0 = anyio.current_time()
        self._offset = 0.0
        self._mock = _mock_clock()
        self.engine: Engine = None  # type: ignore[assignment]  # set by engine()

    # ---------------------------------------------------------------- time

    def clock(self) -> float:
        """The engine clock: Unix seconds, starting at ``start`` and moving with virtual time."""
        return self._start + (anyio.current_time() - self._t0) + self._offset

    def now(self) -> datetime:
        """:meth:`clock` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.clock(), UTC)

    @property
    def virtual(self) -> bool:
        """True under trio's MockClock: every timer (retry backoff, task timeouts) is virtual;
        else only the engine clock is (durable sleeps and receive timeouts)."""
        return self._mock is not None

    async def _jump(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.sleep(0)
            return
        if self._mock is not None:
            self._mock.jump(seconds)
        else:
            self._offset += seconds
        await anyio.sleep(0)

    async def advance(self, by: float | timedelta) -> list[ExecutionContext]:
        """Move time forward ``by`` seconds (or a timedelta), running every execution that
        comes due on the way at its own time, in order. Returns what those runs came to."""
        target = self.clock() + _seconds(by)
        done: list[ExecutionContext] = []
        while True:
            done.extend(await self.engine.wake_due())
            when = await wakes.next_wake(self.engine)
            if when is None or when > target:
                break
            await self._jump(when - self.clock())
        await self._jump(target - self.clock())
        done.extend(await self.engine.wake_due())
        return done

    # ---------------------------------------------------------------- running

    async def start(
        self, wf: workflow, input: Any = None, *, execution_id: str | None = None
    ) -> ExecutionContext:
        """Run ``wf`` until it ends or first waits (no time skipped)."""
        return await self.engine.run(wf, input, execution_id=execution_id)

    async def run(
        self, wf: workflow, input: Any = None, *, execution_id: str | None = None
    ) -> ExecutionContext:
        """Run ``wf`` and skip time until it ends, pauses or waits for a signal with no
        timeout; returns the execution as it is then."""
        ctx = await self.start(wf, input, execution_id=execution_id)
        return await self.settle(ctx.execution_id)

    async def settle(self, execution_id: str) -> ExecutionContext:
        """Skip time until ``execution_id`` ends, pauses, or waits with nothing due."""
        while True:
            ctx = await self.engine.get(execution_id)
            rec = await self.engine.store.get_execution(execution_id)
            if rec is None or ctx.state is not ExecutionState.SCHEDULED:
                return ctx
            await self.engine.wake_due()
            rec = await self.engine.store.get_execution(execution_id)
            if rec is None or rec.state is not ExecutionState.SCHEDULED:
                return await self.engine.get(execution_id)
            when = await wakes.next_wake(self.engine)
            if when is None:
                return await self.engine.get(execution_id)
            await self._jump(when - self.clock())

    async def send_signal(self, execution_id: str, topic: str, value: Any = None) -> SignalRecord:
        """Send a signal and run the executions it wakes up to their next wait (no time
        skipped). Returns the signal as stored."""
        sent = await self.engine.send_signal(execution_id, topic, value)
        await self.engine.wake_due()
        return sent

    async def resume(self, wf: workflow, execution_id: str, value: Any = MISSING) -> Any:
        """Resume a paused execution with ``value`` (what its ``pause`` returns) and run it
        until it first waits again."""
        return await self.engine.run(wf, execution_id=execution_id, resume_value=value)

    async def get(self, execution_id: str) -> ExecutionContext:
        return await self.engine.get(execution_id)


@contextlib.asynccontextmanager
async def engine(
    *workflows: workflow,
    store: str | None = None,
    start: datetime | float | None = None,
    lease_ttl: float = 60.0,
) -> AsyncIterator[TestEngine]:
    """An engine for tests, on a fresh SQLite store in a temporary directory (or ``store``),
    whose clock starts at ``start`` (a datetime or Unix seconds; default: now) and is tied to
    the event loop's clock: under pytest-trio's ``autojump_clock`` every wait is virtual; on
    asyncio, time moves only when a helper moves it (:meth:`TestEngine.advance`, ``run``).

    Durable sleeps release the run at once (as a worker does with a long sleep), so that a
    sleep, a receive's timeout and a schedule all wake through the same due-time pass.
    ``workflows`` are registered for waking (every workflow run through it is too)."""
    if isinstance(start, datetime):
        begin = start.timestamp()
    elif start is None:
        begin = time.time()
    else:
        begin = float(start)
    tester = TestEngine(begin)
    with contextlib.ExitStack() as stack:
        location = store
        if location is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="flux-test-"))
            location = os.path.join(folder, "flux.db")
        settings = Settings.from_env(store=location, lease_ttl=lease_ttl, durability="normal")
        async with open_engine(settings, clock=tester.clock, cancel_poll=None) as eng:
            eng.suspend_sleep_after = 0.0
            eng.register(*workflows)
            tester.engine = eng
            yield tester
