"""Task log routes: ``GET /executions/{id}/logs`` as JSON pages, or as Server-Sent Events that
follow the execution until it ends (``?follow=true``). See docs/logs.md."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from flux.net.models import to_json
from flux.net.openapi import error, op, ref
from flux.net.routes.api import Api, ApiError, json_response, sse
from flux.runtime.log_reader import follow_logs, iso_time, settled
from flux.runtime.store_logs import LogRecord

__all__ = ["LogLine", "LogPage", "OPENAPI_PATHS", "OPENAPI_SCHEMAS", "register"]

log = logging.getLogger("flux.server")

#: The most lines one JSON page holds.
MAX_PAGE = 5000


@attrs.frozen
class LogLine:
    """One task log line as the API shows it."""

    seq: int
    call_id: str
    attempt: int
    level: str
    logger: str
    time: str | None
    message: str

    @classmethod
    def of(cls, r: LogRecord) -> LogLine:
        return cls(r.seq, r.call_id, r.attempt, r.level, r.logger, iso_time(r.time), r.message)


@attrs.frozen
class LogPage:
    """A page of an execution's log lines; ``after`` is the seq to ask the next page after."""

    execution_id: str
    state: str
    lines: list[LogLine]
    after: int


def _call_arg() -> str | None:
    raw = request.args.get("call")
    if raw is None or raw == "":
        return None
    if len(raw) > 2000 or any(ord(c) < 32 for c in raw):
        raise ApiError(400, "bad-parameter", "call must be a call id (no control characters)")
    return raw


def register(app: QuartTrio, api: Api) -> None:
    @app.get("/executions/<execution_id>/logs")
    async def execution_logs(execution_id: str) -> Response:
        after = api.int_arg("after", 0, 0, 2**62)
        limit = api.int_arg("limit", 1000, 1, MAX_PAGE)
        call_id = _call_arg()
        follow = api.flag("follow")
        rec = await api.any_execution(execution_id)
        if follow:
            return _stream(api, execution_id, after, call_id)
        lines = await api.store.load_logs(execution_id, after, limit, call_id)
        page = LogPage(
            execution_id,
            rec.state.value,
            [LogLine.of(r) for r in lines],
            lines[-1].seq if lines else after,
        )
        return json_response(to_json(page))


def _stream(api: Api, execution_id: str, after: int, call_id: str | None) -> Response:
    """SSE: one ``log`` event per line (``id`` = its seq), then an ``end`` event with the
    execution's state once it ended (or paused) and its last lines were sent."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for lines in follow_logs(
                api.store,
                execution_id,
                after=after,
                call_id=call_id,
                keepalive=api.cfg.keepalive,
                stop=api.closing,
            ):
                if lines is None:
                    yield b": keep-alive\n\n"
                    continue
                for r in lines:
                    yield sse(to_json(LogLine.of(r)), "log", r.seq)
            rec = await api.store.get_execution(execution_id)
            if rec is not None and settled(rec.state):
                yield sse({"execution_id": execution_id, "state": rec.state.value}, "end")
        except Exception as exc:  # the stream is open: tell the client in it
            log.exception("log stream of %s failed", execution_id)
            yield sse({"error": "internal", "detail": f"the stream failed: {exc}"}, "error")

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # an execution may run for long: no response timeout
    return response


_LINE_SCHEMA = {
    "type": "object",
    "required": ["seq", "call_id", "attempt", "level", "logger", "time", "message"],
    "properties": {
        "seq": {"type": "integer", "description": "1, 2, ... per execution"},
        "call_id": {
            "type": "string",
            "description": "the task call that printed or logged it ('' for Flux's own markers)",
        },
        "attempt": {
            "type": "integer",
            "description": "1 for the first attempt, 2 for the first retry...; 0 for a "
            "fallback or rollback body and for markers",
        },
        "level": {"type": "string", "description": "DEBUG, INFO, WARNING, ERROR, CRITICAL"},
        "logger": {
            "type": "string",
            "description": "the logger's name; stdout or stderr for what was printed; "
            "flux.logs for Flux's markers (lines cut or dropped)",
        },
        "time": {"type": ["string", "null"], "format": "date-time"},
        "message": {"type": "string", "description": "formatted, with its exception text"},
    },
}

OPENAPI_SCHEMAS = {
    "LogLine": _LINE_SCHEMA,
    "LogPage": {
        "type": "object",
        "required": ["execution_id", "state", "lines", "after"],
        "properties": {
            "execution_id": {"type": "string"},
            "state": {"type": "string"},
            "lines": {"type": "array", "items": ref("LogLine")},
            "after": {"type": "integer", "description": "pass as ?after= for the next page"},
        },
    },
}

OPENAPI_PATHS = {
    "/executions/{execution_id}/logs": {
        "get": op(
            "Task log lines of an execution (what its task bodies printed and logged), in "
            "order. With follow=true: Server-Sent Events, one `log` event per line (id: its "
            "seq) as they come, then an `end` event once the execution ended or paused",
            {
                "200": {
                    "description": "a page of lines (or, with follow=true, an event stream)",
                    "content": {
                        "application/json": {"schema": ref("LogPage")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "400": error("a bad parameter"),
                "404": error("no such execution"),
            },
            tag="executions",
            params=[
                {
                    "name": "execution_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {
                    "name": "after",
                    "in": "query",
                    "description": "only lines with a seq above this one",
                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "description": "at most this many lines (JSON)",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_PAGE,
                        "default": 1000,
                    },
                },
                {
                    "name": "call",
                    "in": "query",
                    "description": "only the lines of this call id and the calls below it",
                    "schema": {"type": "string"},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "description": "true: stream the lines as Server-Sent Events until the "
                    "execution ends",
                    "schema": {"type": "boolean", "default": False},
                },
            ],
            op_id="execution_logs",
        )
    }
}
