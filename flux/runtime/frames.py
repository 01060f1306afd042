"""Call frames: where a task call is made from, and how structural call ids are assigned.

Each workflow body, task body and combinator (``parallel``, ``pipeline``, a graph) owns a frame.
A call made inside a frame takes the frame's next ordinal, so ids follow program order:
``say_hi#0``, ``parallel#1/say_hi#0``. Ids never depend on completion or scheduling order.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .executor import Execution

_current: ContextVar[Frame | None] = ContextVar("flux_frame", default=None)


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F").replace("#", "%23")


class Frame:
    __slots__ = ("execution", "path", "counter", "is_body")

    def __init__(self, execution: Execution, path: str, is_body: bool = False):
        self.execution = execution
        self.path = path
        self.counter = 0
        self.is_body = is_body

    def next_id(self, name: str) -> str:
        n = self.counter
        self.counter = n + 1
        leaf = f"{_escape(name)}#{n}"
        return f"{self.path}/{leaf}" if self.path else leaf

    def child(self, call_id: str, *, is_body: bool = False) -> Frame:
        return Frame(self.execution, call_id, is_body)


def current() -> Frame | None:
    return _current.get()


def enter(frame: Frame):
    """Make ``frame`` current; returns the token for :func:`leave`."""
    return _current.set(frame)


def leave(token) -> None:
    _current.reset(token)
