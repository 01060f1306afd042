"""Running schedules: the loop that starts due executions, and ``engine.schedules``.

:class:`ScheduleLoop` is the one loop both runners use. It claims what is due (one store
transaction: see :mod:`flux.runtime.schedule_store`), hands each started execution to its
runner, then sleeps until the earliest next due time by the engine's clock, woken at once when
a schedule changes in this process or one of its executions ends, and at the latest after
``refresh`` seconds (changes made by other processes). It never polls faster than that.

- Embedded (:class:`Schedules`, ``engine.schedules``; ``flux start scheduler``): the engine runs
  each started execution in this process, like ``flux run``. Only schedules of workflows the
  runner knows (registered with :meth:`Schedules.register`, or passed to
  :meth:`Schedules.create`) are claimed, so several runners on one database may each run their
  own workflows.
- Server (:mod:`flux.net.schedule_runner`): every schedule is claimed; each started execution
  goes to the dispatcher, pinned to the latest uploaded version of its workflow.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from . import codec
from .errors import ExecutionLeasedError, StoppedError, StoreError
from .events import ExecutionState
from .schedule_store import Started
from .schedule_views import Schedule, ScheduleDetails, ScheduleFire, details, view
from .schedules import (
    ScheduleError,
    ScheduleNotFoundError,
    new_record,
)
from .workflow import workflow

if TYPE_CHECKING:
    from .engine import Engine
    from .store_api import StoreAPI

__all__ = [
    "REFRESH",
    "Schedule",
    "ScheduleDetails",
    "ScheduleFire",
    "ScheduleLoop",
    "Schedules",
    "details",
    "view",
]

log = logging.getLogger("flux.schedules")

#: Longest sleep of a loop between two looks at the store (changes made by other processes).
REFRESH = 5.0
#: Least time between two looks for executions another scheduler left unfinished (seconds).
RECOVER_EVERY = 60.0
#: Executions one claim starts at most (the loop claims again at once when it was full).
CLAIM_LIMIT = 50


# ---------------------------------------------------------------------------------- the loop


class ScheduleLoop:
    """Claims due schedules and hands what it started to ``start``; see the module docstring.

    ``workflows``: a callable giving the workflow names this runner may start (None: all);
    ``clock``: Unix seconds (the engine's clock, so tests run it in virtual time)."""

    def __init__(
        self,
        store: StoreAPI,
        start: Callable[[Started], Awaitable[None]],
        *,
        clock: Callable[[], float],
        workflows: Callable[[], Iterable[str]] | None = None,
        pin_version: bool = False,
        refresh: float = REFRESH,
    ):
        if not refresh > 0:
            raise ValueError(f"refresh must be > 0 seconds, got {refresh!r}")
        self.store = store
        self.start = start
        self.clock = clock
        self.workflows = workflows
        self.pin_version = pin_version
        self.refresh = refresh
        self._changed = anyio.Event()
        #: claims made (a counter for tests and statistics)
        self.claims = 0

    def wake(self) -> None:
        """Look at the store again now (a schedule changed, an execution of one ended)."""
        self._changed.set()

    async def run(self) -> None:
        """Claim and sleep until cancelled. A store fault is logged and retried (backoff up to
        ``refresh``), never ends the loop."""
        delay = 0.1
        while True:
            self._changed = anyio.Event()
            try:
                wait = await self.step()
                delay = 0.1
            except (StoreError, StoppedError) as exc:  # StoreUnavailableError is a stop
                log.warning("schedules: store unavailable (%s); retrying in %.1fs", exc, delay)
                wait, delay = delay, min(delay * 2, self.refresh)
            except Exception:  # a bug must not take the server or the app down with it
                log.exception("schedules: the loop failed; retrying in %.1fs", delay)
                wait, delay = delay, min(delay * 2, self.refresh)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._changed.wait()

    async def step(self) -> float:
        """One look: claim what is due and start it; returns how long to sleep."""
        names = None if self.workflows is None else list(self.workflows())
        while True:
            started = await self.store.claim_due_schedules(
                self.clock(), workflows=names, pin_version=self.pin_version, limit=CLAIM_LIMIT
            )
            self.claims += 1
            for s in started:
                await self.start(s)
            if len(started) < CLAIM_LIMIT:
                break
        wake = await self.store.next_schedule_wake(names)
        if wake is None:
            return self.refresh
        if wake == -math.inf:
            # a trigger or a startable buffered due time arrived after the claim
            # (or another server holds its row locked for a moment)
            return 0.05
        return max(0.0, min(wake - self.clock(), self.refresh))


# ---------------------------------------------------------------------------------- embedded


class Schedules:
    """``engine.schedules``: manage the store's schedules and run them in this engine.

    ``create``, ``list``, ``get``, ``show``, ``pause``, ``resume``, ``delete`` and ``trigger``
    work on the store (any process may run them); :meth:`run` (or ``async with
    engine.scheduler():``) starts the due executions of the workflows this object knows and
    runs them in the engine, at most ``max_running`` at once (the others wait, SCHEDULED)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._workflows: dict[str, workflow] = {}
        self._loop: ScheduleLoop | None = None
        self._stopping = False
        #: executions this object runs now, and those waiting for a free slot
        self._mine: set[str] = set()
        self._waiting: set[anyio.CancelScope] = set()
        #: executions with a task here (waiting or running)
        self._tasks: set[str] = set()

    # -- workflows --------------------------------------------------------------------------

    def register(self, *workflows: workflow) -> None:
        """Let :meth:`run` start these workflows (by their names)."""
        for wf in workflows:
            if not isinstance(wf, workflow):
                raise TypeError(f"{wf!r} is not a @workflow")
            self._workflows[wf.name] = wf
        self._changed()

    @property
    def workflows(self) -> dict[str, workflow]:
        return dict(self._workflows)

    def _changed(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    # -- management ---------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        workflow: workflow | str,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        every: str | int | Any = None,
        input: Any = None,
        overlap: str = "skip",
        catch_up: str = "none",
        paused: bool = False,
    ) -> Schedule:
        """Create a schedule (its first due time: the first after now). ``workflow`` is a
        ``@workflow`` (registered for :meth:`run` too) or a workflow's name. ScheduleError
        naming what is wrong; ScheduleExistsError for a taken name."""
        wf_name = workflow.name if isinstance(workflow, _workflow_type) else workflow
        try:
            data = codec.encode(input)
        except Exception as exc:
            raise ScheduleError(f"input of schedule {name!r}: {exc}") from None
        rec = new_record(
            name,
            wf_name,
            input=data,
            now=self.engine.clock(),
            cron=cron,
            timezone=timezone,
            every=every,
            overlap=overlap,
            catch_up=catch_up,
            paused=paused,
        )
        rec = await self.engine.store.create_schedule(rec)
        if isinstance(workflow, _workflow_type):
            self.register(workflow)
        self._changed()
        return view(rec)

    async def list(self) -> list[Schedule]:
        return [view(r) for r in await self.engine.store.list_schedules()]

    async def get(self, name: str) -> Schedule:
        rec = await self.engine.store.get_schedule(name)
        if rec is None:
            raise ScheduleNotFoundError(name)
        return view(rec)

    async def show(self, name: str, *, upcoming: int = 5, recent: int = 20) -> ScheduleDetails:
        """The schedule, its next ``upcoming`` due times and its latest decisions."""
        return await details(
            self.engine.store, name, self.engine.clock(), upcoming=upcoming, recent=recent
        )

    async def pause(self, name: str) -> Schedule:
        rec = await self.engine.store.set_schedule_paused(name, True, self.engine.clock())
        self._changed()
        return view(rec)

    async def resume(self, name: str) -> Schedule:
        """Resume: the next due time is the first after now (none of those that passed while
        it was paused is caught up)."""
        rec = await self.engine.store.set_schedule_paused(name, False, self.engine.clock())
        self._changed()
        return view(rec)

    async def delete(self, name: str) -> None:
        if not await self.engine.store.delete_schedule(name):
            raise ScheduleNotFoundError(name)
        self._changed()

    async def trigger(self, name: str) -> str:
        """Start one execution of the schedule now, whatever its overlap policy and even when
        paused, by whichever runner serves it (this engine's loop at once, if it runs).
        Returns the id the execution gets."""
        eid = await self.engine.store.trigger_schedule(name, self.engine.clock())
        self._changed()
        return eid

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        refresh: float = REFRESH,
        max_running: int = 100,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run this engine's schedules until cancelled: first the executions that earlier
        runs of schedules left unfinished (a crash), then every due time as it comes.

        Cancelling this *stops* the executions it runs (nothing is recorded, they stay
        resumable and the next scheduler goes on with them); it does not cancel them."""
        if self._loop is not None:
            raise RuntimeError("this engine's schedules are running already")
        limiter = anyio.CapacityLimiter(max_running)
        self._stopping = False
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            runs: anyio.abc.TaskGroup = await tg.start(self._host, done)

            async def start(s: Started) -> None:
                runs.start_soon(self._execute, s.execution_id, s.workflow, limiter)

            loop = ScheduleLoop(
                self.engine.store,
                start,
                clock=self.engine.clock,
                workflows=lambda: self._workflows,
                refresh=refresh,
            )
            self._loop = loop
            try:
                await self._recover(runs, limiter, stale_only=False)
                tg.start_soon(self._recover_often, runs, limiter, max(refresh, RECOVER_EVERY))
                task_status.started()
                await loop.run()
            finally:
                self._loop = None
                with anyio.CancelScope(shield=True):
                    await self._stop_runs(done)

    async def _host(
        self, done: anyio.Event, *, task_status: anyio.abc.TaskStatus[Any]
    ) -> None:
        """Hold the executions' task group, shielded from the caller's cancellation: they are
        stopped (see :meth:`_stop_runs`), not cancelled."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as runs:
                task_status.started(runs)
                await done.wait()

    async def _stop_runs(self, done: anyio.Event) -> None:
        self._stopping = True
        while True:
            for scope in list(self._waiting):
                scope.cancel()
            for eid in list(self._mine):
                self.engine.stop_run(
                    eid,
                    StoppedError(
                        f"execution {eid}: the scheduler stopped; the next scheduler on this "
                        "store goes on with it"
                    ),
                )
            if not self._mine and not self._waiting:
                break
            await anyio.sleep(0.02)
        done.set()

    async def _recover(
        self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter, *, stale_only: bool
    ) -> None:
        """Run the unfinished executions schedules started whose runner stopped (a scheduler
        killed before or while running them); ``stale_only``: only those nobody holds."""
        records = await self.engine.store.list_executions(
            state=[ExecutionState.SCHEDULED, ExecutionState.RUNNING], limit=None
        )
        now = self.engine.clock()
        for rec in reversed(records):
            eid = rec.execution_id
            if not eid.startswith("sched-") or rec.workflow_name not in self._workflows:
                continue
            if eid in self._tasks:
                continue
            held = rec.lease_owner is not None and (rec.lease_expires_at or 0) > now
            if stale_only and held:
                continue
            tg.start_soon(self._execute, eid, rec.workflow_name, limiter)

    async def _recover_often(
        self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter, every: float
    ) -> None:
        """Now and then, take over what another scheduler on this store left (it died)."""
        while True:
            await anyio.sleep(every)
            try:
                await self._recover(tg, limiter, stale_only=True)
            except (StoreError, StoppedError) as exc:
                log.warning("schedules: cannot look for unfinished executions: %s", exc)

    async def _execute(
        self, execution_id: str, workflow_name: str, limiter: anyio.CapacityLimiter
    ) -> None:
        wf = self._workflows.get(workflow_name)
        if wf is None or self._stopping or execution_id in self._tasks:
            return
        self._tasks.add(execution_id)
        try:
            await self._execute_once(wf, execution_id, limiter)
        finally:
            self._tasks.discard(execution_id)

    async def _execute_once(
        self, wf: workflow, execution_id: str, limiter: anyio.CapacityLimiter
    ) -> None:
        acquired = False
        with anyio.CancelScope() as waiting:
            self._waiting.add(waiting)
            await limiter.acquire()
            acquired = True
        self._waiting.discard(waiting)
        if not acquired:
            return
        self._mine.add(execution_id)
        try:
            if self._stopping:
                return
            # nobody awaits this run: user code raising SystemExit & co fails only it
            self.engine.base_exceptions_fail_for.add(execution_id)
            try:
                ctx = await self.engine.run(wf, None, execution_id=execution_id)
            finally:
                self.engine.base_exceptions_fail_for.discard(execution_id)
            log.info("execution %s (schedule): %s", execution_id, ctx.state.value)
        except ExecutionLeasedError:
            log.info("execution %s (schedule): another runner holds it", execution_id)
        except StoppedError as stop:
            log.info("execution %s (schedule) stopped: %s", execution_id, stop)
        except Exception:
            log.exception("execution %s (schedule) could not run", execution_id)
        finally:
            self._mine.discard(execution_id)
            limiter.release()
            self._changed()  # a buffered due time may start now

    @contextlib.asynccontextmanager
    async def running(self, **options: Any) -> AsyncIterator[Schedules]:
        """Run the schedules in the background for the body of an ``async with``."""
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: self.run(task_status=task_status, **options))
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()  # run() stops its executions, it does not cancel them


_workflow_type = workflow


# ---------------------------------------------------------------------------------- flux start


def workflows_from_files(paths: Iterable[str]) -> list[workflow]:
    """Every ``@workflow`` defined in the given Python files (WorkflowError for a file that
    cannot load or defines none)."""
    from .errors import WorkflowError
    from .loader import load_file, workflows_in

    found: list[workflow] = []
    for path in paths:
        defined = workflows_in(load_file(path))
        if not defined:
            raise WorkflowError(f"{path} defines no @workflow")
        found.extend(defined.values())
    return found


async def uploaded_workflows(store: StoreAPI) -> list[workflow]:
    """The latest uploaded version of every workflow in the store (``flux workflow register``
    on a server using it), loaded in a worker thread as a worker loads them."""
    from .errors import WorkflowError
    from .loader import load_source, workflows_in

    found: list[workflow] = []
    for rec in await store.list_workflows():
        source = (await store.get_workflow(rec.name, rec.version)) or rec
        name = f"flux_src_{source.source_hash[:16]}"
        try:
            module = await anyio.to_thread.run_sync(load_source, source.source, name)
        except Exception as exc:
            raise WorkflowError(
                f"uploaded workflow {rec.name!r} version {rec.version} cannot load: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        wf = workflows_in(module).get(rec.name)
        if wf is not None:
            found.append(wf)
    return found


async def serve(
    settings: Any,
    workflows: Iterable[workflow] | None,
    *,
    refresh: float = REFRESH,
    max_running: int = 100,
    handle_signals: bool = False,
    started: Callable[[Engine, list[str]], None] | None = None,
) -> None:
    """``flux start scheduler``: run the store's schedules of ``workflows`` (None: the
    workflows uploaded to the store) in this process until cancelled (or, with
    ``handle_signals``, SIGTERM/SIGINT). Stopping stops the executions it runs (resumed by the
    next scheduler), it does not cancel them."""
    import signal

    from .engine import open_engine
    from .errors import WorkflowError

    async with open_engine(settings) as engine:
        if workflows is None:
            workflows = await uploaded_workflows(engine.store)
            if not workflows:
                raise WorkflowError(
                    "no workflows to run: give the files that define them, or upload them to "
                    "this store (flux workflow register on a server using it)"
                )
        engine.schedules.register(*workflows)
        async with anyio.create_task_group() as tg:
            if handle_signals:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            log.info("scheduler: %s, stopping", signal.Signals(signum).name)
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(on_signal)
            await tg.start(
                lambda task_status: engine.schedules.run(
                    refresh=refresh, max_running=max_running, task_status=task_status
                )
            )
            unknown = sorted(
                {r.workflow for r in await engine.store.list_schedules()}
                - set(engine.schedules.workflows)
            )
            if unknown:
                log.warning(
                    "scheduler: schedules of workflow(s) %s are not run here (not in the files "
                    "given)",
                    ", ".join(unknown),
                )
            if started is not None:
                started(engine, sorted(engine.schedules.workflows))
