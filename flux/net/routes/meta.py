"""Routes about the server itself: health, the OpenAPI document and its page, the root."""

from __future__ import annotations

from quart import Response, redirect
from quart_trio import QuartTrio

from flux.net import console, openapi
from flux.net.models import Health, to_json
from flux.net.routes.api import Api, json_response

__all__ = ["register"]


def register(app: QuartTrio, api: Api) -> None:
    @app.get("/health")
    async def health() -> Response:
        return json_response(to_json(Health.of(api.dispatcher.statistics())))

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        return json_response(openapi.spec(auth=bool(api.cfg.api_token)))

    @app.get("/")
    async def root() -> Response:
        return redirect(console.PREFIX, 302)

    @app.get("/docs")
    async def docs() -> Response:
        response = Response(openapi.docs_html(auth=bool(api.cfg.api_token)), mimetype="text/html")
        response.headers["Content-Security-Policy"] = openapi.DOCS_CSP
        return response
