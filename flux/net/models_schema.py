"""JSON Schema (OpenAPI 3.1's dialect) generated from the API's models, and a small validator.

``schema_of(cls)`` is the component schema of one model: an object whose properties are its
fields (types from the annotations, descriptions from ``field(doc)``, extra keywords from
``field(schema=...)``, the object's own keywords from the class's ``SCHEMA_EXTRA``), every key
the server always sends required, and nested models and enums as ``$ref`` to their own
components. ``component_schemas(models)`` gives the schemas of those models and of everything
they nest, keyed by component name (the class name; enums may be renamed in
:data:`ENUM_NAMES`). ``validate(value, schema, components)`` checks a JSON value against a
schema of this dialect and returns what is wrong (empty: valid).
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union

import attrs

from flux.net.models import DOC, OMIT_NONE, REQUIRED, SCHEMA
from flux.runtime.events import ExecutionState

__all__ = ["ENUM_NAMES", "component_schemas", "schema_of", "type_schema", "validate"]

#: Component names of enums that differ from their class names.
ENUM_NAMES: dict[type[enum.Enum], str] = {ExecutionState: "State"}

_REF = "#/components/schemas/"
_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def component_name(tp: type) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ENUM_NAMES.get(tp, tp.__name__)
    return tp.__name__


def _ref(tp: type) -> dict[str, Any]:
    return {"$ref": _REF + component_name(tp)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_schema(tp: Any) -> dict[str, Any]:
    """The schema of a field's type (nested models and enums as ``$ref``)."""
    if tp is Any or tp is object:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if _is_component(tp):
        return _ref(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if len(options) == 1 and options[0] in _SCALARS and nullable:
            return {"type": [_SCALARS[options[0]], "null"]}
        parts = [type_schema(a) for a in options]
        if nullable:
            parts.append({"type": "null"})
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if origin in (list, tuple, Sequence, set, frozenset, Iterable):
        item = args[0] if args else Any
        return {"type": "array", "items": type_schema(item)}
    if origin in (dict, Mapping):
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": type_schema(value)}
    if origin is Literal:
        return {"enum": list(args)} if len(args) > 1 else {"const": args[0]}
    raise TypeError(f"no JSON Schema for the type {tp!r}: use one the models' docstring lists")


def _without_none(tp: Any) -> Any:
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType) and len(options) == 1:
        return options[0]
    return tp


def _is_component(tp: Any) -> bool:
    """Enums and attrs classes (models, or the plain attrs classes of a route module) are
    components of their own, referred to by ``$ref``."""
    return isinstance(tp, type) and (issubclass(tp, enum.Enum) or attrs.has(tp))


def schema_of(cls: type) -> dict[str, Any]:
    """The component schema of the model ``cls`` (a Model, or any attrs class)."""
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in attrs.fields(cls):
        meta = f.metadata
        hint = hints[f.name]
        if meta.get(OMIT_NONE):  # None is never sent: the key is left out instead
            hint = _without_none(hint)
        prop = dict(type_schema(hint))
        extra = meta.get(SCHEMA) or {}
        if "$ref" in prop and (extra or meta.get(DOC)):
            prop = {"allOf": [prop]}  # keywords beside a $ref: keep them explicit
        prop.update(extra)
        if meta.get(DOC):
            prop["description"] = meta[DOC]
        properties[f.name] = prop
        wanted = meta.get(REQUIRED)
        if wanted is None:
            wanted = not meta.get(OMIT_NONE)
        if wanted:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object"}
    doc = " ".join((cls.__doc__ or "").split())
    if doc:
        out["description"] = doc
    out["required"] = required
    out["properties"] = properties
    out.update(getattr(cls, "SCHEMA_EXTRA", {}))
    return out


def _enum_schema(tp: type[enum.Enum]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "enum": [m.value for m in tp]}
    if not all(isinstance(m.value, str) for m in tp):
        out.pop("type")
    return out


def _nested(tp: Any) -> Iterable[type]:
    if _is_component(tp):
        yield tp
        return
    for arg in typing.get_args(tp):
        yield from _nested(arg)


def component_schemas(models: Iterable[type]) -> dict[str, Any]:
    """The schemas of ``models`` and of every model and enum they nest, by component name."""
    out: dict[str, Any] = {}
    pending = list(models)
    while pending:
        tp = pending.pop(0)
        name = component_name(tp)
        if name in out:
            continue
        if issubclass(tp, enum.Enum):
            out[name] = _enum_schema(tp)
            continue
        out[name] = schema_of(tp)
        for hint in _hints(tp).values():
            pending.extend(_nested(hint))
    return out


# ---------------------------------------------------------------------------- validation

_PY: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PY[kind])


def validate(
    value: Any, schema: Mapping[str, Any], components: Mapping[str, Any], where: str = "$"
) -> list[str]:
    """What is wrong with ``value`` against ``schema`` (``$ref`` resolved in ``components``):
    type, const, enum, required, properties, additionalProperties, items, allOf, anyOf, oneOf,
    minimum, maximum, minLength, maxLength, pattern. Empty when valid."""
    errors: list[str] = []
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        if name not in components:
            return [f"{where}: no component schema {name!r}"]
        errors += validate(value, components[name], components, where)
    for part in schema.get("allOf", ()):
        errors += validate(value, part, components, where)
    if "anyOf" in schema and not any(
        not validate(value, s, components, where) for s in schema["anyOf"]
    ):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema:
        matches = sum(not validate(value, s, components, where) for s in schema["oneOf"])
        if matches != 1:
            errors.append(f"{where}: matches {matches} of oneOf, not exactly one")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is(value, k) for k in kinds):
            return [*errors, f"{where}: {_short(value)} is not of type {' or '.join(kinds)}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {_short(value)} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {_short(value)} is not one of the enum")
    if isinstance(value, dict):
        errors += _validate_object(value, schema, components, where)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], components, f"{where}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is under the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is over the maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: does not match {schema['pattern']!r}")
    return errors


def _validate_object(
    value: dict[str, Any], schema: Mapping[str, Any], components: Mapping[str, Any], where: str
) -> list[str]:
    errors = [f"{where}: missing {key!r}" for key in schema.get("required", ()) if key not in value]
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        if key in value:
            errors += validate(value[key], sub, components, f"{where}.{key}")
    extra = schema.get("additionalProperties")
    if extra is not None:
        for key in value.keys() - properties.keys():
            if extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, Mapping):
                errors += validate(value[key], extra, components, f"{where}.{key}")
    return errors


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
