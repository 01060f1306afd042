"""Canonical encoding, for digests: equal values give equal bytes.

Part of :mod:`flux.runtime.codec` (its docstring states the rules). The bytes are stored (call
digests in histories, cache keys): never change them for a value that could be encoded before.
"""

from __future__ import annotations

import decimal
import hashlib
from typing import Any

import msgpack

from flux.runtime import codec_errors
from flux.runtime.codec_ext import (
    _BUF_SIZE,
    _CANONICAL_NAN,
    _DATETIME_MIN,
    _INT64_MIN,
    _LEAF_CODES,
    _MICROSECOND,
    _UINT64_MAX,
    EXT_BIGINT,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_EXCEPTION,
    EXT_FROZENSET,
    EXT_NAMEDTUPLE,
    EXT_SET,
    EXT_STRUCT,
    EXT_TIME,
    EXT_TUPLE,
    MAX_DEPTH,
    _bigint_bytes,
    _classify,
    _encode_error,
    _too_deep,
    _Unencodable,
)
from flux.runtime.errors import SerializationError

__all__ = ["canonical", "digest"]



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

    __slots__ = ("pack", "array_header", "map_header", "depth", "memo")

    def __init__(self) -> None:
        packer = msgpack.Packer(
            strict_types=True, use_bin_type=True, autoreset=True, buf_size=_BUF_SIZE
        )
        self.pack = packer.pack
        self.array_header = packer.pack_array_header
        self.map_header = packer.pack_map_header
        self.depth = 0
        self.memo: dict[tuple[int, int], tuple[Any, bytes]] = {}

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
        if code == EXT_EXCEPTION:  # each distinct exception described once (see codec.py)
            key = (id(obj), self.depth)
            hit = self.memo.get(key)
            if hit is None:
                entries = codec_errors.exception_entries(obj, self._try, canonical=True)
                hit = self.memo[key] = (obj, codec_errors.pack_map(entries, sort=True))
            return code, hit[1]
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
