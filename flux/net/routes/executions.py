"""Execution routes: list (filters, paging), show, cancel, and the event WebSocket."""

from __future__ import annotations

import json
import logging

from quart import Response, request, websocket
from quart_trio import QuartTrio

from flux.net import protocol as p
from flux.net.models import Event, ExecutionList, to_json
from flux.net.routes.api import (
    Api,
    ApiError,
    error_response,
    json_response,
    stream_message,
)
from flux.net.security import check_bearer
from flux.net.streams import follow
from flux.runtime.events import ExecutionState

__all__ = ["register"]

log = logging.getLogger("flux.server")


def register(app: QuartTrio, api: Api) -> None:
    @app.get("/executions")
    async def list_executions() -> Response:
        workflow = request.args.get("workflow") or None
        states: list[str] | None = None
        raw_state = request.args.get("state")
        if raw_state:
            states = [s.strip().upper() for s in raw_state.split(",") if s.strip()]
            unknown = [s for s in states if s not in ExecutionState.__members__]
            if unknown or not states:
                raise ApiError(
                    400,
                    "bad-parameter",
                    f"unknown state {', '.join(unknown) or raw_state!r}: use one or more of "
                    f"{', '.join(ExecutionState.__members__)} (comma-separated)",
                )
        limit = api.int_arg("limit", 50, 1, 1000)
        offset = api.int_arg("offset", 0, 0, 2**62)
        records = await api.store.list_executions(
            workflow_name=workflow, state=states, limit=limit, offset=offset
        )
        total = await api.store.count_executions(workflow_name=workflow, state=states)
        return json_response(to_json(ExecutionList.of(records, total, limit, offset)))

    @app.get("/executions/<execution_id>")
    async def get_execution(execution_id: str) -> Response:
        rec = await api.any_execution(execution_id)
        return json_response(to_json(await api.shown(rec, api.flag("detailed"))))

    @app.post("/executions/<execution_id>/cancel")
    async def cancel(execution_id: str) -> Response:
        wait, timeout = api.flag("wait"), api.timeout_arg()
        rec = await api.dispatcher.cancel(execution_id)
        if wait and rec.state is not ExecutionState.CANCELLED:
            return await api.settle(execution_id, api.flag("detailed"), timeout)
        return json_response(to_json(await api.shown(rec, api.flag("detailed"))))

    @app.websocket("/executions/<execution_id>/events")
    async def events_ws(execution_id: str) -> Response | None:
        failure = check_bearer(websocket.headers.get("Authorization"), api.cfg.api_token)
        if failure is not None:
            return error_response(failure.status, failure.code, failure.detail)
        raw = websocket.args.get("from", "0") or "0"
        try:
            after = int(raw)
            if after < 0:
                raise ValueError
        except ValueError:
            return error_response(
                400,
                "bad-parameter",
                f"from must be an integer >= 0 (the last seq seen), not {raw!r}",
            )
        if await api.store.get_execution(execution_id) is None:
            return error_response(404, "execution-not-found", f"no execution {execution_id!r}")
        await websocket.accept()
        try:
            async for e in follow(api.dispatcher, api.store, execution_id, after, stop=api.closing):
                if e is None:
                    continue
                message = stream_message(to_json(Event.of(e)), api.cfg.max_stream_message)
                await websocket.send(message)
        except Exception as exc:
            log.exception("event stream of %s failed", execution_id)
            reason = json.dumps({"error": "internal", "detail": type(exc).__name__})
            await websocket.close(4500, p.truncate_utf8(reason, 123))
            return None
        if api.closing.is_set():
            await websocket.close(1001, "server shutting down")
        else:
            rec = await api.store.get_execution(execution_id)
            await websocket.close(1000, f"execution {rec.state.value if rec else 'gone'}")
        return None
