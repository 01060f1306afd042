"""Admin routes for secrets: list names, set, read, remove (the API token guards them)."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from flux.net.models import SecretName, SecretValue, to_json
from flux.net.routes.api import Api, ApiError, json_response
from flux.runtime.errors import SecretNotFoundError
from flux.runtime.secrets import MAX_VALUE as MAX_SECRET_VALUE
from flux.runtime.secrets import check_name

__all__ = ["register"]


def _secret_name(name: Any) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise ApiError(400, "bad-secret-name", str(exc)) from None


def register(app: QuartTrio, api: Api) -> None:
    @app.get("/admin/secrets")
    async def secrets_list() -> Response:
        return json_response(sorted(await api.secrets.names()))

    @app.post("/admin/secrets")
    async def secrets_set() -> Response:
        body = await api.json_body()
        if not isinstance(body, dict) or set(body) - {"name", "value"} or "value" not in body:
            raise ApiError(400, "bad-request", 'send a JSON object {"name": ..., "value": ...}')
        name = _secret_name(body.get("name"))
        value = body["value"]
        if not isinstance(value, str):
            raise ApiError(400, "bad-request", "a secret's value must be a string")
        if len(value.encode("utf-8")) > MAX_SECRET_VALUE:
            raise ApiError(
                413, "too-large", f"a secret's value is limited to {MAX_SECRET_VALUE} bytes"
            )
        try:
            await api.secrets.set(name, value)
        except ValueError as exc:
            raise ApiError(400, "bad-request", str(exc)) from None
        return json_response(to_json(SecretName(name)))

    @app.get("/admin/secrets/<name>")
    async def secrets_get(name: str) -> Response:
        name = _secret_name(name)
        try:
            value = await api.secrets.get(name)
        except SecretNotFoundError:
            raise ApiError(404, "secret-not-found", f"secret {name!r} is not set") from None
        return json_response(to_json(SecretValue(name, value)))

    @app.delete("/admin/secrets/<name>")
    async def secrets_delete(name: str) -> Response:
        name = _secret_name(name)
        if not await api.secrets.remove(name):
            raise ApiError(404, "secret-not-found", f"secret {name!r} is not set")
        return json_response(to_json(SecretName(name, removed=True)))
