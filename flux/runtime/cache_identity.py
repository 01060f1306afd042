"""What a cached task's entries are keyed on: the task's whole identity, not only its name.

Two tasks made by one factory (``make_multiplier(2)`` and ``make_multiplier(3)``) share their
qualified name; what tells them apart is the values their function closes over, and the default
values of its parameters. The cache key is the digest (over the codec's canonical encoding) of
the qualified name, the call's arguments and, when the function has any, its closure cell values
and defaults. Values that are code rather than data take part by what names them:

- another task, or a function: its qualified name and, recursively, its own closure and defaults;
- a class: ``module.qualname``; a module: its name; ``functools.partial``: its function, args
  and keywords; a bound method: its function and its ``self``.

A closure cell holding anything else the codec cannot carry (a client, a lock, a connection)
leaves two tasks of the factory impossible to tell apart: ``cache=True`` is refused when the
task is declared, naming the variable and its type. The identity is taken when the task is
declared (a list the body appends to does not move its entries); a cell bound only after the
declaration is taken at the first call, and if it cannot be carried then, the task runs
uncached (a warning is logged once). A default the codec cannot carry (a sentinel
``object()``) takes part by its type's name: defaults are fixed when the function is defined,
so that is how they differ.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import SerializationError

if TYPE_CHECKING:
    from .task import task

__all__ = ["check_cache_identity", "cache_key"]

log = logging.getLogger("flux.cache")

_MAX_NESTING = 16  # functions closing over functions closing over ...: deeper is one marker


class _Unidentifiable(Exception):
    def __init__(self, where: str, value: Any, reason: str):
        super().__init__(where)
        self.where = where
        self.value = value
        self.reason = reason


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _value(value: Any, where: str, strict: bool, seen: frozenset[int], level: int) -> Any:
    """The identity of one closure or default value (raises :class:`_Unidentifiable`)."""
    from .task import task as task_type

    if level > _MAX_NESTING:
        return ["deep", _qualname(type(value))]
    if isinstance(value, task_type):
        return ["task", value.qualified_name, _function(value.func, seen, level + 1)]
    if isinstance(value, types.FunctionType):
        return ["function", _qualname(value), _function(value, seen, level + 1)]
    if isinstance(value, types.BuiltinFunctionType | types.MethodWrapperType):
        return ["function", _qualname(value)]
    if isinstance(value, types.MethodType):
        inner = _value(value.__func__, where, strict, seen, level + 1)
        return ["method", inner, _value(value.__self__, f"{where}.__self__", strict, seen, level)]
    if isinstance(value, functools.partial):
        return [
            "partial",
            _value(value.func, where, strict, seen, level + 1),
            [_value(a, f"{where}.args", strict, seen, level + 1) for a in value.args],
            {
                k: _value(v, f"{where}.keywords", strict, seen, level + 1)
                for k, v in value.keywords.items()
            },
        ]
    if isinstance(value, types.ModuleType):
        return ["module", value.__name__]
    if isinstance(value, type):
        return ["class", _qualname(value)]
    try:
        codec.canonical(value)
    except SerializationError as exc:
        if strict:
            raise _Unidentifiable(where, value, str(exc)) from None
        return ["object", _qualname(type(value))]
    return value


def _function(func: Any, seen: frozenset[int], level: int) -> Any:
    """The identity a function adds to its qualified name: closure values and defaults, or None
    when it has none (so the keys of plain module-level tasks stay what they always were)."""
    if id(func) in seen:  # a recursive task, a function closing over itself
        return ["self"]
    seen = seen | {id(func)}
    code = getattr(func, "__code__", None)
    closure = getattr(func, "__closure__", None) or ()
    cells: dict[str, Any] = {}
    for name, cell in zip(getattr(code, "co_freevars", ()), closure, strict=False):
        try:
            contents = cell.cell_contents
        except ValueError:  # not bound yet
            raise _Unbound(name) from None
        cells[name] = _value(contents, name, True, seen, level)
    defaults = [
        _value(v, "default", False, seen, level)
        for v in (getattr(func, "__defaults__", None) or ())
    ]
    kwdefaults = {
        k: _value(v, "default", False, seen, level)
        for k, v in (getattr(func, "__kwdefaults__", None) or {}).items()
    }
    if not cells and not defaults and not kwdefaults:
        return None
    return {"closure": cells, "defaults": defaults, "kwdefaults": kwdefaults}


class _Unbound(Exception):
    """A closure cell not bound yet (the variable is assigned after the function is made)."""


def _refusal(t: task, err: _Unidentifiable) -> ValueError:
    return ValueError(
        f"task {t.name!r} ({t.qualified_name}) cannot be declared with cache=True: its closure "
        f"variable {err.where!r} holds a value of type {_qualname(type(err.value))!r} the codec "
        "cannot carry, so two tasks made by the same factory could not be told apart and would "
        f"share cache entries ({err.reason}). Pass that value as an argument, close over data "
        "the codec carries (a name, a number, a tuple...) instead, or drop cache=True."
    )


_UNKNOWN = object()


def check_cache_identity(t: task) -> None:
    """Take the task's identity when it is declared, refusing ``cache=True`` when the task could
    not be told apart from another task of the same factory. The identity is a snapshot: a list
    the body appends to does not change which entries the task reads. A cell bound only after the
    declaration is taken at the first call."""
    try:
        t._cache_identity = _snapshot(t)  # type: ignore[attr-defined]
    except _Unbound:
        t._cache_identity = _UNKNOWN  # type: ignore[attr-defined]
    except _Unidentifiable as err:
        raise _refusal(t, err) from None


_warned: set[str] = set()


def _snapshot(t: task) -> str | None:
    """The digest of the task's identity beyond its name (a copy: later changes to a value it
    closes over do not move it), or None when it has none."""
    func = t.func
    if isinstance(func, types.MethodType | functools.partial):  # its object or arguments count
        identity = _value(func, func.__class__.__name__, True, frozenset(), 0)
    else:
        identity = _function(func, frozenset(), 0)
    return None if identity is None else codec.digest(identity)


def _identity(t: task) -> str | None:
    identity = getattr(t, "_cache_identity", _UNKNOWN)
    if identity is _UNKNOWN:
        identity = t._cache_identity = _snapshot(t)  # type: ignore[attr-defined]
    return identity


def cache_key(t: task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The cache entry of one call of ``t``, or None when this call cannot be cached (a closure
    value that cannot be carried, bound after the declaration)."""
    try:
        identity = _identity(t)
    except (_Unbound, _Unidentifiable) as err:
        if t.qualified_name not in _warned:
            _warned.add(t.qualified_name)
            log.warning(
                "task %r runs uncached: its identity cannot be determined (%s)",
                t.name,
                _refusal(t, err) if isinstance(err, _Unidentifiable) else f"{err} is unbound",
            )
        return None
    if identity is None:
        return codec.digest([t.qualified_name, list(args), kwargs])
    return codec.digest([t.qualified_name, list(args), kwargs, identity])
