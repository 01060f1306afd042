"""Module-level classes for the codec property tests (importable by a fresh process as
``tests.codec_types``), and the comparisons those tests make."""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from typing import Any, NamedTuple

import attrs

from flux.runtime import codec


class Status(enum.Enum):
    NEW = "new"
    DONE = 2


@dataclasses.dataclass(frozen=True)
class FrozenKey:
    name: str
    n: int


@attrs.frozen
class AttrsKey:
    a: int
    b: tuple[int, ...] = ()


@dataclasses.dataclass
class Priced:
    """``__post_init__`` scales the amount: it must run once, on creation only."""

    amount: int
    extra: Any = None

    def __post_init__(self) -> None:
        self.amount *= 100


@dataclasses.dataclass(slots=True)
class Slotted:
    left: Any
    right: Any = None


@attrs.define
class Order:
    id: int
    items: list[Any] = attrs.Factory(list)
    meta: dict[Any, Any] = attrs.Factory(dict)
    status: Status = Status.NEW


class Coord(NamedTuple):
    x: Any
    y: Any = 0


class AppError(Exception):
    """Formats its message in ``__init__`` and keeps its fields as attributes."""

    def __init__(self, code: int, detail: Any):
        super().__init__(f"app error {code}: {detail!r}")
        self.code = code
        self.detail = detail


def make_error(code: int, detail: Any, cause: BaseException | None, note: str | None) -> Any:
    exc = AppError(code, detail)
    if cause is not None:
        exc.__cause__ = cause
    if note is not None:
        exc.add_note(note)
    return exc


def priced(amount: int, extra: Any) -> Priced:
    value = Priced(0, extra)
    object.__setattr__(value, "amount", amount)  # any amount, post-init already ran
    return value


def fingerprint(value: Any) -> list[str]:
    """The sorted multiset of every type inside ``value`` (fields, keys, causes included)."""
    seen: Counter[str] = Counter()
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        seen[f"{t.__module__}.{t.__qualname__}"] += 1
        if t in (list, tuple, set, frozenset) or isinstance(v, tuple):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif dataclasses.is_dataclass(v) or attrs.has(t):
            names = (
                [a.name for a in attrs.fields(t)]
                if attrs.has(t)
                else [f.name for f in dataclasses.fields(v)]
            )
            stack.extend(getattr(v, n) for n in names)
        elif isinstance(v, BaseException):
            stack.extend(v.args)
            stack.extend(x for x in (v.__cause__, v.__context__) if x is not None)
            stack.extend(
                x for k, x in vars(v).items() if k not in ("__flux_traceback__",)
            )
    return sorted(f"{k}*{n}" for k, n in seen.items())


def has_exception(value: Any) -> bool:
    return any(
        name.split("*")[0].endswith(("Error", "Exception", "Group")) for name in fingerprint(value)
    )


def describe(value: Any) -> dict[str, Any]:
    """What a fresh process reports about a decoded value: its canonical bytes and types."""
    return {"canonical": codec.canonical(value).hex(), "types": fingerprint(value)}


def same(original: Any, decoded: Any) -> bool:
    if describe(original) != describe(decoded):
        return False
    return has_exception(original) or original == decoded
