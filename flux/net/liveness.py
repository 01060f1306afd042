"""How long a worker may trust its leases: the last time the server was heard, as a deadline.

The server extends a worker's leases when a heartbeat reaches it. After each heartbeat the
worker sends a WebSocket ping on the same connection; the pong proves that the server read
everything sent before it, that heartbeat included, so every lease the worker held then is
valid for at least ``lease_ttl`` seconds from the moment the heartbeat was *sent*. That moment
is what :meth:`LeaseClock.confirm` records.

A worker that has not been confirmed within the ttl (a frozen process woken by SIGCONT, a long
pause, a network that drops everything) may have lost every lease without being told: the
server has expired them and may have leased them to another worker. It must start no new task
body, and act on no frame that arrived meanwhile (a Lease granted before the freeze, an Ack
that would let a workflow go on): :meth:`LeaseClock.trusted` says whether it may.

Pure bookkeeping on the monotonic clock (a frozen process sees it jump); no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LeaseClock:
    """The deadline until which this worker's leases are known to hold."""

    def __init__(self, lease_ttl: float, clock: Callable[[], float] = time.monotonic):
        self.lease_ttl = lease_ttl
        self.clock = clock
        #: margin kept before the deadline: time for a body start or a frame to be acted on
        self.margin = min(lease_ttl / 4, 1.0)
        self.confirmed = clock()

    def confirm(self, sent_at: float) -> None:
        """The server has read everything this worker sent up to ``sent_at`` (monotonic)."""
        if sent_at > self.confirmed:
            self.confirmed = sent_at

    @property
    def deadline(self) -> float:
        """Until when (monotonic) the leases are known to hold, less the margin."""
        return self.confirmed + self.lease_ttl - self.margin

    def trusted(self) -> bool:
        """May the worker act on its leases now (start a body, act on a frame)?"""
        return self.clock() < self.deadline

    def silence(self) -> float:
        """Seconds since the last confirmation."""
        return self.clock() - self.confirmed


__all__ = ["LeaseClock"]
