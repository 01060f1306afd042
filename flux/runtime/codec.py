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
  Exceptions are never refused: an attribute the codec cannot carry (or an entry larger than
  ``MAX_ENTRY_BYTES`` once encoded) is left out, a ``__cause__`` chain longer than ``MAX_CHAIN``
  links is cut, and a class that is not an ``Exception``
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
timeit (best of 15 x 100k, process CPU time, CPython 3.11.7, msgpack 1.2.4 C extension, on a
shared 2-core machine; the previous codec in the same run in brackets):
``decode(encode({"a": 1, "b": "x" * 20}))`` 1.06 us [1.02] (encode 0.63 [0.61], decode 0.29
[0.30]); the same round trip of ``(1, "x", {"k": 2})`` (one ext) 2.9 us [2.9] (encode 2.1 [1.9],
decode 0.60 [0.56]); ``canonical`` of the dict 2.6 us [2.6], ``digest`` 3.3 us [3.3].
``canonical`` walks the value in Python (it has to sort), ``encode`` does not.

Modules: this one (encode, decode, the API), :mod:`~flux.runtime.codec_ext` (ext codes, limits,
value to ext, error paths), :mod:`~flux.runtime.codec_canonical`,
:mod:`~flux.runtime.codec_classes` (finding and rebuilding classes),
:mod:`~flux.runtime.codec_errors` (exceptions).
"""

from __future__ import annotations

import decimal
import enum
import threading
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

import msgpack

from flux.runtime import codec_errors
from flux.runtime.codec_canonical import canonical, digest
from flux.runtime.codec_classes import (
    RecordedFields,
    find_class,
    is_namedtuple_class,
    is_struct_class,
    rebuild_struct,
    type_name,
)
from flux.runtime.codec_ext import (  # noqa: F401 - the ext codes are part of this API
    _BUF_SIZE,
    _EXT_ENCODERS,
    _INT64_MIN,
    _LEAF_CODES,
    _UINT64_MAX,
    EXT_BIGINT,
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_ENUM,
    EXT_EXCEPTION,
    EXT_FROZENSET,
    EXT_NAMEDTUPLE,
    EXT_SET,
    EXT_STRUCT,
    EXT_TIME,
    EXT_TIMEDELTA,
    EXT_TUPLE,
    EXT_UUID,
    MAX_DEPTH,
    _classify,
    _encode_error,
    _short_repr,
    _too_deep,
    _tz,
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

#: Levels decoded by ``msgpack.unpackb``, whose parser state (about 40 KiB) lives on the C
#: stack; deeper ones use a heap-allocated ``Unpacker`` (slower to set up, a few hundred bytes of
#: C stack), so even ``MAX_DEPTH`` levels stay far from the end of a thread's stack.
_FAST_DEPTH = 12


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


_local = threading.local()


def _exception_payload(exc: BaseException, depth: int) -> bytes:
    """The ext payload of an exception. Exceptions met again inside it (an exception group's
    members sharing a context, say) are described once: the memo lives as long as the outermost
    exception being packed, so the cost is the number of distinct exceptions, not of paths."""
    memo: dict[tuple[int, int], tuple[BaseException, bytes]] | None = getattr(_local, "memo", None)
    outermost = memo is None
    if memo is None:
        memo = _local.memo = {}
    try:
        hit = memo.get((id(exc), depth))
        if hit is not None:
            return hit[1]
        payload = codec_errors.pack_map(codec_errors.exception_entries(exc, _PACKERS[depth]))
        memo[id(exc), depth] = (exc, payload)  # holding exc keeps its id from being reused
        return payload
    finally:
        if outermost:
            _local.memo = None


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
