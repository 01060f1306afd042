"""The worker session wire protocol, sans-IO.

Modelled on h11: this module owns no socket and imports no async library. It turns bytes into
typed messages and back, and checks each side's state machine, so the trio shells in
``flux/net/server.py`` and ``flux/net/worker.py`` stay thin and this file is tested without I/O.

Framing: one binary WebSocket message is one frame, one msgpack map encoded with the project's
codec (:mod:`flux.runtime.codec`): ``{"type": "<message type>", **fields}``. The first frame of a
session, the worker's ``hello``, carries ``protocol_version`` (:data:`PROTOCOL_VERSION`).

Messages (W = worker, S = server)::

    hello            W->S  protocol_version, name, token, capacity
    welcome          S->W  worker_id, heartbeat_interval, lease_ttl, max_frame_size,
                           max_value_size, request_timeout, capacity (the last four may be
                           absent: defaults apply)
    lease            S->W  execution_id, epoch, workflow_name, workflow_version, source (utf-8
                           bytes), input, history, state, resume
    events           W->S  execution_id, epoch, batch, events, state (None: unchanged)
    ack              S->W  execution_id, epoch, batch
    heartbeat        W->S  leases ([[execution_id, epoch], ...]), running
    release          W->S  execution_id, epoch, reason (paused|sleeping|shutdown), wake_at
    complete         W->S  execution_id, epoch, state (COMPLETED|FAILED|CANCELLED), output
    reject           S->W  execution_id, epoch, reason (stale epoch / lease lost: stop it)
    cancel           S->W  execution_id, epoch
    secrets_request  W->S  execution_id, epoch, request_id, names
    secrets          S->W  request_id, values ({name: value}), missing
    cache_get        W->S  execution_id, epoch, request_id, key
    cache_value      S->W  request_id, value (encoded bytes, None: no entry)
    cache_put        W->S  execution_id, epoch, key, value (encoded bytes), ttl (None: none)
    logs             W->S  execution_id, epoch, lines ([[call_id, attempt, level, logger, time,
                           message], ...]), limit, cut_lines, cut_bytes (task logs; no answer)
    error            both  code, detail (then the sender closes)

An event in ``history`` and ``events`` is a map with at least ``seq`` (int), ``type`` (str),
``call_id`` (str or None), ``name`` (str or None), ``value`` (anything the codec carries) and
``time`` (datetime or None); extra keys pass through.

Use::

    server = ServerSession()
    try:
        msg = server.receive_bytes(data)      # -> Hello, Events, Heartbeat, ...
    except RemoteProtocolError as exc:        # the session is now CLOSED
        await ws.send_message(server.error_frame(exc))
        await ws.aclose(exc.close_code, exc.close_reason)
    ...
    await ws.send_message(server.send(Welcome(worker_id=..., heartbeat_interval=5, lease_ttl=30)))

Rules:

* ``receive_bytes`` raises only :class:`RemoteProtocolError` for anything the peer sent (plus
  ``TypeError`` when handed something that is neither bytes nor str); the session is then CLOSED.
* ``send`` raises :class:`LocalProtocolError` when our side breaks the rules (wrong state, wrong
  direction, frame too large) and leaves the state unchanged: nothing was put on the wire. A value
  the codec cannot carry raises the codec's ``SerializationError``, also without a state change.
* Messages validate their fields when constructed, so a bad message fails where it is built
  (``LocalProtocolError``, code ``bad-field``); the same checks run on received frames and raise
  ``RemoteProtocolError`` naming the message type and the field. Unknown extra fields in a received
  frame are ignored, for forward compatibility; every declared field must be present.
* Leases, epochs, batches and fencing are the server's business, not this module's: it knows
  messages and session states only.
* Fields declared ``optional`` (their metadata) may be absent from a received frame: the default
  applies. Only fields added after version 1 are optional, so older peers keep working.

Sizes: the server announces in ``welcome`` the largest frame it accepts (``max_frame_size``) and
the largest encoded event value (``max_value_size``, smaller than the frame, leaving room for the
envelope). The worker fails a task whose value is larger where the value is made, and splits its
event batches with :func:`split_events` so that no frame exceeds the limit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

import attrs

from flux.runtime.codec import decode, encode
from flux.runtime.errors import FluxError
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.store import StoredEvent

__all__ = [
    "CLOSE_CODES",
    "COMPLETE_STATES",
    "DEFAULT_MAX_FRAME_SIZE",
    "EVENT_FIELDS",
    "EVENT_OVERHEAD",
    "FRAME_ENVELOPE",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_ERROR_DETAIL_CHARS",
    "MAX_WORKER_NAME",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "RELEASE_REASONS",
    "TRANSITIONS",
    "Ack",
    "Action",
    "CacheGet",
    "CachePut",
    "CacheValue",
    "Cancel",
    "CloseCode",
    "Complete",
    "Error",
    "Events",
    "Heartbeat",
    "Hello",
    "Lease",
    "LocalProtocolError",
    "Logs",
    "Message",
    "ProtocolError",
    "Reject",
    "Release",
    "RemoteProtocolError",
    "Role",
    "Secrets",
    "SecretsRequest",
    "ServerSession",
    "Session",
    "SessionState",
    "Welcome",
    "WorkerSession",
    "close_code_for",
    "from_frame",
    "oversized",
    "split_events",
    "to_frame",
    "to_wire",
    "truncate_utf8",
    "wire_size",
    "worker_name_problem",
]

#: Version of this protocol; the worker's ``hello`` must carry exactly this number.
PROTOCOL_VERSION = 1

#: Default bound on one frame, in bytes, both ways.
DEFAULT_MAX_FRAME_SIZE = 1 << 20

#: RFC 6455 limits a close reason to 123 bytes; we keep a margin.
MAX_CLOSE_REASON_BYTES = 120

#: Bound on the ``detail`` text of an Error frame built from an exception.
MAX_ERROR_DETAIL_CHARS = 1000

#: Room kept in every frame for the envelope around event values (ids, types, times, keys).
FRAME_ENVELOPE = 4096

#: Estimated bytes an event takes on the wire besides its value and its strings.
EVENT_OVERHEAD = 96

#: A worker's name longer than this is cut (the server logs it and builds worker ids from it).
MAX_WORKER_NAME = 100

_MAX_INT = 2**63 - 1  # SQLite's integer range; msgpack carries it exactly


# --------------------------------------------------------------------------------------------
# Close codes and errors


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455, section 7.4.1) this protocol uses."""

    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009


#: Error code -> WebSocket close code. Codes not listed close with 1002 (protocol error).
#: ``unauthorized`` is not raised here: the server decides on tokens and sends
#: ``Error(code="unauthorized", ...)`` itself, then closes with ``close_code_for("unauthorized")``.
CLOSE_CODES: Mapping[str, int] = MappingProxyType(
    {
        "bad-frame": CloseCode.PROTOCOL_ERROR,
        "bad-field": CloseCode.PROTOCOL_ERROR,
        "unknown-type": CloseCode.PROTOCOL_ERROR,
        "unexpected-message": CloseCode.PROTOCOL_ERROR,
        "version-mismatch": CloseCode.PROTOCOL_ERROR,
        "closed": CloseCode.PROTOCOL_ERROR,
        "too-large": CloseCode.MESSAGE_TOO_BIG,
        "unsupported-data": CloseCode.UNSUPPORTED_DATA,
        "unauthorized": CloseCode.POLICY_VIOLATION,
        "forbidden": CloseCode.POLICY_VIOLATION,
    }
)


def close_code_for(code: str) -> int:
    """The WebSocket close code that goes with an error ``code`` (1002 when not listed)."""
    return int(CLOSE_CODES.get(code, CloseCode.PROTOCOL_ERROR))


def truncate_utf8(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never in the middle of a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: max(limit - 3, 0)].decode("utf-8", "ignore") + "..."


class ProtocolError(FluxError):
    """The worker session protocol was broken, by us or by the peer.

    ``code`` is a short slug (``bad-frame``, ``bad-field``, ``unknown-type``, ``too-large``,
    ``unexpected-message``, ``version-mismatch``, ``unsupported-data``, ``closed``);
    ``close_code`` the WebSocket close code to close with and ``close_reason`` a close reason
    of at most 120 UTF-8 bytes.
    """

    def __init__(self, code: str, message: str, *, close_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.close_code = close_code if close_code is not None else close_code_for(code)

    @property
    def close_reason(self) -> str:
        return truncate_utf8(f"{self.code}: {self}", MAX_CLOSE_REASON_BYTES)

    def to_message(self) -> Error:
        """The Error message telling the peer about this error."""
        return Error(code=self.code, detail=_truncate_chars(str(self), MAX_ERROR_DETAIL_CHARS))


class LocalProtocolError(ProtocolError):
    """Raised when our side tried to build or send something the protocol forbids: a message
    with a bad field, a message of the other direction, a message the session state does not
    allow, or a frame over the size limit. Nothing was sent; the session state is unchanged."""


class RemoteProtocolError(ProtocolError):
    """Raised by ``receive_bytes``/``from_frame`` when the peer sent something the protocol
    forbids: not msgpack, not a map, no or an unknown type, a bad or missing field, another
    protocol version, a frame over the size limit or a message the session state does not allow.
    The session is then CLOSED; send ``error_frame(exc)`` and close with ``exc.close_code``."""


def _truncate_chars(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any, limit: int = 40) -> str:
    """A short repr of a value the peer sent, for error messages (never raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<a {value.bit_length()} bit integer>"
    try:
        text = repr(value)
    except Exception:
        text = f"<{_kind(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


# --------------------------------------------------------------------------------------------
# Field checks. Each takes (value, path) and returns the value normalized (lists for any
# sequence, plain str for str enums, float for numbers) or raises _Invalid.


class _Invalid(Exception):
    def __init__(self, path: str, problem: str, code: str = "bad-field"):
        super().__init__(f"{path} {problem}")
        self.code = code


_Check: TypeAlias = Callable[[Any, str], Any]


def _int(minimum: int = 0) -> _Check:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, f"must be an integer, got {_kind(value)}")
        if not minimum <= value <= _MAX_INT:
            raise _Invalid(
                path, f"must be an integer from {minimum} to 2**63-1, got {_show(value)}"
            )
        return int(value)

    return check


def _number(*, positive: bool = False) -> _Check:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(path, f"must be a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _Invalid(path, f"must be a finite number, got {_show(value)}")
        if positive and number <= 0:
            raise _Invalid(path, f"must be a number > 0, got {_show(value)}")
        return number

    return check


def _str(value: Any, path: str) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, got {_kind(value)}")
    return value


def _choice(*choices: str) -> _Check:
    allowed = frozenset(choices)
    shown = ", ".join(repr(c) for c in choices)

    def check(value: Any, path: str) -> str:
        text = _str(value, path)
        if text not in allowed:
            raise _Invalid(path, f"must be one of {shown}, got {_show(text)}")
        return text

    return check


def _bytes(*, utf8: bool = False) -> _Check:
    def check(value: Any, path: str) -> bytes:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise _Invalid(path, f"must be bytes, got {_kind(value)}")
        if utf8:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Invalid(path, f"is not valid UTF-8 (byte {exc.start})") from None
        return value

    return check


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, f"must be a boolean, got {_kind(value)}")
    return value


def _any(value: Any, path: str) -> Any:
    return value


def _optional(check: _Check) -> _Check:
    def optional(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return optional


def _list_of(check: _Check) -> _Check:
    def list_of(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise _Invalid(path, f"must be a list, got {_kind(value)}")
        return [check(item, f"{path}[{i}]") for i, item in enumerate(value)]

    return list_of


def _dict_of(key_check: _Check, value_check: _Check) -> _Check:
    def dict_of(value: Any, path: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise _Invalid(path, f"must be a map, got {_kind(value)}")
        out = {}
        for key, item in value.items():
            key = key_check(key, f"{path} key")
            out[key] = value_check(item, f"{path}[{_show(key)}]")
        return out

    return dict_of


def _optional_datetime(value: Any, path: str) -> datetime | None:
    if value is not None and not isinstance(value, datetime):
        raise _Invalid(path, f"must be a datetime or None, got {_kind(value)}")
    return value


#: The fields of one event dict in ``Lease.history`` and ``Events.events``. Extra keys are kept.
EVENT_FIELDS: Mapping[str, _Check] = MappingProxyType(
    {
        "seq": _int(0),
        "type": _str,
        "call_id": _optional(_str),
        "name": _optional(_str),
        "value": _any,
        "time": _optional_datetime,
    }
)


def _event(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, f"must be an event map, got {_kind(value)}")
    event = dict(value)
    for key, check in EVENT_FIELDS.items():
        if key not in event:
            raise _Invalid(path, f"lacks the event field {key!r}")
        event[key] = check(event[key], f"{path}.{key}")
    return event


def _lease_pair(value: Any, path: str) -> tuple[str, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _Invalid(path, f"must be a pair [execution_id, epoch], got {_kind(value)}")
    return (_str(value[0], f"{path}[0]"), _int(0)(value[1], f"{path}[1]"))


_EXECUTION_STATE = _choice(*(s.value for s in ExecutionState))
_EPOCH = _int(0)


def _field(check: _Check, *, optional: bool = False, **kwargs: Any) -> Any:
    return attrs.field(metadata={"check": check, "optional": optional}, **kwargs)


def worker_name_problem(name: str) -> str | None:
    """What is wrong with a worker's name, or None: it must be non-empty and hold no control
    (non-printable) characters, since it goes into log lines and worker ids."""
    if not name:
        return "must not be empty"
    for i, c in enumerate(name):
        if not c.isprintable():
            return f"must not contain control characters ({c!r} at index {i})"
    return None


def _hide_token(token: str | None) -> str:
    return "None" if token is None else "'***'"


def _hide_bytes(value: bytes | None) -> str:
    return "None" if value is None else f"<{len(value)} bytes>"


def _hide_values(values: dict[str, str]) -> str:
    return f"<{len(values)} hidden: {sorted(values)!r}>"


# --------------------------------------------------------------------------------------------
# Messages


class Role(enum.Enum):
    """The two ends of a worker session."""

    WORKER = "worker"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.WORKER else Role.WORKER


class _MessageBase:
    """Validation shared by every message class; see the module docstring."""

    __slots__ = ()

    TYPE: ClassVar[str]
    #: Which side sends this message; None for both (Error).
    SENDER: ClassVar[Role | None]

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            check = field.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, field.name)
            try:
                normalized = check(value, field.name)
            except _Invalid as exc:
                raise LocalProtocolError(exc.code, f"bad {self.TYPE!r} message: {exc}") from None
            if normalized is not value:
                object.__setattr__(self, field.name, normalized)
        try:
            self._check()
        except _Invalid as exc:
            raise LocalProtocolError(exc.code, f"bad {self.TYPE!r} message: {exc}") from None

    def _check(self) -> None:
        """Checks across fields; raise _Invalid."""

    def _wire_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}


@attrs.frozen(kw_only=True)
class Hello(_MessageBase):
    """W->S, the first frame of a session: who the worker is and how many executions it runs."""

    TYPE: ClassVar[str] = "hello"
    SENDER: ClassVar[Role | None] = Role.WORKER

    protocol_version: int = _field(_int(1), default=PROTOCOL_VERSION)
    name: str = _field(_str)
    token: str | None = _field(_optional(_str), repr=_hide_token)
    capacity: int = _field(_int(1))

    def _check(self) -> None:
        if self.protocol_version != PROTOCOL_VERSION:
            raise _Invalid(
                "protocol_version",
                f"is {self.protocol_version}, this side speaks version {PROTOCOL_VERSION}",
                code="version-mismatch",
            )
        problem = worker_name_problem(self.name)
        if problem is not None:
            raise _Invalid("name", problem)


@attrs.frozen(kw_only=True)
class Welcome(_MessageBase):
    """S->W, the answer to hello: the worker's id and the timing it must keep."""

    TYPE: ClassVar[str] = "welcome"
    SENDER: ClassVar[Role | None] = Role.SERVER

    worker_id: str = _field(_str)
    heartbeat_interval: float = _field(_number(positive=True))
    lease_ttl: float = _field(_number(positive=True))
    #: the largest frame the server accepts from this worker
    max_frame_size: int = _field(_int(1), optional=True, default=DEFAULT_MAX_FRAME_SIZE)
    #: the largest encoded event value the server accepts (a task's value over it fails the task)
    max_value_size: int = _field(
        _int(1), optional=True, default=DEFAULT_MAX_FRAME_SIZE - FRAME_ENVELOPE
    )
    #: seconds the worker waits for the answer to a request (ack, secrets, cache value) before
    #: it gives the lease up (the server then leases the execution again)
    request_timeout: float = _field(_number(positive=True), optional=True, default=30.0)
    #: the number of executions the server will lease to this worker at once (its claimed
    #: capacity, or the server's maximum if it claimed more)
    capacity: int | None = _field(_optional(_int(1)), optional=True, default=None)
    #: bytes of task log lines the server keeps per execution unless its workflow says
    #: otherwise (the worker stops shipping an execution's lines past it)
    log_limit: int | None = _field(_optional(_int(1)), optional=True, default=None)

    def _check(self) -> None:
        if self.heartbeat_interval >= self.lease_ttl:
            raise _Invalid(
                "heartbeat_interval",
                f"({self.heartbeat_interval}) must be shorter than lease_ttl ({self.lease_ttl})",
            )


@attrs.frozen(kw_only=True)
class Lease(_MessageBase):
    """S->W: run (or resume, replaying ``history``) an execution under lease ``epoch``."""

    TYPE: ClassVar[str] = "lease"
    SENDER: ClassVar[Role | None] = Role.SERVER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    workflow_name: str = _field(_str)
    workflow_version: int = _field(_int(0))
    source: bytes = _field(_bytes(utf8=True), repr=lambda s: f"<{len(s)} bytes>")
    input: Any = _field(_any)
    history: list[dict[str, Any]] = _field(_list_of(_event), repr=lambda h: f"<{len(h)} events>")
    state: str = _field(_EXECUTION_STATE)
    resume: bool = _field(_bool)


@attrs.frozen(kw_only=True)
class Events(_MessageBase):
    """W->S: events to append (batch ``batch`` of this worker), and the new state if it changed."""

    TYPE: ClassVar[str] = "events"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    batch: int = _field(_int(0))
    events: list[dict[str, Any]] = _field(_list_of(_event))
    state: str | None = _field(_optional(_EXECUTION_STATE), default=None)


@attrs.frozen(kw_only=True)
class Ack(_MessageBase):
    """S->W: batch ``batch`` of events is committed."""

    TYPE: ClassVar[str] = "ack"
    SENDER: ClassVar[Role | None] = Role.SERVER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    batch: int = _field(_int(0))


@attrs.frozen(kw_only=True)
class Heartbeat(_MessageBase):
    """W->S: the worker is alive and holds these leases ``(execution_id, epoch)``."""

    TYPE: ClassVar[str] = "heartbeat"
    SENDER: ClassVar[Role | None] = Role.WORKER

    leases: list[tuple[str, int]] = _field(_list_of(_lease_pair))
    running: int = _field(_int(0))

    def _wire_fields(self) -> dict[str, Any]:
        return {"leases": [[eid, epoch] for eid, epoch in self.leases], "running": self.running}


RELEASE_REASONS = ("paused", "sleeping", "shutdown")


@attrs.frozen(kw_only=True)
class Release(_MessageBase):
    """W->S: the worker gives an execution back (paused, sleeping until ``wake_at``, shutdown).

    ``wake_at`` is a Unix timestamp (seconds) and is required when ``reason`` is ``sleeping``.
    """

    TYPE: ClassVar[str] = "release"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    reason: str = _field(_choice(*RELEASE_REASONS))
    wake_at: float | None = _field(_optional(_number()), default=None)

    def _check(self) -> None:
        if self.reason == "sleeping" and self.wake_at is None:
            raise _Invalid("wake_at", "is required when reason is 'sleeping'")


COMPLETE_STATES = (
    ExecutionState.COMPLETED.value,
    ExecutionState.FAILED.value,
    ExecutionState.CANCELLED.value,
)


@attrs.frozen(kw_only=True)
class Complete(_MessageBase):
    """W->S: the execution ended in ``state`` with ``output`` (a value or an encoded error)."""

    TYPE: ClassVar[str] = "complete"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    state: str = _field(_choice(*COMPLETE_STATES))
    output: Any = _field(_any)


@attrs.frozen(kw_only=True)
class Reject(_MessageBase):
    """S->W: a write or completion for this execution was refused (stale epoch, lease lost);
    the worker must stop running it."""

    TYPE: ClassVar[str] = "reject"
    SENDER: ClassVar[Role | None] = Role.SERVER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    reason: str = _field(_str)


@attrs.frozen(kw_only=True)
class Cancel(_MessageBase):
    """S->W: cancel the execution (its root scope); it should end CANCELLED."""

    TYPE: ClassVar[str] = "cancel"
    SENDER: ClassVar[Role | None] = Role.SERVER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)


@attrs.frozen(kw_only=True)
class SecretsRequest(_MessageBase):
    """W->S: a task of this execution needs these secrets; answered by Secrets(request_id)."""

    TYPE: ClassVar[str] = "secrets_request"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    request_id: int = _field(_int(0))
    names: list[str] = _field(_list_of(_str))
    #: the task call the secrets are for; its TASK_STARTED must already be acknowledged
    call_id: str = _field(_str)


@attrs.frozen(kw_only=True)
class Secrets(_MessageBase):
    """S->W: the answer to SecretsRequest ``request_id``. Its repr never shows the values."""

    TYPE: ClassVar[str] = "secrets"
    SENDER: ClassVar[Role | None] = Role.SERVER

    request_id: int = _field(_int(0))
    values: dict[str, str] = _field(_dict_of(_str, _str), repr=_hide_values)
    missing: list[str] = _field(_list_of(_str))


@attrs.frozen(kw_only=True)
class CacheGet(_MessageBase):
    """W->S: a task with ``cache=True`` looks up ``key``; answered by CacheValue(request_id)."""

    TYPE: ClassVar[str] = "cache_get"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    request_id: int = _field(_int(0))
    key: str = _field(_str)


@attrs.frozen(kw_only=True)
class CacheValue(_MessageBase):
    """S->W: the answer to CacheGet ``request_id``: the codec-encoded cached value, or None
    when there is no live entry (a cached ``None`` is the encoded bytes of None, not None)."""

    TYPE: ClassVar[str] = "cache_value"
    SENDER: ClassVar[Role | None] = Role.SERVER

    request_id: int = _field(_int(0))
    value: bytes | None = _field(_optional(_bytes()), repr=lambda v: _hide_bytes(v))


@attrs.frozen(kw_only=True)
class CachePut(_MessageBase):
    """W->S: store the codec-encoded ``value`` of a cached task under ``key`` for ``ttl``
    seconds (None: no expiry). Not acknowledged: a lost put only costs a later miss."""

    TYPE: ClassVar[str] = "cache_put"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    key: str = _field(_str)
    value: bytes = _field(_bytes(), repr=lambda v: _hide_bytes(v))
    ttl: float | None = _field(_optional(_number(positive=True)), default=None)


_ATTEMPT = _int(0)
_TIME = _number()


def _log_line(value: Any, path: str) -> list[Any]:
    """``[call_id, attempt, level, logger, time, message]``, each checked."""
    if not isinstance(value, list | tuple) or len(value) != 6:
        raise _Invalid(
            path, f"must be [call_id, attempt, level, logger, time, message], got {_show(value)}"
        )
    call_id, attempt, level, logger, when, message = value
    return [
        _str(call_id, f"{path}[0]"),
        _ATTEMPT(attempt, f"{path}[1]"),
        _str(level, f"{path}[2]"),
        _str(logger, f"{path}[3]"),
        _TIME(when, f"{path}[4]"),
        _str(message, f"{path}[5]"),
    ]


@attrs.frozen(kw_only=True)
class Logs(_MessageBase):
    """W->S: task log lines of an execution the worker holds (:mod:`flux.runtime.logs`),
    stored by the server within ``limit`` bytes per execution (None: the server's limit);
    ``cut_lines``/``cut_bytes`` were cut by the worker already. Not acknowledged: the outbox's
    backpressure paces them, and a worker drops lines (with a marker) rather than wait."""

    TYPE: ClassVar[str] = "logs"
    SENDER: ClassVar[Role | None] = Role.WORKER

    execution_id: str = _field(_str)
    epoch: int = _field(_EPOCH)
    lines: list[list[Any]] = _field(_list_of(_log_line))
    limit: int | None = _field(_optional(_int(1)), default=None)
    cut_lines: int = _field(_int(0), default=0)
    cut_bytes: int = _field(_int(0), default=0)


@attrs.frozen(kw_only=True)
class Error(_MessageBase):
    """Either way: the sender found a protocol violation (or refuses the session, e.g. a bad
    token) and closes right after this frame."""

    TYPE: ClassVar[str] = "error"
    SENDER: ClassVar[Role | None] = None

    code: str = _field(_str)
    detail: str = _field(_str)


Message: TypeAlias = (
    Hello
    | Welcome
    | Lease
    | Events
    | Ack
    | Heartbeat
    | Release
    | Complete
    | Reject
    | Cancel
    | SecretsRequest
    | Secrets
    | CacheGet
    | CacheValue
    | CachePut
    | Logs
    | Error
)

#: Wire type name -> message class.
MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            Hello,
            Welcome,
            Lease,
            Events,
            Ack,
            Heartbeat,
            Release,
            Complete,
            Reject,
            Cancel,
            SecretsRequest,
            Secrets,
            CacheGet,
            CacheValue,
            CachePut,
            Logs,
            Error,
        )
    }
)


# --------------------------------------------------------------------------------------------
# Frames


def event_to_wire(e: StoredEvent) -> dict[str, Any]:
    """A stored event as it travels in ``lease.history`` and ``events.events``: its value stays
    the codec-encoded bytes (opaque to the server), its time an aware UTC datetime."""
    return {
        "seq": e.seq,
        "type": e.type,
        "call_id": e.call_id,
        "name": e.name,
        "value": e.value,
        "time": datetime.fromtimestamp(e.time, UTC),
    }


def event_from_wire(execution_id: str, e: Mapping[str, Any], now: float) -> StoredEvent:
    """The inverse of :func:`event_to_wire` (``now`` stands in for a missing time). A value
    sent as a plain value rather than encoded bytes is encoded here; an unknown event type
    raises ValueError."""
    if e["type"] not in _EVENT_TYPE_NAMES:
        raise ValueError(f"unknown event type {e['type']!r}")
    value = e["value"]
    if value is not None and not isinstance(value, bytes):
        value = encode(value)
    when = e["time"]
    return StoredEvent(
        execution_id,
        e["seq"],
        e["type"],
        e["call_id"] or "",
        e["name"] or "",
        value,
        when.timestamp() if when is not None else now,
    )


_EVENT_TYPE_NAMES = frozenset(t.value for t in ExecutionEventType)


def wire_size(e: StoredEvent) -> int:
    """An upper estimate of the bytes ``event_to_wire(e)`` takes in a frame."""
    return (
        len(e.value or b"")
        + len(e.call_id.encode("utf-8"))
        + len(e.name.encode("utf-8"))
        + len(e.type)
        + EVENT_OVERHEAD
    )


def split_events(events: list[StoredEvent], max_frame_size: int) -> list[list[StoredEvent]]:
    """``events`` cut into consecutive batches that each fit in one ``events`` frame of at most
    ``max_frame_size`` bytes (with :data:`FRAME_ENVELOPE` kept for the rest of the frame). An
    event too large for any frame is a batch of its own (sending it raises ``too-large``: see
    :func:`oversized`). An empty list gives one empty batch (a state change alone)."""
    budget = max(max_frame_size - FRAME_ENVELOPE, 1)
    batches: list[list[StoredEvent]] = []
    current: list[StoredEvent] = []
    size = 0
    for e in events:
        n = wire_size(e)
        if current and size + n > budget:
            batches.append(current)
            current, size = [], 0
        current.append(e)
        size += n
    if current or not batches:
        batches.append(current)
    return batches


def oversized(events: list[StoredEvent], max_frame_size: int) -> StoredEvent | None:
    """The first event too large to travel in any frame of ``max_frame_size`` bytes, if any."""
    budget = max(max_frame_size - FRAME_ENVELOPE, 1)
    for e in events:
        if wire_size(e) > budget:
            return e
    return None


def to_wire(msg: Message) -> dict[str, Any]:
    """The envelope of ``msg``: ``{"type": msg.TYPE, **fields}``, as it goes into msgpack."""
    if not isinstance(msg, _MessageBase):
        raise TypeError(f"expected a protocol message, got {type(msg).__name__}")
    return {"type": msg.TYPE, **msg._wire_fields()}


def to_frame(msg: Message, *, max_size: int | None = None) -> bytes:
    """Encode ``msg`` as one frame. A frame over ``max_size`` bytes raises
    :class:`LocalProtocolError` (``too-large``); a value the codec cannot carry raises its
    ``SerializationError``."""
    frame = encode(to_wire(msg))
    if max_size is not None and len(frame) > max_size:
        raise LocalProtocolError(
            "too-large",
            f"{msg.TYPE!r} frame is {len(frame)} bytes, over the limit of {max_size} bytes",
        )
    return frame


def _decode_envelope(
    data: Any, max_size: int | None, plain: bool = False
) -> tuple[type[Message], dict[Any, Any]]:
    """Size check, decode, type lookup. Raises RemoteProtocolError.

    ``plain`` decodes without looking up any class (for frames from a peer not trusted to make
    this process construct its classes: the server decodes worker frames this way)."""
    if isinstance(data, str):
        raise RemoteProtocolError(
            "unsupported-data", "received a text frame; this protocol uses binary frames only"
        )
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"receive_bytes takes bytes, got {type(data).__name__}")
    if max_size is not None and len(data) > max_size:
        raise RemoteProtocolError(
            "too-large", f"received a {len(data)} byte frame, over the limit of {max_size} bytes"
        )
    try:
        payload = decode(data, plain=plain)
    except Exception as exc:  # the codec, msgpack or an ext hook: any failure is a bad frame
        raise RemoteProtocolError(
            "bad-frame", f"frame is not a valid msgpack message: {_truncate_chars(str(exc), 200)}"
        ) from None
    if not isinstance(payload, dict):
        raise RemoteProtocolError("bad-frame", f"frame must be a msgpack map, got {_kind(payload)}")
    if "type" not in payload:
        raise RemoteProtocolError("bad-frame", "frame map has no 'type' field")
    type_name = payload["type"]
    if not isinstance(type_name, str):
        raise RemoteProtocolError(
            "bad-frame", f"frame field 'type' must be a string, got {_kind(type_name)}"
        )
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise RemoteProtocolError("unknown-type", f"unknown message type {_show(type_name)}")
    return cls, payload


def _build(cls: type[Message], payload: dict[Any, Any]) -> Message:
    """Field presence, version and type checks. Raises RemoteProtocolError."""
    if cls is Hello:
        # Before any other field: another version may well have other fields.
        version = payload.get("protocol_version")
        if isinstance(version, int) and not isinstance(version, bool):
            if version != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    "version-mismatch",
                    f"peer speaks protocol version {_show(version)}, "
                    f"this side speaks version {PROTOCOL_VERSION}",
                )
    kwargs = {}
    for field in attrs.fields(cls):
        if field.name not in payload:
            if field.metadata.get("optional"):
                continue
            raise RemoteProtocolError(
                "bad-field", f"bad {cls.TYPE!r} message: field {field.name!r} is missing"
            )
        kwargs[field.name] = payload[field.name]
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:  # raised by the message's own field checks
        raise RemoteProtocolError(exc.code, str(exc)) from None
    except Exception as exc:  # a check tripped on an odd value: still the peer's fault
        raise RemoteProtocolError(
            "bad-field", f"bad {cls.TYPE!r} message: {type(exc).__name__} while checking it"
        ) from None


def from_frame(data: bytes, *, max_size: int | None = None, plain: bool = False) -> Message:
    """Decode one frame into its message, with every check but the session state's.
    Raises :class:`RemoteProtocolError` on anything malformed."""
    cls, payload = _decode_envelope(data, max_size, plain)
    return _build(cls, payload)


# --------------------------------------------------------------------------------------------
# Session state machines


class SessionState(enum.Enum):
    """States of a session, seen from one side. Server: AWAIT_HELLO -> HELLO_RECEIVED -> READY;
    worker: START -> AWAIT_WELCOME -> READY; both end CLOSED."""

    START = "START"
    AWAIT_WELCOME = "AWAIT_WELCOME"
    AWAIT_HELLO = "AWAIT_HELLO"
    HELLO_RECEIVED = "HELLO_RECEIVED"
    READY = "READY"
    CLOSED = "CLOSED"


class Action(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


SEND = Action.SEND
RECEIVE = Action.RECEIVE
_S = SessionState

_ERROR_EXITS: dict[tuple[Action, type[Message]], SessionState] = {
    (SEND, Error): _S.CLOSED,
    (RECEIVE, Error): _S.CLOSED,
}

#: role -> state -> (action, message class) -> next state. What is not listed is forbidden.
_Table: TypeAlias = Mapping[tuple[Action, type[Message]], SessionState]
TRANSITIONS: Mapping[Role, Mapping[SessionState, _Table]] = MappingProxyType(
    {
        Role.SERVER: MappingProxyType(
            {
                _S.AWAIT_HELLO: MappingProxyType(
                    {(RECEIVE, Hello): _S.HELLO_RECEIVED, **_ERROR_EXITS}
                ),
                _S.HELLO_RECEIVED: MappingProxyType({(SEND, Welcome): _S.READY, **_ERROR_EXITS}),
                _S.READY: MappingProxyType(
                    {
                        (SEND, Lease): _S.READY,
                        (SEND, Ack): _S.READY,
                        (SEND, Reject): _S.READY,
                        (SEND, Cancel): _S.READY,
                        (SEND, Secrets): _S.READY,
                        (SEND, CacheValue): _S.READY,
                        (RECEIVE, Events): _S.READY,
                        (RECEIVE, Heartbeat): _S.READY,
                        (RECEIVE, Release): _S.READY,
                        (RECEIVE, Complete): _S.READY,
                        (RECEIVE, SecretsRequest): _S.READY,
                        (RECEIVE, CacheGet): _S.READY,
                        (RECEIVE, CachePut): _S.READY,
                        (RECEIVE, Logs): _S.READY,
                        **_ERROR_EXITS,
                    }
                ),
                _S.CLOSED: MappingProxyType({}),
            }
        ),
        Role.WORKER: MappingProxyType(
            {
                _S.START: MappingProxyType({(SEND, Hello): _S.AWAIT_WELCOME, **_ERROR_EXITS}),
                _S.AWAIT_WELCOME: MappingProxyType({(RECEIVE, Welcome): _S.READY, **_ERROR_EXITS}),
                _S.READY: MappingProxyType(
                    {
                        (SEND, Events): _S.READY,
                        (SEND, Heartbeat): _S.READY,
                        (SEND, Release): _S.READY,
                        (SEND, Complete): _S.READY,
                        (SEND, SecretsRequest): _S.READY,
                        (SEND, CacheGet): _S.READY,
                        (SEND, CachePut): _S.READY,
                        (SEND, Logs): _S.READY,
                        (RECEIVE, Lease): _S.READY,
                        (RECEIVE, Ack): _S.READY,
                        (RECEIVE, Reject): _S.READY,
                        (RECEIVE, Cancel): _S.READY,
                        (RECEIVE, Secrets): _S.READY,
                        (RECEIVE, CacheValue): _S.READY,
                        **_ERROR_EXITS,
                    }
                ),
                _S.CLOSED: MappingProxyType({}),
            }
        ),
    }
)


class Session:
    """One side of a worker session: bytes in, messages out, and the reverse."""

    ROLE: ClassVar[Role]
    INITIAL_STATE: ClassVar[SessionState]
    #: decode received frames without constructing any class (see the codec's ``plain``)
    PLAIN_DECODE: ClassVar[bool] = False

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int):
            raise TypeError("max_frame_size must be an int")
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be >= 1")
        self.max_frame_size = max_frame_size
        self._state = self.INITIAL_STATE

    @property
    def role(self) -> Role:
        return self.ROLE

    @property
    def state(self) -> SessionState:
        return self._state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state.name}>"

    def _why_not(self, action: Action, cls: type[Message]) -> str:
        verb = "send" if action is SEND else "receive"
        sender = cls.SENDER
        if sender is not None and (sender is self.ROLE) != (action is SEND):
            way = f"{sender.value} to {sender.peer.value}"
            return f"a {self.ROLE.value} never {verb}s {cls.TYPE!r} (it goes {way})"
        return f"a {self.ROLE.value} cannot {verb} {cls.TYPE!r} in state {self._state.name}"

    def receive_bytes(self, data: bytes) -> Message:
        """Turn one received frame into its message and advance the state.

        Raises :class:`RemoteProtocolError` on anything the peer got wrong; the session is then
        CLOSED (send :meth:`error_frame` and close). Receiving an Error also closes it.
        """
        try:
            if self._state is _S.CLOSED:
                raise RemoteProtocolError("closed", "received a frame after the session closed")
            cls, payload = _decode_envelope(data, self.max_frame_size, self.PLAIN_DECODE)
            next_state = TRANSITIONS[self.ROLE][self._state].get((RECEIVE, cls))
            if next_state is None:
                raise RemoteProtocolError("unexpected-message", self._why_not(RECEIVE, cls))
            msg = _build(cls, payload)
        except RemoteProtocolError:
            self._state = _S.CLOSED
            raise
        self._state = next_state
        return msg

    def send(self, msg: Message) -> bytes:
        """The frame to send for ``msg``, advancing the state.

        Raises :class:`LocalProtocolError` (state unchanged) if the message is not allowed now,
        goes the other way, or does not fit in ``max_frame_size``.
        """
        if not isinstance(msg, _MessageBase):
            raise TypeError(f"expected a protocol message, got {type(msg).__name__}")
        cls = type(msg)
        if self._state is _S.CLOSED:
            raise LocalProtocolError("closed", f"cannot send {cls.TYPE!r}: the session is closed")
        next_state = TRANSITIONS[self.ROLE][self._state].get((SEND, cls))
        if next_state is None:
            raise LocalProtocolError("unexpected-message", self._why_not(SEND, cls))
        frame = to_frame(msg, max_size=self.max_frame_size)
        self._state = next_state
        return frame

    def error_frame(self, exc: ProtocolError) -> bytes:
        """The Error frame telling the peer about ``exc``; the session is CLOSED afterwards.

        Works in any state, CLOSED included (after :meth:`receive_bytes` raised)."""
        self._state = _S.CLOSED
        return to_frame(exc.to_message())

    def close(self) -> None:
        """Mark the session CLOSED (the connection ended or is being closed)."""
        self._state = _S.CLOSED


class ServerSession(Session):
    """The server's side of one worker connection."""

    ROLE: ClassVar[Role] = Role.SERVER
    INITIAL_STATE: ClassVar[SessionState] = SessionState.AWAIT_HELLO
    # frames come from workers, possibly before their token was checked: nothing of theirs may
    # make the server construct a class; event values travel as opaque encoded bytes anyway
    PLAIN_DECODE: ClassVar[bool] = True


class WorkerSession(Session):
    """The worker's side of its connection to the server."""

    ROLE: ClassVar[Role] = Role.WORKER
    INITIAL_STATE: ClassVar[SessionState] = SessionState.START
