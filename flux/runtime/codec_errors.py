"""How the codec records an exception and rebuilds it without calling its constructor.

Part of :mod:`flux.runtime.codec` (its docstring is the format's reference; ext code 13). An
exception is recorded as a map; rebuilding it runs the ``__new__`` of its nearest built-in base
(``BaseException``, ``OSError``, ...) and then restores ``args``, the instance ``__dict__``, the
fields built-in exceptions keep outside it, the cause and context chains and the traceback text.
A Python ``__init__`` never runs again, so one that formats its message does not format it twice.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import msgpack

from flux.runtime.codec_classes import find_class, find_dotted, type_name
from flux.runtime.errors import SerializationError, TaskFailedError

__all__ = ["MAX_CHAIN", "decode_exception", "exception_entries", "pack_map"]

#: Links of ``__cause__``/``__context__`` recorded below one exception; a longer chain is cut
#: there (the failure itself is always recorded; only its oldest ancestors are dropped).
MAX_CHAIN = 32

_FLUX_ATTRS = ("__flux_traceback__", "__flux_exception__")
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes defined in Python

#: Fields built-in exceptions keep in C slots rather than in ``args`` or ``__dict__``.
_NATIVE_FIELDS: tuple[tuple[type[BaseException], tuple[str, ...]], ...] = (
    (OSError, ("errno", "strerror", "filename", "filename2")),
    (ImportError, ("name", "path")),
)

#: The keys this module wrote before the format recorded more (used for stable digests).
LEGACY_KEYS = frozenset({"type", "message", "args", "traceback", "cause", "attributes"})


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"


#: An ``args``, ``attributes``, ``fields``, cause or context entry longer than this once encoded
#: is left out of an exception's description: exceptions that share exceptions (an exception
#: group whose members are the same one, nested) would otherwise double in size at each level.
MAX_ENTRY_BYTES = 1 << 20

#: Packs one value: its bytes, or None when the codec cannot carry it (then it is left out).
Pack = Callable[[Any], "bytes | None"]


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def pack_map(entries: dict[str, bytes], *, sort: bool = False) -> bytes:
    """A msgpack map from keys and already packed values (sorted by key for canonical bytes)."""
    items = [(msgpack.packb(k), v) for k, v in entries.items()]
    if sort:
        items.sort()
    return _map_header(len(items)) + b"".join(k + v for k, v in items)


def exception_entries(
    exc: BaseException, pack: Pack, *, canonical: bool = False, _seen: frozenset[int] = frozenset()
) -> dict[str, bytes]:
    """Describe ``exc`` as the entries of a map, each value packed once by ``pack`` (so a chain
    of exceptions holding exceptions costs its size, not a power of it).

    Keys: ``type`` ("module.QualName"), ``class`` ([module, qualname]), ``message``
    (``str(exc)``), ``args`` (when encodable), ``traceback`` (its own formatted frames),
    ``cause`` and ``context`` (the chained exceptions, same shape; ``context_is_cause`` when they
    are one), ``suppress_context``, ``fields`` (``errno``, ``filename``... of built-in types) and
    ``attributes`` (the encodable entries of ``__dict__``: fields a custom ``__init__`` set,
    ``__notes__``). A :class:`TaskFailedError` standing for a recorded error is described as that
    original error. With ``canonical``, only the keys of the first format are given, maps sorted
    (digests of arguments holding exceptions stay what they were).
    """
    out: dict[str, bytes] = {}

    def put(key: str, value: Any) -> None:
        data = pack(value)
        if data is not None and len(data) <= MAX_ENTRY_BYTES:
            out[key] = data

    def put_map(key: str, entries: dict[str, bytes], sort: bool = False) -> None:
        data = pack_map(entries, sort=sort)
        if len(data) <= MAX_ENTRY_BYTES:
            out[key] = data

    recorded = getattr(exc, "__flux_exception__", None)
    if isinstance(exc, TaskFailedError) and isinstance(recorded, dict):
        for key, value in (legacy_form(recorded) if canonical else recorded).items():
            if isinstance(key, str):
                put(key, value)
        return out
    cls = type(exc)
    remote = getattr(exc, "__flux_traceback__", None)
    if isinstance(remote, str) and remote:
        text = remote
    elif exc.__traceback__ is not None:
        text = "".join(traceback.format_exception(exc, chain=False))
    else:
        text = ""
    put("type", type_name(cls))
    if not canonical:
        put("class", [cls.__module__, cls.__qualname__])
    put("message", _message(exc))
    seen = _seen | {id(exc)}
    if not any(a is exc for a in exc.args):
        put("args", exc.args)
    put("traceback", text)
    if len(seen) <= MAX_CHAIN:
        cause, context = exc.__cause__, exc.__context__
        if cause is not None and id(cause) not in seen:
            entries = exception_entries(cause, pack, canonical=canonical, _seen=seen)
            put_map("cause", entries, sort=canonical)
        if canonical:
            pass
        elif context is not None and context is cause and "cause" in out:
            put("context_is_cause", True)
        elif context is not None and id(context) not in seen:
            put_map("context", exception_entries(context, pack, _seen=seen))
    if not canonical:
        if exc.__suppress_context__ and exc.__cause__ is None:
            put("suppress_context", True)
        fields: dict[str, bytes] = {}
        for base, names in _NATIVE_FIELDS:
            if isinstance(exc, base):
                for name in names:
                    value = getattr(exc, name, None)
                    data = None if value is None else pack(value)
                    if data is not None:
                        fields[name] = data
        if fields:
            put_map("fields", fields)
    extra = getattr(exc, "__dict__", None)
    if extra:
        attributes: dict[str, bytes] = {}
        for key, value in extra.items():
            if isinstance(key, str) and key not in _FLUX_ATTRS and value is not exc:
                data = pack(value)
                if data is not None:
                    attributes[key] = data
        if attributes:
            put_map("attributes", attributes, sort=canonical)
    return out


def _exception_class(d: dict[str, Any], load: bool) -> type[Exception] | None:
    path = d.get("class")
    if isinstance(path, list | tuple) and len(path) == 2:
        cls = find_class(path[0], path[1], load=load)
    else:  # recorded before the module and qualname were stored apart
        cls = find_dotted(d["type"], load=load)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


def _construct(cls: type[Exception], args: tuple[Any, ...]) -> Exception | None:
    """An instance of ``cls`` made by its nearest built-in base, no Python code run: the base's
    ``__new__`` sets ``args`` (and for ``OSError``, ``errno`` and the rest); the base's C
    ``__init__`` runs only where no Python ``__init__`` overrides it (``UnicodeDecodeError``,
    ``StopIteration`` keep their fields there)."""
    native = next(k for k in cls.__mro__ if not k.__flags__ & _HEAPTYPE)
    try:
        exc = native.__new__(cls, *args)  # type: ignore[call-overload]
        if cls.__init__ is native.__init__:
            native.__init__(exc, *args)
        exc.args = args
    except Exception:
        return None
    return exc if isinstance(exc, cls) else None


def _restore(exc: BaseException, d: dict[str, Any]) -> None:
    fields = d.get("fields")
    if isinstance(fields, dict):
        for key, value in fields.items():
            if isinstance(key, str) and value is not None:  # None: never set (C NULL)
                try:
                    setattr(exc, key, value)
                except Exception:
                    pass
    attributes = d.get("attributes")
    namespace = getattr(exc, "__dict__", None)
    if isinstance(attributes, dict) and namespace is not None:
        namespace.update((k, v) for k, v in attributes.items() if isinstance(k, str))


def decode_exception(d: Any, *, load: bool = True, _depth: int = 0) -> BaseException:
    """Rebuild an exception from :func:`encode_exception`'s map.

    The original class is used when it is found (its module imported if ``load`` and not yet
    loaded), derives from ``Exception`` and takes the recorded state; otherwise the result is a
    :class:`TaskFailedError`. The traceback text is attached as ``__flux_traceback__``."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise SerializationError(f"not an encoded exception: {_short(d)}")
    type_name_: str = d["type"]
    message = d.get("message")
    message = message if isinstance(message, str) else ""
    text = d.get("traceback")
    text = text if isinstance(text, str) else ""
    raw_args = d.get("args")
    args = (
        tuple(raw_args) if isinstance(raw_args, list | tuple) else ((message,) if message else ())
    )

    exc: BaseException | None = None
    cls = _exception_class(d, load)
    if cls is not None:
        exc = _construct(cls, args)
        if exc is not None:
            _restore(exc, d)
            try:
                str(exc)
            except Exception:  # e.g. a __str__ reading attributes that were not recorded
                exc = None
    if exc is None:
        exc = TaskFailedError(type_name_, message, text or None)
        exc.__flux_exception__ = d  # type: ignore[attr-defined]
    try:
        exc.__flux_traceback__ = text  # type: ignore[attr-defined]
    except Exception:
        pass
    if _depth < MAX_CHAIN:
        _decode_chain(exc, d, load, _depth + 1)
    return exc


def _decode_chain(exc: BaseException, d: dict[str, Any], load: bool, depth: int) -> None:
    cause = d.get("cause")
    if isinstance(cause, dict):
        try:
            exc.__cause__ = decode_exception(cause, load=load, _depth=depth)
        except SerializationError:
            pass
    if d.get("context_is_cause") is True:
        exc.__context__ = exc.__cause__
    else:
        context = d.get("context")
        if isinstance(context, dict):
            try:
                exc.__context__ = decode_exception(context, load=load, _depth=depth)
            except SerializationError:
                pass
    if d.get("suppress_context") is True:
        exc.__suppress_context__ = True


def plain_exception(d: Any) -> TaskFailedError:
    """The stand-in an untrusted peer's exception decodes to: no class is looked up."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise SerializationError(f"not an encoded exception: {_short(d)}")
    message = d.get("message") if isinstance(d.get("message"), str) else ""
    text = d.get("traceback") if isinstance(d.get("traceback"), str) else None
    return TaskFailedError(d["type"], message, text)


def legacy_form(d: Any) -> Any:
    """The map without the keys added after the first format (so digests of arguments holding
    exceptions stay what they were)."""
    if not isinstance(d, dict):
        return d
    out = {k: v for k, v in d.items() if k in LEGACY_KEYS}
    if "cause" in out:
        out["cause"] = legacy_form(out["cause"])
    return out


def _short(obj: Any, limit: int = 40) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type_name(type(obj))}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
