"""LISTEN/NOTIFY on the PostgreSQL store: how servers on one database wake each other.

Sending is one ``pg_notify`` per payload in one statement on a pooled connection. Listening holds
one dedicated connection (not a pooled one: a pooled connection would be handed to others) in a
worker thread that waits on its socket and hands what arrives to the event loop in batches. A
notification is a hint, never the truth: the truth is in the tables, and a lost notification
(a dropped connection, a server restarting) only delays what a slow poll finds anyway.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread

from flux.runtime.store_pg_schema import one_line

try:
    import psycopg
except ImportError:  # the extra is not installed: PostgresStore() says so
    psycopg = None  # type: ignore[assignment]

__all__ = ["CHANNEL", "listen", "notify"]

log = logging.getLogger(__name__)

#: The one channel Flux servers talk on.
CHANNEL = "flux"
#: How long the listening thread waits on its socket before looking at its stop flag.
_WAIT = 0.25
#: Seconds between attempts to connect again after the listening connection broke.
_RECONNECT = 1.0


def notify(conn: Any, payloads: list[str]) -> None:
    """Send ``payloads`` on :data:`CHANNEL` (worker thread, autocommit: delivered at once)."""
    conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads))


async def listen(
    conninfo: str,
    kwargs: dict[str, Any],
    deliver: Callable[[list[str]], None],
    where: str,
    password: str,
) -> None:
    """Deliver the payloads on :data:`CHANNEL` until cancelled (see ``PostgresStore.listen``)."""
    stop = threading.Event()
    try:
        await anyio.to_thread.run_sync(
            _serve, conninfo, kwargs, deliver, stop, where, password, abandon_on_cancel=True
        )
    finally:
        stop.set()  # the thread sees it within _WAIT seconds and closes its connection


def _hand_over(deliver: Callable[[list[str]], None], payloads: list[str]) -> bool:
    try:
        anyio.from_thread.run_sync(deliver, payloads)
    except RuntimeError:  # the event loop is gone (shutdown)
        return False
    return True


def _serve(
    conninfo: str,
    kwargs: dict[str, Any],
    deliver: Callable[[list[str]], None],
    stop: threading.Event,
    where: str,
    password: str,
) -> None:
    while not stop.is_set():
        try:
            conn = psycopg.connect(conninfo, **{**kwargs, "autocommit": True})
        except psycopg.Error as exc:
            log.warning("store %s: cannot listen: %s", where, one_line(exc, password))
            stop.wait(_RECONNECT)
            continue
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            if not _hand_over(deliver, ["*"]):
                return
            while not stop.is_set():
                ready, _, _ = select.select([conn.fileno()], [], [], _WAIT)
                if not ready:
                    continue
                conn.pgconn.consume_input()
                payloads = []
                while (n := conn.pgconn.notifies()) is not None:
                    payloads.append(n.extra.decode("utf-8", "replace"))
                if payloads and not _hand_over(deliver, payloads):
                    return
        except (psycopg.Error, OSError) as exc:
            if not stop.is_set():
                log.warning(
                    "store %s: listening connection lost, reconnecting: %s",
                    where,
                    one_line(exc, password),
                )
                stop.wait(_RECONNECT)
        finally:
            conn.close()
