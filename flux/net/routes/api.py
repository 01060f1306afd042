"""What every route module shares: the :class:`Api` helpers bound to one app's server, the error
type routes raise, and the JSON and Server-Sent-Events encoders."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request

from flux.net.models import Error, Execution, to_json
from flux.net.views import JsonInputError, parse_json
from flux.runtime import codec
from flux.runtime.context import to_jsonable
from flux.runtime.errors import SerializationError
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord

if TYPE_CHECKING:
    from flux.net.dispatch import Dispatcher
    from flux.net.server import FluxServer, ServerSettings
    from flux.runtime.secrets import SecretStore
    from flux.runtime.store_api import StoreAPI

__all__ = [
    "SETTLED",
    "Api",
    "ApiError",
    "error_response",
    "json_response",
    "sse",
    "stream_message",
    "too_large_body",
]

#: States in which an execution waits for nobody: ``?wait=true`` answers once one is reached.
SETTLED = frozenset(
    {
        ExecutionState.COMPLETED,
        ExecutionState.FAILED,
        ExecutionState.CANCELLED,
        ExecutionState.PAUSED,
    }
)


class ApiError(Exception):
    """An HTTP error with the API's JSON shape ``{"error": code, "detail": text}``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def error_response(status: int, code: str, detail: str) -> Response:
    return Response(
        json.dumps(to_json(Error(code, detail))),
        status=status,
        mimetype="application/json",
    )


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(to_jsonable(data)), status=status, mimetype="application/json")


def too_large_body(limit: int) -> Response:
    """413 for a body over the limit. The rest of that body may still be on its way and this
    connection cannot be trusted to find the next request after it: the connection is closed
    after the answer, so the client's next request opens a fresh one instead of hanging."""
    response = error_response(
        413, "too-large", f"the request body exceeds the server's limit of {limit} bytes"
    )
    response.headers["Connection"] = "close"
    return response


def sse(data: Any, event: str | None = None, event_id: int | None = None) -> bytes:
    """One Server-Sent Event: ``event:`` (optional), ``id:`` (optional), one ``data:`` line."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(to_jsonable(data)))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def stream_message(event: dict[str, Any], limit: int) -> str:
    """An event as a WebSocket text message; a value over ``limit`` is replaced by a notice."""
    text = json.dumps(to_jsonable(event))
    if len(text.encode("utf-8")) > limit:
        event = dict(event, value=f"<value omitted: {len(text)} bytes, over the stream limit>")
        text = json.dumps(to_jsonable(event))
    return text


class Api:
    """The helpers route modules use, bound to one app's :class:`~flux.net.server.FluxServer`.

    Attributes: ``server``, ``cfg`` (its ServerSettings), ``store``, ``dispatcher``, ``secrets``,
    ``closing`` (set when the server shuts down: streams end). Request helpers read Quart's
    current ``request``."""

    def __init__(self, server: FluxServer):
        self.server = server
        self.cfg: ServerSettings = server.server_settings
        self.dispatcher: Dispatcher = server.dispatcher
        self.secrets: SecretStore = server.dispatcher.secrets
        self.closing: trio.Event = server.closing

    @property
    def store(self) -> StoreAPI:
        return self.server.store

    # ------------------------------------------------------------------ request

    async def json_body(self) -> Any:
        """The request body as JSON (empty: None); 413 past the body limit, 400 if malformed."""
        limit = self.cfg.max_body_size
        data = await request.get_data(cache=False)
        if len(data) > limit:
            raise ApiError(
                413, "too-large", f"the request body exceeds the server's limit of {limit} bytes"
            )
        try:
            return parse_json(data)
        except JsonInputError as exc:
            raise ApiError(400, "bad-json", str(exc)) from None

    def encode_value(self, value: Any, what: str) -> bytes:
        """``value`` through the codec, within the value size limit (400 or 413 naming ``what``)."""
        try:
            data = codec.encode(value)
        except (SerializationError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ApiError(400, "bad-input", f"{what} cannot be stored: {exc}") from None
        limit = self.cfg.max_value_size
        if len(data) > limit:
            raise ApiError(
                413, "too-large", f"{what} is {len(data)} bytes encoded, over the limit of {limit}"
            )
        return data

    @staticmethod
    def flag(name: str) -> bool:
        """A boolean query parameter (1, true or yes)."""
        return request.args.get(name, "").lower() in ("1", "true", "yes")

    @staticmethod
    def int_arg(name: str, default: int, low: int, high: int) -> int:
        """An integer query parameter from ``low`` to ``high`` (400 otherwise)."""
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            detail = f"{name} must be an integer, not {raw!r}"
            raise ApiError(400, "bad-parameter", detail) from None
        if not low <= value <= high:
            raise ApiError(400, "bad-parameter", f"{name} must be from {low} to {high}")
        return value

    def timeout_arg(self) -> float:
        """``?timeout=`` seconds, capped by the server's sync timeout (its default)."""
        timeout = self.cfg.sync_timeout
        raw = request.args.get("timeout")
        if raw is not None and raw != "":
            try:
                value = float(raw)
            except ValueError:
                raise ApiError(400, "bad-timeout", "timeout must be seconds") from None
            if not math.isfinite(value) or value < 0:
                raise ApiError(400, "bad-timeout", "timeout must be seconds, 0 or more")
            timeout = min(value, timeout)
        return timeout

    # ------------------------------------------------------------------ executions

    async def execution(self, name: str, execution_id: str) -> ExecutionRecord:
        """The execution ``execution_id`` of workflow ``name`` (404 otherwise)."""
        rec = await self.store.get_execution(execution_id)
        if rec is None or rec.workflow_name != name:
            raise ApiError(
                404, "execution-not-found", f"no execution {execution_id!r} of workflow {name!r}"
            )
        return rec

    async def any_execution(self, execution_id: str) -> ExecutionRecord:
        """The execution ``execution_id`` (404 otherwise)."""
        rec = await self.store.get_execution(execution_id)
        if rec is None:
            raise ApiError(404, "execution-not-found", f"no execution {execution_id!r}")
        return rec

    async def shown(self, rec: ExecutionRecord, detailed: bool) -> Execution:
        """The execution's summary, with its events when ``detailed``."""
        events = await self.store.load_events(rec.execution_id) if detailed else None
        retried_by = await self.store.retries_of(rec.execution_id)
        return Execution.of(rec, events, retried_by)

    async def settle(self, execution_id: str, detailed: bool, timeout: float) -> Response:
        """Answer with the execution once it is settled (:data:`SETTLED`) or ``timeout`` ends."""
        event = self.dispatcher.watch(execution_id)
        try:
            rec = await self.store.get_execution(execution_id)
            if rec is not None and rec.state not in SETTLED:
                with trio.move_on_after(timeout):
                    await event.wait()
        finally:
            self.dispatcher.unwatch(execution_id, event)
        rec = await self.store.get_execution(execution_id)
        assert rec is not None
        return json_response(to_json(await self.shown(rec, detailed)))
