"""The codec's ext types: codes, limits, and how a value maps to an ext code and inner value.

Part of :mod:`flux.runtime.codec` (its docstring is the format's reference). Also here: finding,
for an error message, the place in a value of the first part the codec cannot carry.
"""

from __future__ import annotations

import decimal
import enum
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from flux.runtime.codec_classes import (
    is_namedtuple_class,
    is_struct_class,
    struct_state,
    type_name,
    unreachable_reason,
)
from flux.runtime.errors import SerializationError

# -- ext type codes (see the table in the module docstring) -------------------------------------
EXT_BIGINT = 1
EXT_TUPLE = 2
EXT_SET = 3
EXT_FROZENSET = 4
EXT_DATETIME = 5
EXT_DATE = 6
EXT_TIME = 7
EXT_TIMEDELTA = 8
EXT_UUID = 9
EXT_DECIMAL = 10
EXT_ENUM = 11
EXT_STRUCT = 12
EXT_EXCEPTION = 13
EXT_NAMEDTUPLE = 14

#: Ext values inside one another (tuples in tuples, a dataclass holding a dataclass...).
MAX_DEPTH = 100
#: Ext codes whose payload never holds another ext (no depth is counted for them).
_LEAF_CODES = frozenset(
    {EXT_BIGINT, EXT_DATETIME, EXT_DATE, EXT_TIME, EXT_TIMEDELTA, EXT_UUID, EXT_DECIMAL}
)

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
# msgpack's Packer starts with a 1 MiB buffer by default; packing an ext payload while the outer
# packer is live then costs a fresh large allocation each time (measured: 12 us instead of 1 us
# for a small tuple). A small start grows by doubling when needed.
_BUF_SIZE = 512
_DATETIME_MIN = datetime(1, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_CANONICAL_NAN = b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"


# -- helpers ------------------------------------------------------------------------------------


def _offset_us(tz_offset: timedelta | None) -> int | None:
    if tz_offset is None:
        return None
    return (tz_offset.days * 86400 + tz_offset.seconds) * 1_000_000 + tz_offset.microseconds


def _tz(offset_us: int | None) -> timezone | None:
    if offset_us is None:
        return None
    return timezone(timedelta(microseconds=offset_us))


def _bigint_bytes(n: int) -> bytes:
    return n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)


class _Unencodable(TypeError):
    """Raised inside the packing hooks for a value the codec does not carry."""

    def __init__(self, obj: Any, reason: str = ""):
        super().__init__(reason or type_name(type(obj)))
        self.obj = obj
        self.reason = reason


def _too_deep(obj: Any) -> _Unencodable:
    return _Unencodable(
        obj,
        f"nested more than {MAX_DEPTH} levels deep (the codec's limit of {MAX_DEPTH}: each "
        "tuple, set, frozenset, dataclass, attrs instance, named tuple, enum member or exception "
        "inside another is a level)",
    )


# -- from a value to (ext code, inner value) ----------------------------------------------------


def _datetime_inner(v: datetime) -> list[Any]:
    return [
        v.year,
        v.month,
        v.day,
        v.hour,
        v.minute,
        v.second,
        v.microsecond,
        _offset_us(v.utcoffset()),
        v.fold,
    ]


def _time_inner(v: time) -> list[Any]:
    return [v.hour, v.minute, v.second, v.microsecond, _offset_us(v.utcoffset()), v.fold]


def _reachable(obj: Any) -> type:
    cls = type(obj)
    reason = unreachable_reason(cls)
    if reason is not None:
        raise _Unencodable(obj, reason)
    return cls


def _enum_inner(v: enum.Enum) -> list[Any]:
    cls = _reachable(v)
    return [cls.__module__, cls.__qualname__, v.value]


def _struct_inner(v: Any) -> list[Any]:
    cls = _reachable(v)
    try:
        fields, extra = struct_state(v)
    except Exception as exc:  # a broken attrs/dataclass instance
        raise _Unencodable(v, f"its fields could not be read: {exc}") from exc
    if extra:
        return [cls.__module__, cls.__qualname__, fields, extra]
    return [cls.__module__, cls.__qualname__, fields]


def _namedtuple_inner(v: tuple[Any, ...]) -> list[Any]:
    cls = _reachable(v)
    return [cls.__module__, cls.__qualname__, list(v)]


#: Exact type -> (ext code, function giving the inner value).
_EXT_ENCODERS: dict[type, tuple[int, Callable[[Any], Any]]] = {
    int: (EXT_BIGINT, _bigint_bytes),
    tuple: (EXT_TUPLE, list),
    set: (EXT_SET, list),
    frozenset: (EXT_FROZENSET, list),
    datetime: (EXT_DATETIME, _datetime_inner),
    date: (EXT_DATE, lambda v: [v.year, v.month, v.day]),
    time: (EXT_TIME, _time_inner),
    timedelta: (EXT_TIMEDELTA, lambda v: [v.days, v.seconds, v.microseconds]),
    uuid.UUID: (EXT_UUID, lambda v: v.bytes),
    decimal.Decimal: (EXT_DECIMAL, str),
}

#: Base types whose subclasses are carried as the base type, in lookup order (datetime before
#: date, bool never reaches here since it cannot be subclassed).
_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
    (bytes, bytes),
    (bytearray, bytes),
    (memoryview, bytes),
    (list, list),
    (dict, dict),
    (tuple, tuple),
    (frozenset, frozenset),
    (set, set),
    (datetime, lambda v: datetime(*_datetime_fields(v), fold=v.fold)),
    (date, lambda v: date(v.year, v.month, v.day)),
    (time, lambda v: time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo, fold=v.fold)),
    (timedelta, lambda v: timedelta(v.days, v.seconds, v.microseconds)),
    (uuid.UUID, lambda v: uuid.UUID(int=v.int)),
    (decimal.Decimal, lambda v: decimal.Decimal(str(v))),
)


def _datetime_fields(v: datetime) -> tuple[Any, ...]:
    return (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo)


def _classify(obj: Any, depth: int = 0) -> tuple[int | None, Any]:
    """For a value msgpack does not pack natively: ``(ext code, inner value)``, or
    ``(None, replacement)`` where the replacement is the same value as a plain base type.
    ``depth`` is the ext level the value sits at. Raises :class:`_Unencodable` for a value the
    codec does not carry."""
    entry = _EXT_ENCODERS.get(type(obj))
    if entry is not None:
        code, make_inner = entry
        return code, make_inner(obj)
    if isinstance(obj, enum.Enum):
        return EXT_ENUM, _enum_inner(obj)
    if isinstance(obj, BaseException):
        return EXT_EXCEPTION, obj  # described by codec_errors.exception_entries when packed
    cls = type(obj)
    if is_struct_class(cls):
        return EXT_STRUCT, _struct_inner(obj)
    if isinstance(obj, tuple) and is_namedtuple_class(cls):
        return EXT_NAMEDTUPLE, _namedtuple_inner(obj)
    for base, convert in _BASES:
        if isinstance(obj, base):
            return None, convert(obj)
    raise _Unencodable(obj)


# -- errors with a path -------------------------------------------------------------------------


def _short_repr(obj: Any, limit: int = 40) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type_name(type(obj))}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Found(Exception):
    def __init__(self, path: list[str], obj: Any, reason: str, as_key: bool = False):
        super().__init__(reason)
        self.path = path
        self.obj = obj
        self.reason = reason
        self.as_key = as_key


_LIST_LIMIT = 1024  # msgpack's nesting limit for lists and dicts within one ext payload


class _Walk:
    """Find the first value (depth first) the codec cannot carry, and where it is. Iterative,
    so a value nested as deeply as msgpack allows is walked without deep Python recursion."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.active: set[int] = set()

    def found(self, obj: Any, reason: str, as_key: bool = False) -> _Found:
        return _Found(self.path[1:], obj, reason, as_key)

    def run(self, value: Any) -> None:
        frames: list[tuple[int, Iterator[tuple[str, Any, int, int, bool]]]] = [
            (0, iter([("", value, 0, 0, False)]))
        ]
        while frames:
            oid, children = frames[-1]
            step = next(children, None)
            if step is None:
                frames.pop()
                self.active.discard(oid)
                if self.path:
                    self.path.pop()
                continue
            name, obj, depth, lists, as_key = step
            self.path.append(name)
            inner = self.children(obj, depth, lists, as_key)
            if inner is None:
                self.path.pop()
                continue
            self.active.add(id(obj))
            frames.append((id(obj), inner))

    def children(
        self, obj: Any, depth: int, lists: int, as_key: bool
    ) -> Iterator[tuple[str, Any, int, int, bool]] | None:
        t = type(obj)
        if obj is None or t in (bool, int, float, str, bytes):
            return None
        if id(obj) in self.active:
            raise self.found(obj, "cyclic reference", as_key)
        if t is list or t is dict:
            if lists >= _LIST_LIMIT:
                raise self.found(
                    obj, f"lists and dicts nested more than {_LIST_LIMIT} levels deep", as_key
                )
            if t is list:
                return ((f"[{i}]", item, depth, lists + 1, False) for i, item in enumerate(obj))
            return _dict_children(obj, depth, lists + 1)
        try:
            code, inner = _classify(obj, depth)
        except _Unencodable as exc:
            raise self.found(obj, exc.reason, as_key) from None
        if code is None:
            return self.children(inner, depth, lists, as_key)
        if code in _LEAF_CODES:
            return None
        if depth >= MAX_DEPTH:
            raise self.found(obj, _too_deep(obj).reason, as_key)
        if code in (EXT_TUPLE, EXT_NAMEDTUPLE):
            return ((f"[{i}]", item, depth + 1, 0, False) for i, item in enumerate(obj))
        if code in (EXT_SET, EXT_FROZENSET):
            return ((f"{{{_short_repr(item)}}}", item, depth + 1, 0, False) for item in obj)
        if code == EXT_ENUM:
            return iter([(".value", inner[2], depth + 1, 0, False)])
        if code == EXT_STRUCT:
            return (
                (f".{key}", item, depth + 1, 0, False)
                for part in inner[2:]
                for key, item in part.items()
            )
        return None


def _dict_children(
    obj: dict[Any, Any], depth: int, lists: int
) -> Iterator[tuple[str, Any, int, int, bool]]:
    for key, item in obj.items():
        step = f"[{_short_repr(key)}]"
        yield step, key, depth, lists, True
        yield step, item, depth, lists, False


def _where(path: list[str]) -> str:
    if len(path) > 12:  # a deep value: its start and its end
        path = [*path[:5], f"<{len(path) - 10} more>", *path[-5:]]
    return "".join(path)


def _encode_error(value: Any, exc: BaseException) -> SerializationError:
    try:
        _Walk().run(value)
    except _Found as found:
        name = type_name(type(found.obj))
        where = f"at {_where(found.path)}" if found.path else "at the top level"
        if found.as_key:
            where += " (as a dict key)"
        message = f"cannot encode value of type {name!r} {where}"
        if found.reason:
            message += f": {found.reason}"
        err = SerializationError(message)
        err.type_name = name  # type: ignore[attr-defined]
        err.path = "".join(found.path)  # type: ignore[attr-defined]
        return err
    except RecursionError:
        pass
    if isinstance(exc, RecursionError) or "recursion" in str(exc).lower():
        message = "cannot encode value: nested too deeply (or cyclic)"
    else:
        message = f"cannot encode value of type {type_name(type(value))!r}: {exc}"
    err = SerializationError(message)
    err.type_name = type_name(type(value))  # type: ignore[attr-defined]
    err.path = ""  # type: ignore[attr-defined]
    return err
