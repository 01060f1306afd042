"""Worker routes: the connected workers, and the WebSocket workers connect to."""

from __future__ import annotations

from quart import Response, websocket
from quart_trio import QuartTrio

from flux.net.models import Worker, to_json
from flux.net.routes.api import Api, json_response

__all__ = ["register"]


def register(app: QuartTrio, api: Api) -> None:
    @app.get("/workers")
    async def workers() -> Response:
        return json_response(to_json([Worker.of(w) for w in api.dispatcher.workers_info()]))

    @app.websocket("/workers/connect")
    async def workers_connect() -> None:
        await api.server.worker_session(websocket._get_current_object())
