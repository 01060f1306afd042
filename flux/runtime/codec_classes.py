"""How the codec finds user classes and rebuilds their instances without running their code.

Part of :mod:`flux.runtime.codec` (the module docstring there is the format's reference). This
module holds the class-aware half: finding ``module.qualname`` (importing the module when the
trusted store format is decoded), reading the state of a dataclass or attrs instance, and
rebuilding one with ``object.__new__`` and ``object.__setattr__``, so that no ``__init__``,
``__post_init__``, attrs validator, converter or ``on_setattr`` hook runs a second time.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import threading
from typing import Any

import attrs

from flux.runtime.errors import SerializationError

__all__ = [
    "RecordedFields",
    "find_class",
    "find_dotted",
    "is_namedtuple_class",
    "is_struct_class",
    "rebuild_struct",
    "struct_state",
    "type_name",
    "unreachable_reason",
]

_ATTRS_HASH_CACHE = "_attrs_cached_hash"  # attrs' slot/attribute for cache_hash=True


def type_name(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


# -- finding a class ----------------------------------------------------------------------------

_failed_imports: dict[str, tuple[str, ...]] = {}  # module -> sys.path when importing it failed
_import_lock = threading.Lock()


def _load_module(module: str) -> Any:
    """``sys.modules[module]``, importing it first if needed; None when it cannot be imported.

    A failed import is not retried until ``sys.path`` changes (a history full of values of a
    class whose module is gone would otherwise scan the path once per value)."""
    found = sys.modules.get(module)
    if found is not None:
        return found
    if not module or module == "__main__" or not all(p.isidentifier() for p in module.split(".")):
        return None
    path = tuple(sys.path)
    if _failed_imports.get(module) == path:
        return None
    try:
        return importlib.import_module(module)
    except Exception:  # ImportError, or the module's own code failing: the class is not there
        with _import_lock:
            _failed_imports[module] = path
        return None


def find_class(module: str, qualname: str, *, load: bool) -> Any:
    """The object at ``module.qualname``, else None.

    With ``load`` the module is imported when it is not loaded yet (decoding the trusted store
    format); without, only ``sys.modules`` is read. Only ``__dict__`` entries are read below the
    module, so no module ``__getattr__`` (which may import lazily) and no descriptor runs."""
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return None
    mod = _load_module(module) if load else sys.modules.get(module)
    if mod is None:
        return None
    obj: Any = mod
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        obj = namespace.get(part) if namespace is not None else None
        if obj is None:
            return None
    return obj


def find_dotted(name: str, *, load: bool) -> Any:
    """Look up ``"pkg.mod.Outer.Inner"`` (the form of exception types recorded before the
    module and qualname were stored apart): the longest module prefix, then attributes."""
    parts = name.split(".")
    if len(parts) == 1:
        return find_class("builtins", name, load=False)
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if module in sys.modules:
            return find_class(module, ".".join(parts[i:]), load=False)
    if load:
        for i in range(len(parts) - 1, 0, -1):
            found = find_class(".".join(parts[:i]), ".".join(parts[i:]), load=True)
            if found is not None:
                return found
    return None


def unreachable_reason(cls: type) -> str | None:
    """Why instances of ``cls`` could not be rebuilt from its recorded path, or None.

    A class is reachable when ``module.qualname`` names this very class: not one defined in a
    function (``<locals>``), made by ``type()`` or ``namedtuple()`` under a name it is not bound
    to, or shadowed by a later definition."""
    if _reachable(cls):
        return None
    qualname = getattr(cls, "__qualname__", "")
    if "<locals>" in qualname:
        return (
            "its class is defined inside a function, so it could not be found again to rebuild "
            "the value when it is read back: define the class at module level"
        )
    return (
        f"its class is not what {type_name(cls)} names (made dynamically or redefined), so it "
        "could not be found again to rebuild the value when it is read back: define the class "
        "at module level under its own name"
    )


_reachable_classes: set[type] = set()  # positive answers only: unreachable classes stay weak


def _reachable(cls: type) -> bool:
    if cls in _reachable_classes:
        return True
    found = find_class(cls.__module__, cls.__qualname__, load=False) is cls
    if found:
        _reachable_classes.add(cls)
    return found


# -- named tuples -------------------------------------------------------------------------------


def is_namedtuple_class(cls: type) -> bool:
    fields = getattr(cls, "_fields", None)
    return (
        issubclass(cls, tuple)
        and isinstance(fields, tuple)
        and all(isinstance(f, str) for f in fields)
        and callable(getattr(cls, "_make", None))
    )


# -- dataclasses and attrs classes --------------------------------------------------------------


def is_struct_class(cls: Any) -> bool:
    return isinstance(cls, type) and (attrs.has(cls) or dataclasses.is_dataclass(cls))


_MISSING = object()


@attrs.frozen
class _Field:
    name: str
    default: Any  # _MISSING when there is none
    factory: Any  # a callable, or None
    takes_self: bool
    init: bool  # False: ``__init__`` does not set it, so a record may lack it (never set)


@attrs.frozen
class _Plan:
    """What the codec needs to know about one struct class, computed once."""

    fields: tuple[_Field, ...]
    names: frozenset[str]
    skip: frozenset[str]  # instance-dict entries that are caches, not state
    hash_cache: bool  # attrs cache_hash=True: the cache slot must start out empty


_plans: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _make_plan(cls)
    return plan


def _make_plan(cls: type) -> _Plan:
    fields: list[_Field] = []
    if attrs.has(cls):
        for a in attrs.fields(cls):
            default = a.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                fields.append(_Field(a.name, _MISSING, default.factory, default.takes_self, a.init))
            else:
                value = _MISSING if default is attrs.NOTHING else default
                fields.append(_Field(a.name, value, None, False, a.init))
    else:
        for f in dataclasses.fields(cls):
            factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
            value = _MISSING if f.default is dataclasses.MISSING else f.default
            fields.append(_Field(f.name, value, factory, False, f.init))
    skip = {_ATTRS_HASH_CACHE}
    for klass in cls.__mro__:
        for name, member in vars(klass).items():
            if isinstance(member, functools.cached_property):
                skip.add(name)
    code = getattr(getattr(cls, "__hash__", None), "__code__", None)
    hash_cache = code is not None and _ATTRS_HASH_CACHE in code.co_names
    return _Plan(tuple(fields), frozenset(f.name for f in fields), frozenset(skip), hash_cache)


def struct_state(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The instance's fields (by attribute name, ``init=False`` ones included; a field never set
    is left out) and the other entries of its ``__dict__`` (state a ``__post_init__`` or a
    method stored), caches of ``functools.cached_property`` excepted."""
    plan = _plan(type(obj))
    fields: dict[str, Any] = {}
    for f in plan.fields:
        try:
            fields[f.name] = getattr(obj, f.name)
        except AttributeError:
            pass
    extra: dict[str, Any] = {}
    namespace = getattr(obj, "__dict__", None)
    if namespace:
        for key, value in namespace.items():
            if key not in plan.names and key not in plan.skip and isinstance(key, str):
                extra[key] = value
    return fields, extra


def rebuild_struct(cls: type, fields: Any, extra: Any) -> Any:
    """An instance of ``cls`` holding the recorded state, made without calling ``__init__``.

    A field the record lacks (added to the class since) takes its default; without one this is a
    :class:`SerializationError`. Recorded fields the class no longer has are ignored."""
    if not isinstance(fields, dict):
        raise SerializationError(
            f"cannot rebuild {type_name(cls)}: the recorded fields are not a map"
        )
    plan = _plan(cls)
    try:
        obj = object.__new__(cls)
    except TypeError as exc:  # a class whose instances object.__new__ cannot make
        raise SerializationError(f"cannot rebuild {type_name(cls)}: {exc}") from None
    if plan.hash_cache:
        object.__setattr__(obj, _ATTRS_HASH_CACHE, None)
    for f in plan.fields:
        if f.name in fields:
            value = fields[f.name]
        elif f.factory is not None:
            value = f.factory(obj) if f.takes_self else f.factory()
        elif f.default is not _MISSING:
            value = f.default
        elif not f.init:
            continue  # never set when it was recorded
        else:
            raise SerializationError(
                f"cannot rebuild {type_name(cls)} from the recorded fields "
                f"{sorted(map(str, fields))}: field {f.name!r} is not recorded and has no "
                "default (was it added since?)"
            )
        object.__setattr__(obj, f.name, value)
    if isinstance(extra, dict):
        for key, value in extra.items():
            if isinstance(key, str):
                try:
                    object.__setattr__(obj, key, value)
                except (AttributeError, TypeError):  # the class has slots now
                    pass
    return obj


class RecordedFields(dict):  # type: ignore[type-arg]
    """The recorded fields of a dataclass or attrs instance whose class was not found (or that
    an untrusted peer sent). A read-only dict, hashable when its values are, so a frozen
    instance that was a dict key or a set element still is one. ``type_name`` names the class.
    """

    __slots__ = ("type_name",)

    def __init__(self, fields: Any, type_name: str = ""):
        super().__init__(fields)
        self.type_name = type_name

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"the recorded fields of {self.type_name or 'an instance'} are read-only "
            "(copy them with dict(...) to change them)"
        )

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordedFields({dict.__repr__(self)}, type_name={self.type_name!r})"

    def __reduce__(self) -> Any:  # copy and deepcopy (the default would call __setitem__)
        return (RecordedFields, (dict(self), self.type_name))
