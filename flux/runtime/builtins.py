"""Builtin tasks: recorded like any task, so a replay returns exactly what the first run saw."""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio

from . import frames
from .errors import WorkflowError
from .task import task
from .workflow import MISSING

T = TypeVar("T")

_rng = _random.SystemRandom()


@task.with_options(name="now")
async def now() -> datetime:
    """The current UTC time (an aware datetime); each call is its own recorded value."""
    return datetime.now(UTC)


@task.with_options(name="uuid4")
async def uuid4() -> _uuid.UUID:
    """A random UUID, recorded."""
    return _uuid.uuid4()


@task.with_options(name="randint")
async def randint(a: int, b: int) -> int:
    """A random integer N with a <= N <= b, recorded."""
    return _rng.randint(a, b)


@task.with_options(name="randrange")
async def randrange(start: int, stop: int | None = None, step: int = 1) -> int:
    """Like :func:`random.randrange`, recorded."""
    return _rng.randrange(start, stop, step)


@task.with_options(name="random")
async def random() -> float:
    """A random float in [0, 1), recorded."""
    return _rng.random()


@task.with_options(name="choice")
async def choice(options: Sequence[T]) -> T:
    """A random element of ``options``, recorded."""
    if not options:
        raise ValueError("choice() needs a non-empty sequence")
    return _rng.choice(list(options))


def _seconds(duration: float | timedelta) -> float:
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise TypeError(f"sleep() takes seconds or a timedelta, got {duration!r}")
    if duration < 0 or duration != duration:
        raise ValueError(f"sleep() needs a non-negative duration, got {duration!r}")
    return float(duration)


async def sleep(duration: float | timedelta) -> None:
    """A durable timer: the wake time is recorded, so a resumed execution sleeps only for what
    is left of it (and not at all once it has passed)."""
    seconds = _seconds(duration)
    frame = frames.current()
    if frame is None:
        await anyio.sleep(seconds)
        return
    await frame.execution.sleep(frame, seconds)


async def pause(name: str = "pause") -> Any:
    """Stop the execution here in state PAUSED; resuming it makes this call return the value
    given to the resume (``None`` when none was given)."""
    if not isinstance(name, str):
        raise TypeError(f"pause() takes a name string, got {name!r}")
    frame = frames.current()
    if frame is None:
        raise WorkflowError("pause() can only be awaited inside a running workflow")
    return await frame.execution.pause(frame, name)


async def receive(
    topic: str, timeout: float | timedelta | None = None, default: Any = MISSING
) -> Any:
    """Wait durably for a signal on ``topic`` and return its value (see flux.runtime.signals).

    A signal already queued is taken at once; else the execution waits, released from its
    runner when nothing else of it can go on, and is woken by a signal or when ``timeout``
    (seconds or a timedelta; None: for ever) passes: then this returns ``default`` if given,
    else raises :class:`~flux.errors.SignalTimeoutError`. Recorded: a replay returns the same."""
    from .receive import check_receive

    seconds = check_receive(topic, timeout)
    frame = frames.current()
    if frame is None:
        raise WorkflowError("receive() can only be awaited inside a running workflow")
    return await frame.execution.receive(frame, topic, seconds, default)


async def send_signal(execution_id: str, topic: str, value: Any = None) -> None:
    """Send a signal to another execution from inside a workflow, recorded as a call: it is
    accepted once, never again on replay (nor after a crash between the send and its record).
    Raises ExecutionNotFoundError or ExecutionConflictError (finished) as a failed call."""
    from .signals import check_topic

    if not isinstance(execution_id, str) or not execution_id:
        raise TypeError(f"send_signal() takes an execution id string, got {execution_id!r}")
    check_topic(topic)
    frame = frames.current()
    if frame is None:
        raise WorkflowError(
            "send_signal() from flux.tasks is for workflows; elsewhere use "
            "engine.send_signal() or client.send_signal()"
        )
    await frame.execution.send_signal(frame, execution_id, topic, value)
