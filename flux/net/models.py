"""The HTTP API's typed response bodies: attrs classes turned to JSON by one cattrs converter.

``to_json(obj)`` unstructures an attrs instance (or a list/dict of them) into JSON-ready data:
enums become their values, nested attrs classes dicts, tuples lists, and JSON field names are
the attribute names (snake_case). ``from_json(data, cls)`` is the inverse, for the client.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import cattrs

__all__ = ["converter", "from_json", "to_json"]

T = TypeVar("T")

#: The one converter of the API's models (server answers, client parsing).
converter = cattrs.Converter(forbid_extra_keys=False)
converter.register_unstructure_hook(enum.Enum, lambda e: e.value)


def to_json(obj: Any) -> Any:
    """``obj`` (an attrs instance, or lists/dicts of them) as JSON-ready data."""
    return converter.unstructure(obj)


def from_json(data: Any, cls: type[T]) -> T:
    """JSON data parsed into the model ``cls`` (extra keys are ignored: newer servers)."""
    return converter.structure(data, cls)
