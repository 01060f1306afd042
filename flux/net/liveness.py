"""How long a worker may trust its leases: the last time the server was heard, as a deadline.

The server extends a worker's leases when a heartbeat reaches it. The worker hears from the
server in two ways, and each moves the deadline on:

- after each heartbeat it sends a WebSocket ping on the same connection; the pong proves that
  the server read everything sent before it, that heartbeat included, so the leases hold for
  ``lease_ttl`` from the moment the heartbeat was *sent* (:meth:`LeaseClock.confirm`; an old
  pong read late moves nothing);
- every frame it reads (:meth:`LeaseClock.heard`), but only when it comes within the ttl of the
  last word: a frame read after a longer silence may have waited in the socket all that time.

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

    def heard(self) -> bool:
        """A frame from the server was just read: True (and the deadline moves to now) when it
        came within the ttl of the last word; False when the worker had gone longer without word
        (the frame may be stale: act on nothing, reconnect)."""
        if not self.trusted():
            return False
        self.confirmed = self.clock()
        return True

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
