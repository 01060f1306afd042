"""The one codec: how every value crosses the store and the wire.

Values are encoded as msgpack. Types msgpack does not carry natively are msgpack *ext* values
whose payload is itself msgpack (the "inner" value listed below), so nested values inside them
go through the same rules. Nothing here uses pickle, dill or eval.

The rule: **a value comes back equal, of the same type, or encoding it fails.** Nothing is
committed that cannot be read back: a value nested too deeply or an instance of a class that could
not be found again is refused by :func:`encode` with a :class:`SerializationError` naming its
type and place (the runtime adds the task: "task 'x' (x#0) returned a value the codec cannot
carry: cannot encode value of type ...").

Ext type table (codes are part of the stored format: never renumber, only add)::

    code  type                        inner value (msgpack)
    ----  --------------------------  ---------------------------------------------------------
      1   int outside 64 bits         bytes: two's complement, big-endian, minimal length
      2   tuple                       array of the items
      3   set                         array of the elements
      4   frozenset                   array of the elements
      5   datetime.datetime           [year, month, day, hour, minute, second, microsecond,
                                       utc offset in microseconds or nil (naive), fold]
      6   datetime.date               [year, month, day]
      7   datetime.time               [hour, minute, second, microsecond,
                                       utc offset in microseconds or nil (naive), fold]
      8   datetime.timedelta          [days, seconds, microseconds]
      9   uuid.UUID                   bytes (16)
     10   decimal.Decimal             str
     11   enum member                 [module, qualname, value]
     12   attrs class / dataclass     [module, qualname, {field name: value}] or, when the
                                      instance holds state besides its fields (set by a
                                      ``__post_init__``, say), [module, qualname, {fields},
                                      {other ``__dict__`` entries}]
     13   exception                   the map of :func:`encode_exception`
     14   named tuple                 [module, qualname, array of the items]

How classes come back (enums, attrs classes, dataclasses, named tuples, exceptions):

- :func:`decode` (the trusted store format) finds ``module.qualname``, importing the module if
  it is not loaded yet, so a value of a class from a module the task imported lazily reads back
  in a fresh process. ``decode(..., plain=True)`` (bytes from an untrusted peer) never imports
  and never looks a class up: the plain data comes back (below).
- Instances are rebuilt **without calling their constructors**: attrs classes and dataclasses
  (frozen and slotted ones too) by ``object.__new__`` and ``object.__setattr__`` of each field
  and of the other recorded ``__dict__`` entries (caches of ``functools.cached_property``
  excepted), so no ``__init__``, ``__post_init__``, validator or converter runs again (an amount
  a ``__post_init__`` scaled once is not scaled twice); named tuples by ``tuple.__new__``;
  exceptions as described in :mod:`flux.runtime.codec_errors` (same ``str()``, ``args``,
  ``__dict__``, ``__notes__``, cause and context chains, traceback text, ``errno``/``filename``
  of ``OSError``). A field added to a class since the value was recorded takes its default;
  without a default, decoding raises ``SerializationError``.
- Encoding refuses an instance whose class is not reachable as its own ``module.qualname``
  (defined inside a function, made dynamically, redefined): it could not be rebuilt.
- When the class cannot be found at decode (its module is gone, or ``plain=True``): an attrs
  class or dataclass comes back as a :class:`RecordedFields` (a read-only dict of its fields,
  hashable, so a frozen instance used as a dict key or set element still is one), an enum member
  as its value, a named tuple as a plain tuple, an exception as a :class:`TaskFailedError`.
  Exceptions are never refused: an attribute the codec cannot carry is left out, a ``__cause__``
  chain longer than ``MAX_CHAIN`` links is cut, and a class that is not an ``Exception``
  subclass (``KeyboardInterrupt``, cancellation) or that is not found comes back as
  ``TaskFailedError``.

Other rules:

- ``bytearray`` and ``memoryview`` come back as ``bytes``. Other subclasses of ``str``, ``int``,
  ``float``, ``bytes``, ``list``, ``dict``, ``tuple``, ``set``, ``frozenset`` (``OrderedDict``,
  ``defaultdict``, ``Counter``, ``IntEnum``-free str/int subclasses...) and of the date/time
  types (e.g. freezegun's) are carried as their base type: they come back equal, as the base
  type. Named tuples are the exception: they come back as themselves.
- Time zones come back as fixed UTC offsets (``datetime.timezone``); the instant is kept.
- Enum members come back as members when the enum class is found and still has that value, else
  as the raw value.
- Depth is bounded, when encoding and when decoding: values carried as exts (tuples, sets,
  frozensets, dataclasses, attrs instances, named tuples, enums, exceptions) may sit inside one
  another at most ``MAX_DEPTH`` (100) levels deep, and lists and dicts at most 1024 levels deep
  between two such levels (msgpack's own limit). Deeper values (a linked list of 250 dataclass
  nodes, 200 nested tuples) raise ``SerializationError`` naming the type and the limit; hostile
  bytes nested deeper raise it too rather than exhaust the C stack. Cycles are refused.
- ``canonical`` differs from ``encode`` only in that dict entries and set elements are sorted by
  their encoded bytes and that values Python calls equal get equal bytes: ``-0.0`` is written as
  ``0.0`` and every NaN as the same NaN, decimals without trailing zeros (``1.0 == 1.00``), aware
  datetimes in UTC and aware times as offset-adjusted, a named tuple as the tuple it equals, an
  instance without the non-field state equality ignores, an exception in its first recorded form.
  Python's cross-type equality (``1 == 1.0 == True``) is *not* collapsed: an argument's type is
  part of its identity. ``canonical`` bytes are stored (call digests, cache keys): never change
  them for a value that could be encoded before.

Speed: plain values (None, bool, int, float, str, bytes, lists and dicts of them) are packed by
msgpack's C code in one call with no Python-level recursion; ``default=`` and ``ext_hook`` are only
called for the other types, and the depth is counted by choosing the hook for the next level
(one closure per level, made at import), so counting costs nothing per value. Measured with
timeit (best of 5 x 200k, CPython 3.11.7, msgpack 1.2.4 C extension, on a shared 2-core machine;
the previous codec measured in the same run in brackets): ``decode(encode({"a": 1, "b": "x" * 20}))``
1.00 us [1.00] (encode 0.60 [0.60], decode 0.28 [0.30]); the same round trip of
``(1, "x", {"k": 2})`` (one ext) 2.6 us [2.7]; ``canonical`` of the dict 2.6 us [2.6], ``digest``
3.2 us [3.3]. ``canonical`` walks the value in Python (it has to sort), ``encode`` does not.
"""

from __future__ import annotations

import decimal
import enum
import hashlib
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import msgpack

from flux.runtime import codec_errors
from flux.runtime.codec_classes import (
    RecordedFields,
    find_class,
    is_namedtuple_class,
    is_struct_class,
    rebuild_struct,
    struct_state,
    type_name,
    unreachable_reason,
)
from flux.runtime.errors import SerializationError

__all__ = [
    "MAX_DEPTH",
    "RecordedFields",
    "canonical",
    "decode",
    "decode_exception",
    "digest",
    "encode",
    "encode_exception",
]

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
#: Levels decoded by ``msgpack.unpackb``, whose parser state (about 40 KiB) lives on the C
#: stack; deeper ones use a heap-allocated ``Unpacker`` (slower to set up, a few hundred bytes of
#: C stack), so even ``MAX_DEPTH`` levels stay far from the end of a thread's stack.
_FAST_DEPTH = 12

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


# -- encode -------------------------------------------------------------------------------------


def _default_at(depth: int) -> Callable[[Any], Any]:
    """The ``default=`` hook for values found at ext level ``depth`` (one per level, so that
    counting the depth costs nothing per value)."""

    def default(obj: Any) -> Any:
        code, inner = _classify(obj, depth)
        if code is None:  # a subclass of a base type, now as the base type
            t = type(inner)
            if t is int and _INT64_MIN <= inner <= _UINT64_MAX:
                return inner
            if t in _EXT_ENCODERS:  # a big int, a tuple, a datetime...: needs an ext of its own
                return default(inner)
            return inner
        if code in _LEAF_CODES:
            return msgpack.ExtType(code, _pack_leaf(inner))
        if depth >= MAX_DEPTH:
            raise _too_deep(obj)
        if code == EXT_EXCEPTION:
            return msgpack.ExtType(code, _exception_payload(obj, depth + 1))
        return msgpack.ExtType(
            code,
            msgpack.packb(
                inner,
                default=_DEFAULTS[depth + 1],
                strict_types=True,
                use_bin_type=True,
                buf_size=_BUF_SIZE,
            ),
        )

    return default


#: ``_DEFAULTS[d]`` packs the values found at ext level ``d``.
_DEFAULTS = [_default_at(d) for d in range(MAX_DEPTH + 1)]


def _pack(value: Any, depth: int = 0) -> bytes:
    return msgpack.packb(
        value, default=_DEFAULTS[depth], strict_types=True, use_bin_type=True, buf_size=_BUF_SIZE
    )


def _pack_leaf(value: Any) -> bytes:
    return msgpack.packb(value, strict_types=True, use_bin_type=True, buf_size=_BUF_SIZE)


def _packer_at(depth: int) -> Callable[[Any], bytes | None]:
    def pack(value: Any) -> bytes | None:
        try:
            return _pack(value, depth)
        except Exception:  # left out of the exception's description, never refused
            return None

    return pack


_PACKERS = [_packer_at(d) for d in range(MAX_DEPTH + 1)]


def _exception_payload(exc: BaseException, depth: int) -> bytes:
    return codec_errors.pack_map(codec_errors.exception_entries(exc, _PACKERS[depth]))


def encode(value: Any, *, max_size: int | None = None) -> bytes:
    """Encode ``value`` as msgpack bytes.

    Raises :class:`SerializationError` naming the type and the place of the first value that
    cannot be carried (or is nested too deeply), or the size and limit when the result is longer
    than ``max_size`` bytes.
    """
    try:
        data = _pack(value)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _encode_error(value, exc) from None
    if max_size is not None and len(data) > max_size:
        raise SerializationError(
            f"encoded value is {len(data)} bytes, over the limit of {max_size} bytes"
        )
    return data


# -- decode -------------------------------------------------------------------------------------


def _decode_enum(inner: Any) -> Any:
    module, qualname, value = inner
    cls = find_class(module, qualname, load=True)
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        try:
            return cls(value)
        except ValueError:
            pass
    return value


def _struct_parts(inner: Any) -> tuple[str, str, Any, Any]:
    if not isinstance(inner, list) or len(inner) not in (3, 4):
        raise SerializationError(f"not an encoded instance: {_short_repr(inner)}")
    module, qualname, fields = inner[:3]
    return module, qualname, fields, inner[3] if len(inner) == 4 else None


def _fields_fallback(module: Any, qualname: Any, fields: Any) -> Any:
    if not isinstance(fields, dict):
        raise SerializationError(f"not the fields of an instance: {_short_repr(fields)}")
    return RecordedFields(fields, f"{module}.{qualname}")


def _decode_struct(inner: Any) -> Any:
    module, qualname, fields, extra = _struct_parts(inner)
    cls = find_class(module, qualname, load=True)
    if is_struct_class(cls):
        return rebuild_struct(cls, fields, extra)
    return _fields_fallback(module, qualname, fields)


def _plain_struct(inner: Any) -> Any:
    module, qualname, fields, _ = _struct_parts(inner)
    return _fields_fallback(module, qualname, fields)


def _namedtuple_parts(inner: Any) -> tuple[str, str, list[Any]]:
    if not isinstance(inner, list) or len(inner) != 3 or not isinstance(inner[2], list):
        raise SerializationError(f"not an encoded named tuple: {_short_repr(inner)}")
    return inner[0], inner[1], inner[2]


def _decode_namedtuple(inner: Any) -> Any:
    module, qualname, items = _namedtuple_parts(inner)
    cls = find_class(module, qualname, load=True)
    if isinstance(cls, type) and is_namedtuple_class(cls):
        fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        defaults: dict[str, Any] = getattr(cls, "_field_defaults", {})
        if len(items) < len(fields):  # fields added since, with defaults
            missing = [f for f in fields[len(items) :] if f not in defaults]
            if missing:
                raise SerializationError(
                    f"cannot rebuild {module}.{qualname}: {len(items)} items recorded, field "
                    f"{missing[0]!r} has no default (was it added since?)"
                )
            items = items + [defaults[f] for f in fields[len(items) :]]
        if len(items) == len(fields):
            return tuple.__new__(cls, items)
    return tuple(items)


def _decode_datetime(v: Any) -> datetime:
    y, mo, d, h, mi, s, us, off, fold = v
    return datetime(y, mo, d, h, mi, s, us, _tz(off), fold=fold)


def _decode_time(v: Any) -> time:
    h, mi, s, us, off, fold = v
    return time(h, mi, s, us, _tz(off), fold=fold)


def _decode_bigint(v: Any) -> int:
    if not isinstance(v, bytes):
        raise TypeError("big int payload is not bytes")
    return int.from_bytes(v, "big", signed=True)


def _decode_uuid(v: Any) -> uuid.UUID:
    return uuid.UUID(bytes=v)


_EXT_DECODERS: dict[int, Callable[[Any], Any]] = {
    EXT_BIGINT: _decode_bigint,
    EXT_TUPLE: tuple,
    EXT_SET: set,
    EXT_FROZENSET: frozenset,
    EXT_DATETIME: _decode_datetime,
    EXT_DATE: lambda v: date(*v),
    EXT_TIME: _decode_time,
    EXT_TIMEDELTA: lambda v: timedelta(*v),
    EXT_UUID: _decode_uuid,
    EXT_DECIMAL: decimal.Decimal,
    EXT_ENUM: _decode_enum,
    EXT_STRUCT: _decode_struct,
    EXT_EXCEPTION: lambda v: codec_errors.decode_exception(v, load=True),
    EXT_NAMEDTUPLE: _decode_namedtuple,
}

#: decoders for untrusted input: no class is looked up, nothing user-defined is constructed
_PLAIN_DECODERS: dict[int, Callable[[Any], Any]] = {
    **_EXT_DECODERS,
    EXT_ENUM: lambda inner: inner[2],
    EXT_STRUCT: _plain_struct,
    EXT_EXCEPTION: codec_errors.plain_exception,
    EXT_NAMEDTUPLE: lambda inner: tuple(_namedtuple_parts(inner)[2]),
}

# timestamp=3: msgpack's own timestamp ext (-1), which Flux never writes, comes back as an aware
# datetime rather than as a msgpack.Timestamp, so decode only ever yields carried types.
_UNPACK_OPTIONS: dict[str, Any] = {
    "strict_map_key": False,
    "raw": False,
    "use_list": True,
    "timestamp": 3,
}


def _unpack_leaf(payload: bytes) -> Any:
    return msgpack.unpackb(payload, **_UNPACK_OPTIONS)


def _unpack_deep(data: bytes, hook: Callable[[int, bytes], Any]) -> Any:
    unpacker = msgpack.Unpacker(
        None, ext_hook=hook, max_buffer_size=max(len(data), 1), **_UNPACK_OPTIONS
    )
    unpacker.feed(data)
    value = unpacker.unpack()
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return value
    raise SerializationError("cannot decode: extra data after a value")


def _hook_at(depth: int, decoders: dict[int, Callable[[Any], Any]], hooks: list[Any]) -> Any:
    """The ext hook for ext values found at level ``depth``: it decodes their payloads at level
    ``depth + 1`` with the hooks of that level."""

    def hook(code: int, payload: bytes) -> Any:
        builder = decoders.get(code)
        if builder is None:
            raise SerializationError(f"cannot decode: unknown ext type code {code}")
        if code in _LEAF_CODES:
            return builder(_unpack_leaf(payload))
        if depth >= MAX_DEPTH:
            raise SerializationError(
                f"cannot decode: values nested more than {MAX_DEPTH} levels deep, over the "
                f"codec's limit of {MAX_DEPTH}"
            )
        return builder(_unpack_deep(payload, hooks[depth + 1]))

    def fast_hook(code: int, payload: bytes) -> Any:
        builder = decoders.get(code)
        if builder is None:
            raise SerializationError(f"cannot decode: unknown ext type code {code}")
        if code in _LEAF_CODES:
            return builder(_unpack_leaf(payload))
        return builder(
            msgpack.unpackb(
                payload,
                ext_hook=hooks[depth + 1],
                strict_map_key=False,
                raw=False,
                use_list=True,
                timestamp=3,
            )
        )

    return fast_hook if depth + 1 < _FAST_DEPTH else hook


_HOOKS: list[Any] = []
_HOOKS.extend(_hook_at(d, _EXT_DECODERS, _HOOKS) for d in range(MAX_DEPTH + 1))
_PLAIN_HOOKS: list[Any] = []
_PLAIN_HOOKS.extend(_hook_at(d, _PLAIN_DECODERS, _PLAIN_HOOKS) for d in range(MAX_DEPTH + 1))


def decode_opaque(data: bytes) -> Any:
    """Decode only the plain structure of codec bytes: every ext value (datetime, tuple, class
    instance, exception...) stays an opaque ``msgpack.ExtType``, so nothing is rebuilt. With
    :func:`encode_opaque`, a part of an encoded value can be cut out byte for byte (the server
    takes a child's input out of its parent's TASK_STARTED this way)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise SerializationError(f"cannot decode {_size_of(data)}: {exc}") from None


def encode_opaque(value: Any) -> bytes:
    """Encode a structure from :func:`decode_opaque` back, ext values as they were."""
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes, *, plain: bool = False) -> Any:
    """Decode bytes made by :func:`encode`.

    Classes are found by their recorded ``module.qualname``, the module imported if needed. With
    ``plain=True`` (for bytes from an untrusted peer) nothing is imported and no class is looked
    up: attrs classes and dataclasses come back as :class:`RecordedFields`, enum members as their
    values, named tuples as tuples, exceptions as :class:`TaskFailedError`. Corrupt, foreign or
    too deeply nested bytes raise :class:`SerializationError`."""
    try:
        return msgpack.unpackb(
            data,
            ext_hook=_PLAIN_HOOKS[0] if plain else _HOOKS[0],
            strict_map_key=False,
            raw=False,
            use_list=True,
            timestamp=3,
        )
    except SerializationError:
        raise
    except Exception as exc:  # msgpack, a builder, RecursionError: never anything else
        raise SerializationError(
            f"cannot decode {_size_of(data)}: {type(exc).__name__}: {exc}"
        ) from None


def _size_of(data: Any) -> str:
    try:
        return f"{len(data)} bytes"
    except TypeError:
        return f"a value of type {type_name(type(data))!r} (expected bytes)"


# -- canonical ----------------------------------------------------------------------------------


def _canonical_decimal(v: decimal.Decimal) -> str:
    if not v.is_finite():
        return "NaN" if v.is_nan() else str(v)  # one NaN (sNaN too); +/-Infinity as is
    sign, digits, exponent = v.as_tuple()
    assert isinstance(exponent, int)
    digits_list = list(digits)
    while len(digits_list) > 1 and digits_list[-1] == 0:
        digits_list.pop()
        exponent += 1
    if digits_list == [0]:
        return "0"
    text = "".join(map(str, digits_list))
    return f"{'-' if sign else ''}{text}E{exponent}"


def _canonical_inner(code: int, obj: Any, inner: Any) -> Any:
    if code == EXT_DATETIME and inner[7] is not None:
        # The instant, as microseconds since 0001-01-01 UTC (integer arithmetic: astimezone
        # would overflow near datetime.min/max). One element, so never like a naive one.
        local = (obj.replace(tzinfo=None) - _DATETIME_MIN) // _MICROSECOND
        return [local - inner[7]]
    if code == EXT_DATETIME:
        return [*inner[:8], 0]  # naive datetimes that differ only in fold are equal
    if code == EXT_TIME and inner[4] is not None:
        total = ((inner[0] * 60 + inner[1]) * 60 + inner[2]) * 1_000_000 + inner[3]
        return [total - inner[4], 0]
    if code == EXT_TIME:
        return [*inner[:5], 0]
    if code == EXT_DECIMAL:
        return _canonical_decimal(obj)
    if code == EXT_STRUCT:
        return inner[:3]  # equality ignores state outside the fields
    return inner


class _Canon:
    """One canonical encoding run (holds its own packer: nothing shared between calls)."""

    __slots__ = ("pack", "array_header", "map_header", "depth")

    def __init__(self) -> None:
        packer = msgpack.Packer(
            strict_types=True, use_bin_type=True, autoreset=True, buf_size=_BUF_SIZE
        )
        self.pack = packer.pack
        self.array_header = packer.pack_array_header
        self.map_header = packer.pack_map_header
        self.depth = 0

    def __call__(self, obj: Any) -> bytes:
        t = type(obj)
        if t is str or t is bool or obj is None or t is bytes:
            return self.pack(obj)
        if t is int:
            if _INT64_MIN <= obj <= _UINT64_MAX:
                return self.pack(obj)
            return self.pack(msgpack.ExtType(EXT_BIGINT, self.pack(_bigint_bytes(obj))))
        if t is float:
            if obj != obj:
                return _CANONICAL_NAN
            return self.pack(obj + 0.0)  # -0.0 + 0.0 == 0.0
        if t is list:
            return self.array_header(len(obj)) + b"".join(map(self, obj))
        if t is dict:
            entries = sorted((self(k), self(v)) for k, v in obj.items())
            return self.map_header(len(entries)) + b"".join(k + v for k, v in entries)
        code, inner = _classify(obj, self.depth)
        if code is None:
            return self(inner)
        if code in _LEAF_CODES:
            return self.pack(msgpack.ExtType(code, self(_canonical_inner(code, obj, inner))))
        if self.depth >= MAX_DEPTH:
            raise _too_deep(obj)
        self.depth += 1
        try:
            return self.pack(msgpack.ExtType(*self._ext(code, obj, inner)))
        finally:
            self.depth -= 1

    def _ext(self, code: int, obj: Any, inner: Any) -> tuple[int, bytes]:
        if code == EXT_SET or code == EXT_FROZENSET:
            items = sorted(map(self, obj))
            return code, self.array_header(len(items)) + b"".join(items)
        if code == EXT_TUPLE or code == EXT_NAMEDTUPLE:  # a named tuple equals its tuple
            return EXT_TUPLE, self.array_header(len(obj)) + b"".join(map(self, obj))
        if code == EXT_EXCEPTION:
            entries = codec_errors.exception_entries(obj, self._try, canonical=True)
            return code, codec_errors.pack_map(entries, sort=True)
        return code, self(_canonical_inner(code, obj, inner))

    def _try(self, value: Any) -> bytes | None:
        depth = self.depth
        try:
            return self(value)
        except (_Unencodable, TypeError, ValueError, OverflowError, RecursionError):
            self.depth = depth
            return None


def canonical(value: Any) -> bytes:
    """Deterministic encoding of ``value`` for digests: equal values give equal bytes whatever
    the insertion order of their dicts and sets. Meant for hashing, not for :func:`decode`."""
    try:
        return _Canon()(value)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _encode_error(value, exc) from None


def digest(value: Any) -> str:
    """First 32 hex characters of the sha256 of :func:`canonical`."""
    return hashlib.sha256(canonical(value)).hexdigest()[:32]


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


# -- exceptions ---------------------------------------------------------------------------------


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as the map the codec records for it, decoded (see
    :func:`flux.runtime.codec_errors.exception_entries` for its keys)."""
    return msgpack.unpackb(
        _exception_payload(exc, 1),
        ext_hook=_HOOKS[1],
        strict_map_key=False,
        raw=False,
        use_list=True,
        timestamp=3,
    )


def decode_exception(d: dict[str, Any], *, plain: bool = False) -> BaseException:
    """Rebuild an exception from :func:`encode_exception`'s dict, without calling its
    constructor: as its original class when that is found (its module imported unless
    ``plain``) and derives from ``Exception``, else as a :class:`TaskFailedError`."""
    if plain:
        return codec_errors.plain_exception(d)
    return codec_errors.decode_exception(d, load=True)
