"""Secrets encrypted at rest in the store (AES-256-GCM from ``cryptography``).

The key comes from ``FLUX_SECRET_KEY`` (32 bytes, url-safe base64) or from a key file created on
first use with mode 0600 next to the database (``FLUX_SECRET_KEY_FILE`` overrides its path). No key
ships with Flux. Each value is sealed with a fresh 96-bit nonce and the secret's name as associated
data, so a ciphertext copied under another name does not decrypt.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import FluxError, SecretNotFoundError
from .settings import Settings
from .store import Store

_VERSION = b"\x01"
MAX_NAME = 200
MAX_VALUE = 64 * 1024
#: Values shorter than this are masked only where they stand as a whole word (see
#: :func:`mask_secrets`), so setting one gives a :class:`ShortSecretWarning`.
MIN_SECRET_LENGTH = 8
MASK = "***"


class ShortSecretWarning(UserWarning):
    """A secret was set with a value shorter than :data:`MIN_SECRET_LENGTH` characters."""


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching every secret value, longest first. A value shorter than
    MIN_SECRET_LENGTH matches only where it is not part of a longer word (a word character
    next to its own first or last word character stops it); a longer one matches anywhere,
    since finding it inside a word means the secret itself was glued to other text."""
    parts = []
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        part = re.escape(value)
        if len(value) < MIN_SECRET_LENGTH:
            if re.match(r"\w", value):
                part = r"(?<!\w)" + part
            if re.search(r"\w$", value):
                part += r"(?!\w)"
        parts.append(part)
    return re.compile("|".join(parts)) if parts else None


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of a secret value replaced by ``***``; text around and
    inside other words is left as it was (a secret ``ta`` leaves ``my_task()`` alone)."""
    pattern = _pattern(secrets)
    return text if pattern is None else pattern.sub(MASK, text)


def holds_secret(value: Any, secrets: Iterable[str]) -> bool:
    """Whether ``value`` (a string, bytes, or lists, tuples and dicts of them, e.g. an encoded
    exception) holds a secret value as :func:`mask_secrets` would mask it."""
    pattern = _pattern(secrets)
    if pattern is None:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8", "replace")
        if isinstance(item, str):
            if pattern.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False


def check_value(name: str, value: object) -> str:
    """Return ``value`` if it can be a secret's value, else raise ``ValueError`` naming the
    secret. A value shorter than MIN_SECRET_LENGTH is accepted with a ShortSecretWarning."""
    if not isinstance(value, str):
        raise ValueError(f"the value of secret {name!r} must be a string")
    if not value:
        raise ValueError(f"the value of secret {name!r} must not be empty")
    if len(value.encode()) > MAX_VALUE:
        raise ValueError(f"the value of secret {name!r} exceeds {MAX_VALUE} bytes")
    if len(value) < MIN_SECRET_LENGTH:
        text = (
            f"secret {name!r} is only {len(value)} character{'' if len(value) == 1 else 's'} "
            f"long: values shorter than {MIN_SECRET_LENGTH} are masked in errors and logs only "
            "where they stand as a whole word"
        )
        warnings.warn(text, ShortSecretWarning, stacklevel=3)
    return value


class SecretKeyError(FluxError):
    """The secret key is missing, malformed, or not the one the secrets were sealed with."""


def _decode_key(text: str, origin: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii") + b"==")
    except (ValueError, UnicodeEncodeError):
        raise SecretKeyError(f"{origin} is not url-safe base64") from None
    if len(key) != 32:
        raise SecretKeyError(f"{origin} must hold 32 bytes (base64), it holds {len(key)}")
    return key


def load_key(settings: Settings, environ: Mapping[str, str] | None = None) -> bytes:
    """The key from ``FLUX_SECRET_KEY``, else the key file (created with mode 0600 if absent)."""
    env = os.environ if environ is None else environ
    if env.get("FLUX_SECRET_KEY"):
        return _decode_key(env["FLUX_SECRET_KEY"], "FLUX_SECRET_KEY")
    path = settings.secret_key_file
    if path is None:
        raise SecretKeyError("no secret key: set FLUX_SECRET_KEY or a secret key file")
    try:
        with open(path, encoding="ascii") as f:
            return _decode_key(f.read(), f"secret key file {path}")
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        with open(path, encoding="ascii") as f:
            return _decode_key(f.read(), f"secret key file {path}")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")
    return _decode_key(text, f"secret key file {path}")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError(f"a secret name must be a non-empty string of at most {MAX_NAME} chars")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"secret name {name!r} must not contain spaces or control characters")
    return name


class SecretStore:
    """Encrypts and decrypts secrets kept in the store's ``secrets`` table."""

    def __init__(self, store: Store, settings: Settings, environ: Mapping[str, str] | None = None):
        self.store = store
        self.settings = settings
        self._environ = environ
        self._aead: AESGCM | None = None

    async def _cipher(self) -> AESGCM:
        if self._aead is None:
            key = await anyio.to_thread.run_sync(load_key, self.settings, self._environ)
            self._aead = AESGCM(key)
        return self._aead

    async def set(self, name: str, value: str) -> None:
        check_name(name)
        check_value(name, value)
        aead = await self._cipher()
        nonce = os.urandom(12)
        sealed = _VERSION + nonce + aead.encrypt(nonce, value.encode(), name.encode())
        await self.store.put_secret(name, sealed)

    async def get(self, name: str) -> str:
        check_name(name)
        sealed = await self.store.get_secret(name)
        if sealed is None:
            raise SecretNotFoundError(f"secret {name!r} is not set")
        aead = await self._cipher()
        if sealed[:1] != _VERSION or len(sealed) < 13:
            raise SecretKeyError(f"secret {name!r} is stored in an unknown format")
        try:
            return aead.decrypt(sealed[1:13], sealed[13:], name.encode()).decode()
        except InvalidTag:
            raise SecretKeyError(
                f"secret {name!r} cannot be decrypted: it was sealed with another key "
                "(FLUX_SECRET_KEY or key file) or under another name"
            ) from None

    async def get_many(self, names: Iterable[str]) -> dict[str, str]:
        """Exactly the secrets asked for; a missing one raises naming it (all missing named)."""
        names = list(dict.fromkeys(names))
        values: dict[str, str] = {}
        missing: list[str] = []
        for name in names:
            try:
                values[name] = await self.get(name)
            except SecretNotFoundError:
                missing.append(name)
        if missing:
            raise SecretNotFoundError(
                f"secret{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}"
            )
        return values

    async def remove(self, name: str) -> bool:
        return await self.store.delete_secret(check_name(name))

    async def names(self) -> list[str]:
        return await self.store.list_secret_names()


# ---------------------------------------------------------------------------- redaction


def _needles(secrets: Iterable[str]) -> list[str]:
    """The secret values worth looking for, longest first (so that a secret containing another
    is masked whole)."""
    return sorted({s for s in secrets if isinstance(s, str) and s}, key=len, reverse=True)


def _mask_str(text: str, needles: Sequence[str]) -> str:
    # the same rule as everywhere (see mask_secrets): short values only as whole words
    for needle in needles:
        if needle in text:
            return mask_secrets(text, needles)
    return text


def _mask_bytes(data: bytes, needles: Sequence[bytes]) -> bytes:
    for needle in needles:
        if needle in data:
            data = data.replace(needle, MASK.encode())
    return data


class _Redactor:
    """One walk over one value; ``seen`` guards against cycles (a cyclic value is not something
    the codec records, but redaction must not loop on it either)."""

    def __init__(self, needles: list[str]):
        self.needles = needles
        self.byte_needles = [n.encode("utf-8") for n in needles]
        self.seen: dict[int, Any] = {}

    def value(self, v: Any) -> Any:
        t = type(v)
        if v is None or t is bool or t is int or t is float:
            return v
        if isinstance(v, str):
            return _mask_str(v, self.needles)
        if isinstance(v, bytes | bytearray | memoryview):
            data = bytes(v)
            masked = _mask_bytes(data, self.byte_needles)
            return v if masked == data else masked
        key = id(v)
        if key in self.seen:
            return self.seen[key]
        self.seen[key] = v
        out = self._container(v)
        self.seen[key] = out
        return out

    def _container(self, v: Any) -> Any:
        if isinstance(v, dict):
            items = [(self.value(k), self.value(x)) for k, x in v.items()]
            if all(a is k and b is x for (a, b), (k, x) in zip(items, v.items(), strict=True)):
                return v
            return dict(items)
        if isinstance(v, list | tuple | set | frozenset):
            items = [self.value(x) for x in v]
            if all(a is b for a, b in zip(items, v, strict=True)):
                return v
            if isinstance(v, list):
                return items
            if isinstance(v, tuple) and hasattr(v, "_fields"):  # a named tuple: keep its type
                return type(v)(*items)
            return type(v)(items) if type(v) in (tuple, set, frozenset) else tuple(items)
        if isinstance(v, BaseException):
            return self._exception(v)
        if attrs.has(type(v)):
            changes = {}
            for f in attrs.fields(type(v)):
                old = getattr(v, f.name, None)
                new = self.value(old)
                if new is not old:
                    changes[f.name] = new
            return self._rebuilt(v, changes)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            changes = {}
            for f in dataclasses.fields(v):
                old = getattr(v, f.name, None)
                new = self.value(old)
                if new is not old:
                    changes[f.name] = new
            return self._rebuilt(v, changes)
        return v  # datetimes, UUIDs, decimals, enums: no text of their own to mask

    @staticmethod
    def _rebuilt(v: Any, changes: dict[str, Any]) -> Any:
        if not changes:
            return v
        clone = copy.copy(v)
        for name, value in changes.items():
            object.__setattr__(clone, name, value)  # frozen classes included
        return clone

    def _exception(self, exc: BaseException) -> BaseException:
        args = self.value(exc.args)
        state = getattr(exc, "__dict__", None) or {}
        new_state = self.value(state) if state else state
        cause = exc.__cause__
        new_cause = self.value(cause) if cause is not None else None
        context = exc.__context__
        new_context = self.value(context) if context is not None else None
        try:
            text = str(exc)
        except Exception:
            text = ""
        unchanged = (
            args is exc.args
            and new_state is state
            and new_cause is cause
            and new_context is context
            and _mask_str(text, self.needles) == text
        )
        if unchanged:
            return exc
        try:
            cls = type(exc)
            clone = cls.__new__(cls, *args)  # a copy without running __init__ again
            clone.args = tuple(args)
            if state:
                clone.__dict__.update(new_state)
            clone.__cause__ = new_cause
            clone.__context__ = new_context
            clone.__suppress_context__ = exc.__suppress_context__
            clone.__traceback__ = exc.__traceback__
            shown = str(clone)
            if _mask_str(shown, self.needles) == shown:  # nothing left to mask
                return clone
        except Exception:
            pass
        # a type whose message is not built from its args or attributes: a stand-in that says
        # what it was, with the message masked
        from .errors import TaskFailedError

        stand_in = TaskFailedError(
            f"{type(exc).__module__}.{type(exc).__qualname__}", _mask_str(text, self.needles)
        )
        stand_in.__traceback__ = None
        return stand_in


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every exact occurrence of a secret value inside its strings and bytes
    replaced by ``***``, recursively: containers, attrs classes, dataclasses and exceptions
    (message, ``args``, attributes, cause and context) included. What holds no secret is
    returned as itself (no copy); what does is rebuilt with the same types where it can be
    (an exception whose text cannot be rebuilt from its parts becomes a ``TaskFailedError``
    naming the original type). Empty secrets are ignored."""
    needles = _needles(secrets)
    if not needles or value is None:
        return value
    if isinstance(value, str):
        return _mask_str(value, needles)
    return _Redactor(needles).value(value)


def redact_encoded(data: bytes | None, secrets: Iterable[str]) -> bytes | None:
    """Codec bytes with every secret value masked, without decoding them into objects: the
    msgpack structure is walked with ext values opened as their inner msgpack (no class is
    looked up, nothing is built), strings and bytes are masked, and it is packed again. Bytes
    holding no secret come back as they are. Bytes that do not parse are masked as raw bytes
    (so nothing leaks, even if the result no longer decodes)."""
    if data is None:
        return None
    needles = _needles(secrets)
    byte_needles = [n.encode("utf-8") for n in needles]
    if not any(n in data for n in byte_needles):
        return data
    try:
        return _redact_packed(data, needles, byte_needles, 0)
    except Exception:
        return _mask_bytes(data, byte_needles)


def _redact_packed(data: bytes, needles: list[str], byte_needles: list[bytes], depth: int) -> bytes:
    if depth > 64:
        raise ValueError("ext values nested too deeply")
    if not any(n in data for n in byte_needles):
        return data
    value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return _mask_str(v, needles)
        if isinstance(v, bytes):
            return _mask_bytes(v, byte_needles)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, msgpack.ExtType):
            return msgpack.ExtType(v.code, _redact_packed(v.data, needles, byte_needles, depth + 1))
        return v

    return msgpack.packb(walk(value), use_bin_type=True)
