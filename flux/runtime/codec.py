"""The one codec: how every value crosses the store and the wire.

Values are encoded as msgpack. Types msgpack does not carry natively are msgpack *ext* values
whose payload is itself msgpack (the "inner" value listed below), so nested values inside them
go through the same rules. Nothing here uses pickle, dill or eval, and decoding never imports a
module: classes (enums, attrs classes, dataclasses, exceptions) are looked up only in
``sys.modules``; when they are not there the plain data comes back instead.

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
     12   attrs class / dataclass     [module, qualname, {field name: value}] (see below)
     13   exception                   the dict of :func:`encode_exception`

Other rules:

- ``bytearray`` and ``memoryview`` come back as ``bytes``. Subclasses of ``str``, ``int``,
  ``float``, ``bytes``, ``list``, ``dict``, ``tuple``, ``set``, ``frozenset`` (``OrderedDict``,
  ``defaultdict``, named tuples, ...) and of the date/time types (e.g. freezegun's) are carried
  as their base type: they come back equal, but as the base type.
- Time zones come back as fixed UTC offsets (``datetime.timezone``); the instant is kept.
- Enum members come back as members when the enum class is in ``sys.modules`` and still has
  that value, else as the raw value.
- attrs classes and dataclasses go through the module's one cattrs converter, which maps an
  instance to the dict of its fields and back; each field *value* is then carried by this codec
  like any other value (a nested instance is its own ext with its own class path). So nothing is
  lost to cattrs' type-directed unstructuring (tuples becoming lists, nested instances becoming
  dicts under ``Any`` or a base-class annotation, union disambiguation by keys). An instance comes
  back as itself when its class is in ``sys.modules``, else as the plain dict of fields; a class
  that is found but can no longer be built from the recorded fields (a required field was
  added, say) raises ``SerializationError``.
- ``canonical`` differs from ``encode`` only in that dict entries and set elements are sorted by
  their encoded bytes and that values Python calls equal get equal bytes: ``-0.0`` is written as
  ``0.0`` and every NaN as the same NaN, decimals without trailing zeros (``1.0 == 1.00``), aware
  datetimes in UTC and aware times as offset-adjusted. Python's cross-type equality
  (``1 == 1.0 == True``) is *not* collapsed: an argument's type is part of its identity.

Speed: plain values (None, bool, int, float, str, bytes, lists and dicts of them) are packed by
msgpack's C code in one call with no Python-level recursion; ``default=`` and ``ext_hook`` are only
called for the other types. Measured with timeit (best of 5 x 200k, CPython 3.11.7, msgpack 1.2.4
C extension): ``decode(encode({"a": 1, "b": "x" * 20}))`` 0.8 us (encode 0.48, decode 0.21);
the same round trip of ``(1, "x", {"k": 2})`` (one ext) 2.1 us; ``canonical`` of the dict 2.0 us,
``digest`` 2.5 us. ``canonical`` walks the value in Python (it has to sort), ``encode`` does not.
Limits: nesting is bounded (msgpack allows 511 levels of lists/dicts; values inside exts such as
tuples recurse in Python, so a few hundred tuple levels at most); deeper values raise
``SerializationError``.
"""

from __future__ import annotations

import builtins
import dataclasses
import decimal
import enum
import hashlib
import sys
import traceback
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import attrs
import cattrs
import cattrs.gen
import msgpack

from flux.runtime.errors import SerializationError, TaskFailedError

__all__ = [
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

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
# msgpack's Packer starts with a 1 MiB buffer by default; packing an ext payload while the outer
# packer is live then costs a fresh large allocation each time (measured: 12 us instead of 1 us
# for a small tuple). A small start grows by doubling when needed.
_BUF_SIZE = 512
_DATETIME_MIN = datetime(1, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_CANONICAL_NAN = b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"


def _is_struct_class(cls: Any) -> bool:
    return isinstance(cls, type) and (attrs.has(cls) or dataclasses.is_dataclass(cls))


def _identity_structure(value: Any, _type: Any) -> Any:
    return value


def _identity_unstructure(value: Any) -> Any:
    return value


def _field_names(cls: type) -> list[str]:
    if attrs.has(cls):
        return [a.name for a in attrs.fields(cls)]
    return [f.name for f in dataclasses.fields(cls)]


def _make_converter() -> cattrs.Converter:
    """cattrs maps an attrs class or dataclass to the dict of its fields and back (names,
    aliases such as ``_x``/``x``, defaults, ``init=False`` fields). The field *values* are left
    as they are: the codec carries each one exactly (a nested instance, an enum member, a tuple
    in a field typed ``Any``, an instance of a subclass ...), so no type-directed conversion is
    wanted, and none of cattrs' lossy ones (tuples to lists, nested classes to dicts, union
    disambiguation by keys) happens."""
    converter = cattrs.Converter(detailed_validation=False)

    def unstructure_factory(cls: type) -> Callable[[Any], dict[str, Any]]:
        keep = cattrs.gen.override(unstruct_hook=_identity_unstructure)
        return cattrs.gen.make_dict_unstructure_fn(
            cls,
            converter,
            _cattrs_include_init_false=True,
            **{name: keep for name in _field_names(cls)},
        )

    def structure_factory(cls: type) -> Callable[[Any, Any], Any]:
        keep = cattrs.gen.override(struct_hook=_identity_structure)
        return cattrs.gen.make_dict_structure_fn(
            cls,
            converter,
            _cattrs_include_init_false=True,
            **{name: keep for name in _field_names(cls)},
        )

    converter.register_unstructure_hook_factory(_is_struct_class, unstructure_factory)
    converter.register_structure_hook_factory(_is_struct_class, structure_factory)
    return converter


#: The one converter for attrs classes and dataclasses. Configured once, here, at import.
_CONVERTER = _make_converter()


# -- helpers ------------------------------------------------------------------------------------


def _type_name(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def _find_class(module: str, qualname: str) -> Any:
    """The object at ``module.qualname`` if that module is already loaded, else None.

    Reads ``__dict__`` entries only, so no module ``__getattr__`` (which may import lazily) and
    no descriptor runs."""
    mod = sys.modules.get(module)
    if mod is None or "<locals>" in qualname:
        return None
    obj: Any = mod
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        obj = namespace.get(part) if namespace is not None else None
        if obj is None:
            return None
    return obj


def _find_dotted(name: str) -> Any:
    """Look up ``"pkg.mod.Outer.Inner"``: the longest loaded module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if module in sys.modules:
            return _find_class(module, ".".join(parts[i:]))
    if len(parts) == 1:
        return vars(builtins).get(name)
    return None


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
        super().__init__(reason or _type_name(type(obj)))
        self.obj = obj
        self.reason = reason


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


def _enum_inner(v: enum.Enum) -> list[Any]:
    cls = type(v)
    return [cls.__module__, cls.__qualname__, v.value]


def _struct_inner(v: Any) -> list[Any]:
    cls = type(v)
    try:
        data = _CONVERTER.unstructure(v)
    except Exception as exc:  # a broken attrs/dataclass instance
        raise _Unencodable(v, f"cattrs could not unstructure it: {exc}") from exc
    return [cls.__module__, cls.__qualname__, data]


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


def _classify(obj: Any) -> tuple[int | None, Any]:
    """For a value msgpack does not pack natively: ``(ext code, inner value)``, or
    ``(None, replacement)`` where the replacement is the same value as a plain base type.
    Raises :class:`_Unencodable` for a value the codec does not carry."""
    entry = _EXT_ENCODERS.get(type(obj))
    if entry is not None:
        code, make_inner = entry
        return code, make_inner(obj)
    if isinstance(obj, enum.Enum):
        return EXT_ENUM, _enum_inner(obj)
    if isinstance(obj, BaseException):
        return EXT_EXCEPTION, encode_exception(obj)
    if _is_struct_class(type(obj)):
        return EXT_STRUCT, _struct_inner(obj)
    for base, convert in _BASES:
        if isinstance(obj, base):
            return None, convert(obj)
    raise _Unencodable(obj)


# -- encode -------------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    code, inner = _classify(obj)
    if code is None:  # a subclass of a base type, now as the base type
        t = type(inner)
        if t is int and _INT64_MIN <= inner <= _UINT64_MAX:
            return inner
        if t in _EXT_ENCODERS:  # a big int, a tuple, a datetime...: needs an ext of its own
            return _default(inner)
        return inner
    return msgpack.ExtType(code, _pack(inner))


def _pack(value: Any) -> bytes:
    return msgpack.packb(
        value, default=_default, strict_types=True, use_bin_type=True, buf_size=_BUF_SIZE
    )


def encode(value: Any, *, max_size: int | None = None) -> bytes:
    """Encode ``value`` as msgpack bytes.

    Raises :class:`SerializationError` naming the type and the place of the first value that
    cannot be carried, or the size and limit when the result is longer than ``max_size`` bytes.
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
    cls = _find_class(module, qualname)
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        try:
            return cls(value)
        except (ValueError, TypeError):  # no longer a member: the raw value
            return value
    return value


def _decode_struct(inner: Any) -> Any:
    module, qualname, data = inner
    cls = _find_class(module, qualname)
    if _is_struct_class(cls):
        try:
            return _CONVERTER.structure(data, cls)
        except Exception as exc:
            raise SerializationError(
                f"cannot rebuild {module}.{qualname} from the recorded fields "
                f"{list(data) if isinstance(data, dict) else _short_repr(data)}: {exc}"
            ) from exc
    return data


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


def _decode_exception_inner(v: Any) -> BaseException:
    return decode_exception(v)


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
    EXT_EXCEPTION: _decode_exception_inner,
}


def _unpack(data: bytes) -> Any:
    # timestamp=3: msgpack's own timestamp ext (-1), which Flux never writes, comes back as an
    # aware datetime rather than as a msgpack.Timestamp, so decode only ever yields carried types.
    return msgpack.unpackb(
        data, ext_hook=_ext_hook, strict_map_key=False, raw=False, use_list=True, timestamp=3
    )


def _ext_hook(code: int, payload: bytes) -> Any:
    builder = _EXT_DECODERS.get(code)
    if builder is None:
        raise SerializationError(f"cannot decode: unknown ext type code {code}")
    return builder(_unpack(payload))


def _plain_exception(v: Any) -> BaseException:
    if not isinstance(v, dict) or not isinstance(v.get("type"), str):
        raise SerializationError(f"not an encoded exception: {_short_repr(v)}")
    message = v.get("message") if isinstance(v.get("message"), str) else ""
    text = v.get("traceback") if isinstance(v.get("traceback"), str) else None
    return TaskFailedError(v["type"], message, text)


#: decoders for untrusted input: no class is looked up, nothing user-defined is constructed
_PLAIN_DECODERS: dict[int, Callable[[Any], Any]] = {
    **_EXT_DECODERS,
    EXT_ENUM: lambda inner: inner[2],
    EXT_STRUCT: lambda inner: inner[2],
    EXT_EXCEPTION: _plain_exception,
}


def _plain_hook(code: int, payload: bytes) -> Any:
    builder = _PLAIN_DECODERS.get(code)
    if builder is None:
        raise SerializationError(f"cannot decode: unknown ext type code {code}")
    return builder(_unpack_plain(payload))


def _unpack_plain(data: bytes) -> Any:
    return msgpack.unpackb(
        data, ext_hook=_plain_hook, strict_map_key=False, raw=False, use_list=True, timestamp=3
    )


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

    With ``plain=True`` (for bytes from an untrusted peer) no class is looked up: attrs classes
    and dataclasses come back as dicts of fields, enum members as their values, exceptions as
    :class:`TaskFailedError`. Corrupt or foreign bytes raise :class:`SerializationError`."""
    try:
        return _unpack_plain(data) if plain else _unpack(data)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot decode {_size_of(data)}: {type(exc).__name__}: {exc}"
        ) from None


def _size_of(data: Any) -> str:
    try:
        return f"{len(data)} bytes"
    except TypeError:
        return f"a value of type {_type_name(type(data))!r} (expected bytes)"


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
    return inner


class _Canon:
    """One canonical encoding run (holds its own packer: nothing shared between calls)."""

    __slots__ = ("pack", "array_header", "map_header")

    def __init__(self) -> None:
        packer = msgpack.Packer(
            strict_types=True, use_bin_type=True, autoreset=True, buf_size=_BUF_SIZE
        )
        self.pack = packer.pack
        self.array_header = packer.pack_array_header
        self.map_header = packer.pack_map_header

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
        code, inner = _classify(obj)
        if code is None:
            return self(inner)
        if code == EXT_SET or code == EXT_FROZENSET:
            items = sorted(map(self, obj))
            payload = self.array_header(len(items)) + b"".join(items)
        elif code == EXT_TUPLE:
            payload = self.array_header(len(obj)) + b"".join(map(self, obj))
        else:
            payload = self(_canonical_inner(code, obj, inner))
        return self.pack(msgpack.ExtType(code, payload))


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
        text = f"<{_type_name(type(obj))}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Found(Exception):
    def __init__(self, path: str, obj: Any, reason: str, as_key: bool = False):
        super().__init__(path)
        self.path = path
        self.obj = obj
        self.reason = reason
        self.as_key = as_key


def _walk(obj: Any, path: str, active: set[int], as_key: bool = False) -> None:
    """Raise :class:`_Found` at the first value (depth first) the codec cannot carry."""
    t = type(obj)
    if obj is None or t in (bool, int, float, str, bytes):
        return
    if id(obj) in active:
        raise _Found(path, obj, "cyclic reference", as_key)
    active.add(id(obj))
    try:
        if t is list:
            for i, item in enumerate(obj):
                _walk(item, f"{path}[{i}]", active)
            return
        if t is dict:
            for key, item in obj.items():
                sub = f"{path}[{_short_repr(key)}]"
                _walk(key, sub, active, as_key=True)
                _walk(item, sub, active)
            return
        try:
            code, inner = _classify(obj)
        except _Unencodable as exc:
            raise _Found(path, obj, exc.reason, as_key) from None
        if code is None:
            _walk(inner, path, active, as_key)
        elif code == EXT_TUPLE:
            for i, item in enumerate(obj):
                _walk(item, f"{path}[{i}]", active)
        elif code in (EXT_SET, EXT_FROZENSET):
            for item in obj:
                _walk(item, f"{path}{{{_short_repr(item)}}}", active)
        elif code == EXT_ENUM:
            _walk(inner[2], f"{path}.value", active)
        elif code == EXT_STRUCT:
            data = inner[2]
            if isinstance(data, dict):
                for key, item in data.items():
                    _walk(item, f"{path}.{key}", active)
            else:
                _walk(data, path, active)
        elif code == EXT_EXCEPTION:
            _walk(inner, path, active)
    finally:
        active.discard(id(obj))


def _encode_error(value: Any, exc: BaseException) -> SerializationError:
    try:
        _walk(value, "", set())
    except _Found as found:
        type_name = _type_name(type(found.obj))
        where = f"at {found.path}" if found.path else "at the top level"
        if found.as_key:
            where += " (as a dict key)"
        if found.reason == "cyclic reference":
            message = f"cannot encode value of type {type_name!r} {where}: cyclic reference"
        else:
            message = f"cannot encode value of type {type_name!r} {where}"
            if found.reason:
                message += f": {found.reason}"
        err = SerializationError(message)
        err.type_name = type_name  # type: ignore[attr-defined]
        err.path = found.path  # type: ignore[attr-defined]
        return err
    except RecursionError:
        pass
    if isinstance(exc, RecursionError) or "recursion" in str(exc).lower():
        message = "cannot encode value: nested too deeply (or cyclic)"
    else:
        message = f"cannot encode value of type {_type_name(type(value))!r}: {exc}"
    err = SerializationError(message)
    err.type_name = _type_name(type(value))  # type: ignore[attr-defined]
    err.path = ""  # type: ignore[attr-defined]
    return err


# -- exceptions ---------------------------------------------------------------------------------

_FLUX_ATTRS = ("__flux_traceback__", "__flux_exception__")


def _encodable(value: Any) -> bool:
    try:
        _pack(value)
    except Exception:
        return False
    return True


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as a dict the codec carries.

    Keys: ``type`` ("module.QualName"), ``message`` (``str(exc)``), ``args`` (when encodable),
    ``traceback`` (formatted text, possibly empty), ``cause`` (``__cause__``, same shape), and
    ``attributes`` (the encodable entries of the exception's ``__dict__``, e.g. ``__notes__`` or
    fields a custom ``__init__`` sets). A :class:`TaskFailedError` standing for a recorded error
    is described as that original error.
    """
    return _encode_exception(exc, frozenset())


def _encode_exception(exc: BaseException, seen: frozenset[int]) -> dict[str, Any]:
    recorded = getattr(exc, "__flux_exception__", None)
    if isinstance(exc, TaskFailedError) and isinstance(recorded, dict):
        return dict(recorded)
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__qualname__}>"
    remote = getattr(exc, "__flux_traceback__", None)
    if isinstance(remote, str) and remote:
        text = remote
    elif exc.__traceback__ is not None:
        text = "".join(traceback.format_exception(exc, chain=False))
    else:
        text = ""
    result: dict[str, Any] = {"type": _type_name(type(exc)), "message": message}
    seen = seen | {id(exc)}
    args = exc.args
    if not any(a is exc for a in args) and _encodable(args):
        result["args"] = args
    result["traceback"] = text
    cause = exc.__cause__
    if cause is not None and id(cause) not in seen:
        result["cause"] = _encode_exception(cause, seen)
    extra = getattr(exc, "__dict__", None)
    if extra:
        attributes = {
            key: value
            for key, value in extra.items()
            if isinstance(key, str)
            and key not in _FLUX_ATTRS
            and value is not exc
            and _encodable(value)
        }
        if attributes:
            result["attributes"] = attributes
    return result


def _exception_class(type_name: str) -> type[Exception] | None:
    cls = _find_dotted(type_name)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


def _rebuild(cls: type[Exception], args: tuple[Any, ...]) -> Exception | None:
    try:
        exc = cls(*args)
        if isinstance(exc, cls):
            return exc
    except Exception:
        pass
    try:
        exc = cls.__new__(cls)
        exc.args = args
        return exc
    except Exception:
        return None


def decode_exception(d: dict[str, Any]) -> BaseException:
    """Rebuild an exception from :func:`encode_exception`'s dict.

    The original class is used when it is found without importing anything (in ``sys.modules``),
    derives from ``Exception`` and can be constructed; otherwise the result is a
    :class:`TaskFailedError`. The traceback text is attached as ``__flux_traceback__``.
    """
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise SerializationError(f"not an encoded exception: {_short_repr(d)}")
    type_name: str = d["type"]
    message = d.get("message")
    message = message if isinstance(message, str) else ""
    text = d.get("traceback")
    text = text if isinstance(text, str) else ""
    raw_args = d.get("args")
    args = (
        tuple(raw_args) if isinstance(raw_args, list | tuple) else ((message,) if message else ())
    )

    exc: BaseException | None = None
    cls = _exception_class(type_name)
    if cls is not None:
        exc = _rebuild(cls, args)
        if exc is not None:
            attributes = d.get("attributes")
            if isinstance(attributes, dict):
                for key, value in attributes.items():
                    try:
                        setattr(exc, key, value)
                    except Exception:
                        pass
            try:
                str(exc)
            except Exception:  # e.g. a __str__ reading attributes a bare __new__ never set
                exc = None
    if exc is None:
        exc = TaskFailedError(type_name, message, text or None)
        exc.__flux_exception__ = d  # type: ignore[attr-defined]
    try:
        exc.__flux_traceback__ = text  # type: ignore[attr-defined]
    except Exception:
        pass
    cause = d.get("cause")
    if isinstance(cause, dict):
        try:
            exc.__cause__ = decode_exception(cause)
        except SerializationError:
            pass
    return exc
