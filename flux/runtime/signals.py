"""Signals: values sent to an execution, queued in the store, delivered to its ``receive`` calls.

A signal is *accepted* into a per-execution queue (the store's ``signals`` table, in the order
accepted) by ``engine.send_signal``, the HTTP API or a workflow's ``send_signal``; a finished
execution refuses it (ExecutionConflictError), an unknown one too (ExecutionNotFoundError).

It is *delivered* by whoever holds the execution's lease: in one write fenced by the lease, the
history gets SIGNAL_RECEIVED (name: the topic, value: the signal's value) and the receive's
outcome TASK_COMPLETED (the same value) at the receive's call id, and the signal leaves the
queue (``Write.signals``): a second delivery of it is refused, so each is delivered exactly once.
Receives on one topic get its signals in program order of the receives (their call ids: the
structure of the code, never the order they happened to start or wake in, as for every id).

Deliveries happen in two places, with the one rule of this module (:func:`plan_deliveries`):
when a runner takes the lease of an execution waiting in ``receive`` (the embedded engine's
claim, the server's grant), and inside a running execution when a receive starts or is woken
(:class:`flux.runtime.receive.Receives`). A receive whose timeout passes records its own outcome
(SignalTimeoutError, or its ``default``); a signal accepted after that stays queued for the next
receive on its topic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from . import codec
from .events import ExecutionEventType as E
from .records import SignalRecord, StoredEvent
from .replay import ordinal

__all__ = [
    "RECEIVE",
    "SEND_SIGNAL",
    "OpenReceive",
    "SignalRecord",
    "check_topic",
    "delivery_events",
    "open_receives",
    "plan_deliveries",
]

#: The call name of ``receive`` in a history.
RECEIVE = "receive"
#: The call name of a workflow's ``send_signal``.
SEND_SIGNAL = "send_signal"

_TOPIC = re.compile(r"[A-Za-z0-9_.:@-]{1,200}")
_OUTCOMES = frozenset(
    {E.TASK_COMPLETED.value, E.TASK_FAILED.value, E.TASK_CANCELLED.value, E.TASK_RESUMED.value}
)


def check_topic(topic: object) -> str:
    """``topic`` if it is a valid signal topic, else TypeError or ValueError saying why."""
    if not isinstance(topic, str):
        raise TypeError(f"a signal topic is a string, got {type(topic).__name__} {topic!r}")
    if not _TOPIC.fullmatch(topic):
        raise ValueError(
            f"invalid signal topic {topic[:210]!r}: 1 to 200 characters among letters, digits "
            "and _ . : @ -"
        )
    return topic


@attrs.frozen
class OpenReceive:
    """A ``receive`` call recorded as started with no outcome yet."""

    call_id: str
    topic: str
    #: engine-clock time its timeout passes, None: waits for ever
    due_at: float | None
    #: seq of its TASK_STARTED
    seq: int


def call_order(call_id: str) -> tuple[int, ...]:
    """Program order of a call id (``parallel#0/receive#2/receive#0`` -> (0, 2, 0)): receives
    on one topic are served in this order."""
    return tuple(ordinal(part) for part in call_id.split("/"))


def receive_args(value: Any) -> tuple[str, float | None] | None:
    """``(topic, due_at)`` from the decoded value of a receive's TASK_STARTED, or None."""
    args = value.get("args") if isinstance(value, dict) else None
    if not isinstance(args, dict) or not isinstance(args.get("topic"), str):
        return None
    due = args.get("due_at")
    return args["topic"], float(due) if isinstance(due, int | float) else None


def open_receives(events: Iterable[StoredEvent]) -> list[OpenReceive]:
    """The receives of a stored history still waiting, in call order. Values are decoded plain
    (no class is built), so the server may call this on what a worker wrote."""
    started: dict[str, OpenReceive] = {}
    for e in events:
        if e.type == E.TASK_STARTED.value and e.name == RECEIVE and e.value is not None:
            try:
                parsed = receive_args(codec.decode(e.value, plain=True))
            except Exception:
                parsed = None
            if parsed is not None:
                started[e.call_id] = OpenReceive(e.call_id, parsed[0], parsed[1], e.seq)
        elif e.type in _OUTCOMES:
            started.pop(e.call_id, None)
    return sorted(started.values(), key=lambda r: call_order(r.call_id))


def delivery_events(
    execution_id: str, call_id: str, signal: SignalRecord, seq: int, now: float
) -> list[StoredEvent]:
    """SIGNAL_RECEIVED then the receive's TASK_COMPLETED, numbered ``seq`` and ``seq + 1``."""
    return [
        StoredEvent(
            execution_id, seq, E.SIGNAL_RECEIVED.value, call_id, signal.topic, signal.value, now
        ),
        StoredEvent(
            execution_id, seq + 1, E.TASK_COMPLETED.value, call_id, RECEIVE, signal.value, now
        ),
    ]


def plan_deliveries(
    execution_id: str,
    events: Sequence[StoredEvent],
    pending: Sequence[SignalRecord],
    now: float,
) -> tuple[list[StoredEvent], tuple[int, ...]]:
    """The events that deliver queued ``pending`` signals (in accepted order) to the open
    receives of ``events`` (in program order, per topic), numbered after the last of ``events``,
    and the ids of the signals they deliver."""
    receives = open_receives(events)
    if not receives or not pending:
        return [], ()
    queues: dict[str, list[SignalRecord]] = {}
    for signal in sorted(pending, key=lambda s: s.id):
        queues.setdefault(signal.topic, []).append(signal)
    seq = events[-1].seq + 1 if events else 1
    out: list[StoredEvent] = []
    used: list[int] = []
    for rec in receives:
        queue = queues.get(rec.topic)
        if not queue:
            continue
        signal = queue.pop(0)
        out.extend(delivery_events(execution_id, rec.call_id, signal, seq, now))
        used.append(signal.id)
        seq += 2
    return out, tuple(used)


def waiting_topics(events: Iterable[StoredEvent]) -> set[str]:
    """The topics the open receives of ``events`` wait on."""
    return {r.topic for r in open_receives(events)}


def waiting_topics_of(events: Iterable[Any]) -> set[str]:
    """The topics the open receives of a decoded history (ExecutionEvent) wait on."""
    open_: dict[str, str] = {}
    for e in events:
        if e.type is E.TASK_STARTED and e.name == RECEIVE:
            parsed = receive_args(e.value)
            if parsed is not None:
                open_[e.source_id] = parsed[0]
        elif e.type.value in _OUTCOMES:
            open_.pop(e.source_id, None)
    return set(open_.values())
