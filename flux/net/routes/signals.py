"""Signal routes: send a signal to an execution, list the signals it has not received yet."""

from __future__ import annotations

from typing import Any

import attrs
from quart import Response
from quart_trio import QuartTrio

from flux.net.models import to_json
from flux.net.openapi import EXECUTION_ID, error, json_content, op, param, ref
from flux.net.routes.api import Api, ApiError, json_response
from flux.net.views import plain_value
from flux.runtime.errors import ExecutionConflictError
from flux.runtime.signals import check_topic

__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "SignalAccepted", "SignalQueued", "register"]


@attrs.frozen
class SignalAccepted:
    """The answer to a signal: queued for the execution, in this order (``signal_id``)."""

    execution_id: str
    topic: str
    signal_id: int
    sent_at: float
    #: the execution's state when the signal was accepted
    state: str


@attrs.frozen
class SignalQueued:
    """A signal accepted and not yet received by the execution."""

    signal_id: int
    topic: str
    sent_at: float
    value: Any


def _topic(topic: str) -> str:
    try:
        return check_topic(topic)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad-topic", str(exc)) from None


def register(app: QuartTrio, api: Api) -> None:
    @app.post("/executions/<execution_id>/signals/<topic>")
    async def send_signal(execution_id: str, topic: str) -> Response:
        topic = _topic(topic)
        value = await api.json_body()
        data = api.encode_value(value, f"the value of signal {topic!r}")
        await api.any_execution(execution_id)  # 404 first
        try:
            sent = await api.dispatcher.send_signal(execution_id, topic, data)
        except ExecutionConflictError as exc:
            body = {"error": "conflict", "detail": str(exc), "state": exc.state}
            return json_response(body, status=409)
        rec = await api.any_execution(execution_id)
        answer = SignalAccepted(execution_id, topic, sent.id, sent.sent_at, rec.state.value)
        return json_response(to_json(answer), status=202)

    @app.get("/executions/<execution_id>/signals")
    async def queued_signals(execution_id: str) -> Response:
        await api.any_execution(execution_id)
        queued = await api.store.pending_signals(execution_id)
        shown = [SignalQueued(s.id, s.topic, s.sent_at, plain_value(s.value)) for s in queued]
        return json_response(to_json(shown))


_TOPIC = param(
    "topic",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,200}$"},
    "the signal's topic: what `await receive(topic)` waits for",
)

OPENAPI_SCHEMAS: dict[str, Any] = {
    "SignalAccepted": {
        "type": "object",
        "required": ["execution_id", "topic", "signal_id", "sent_at", "state"],
        "properties": {
            "execution_id": {"type": "string"},
            "topic": {"type": "string"},
            "signal_id": {
                "type": "integer",
                "description": "signals are received in the order of these ids, per topic",
            },
            "sent_at": {"type": "number", "description": "Unix seconds, when it was accepted"},
            "state": ref("State"),
        },
    },
    "SignalQueued": {
        "type": "object",
        "required": ["signal_id", "topic", "sent_at", "value"],
        "properties": {
            "signal_id": {"type": "integer"},
            "topic": {"type": "string"},
            "sent_at": {"type": "number"},
            "value": {"description": "the signal's value, shown as JSON"},
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/executions/{execution_id}/signals/{topic}": {
        "post": op(
            "Send a signal: queued for the execution, received by its next `receive(topic)`",
            {
                "202": json_content(ref("SignalAccepted"), "accepted (queued)"),
                "400": error("bad topic, JSON or value"),
                "404": error("unknown execution"),
                "409": error(
                    "the execution has finished: the Error body has one more field, `state`, "
                    "the state it ended in"
                ),
                "413": error("the body or the value is over its size limit"),
            },
            tag="executions",
            params=[EXECUTION_ID, _TOPIC],
            body={
                "required": False,
                "description": "any JSON value: what `await receive(topic)` returns (null or no "
                "body: None)",
                "content": {"application/json": {"schema": ref("WorkflowInput")}},
            },
            op_id="send_signal",
        )
    },
    "/executions/{execution_id}/signals": {
        "get": op(
            "The signals sent to an execution that it has not received yet, in order",
            {
                "200": json_content(
                    {"type": "array", "items": ref("SignalQueued")}, "the queued signals"
                ),
                "404": error("unknown execution"),
            },
            tag="executions",
            params=[EXECUTION_ID],
            op_id="queued_signals",
        )
    },
}
