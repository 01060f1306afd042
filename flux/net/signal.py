"""A wake-up flag shared by the dispatcher and the worker."""

from __future__ import annotations

import trio


class Signal:
    """``set`` never blocks; ``wait`` returns once set (or if already set), then resets it, so
    several sets between two waits wake the waiter once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()
