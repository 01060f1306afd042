"""Task logs on the server: the ``logs`` frames of workers, written to the store.

A worker ships the lines its task bodies print and log (:mod:`flux.runtime.logs`) in ``logs``
frames. The dispatcher hands each one here; the lines are kept only from the worker that holds
the execution's lease at that epoch (a worker that lost it has nothing more to say about it),
with the secrets the server handed that lease masked once more, within the execution's byte
limit. Writing them is awaited in the session's reader, so a worker that logs faster than the
store writes is slowed down by its own outbox (backpressure) and, past a bound, drops lines on
its side with a marker. A store fault drops the batch and is logged; it never touches the lease.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flux.runtime.errors import StoreError
from flux.runtime.logs import DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT
from flux.runtime.secrets import redact_value
from flux.runtime.store_logs import LogEntry

from . import protocol as p

if TYPE_CHECKING:
    from .dispatch import Dispatcher, WorkerLink

log = logging.getLogger("flux.net.logs")

__all__ = ["receive"]


async def receive(dispatcher: Dispatcher, link: WorkerLink, msg: p.Logs) -> None:
    """Store the lines of one ``logs`` frame (see the module docstring)."""
    lease = dispatcher._leases.get(msg.execution_id)
    if lease is None or lease.worker is not link or lease.epoch != msg.epoch:
        log.debug(
            "%d log line(s) of %s from %s dropped: not its lease (epoch %d)",
            len(msg.lines),
            msg.execution_id,
            link.worker_id,
            msg.epoch,
        )
        return
    secrets = list(lease.secrets)
    entries = []
    for call_id, attempt, level, logger, when, message in msg.lines:
        if secrets:
            message = redact_value(message, secrets)
        entries.append(LogEntry(call_id, attempt, level, logger, when, message))
    limit = min(msg.limit or DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT)
    try:
        await dispatcher.store.append_logs(
            msg.execution_id,
            entries,
            limit=limit,
            cut_lines=msg.cut_lines,
            cut_bytes=msg.cut_bytes,
        )
    except StoreError as exc:
        log.warning(
            "%d log line(s) of %s from %s dropped: the store failed: %s",
            len(entries),
            msg.execution_id,
            link.worker_id,
            exc,
        )
