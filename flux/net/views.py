"""What the HTTP API shows of stored values, and what it accepts as JSON input.

Stored values were encoded by workers (or by the server from requests). The API never rebuilds
user classes from them: every value is decoded *plain* (``codec.decode(plain=True)``: attrs
classes and dataclasses as dicts of fields, enum members as their values, exceptions as
``TaskFailedError`` carrying the recorded type name and message), then turned into JSON. A value
that cannot be shown (undecodable bytes, nesting past :data:`MAX_JSON_DEPTH`) is shown as a text
notice in its place, so one bad row never breaks a listing, an event list or a stream.

JSON input (a run's input, a resume value, secrets) nested deeper than :data:`MAX_JSON_DEPTH`
levels is refused before anything is stored (:class:`JsonInputError`, answered 400).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flux.runtime import codec
from flux.runtime.context import to_jsonable
from flux.runtime.store import ExecutionRecord, StoredEvent

__all__ = [
    "MAX_JSON_DEPTH",
    "JsonInputError",
    "event_json",
    "listed",
    "parse_json",
    "plain_value",
    "summary",
]

log = logging.getLogger("flux.server")

#: Deepest nesting of lists and maps accepted in JSON input, and shown in output.
MAX_JSON_DEPTH = 100


class JsonInputError(ValueError):
    """A request body is not JSON the API accepts (the HTTP API answers 400 ``bad-json``)."""


def depth_over(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests lists, tuples, sets or maps more than ``limit`` levels deep
    (iterative: no recursion however deep it is)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, dict | list | tuple | set | frozenset):
                stack.append((child, depth + 1))
    return False


def parse_json(data: bytes) -> Any:
    """Parse a request body: None when empty, else its JSON value. Raises JsonInputError for
    text that is not JSON or nests more than :data:`MAX_JSON_DEPTH` levels."""
    if not data.strip():
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonInputError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        value = None
        deep = True
    else:
        deep = depth_over(value)
    if deep:
        raise JsonInputError(
            f"the request body nests lists and objects more than {MAX_JSON_DEPTH} levels deep"
        )
    return value


def plain_value(data: bytes | None) -> Any:
    """A stored value as JSON types, decoded without building any class; a notice string in its
    place when it cannot be shown."""
    if data is None:
        return None
    try:
        value = codec.decode(data, plain=True)
    except Exception as exc:  # corrupt or foreign bytes: say so, in place
        return f"<undecodable: {exc}>"
    if depth_over(value):
        return f"<value not shown: nested more than {MAX_JSON_DEPTH} levels deep>"
    try:
        return to_jsonable(value)
    except Exception as exc:
        return f"<value not shown: {type(exc).__name__}>"


# The API's shapes are the models of flux.net.models, each built by one function; these three
# names stay for callers written before the models (they return the models, which are dicts).


def summary(record: ExecutionRecord) -> dict[str, Any]:
    """The API's summary of an execution: :meth:`flux.net.models.Execution.of`."""
    from flux.net.models import Execution

    return Execution.of(record)


def listed(record: ExecutionRecord) -> dict[str, Any]:
    """One row of ``GET /executions``: :meth:`flux.net.models.ExecutionListItem.of`."""
    from flux.net.models import ExecutionListItem

    return ExecutionListItem.of(record)


def event_json(e: StoredEvent) -> dict[str, Any]:
    """An event as the API shows it: :meth:`flux.net.models.Event.of`."""
    from flux.net.models import Event

    return Event.of(e)
