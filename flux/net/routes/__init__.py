"""The HTTP API's routes, one module per resource, registered on the app by
:func:`flux.net.server.create_app`.

A route module defines ``register(app, api) -> None``, which adds its routes to the Quart app,
and is named in :data:`ROUTE_MODULES`. It may define ``OPENAPI_PATHS`` (path -> OpenAPI path
item), ``OPENAPI_MODELS`` (the models it answers with: their schemas are generated, see
:mod:`flux.net.models`) and ``OPENAPI_SCHEMAS`` (name -> schema, hand-written), which
:func:`flux.net.openapi.spec` merges into the served document. ``api`` is an
:class:`~flux.net.routes.api.Api`:

* ``api.store``, ``api.dispatcher``, ``api.secrets``, ``api.cfg`` (the ServerSettings),
  ``api.server``, ``api.closing`` (set when the server shuts down: streams end);
* ``await api.json_body()``: the body as JSON, 400/413 on bad or large bodies;
* ``api.encode_value(value, what)``: a value through the codec within the value size limit;
* ``api.flag(name)``, ``api.int_arg(name, default, low, high)``, ``api.timeout_arg()``:
  query parameters, each a 400 naming the parameter when wrong;
* ``await api.execution(workflow, id)``, ``await api.any_execution(id)``: a record or 404;
* ``await api.shown(rec, detailed)``: the execution's summary (an ``Execution`` model, with
  its events when ``detailed``);
* ``await api.settle(id, detailed, timeout)``: answer once the execution settles.

Raise :class:`ApiError` (status, code, detail) for any error answer; :func:`json_response` and
:func:`sse` encode answers. Response bodies of new routes are attrs classes turned to JSON by
:func:`flux.net.models.to_json`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from flux.net.routes.api import (
    SETTLED,
    Api,
    ApiError,
    error_response,
    json_response,
    sse,
    stream_message,
    too_large_body,
)

__all__ = [
    "ROUTE_MODULES",
    "SETTLED",
    "Api",
    "ApiError",
    "error_response",
    "json_response",
    "openapi_parts",
    "register_routes",
    "route_modules",
    "sse",
    "stream_message",
    "too_large_body",
]

#: The route modules of this package, registered in this order.
ROUTE_MODULES: tuple[str, ...] = (
    "meta",
    "workflows",
    "executions",
    "workers",
    "secrets",
    "schedules",
    "logs",
    "retry",
    "signals",
)


def route_modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in ROUTE_MODULES]


def register_routes(app: Any, api: Api) -> None:
    """Add every route module's routes to ``app``."""
    for module in route_modules():
        module.register(app, api)


def openapi_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI paths and schemas the route modules describe themselves (``OPENAPI_MODELS``:
    schemas generated from their models)."""
    from flux.net.models_schema import component_schemas

    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for module in route_modules():
        for path, item in getattr(module, "OPENAPI_PATHS", {}).items():
            paths.setdefault(path, {}).update(item)
        schemas.update(component_schemas(getattr(module, "OPENAPI_MODELS", ())))
        schemas.update(getattr(module, "OPENAPI_SCHEMAS", {}))
    return paths, schemas
