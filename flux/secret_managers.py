"""0.2.7 import path: ``SecretManager.current()`` with ``save``, ``get``, ``remove``, ``all``.

A synchronous facade over :class:`flux.runtime.secrets.SecretStore` for code written against
flux-core 0.2.7. Each call opens the store named by the environment (``FLUX_DB``) in a short-lived
worker thread with its own event loop, so it works from plain scripts and from inside a running
event loop alike (it blocks the caller for the duration of one SQLite call). New async code
should use ``engine.secrets`` instead.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .runtime.settings import Settings

T = TypeVar("T")


class SecretManager:
    """Secrets kept encrypted in the Flux store."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings

    @staticmethod
    def current() -> SecretManager:
        return SecretManager()

    def _call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        from .runtime.engine import open_engine

        settings = self.settings or Settings.from_env()

        async def main() -> T:
            async with open_engine(settings, cancel_poll=None) as engine:
                return await op(engine.secrets)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(anyio.run, main).result()

    def save(self, name: str, value: Any) -> None:
        if value is None:
            raise ValueError("Secret value cannot be None")
        self._call(lambda s: s.set(name, str(value)))

    def get(self, secret_requests: list[str]) -> dict[str, Any]:
        """The requested secrets; raises SecretNotFoundError (a ValueError) naming missing ones."""
        if isinstance(secret_requests, str):
            secret_requests = [secret_requests]
        return self._call(lambda s: s.get_many(secret_requests))

    def remove(self, name: str) -> None:
        self._call(lambda s: s.remove(name))

    def all(self) -> list[str]:
        return self._call(lambda s: s.names())


__all__ = ["SecretManager"]
