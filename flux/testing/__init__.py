"""Testing workflows without waiting: a time-skipping engine (see docs/testing.md).

``async with flux.testing.engine() as t:`` gives an embedded engine on a throw-away store whose
clock is virtual, so durable sleeps, signal timeouts, retry backoff and schedules take no real
time; ``t.run(wf, input)``, ``t.advance(timedelta(days=1))``, ``t.send_signal(...)`` drive it.
"""

from ._engine import TestEngine as TestEngine
from ._engine import engine as engine

__all__ = ["TestEngine", "engine"]
