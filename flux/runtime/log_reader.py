"""Reading task logs as they grow: :func:`follow_logs`, shared by the CLI (embedded), the
server's SSE route and the console.

Lines are read from the store in pages after the last seq seen. While the execution runs, the
store is read again every ``poll`` seconds (backing off to ``max_poll`` while nothing comes);
lines of other processes (a worker, another engine) are therefore seen within a second. The
iteration ends once the execution has ended (COMPLETED, FAILED, CANCELLED) or paused and a read
made after that found nothing more: every process writes an execution's lines before the write
that ends (or pauses) it, so nothing is missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio

from .errors import ExecutionNotFoundError
from .events import ExecutionState
from .store_logs import LogRecord

__all__ = ["follow_logs", "iso_time", "settled"]

#: States after which no more lines come (until a resume, for PAUSED).
_SETTLED = frozenset(
    {
        ExecutionState.COMPLETED,
        ExecutionState.FAILED,
        ExecutionState.CANCELLED,
        ExecutionState.PAUSED,
    }
)


def settled(state: ExecutionState) -> bool:
    return state in _SETTLED


def iso_time(seconds: float) -> str | None:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError, TypeError):
        return None


async def follow_logs(
    store: Any,
    execution_id: str,
    *,
    after: int = 0,
    call_id: str | None = None,
    page: int = 500,
    poll: float = 0.25,
    max_poll: float = 1.0,
    keepalive: float | None = None,
    stop: anyio.Event | None = None,
) -> AsyncIterator[list[LogRecord] | None]:
    """Yield the lines of ``execution_id`` after seq ``after`` in pages as they are stored,
    until the execution ends or pauses (see the module docstring) or ``stop`` is set. With
    ``keepalive``, yields None after that many seconds without lines (for a stream's comment).
    Raises ExecutionNotFoundError for an unknown execution."""
    delay = poll
    quiet = 0.0
    while True:
        record = await store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFoundError(execution_id)
        done = settled(record.state)
        while True:
            lines = await store.load_logs(execution_id, after, page, call_id)
            if not lines:
                break
            after = lines[-1].seq
            delay, quiet = poll, 0.0
            yield lines
            if len(lines) < page:
                break
        if done or (stop is not None and stop.is_set()):
            return
        with anyio.move_on_after(delay):
            if stop is not None:
                await stop.wait()
            else:
                await anyio.sleep_forever()
        quiet += delay
        delay = min(delay * 2, max_poll)
        if keepalive is not None and quiet >= keepalive:
            quiet = 0.0
            yield None


def line_text(line: Any) -> str:
    """One log line (a :class:`LogRecord` or its JSON dict) as a terminal shows it:
    ``12:00:01.250 INFO    fetch#0 stdout: text``, the attempt after ``@`` from the second
    one on, continuation lines of a multi-line message indented."""
    get = line.get if isinstance(line, dict) else lambda k: getattr(line, k)
    when = get("time")
    if isinstance(when, int | float):
        when = iso_time(when)
    clock = str(when)[11:23] if when else "?"
    call = get("call_id") or "-"
    attempt = get("attempt") or 0
    if attempt > 1:
        call = f"{call}@{attempt}"
    message = str(get("message")).replace("\n", "\n    ")
    return f"{clock} {get('level'):<7} {call} {get('logger')}: {message}"
