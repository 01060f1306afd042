"""Describing a failed execution to a person: which call failed, with what, and where.

Works on the JSON shapes of the API and of ``to_jsonable`` (an error value is
``{"type", "message", "traceback"}``; an event is ``{"id", "type", "source_id", "value", ...}``),
so the CLI uses it for local executions and for a server's alike.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: Event types that record a task's final failure.
_TASK_FAILED = "TASK_FAILED"
_FRAME = re.compile(r'^  File "(?P<path>[^"]*)", line \d+')
#: Frames of these packages are Flux's machinery (or its async libraries), not the user's code.
_INTERNAL = re.compile(
    r"[/\\]flux[/\\](runtime|net)[/\\][^/\\]+\.py$"
    r"|[/\\](site|dist)-packages[/\\](trio|anyio|outcome|sniffio)[/\\]"
)
_FLUX_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def traceback_text(error: BaseException) -> str:
    """The traceback text of ``error``: the one recorded where it was raised (for an error
    rebuilt from a history), else its own; ``""`` when it has none."""
    for attribute in ("__flux_traceback__", "remote_traceback"):
        text = getattr(error, attribute, None)
        if isinstance(text, str) and text:
            return text
    if error.__traceback__ is not None:
        return "".join(traceback.format_exception(error, chain=False))
    return ""


def _internal(path: str) -> bool:
    return os.path.abspath(path).startswith(_FLUX_DIR + os.sep) or bool(_INTERNAL.search(path))


def trim_traceback(text: str) -> str:
    """``text`` without the frames of Flux and its async libraries, so that what is left is the
    user's code (the workflow's line and the task's). Text with no user frame is kept whole."""
    kept: list[str] = []
    frames = dropped = 0
    skipping = False
    for line in text.splitlines():
        match = _FRAME.match(line)
        if match:
            frames += 1
            skipping = _internal(match["path"])
            dropped += skipping
            if not skipping:
                kept.append(line)
        elif skipping and line.startswith("    "):
            continue  # the code and caret lines of a dropped frame
        else:
            skipping = False
            kept.append(line)
    if frames == 0 or dropped == frames:
        return text.rstrip("\n")
    return "\n".join(kept).rstrip("\n")


@attrs.frozen
class Failure:
    """What failed: ``call_id`` of the task whose error ended the execution (``None`` when the
    workflow body raised it), the error's short type name and message, and its traceback; for
    an exception group (several calls failed at once), ``parts`` describes each one."""

    call_id: str | None
    type_name: str
    message: str
    traceback: str
    parts: tuple[Failure, ...] = ()

    @property
    def headline(self) -> str:
        """``Type: message`` on one line (a message of several lines is cut after the first;
        the traceback holds it whole)."""
        first, _, rest = self.message.partition("\n")
        text = first + (" ..." if rest.strip() else "")
        return f"{self.type_name}: {text}" if text else self.type_name


def _same_error(a: Any, b: Any) -> bool:
    return (
        isinstance(a, Mapping)
        and isinstance(b, Mapping)
        and a.get("type") == b.get("type")
        and a.get("message") == b.get("message")
    )


def describe_failure(error: Any, events: Iterable[Mapping[str, Any]] = ()) -> Failure:
    """Describe the error value of a failed execution; ``events`` (JSON events, in order) tell
    which task call raised it: the first task that failed with the same type and message."""
    if not isinstance(error, Mapping):
        text = "" if error is None else str(error)
        return Failure(None, "error", text, "")
    events = list(events)
    type_name = str(error.get("type") or "Error").rsplit(".", 1)[-1]
    message = error.get("message")
    parts = tuple(
        sorted(  # in program order (a group holds them in completion order, which varies)
            (
                describe_failure(part, events)
                for part in error.get("exceptions") or ()
                if isinstance(part, Mapping)
            ),
            key=lambda f: _call_order(f.call_id),
        )
    )
    call_id = None
    for event in events:
        if event.get("type") == _TASK_FAILED and _same_error(event.get("value"), error):
            call_id = str(event.get("source_id"))
            break
    text = error.get("traceback")
    if not (isinstance(text, str) and text):  # an older record: the task's event may hold it
        text = ""
        for event in events:
            if event.get("type") == _TASK_FAILED and str(event.get("source_id")) == call_id:
                value = event.get("value")
                text = value.get("traceback") or "" if isinstance(value, Mapping) else ""
    return Failure(
        call_id, type_name, "" if message is None else str(message), trim_traceback(text), parts
    )


def _call_order(call_id: str | None) -> tuple[int, list[tuple[int, str]]]:
    """Sort key of a call id in program order (the ordinal of each segment counts the
    parent's calls of every name): ``b#2`` before ``a#10``; no id last."""
    if call_id is None:
        return (1, [])
    parts = []
    for segment in call_id.split("/"):
        name, _, ordinal = segment.rpartition("#")
        parts.append((int(ordinal) if ordinal.isdigit() else -1, name))
    return (0, parts)


def error_summary(value: Any) -> str | None:
    """``Type: message`` for an error value (``{"type", "message", ...}``), else None."""
    if isinstance(value, Mapping) and isinstance(value.get("type"), str) and "message" in value:
        type_name = value["type"].rsplit(".", 1)[-1]
        return f"{type_name}: {value['message']}" if value["message"] else type_name
    return None
