"""The OpenAPI 3.1 document of the HTTP API and the self-contained page that renders it.

``spec()`` returns the document served at ``/openapi.json``; ``docs_html()`` is the page at
``/docs`` (see :mod:`flux.net.docs_page`): rendered on the server, so it shows everything without
running any script; a small script adds a form per route to send a request with ``fetch()``.

The component schemas of the API's answers are generated from its models
(:mod:`flux.net.models`, by :mod:`flux.net.models_schema`); only the request values' schemas
(any JSON) are written here. The WebSocket routes cannot be described by OpenAPI 3.1; they are
listed under the ``x-websockets`` extension and documented in docs/http-api.md.
"""

from __future__ import annotations

import copy
from typing import Any

from flux import __version__ as _flux_version
from flux.net.docs_page import render_docs
from flux.net.models import MODELS
from flux.net.models_schema import component_schemas
from flux.runtime.events import ExecutionState

__all__ = [
    "DOCS_CSP",
    "DOCS_HTML",
    "docs_html",
    "error",
    "json_content",
    "op",
    "ref",
    "schemas",
    "spec",
]


def ref(name: str) -> dict[str, Any]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A JSON response (or request body) of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    """An error response (the ``Error`` schema)."""
    return json_content(ref("Error"), description)


_ref, _json, _error = ref, json_content, error


_ANY: dict[str, Any] = {}  # any JSON value

#: The schemas that are not response models (the request values: any JSON). Every other
#: component schema is generated from the models (flux/net/models.py, ``MODELS``).
_SCHEMAS: dict[str, Any] = {
    "WorkflowInput": {
        "description": "The workflow's input (`ctx.input`): any JSON value. A string is "
        'quoted: send `"World"`, not `World`. `null` or no body at all gives `None`. At most '
        "the server's value size limit (`--max-value-size`).",
        "examples": ["World", 21, {"id": 7, "prices": [10, 32]}, None],
    },
    "ResumeValue": {
        "description": "The value the paused `await pause(name)` returns: any JSON value "
        "(`null` or no body gives `None`), at most the value size limit.",
        "examples": ["approved", {"approved": True, "by": "Grace"}, None],
    },
}


def schemas() -> dict[str, Any]:
    """The component schemas of the API's own routes: those generated from the models, and
    the request values'."""
    return {**component_schemas(MODELS), **copy.deepcopy(_SCHEMAS)}


def param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A route parameter (``where``: path or query; a path parameter is required)."""
    out: dict[str, Any] = {"name": name, "in": where}
    if where == "path":
        out["required"] = True
    out.update(schema=schema, description=description)
    return out


_NAME = param("name", "path", {"type": "string"}, "workflow name")
#: ``{execution_id}`` in a route's path (route modules reuse it, with their own description).
EXECUTION_ID = _EID = param("execution_id", "path", {"type": "string"}, "execution id")
_SECRET = param("name", "path", {"type": "string"}, "secret name")
_DETAILED = param(
    "detailed", "query", {"type": "boolean", "default": False}, "add the execution's events"
)
#: ``?wait=`` and ``?timeout=`` of the routes that may answer once an execution settles.
WAIT = _WAIT = param(
    "wait",
    "query",
    {"type": "boolean", "default": False},
    "answer once the execution completes, fails, is cancelled or pauses",
)
TIMEOUT = _TIMEOUT = param(
    "timeout",
    "query",
    {"type": "number", "minimum": 0},
    "longest wait in seconds (capped by the server's sync timeout, 300 s)",
)
_INPUT_BODY = {
    "required": False,
    "description": "any JSON value (null or no body: None); at most the value size limit",
    "content": {"application/json": {"schema": _ref("WorkflowInput")}},
}

_RESUME_BODY = {
    "required": False,
    "description": "any JSON value: what `await pause(...)` returns (null or no body: None)",
    "content": {"application/json": {"schema": _ref("ResumeValue")}},
}

_E400 = _error("bad input (invalid JSON, parameter or value)")
_E401 = _error("no token, or a malformed Authorization header (when the server has a token)")
_E403 = _error("wrong token")
_E404 = _error("unknown workflow, execution, secret or route")
_E409 = _error("the execution is not in a state that allows this")
_E413 = _error("the body, upload or value is over its size limit")


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    public: bool = False,
    op_id: str,
) -> dict[str, Any]:
    """One operation: 401/403 (unless ``public``) and 500 are added to ``responses``."""
    out: dict[str, Any] = {"summary": summary, "operationId": op_id, "tags": [tag]}
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = body
    full = dict(responses)
    if not public:
        full.setdefault("401", _E401)
        full.setdefault("403", _E403)
    full.setdefault("500", _error("a bug in the server (should never happen)"))
    out["responses"] = full
    if public:
        out["security"] = []
    return out


_op = op


def _paths() -> dict[str, Any]:
    execution = _json(_ref("Execution"), "the execution's summary")
    run_common = {"400": _E400, "404": _E404, "413": _E413}
    return {
        "/": {
            "get": _op(
                "Redirects to the console (/ui)",
                {"302": {"description": "Location: /ui"}},
                tag="meta",
                public=True,
                op_id="root",
            )
        },
        "/health": {
            "get": _op(
                "Liveness and dispatcher figures",
                {"200": _json(_ref("Health"), "the server is up")},
                tag="meta",
                public=True,
                op_id="health",
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")},
                tag="meta",
                public=True,
                op_id="openapi",
            )
        },
        "/docs": {
            "get": _op(
                "Interactive documentation (HTML)",
                {
                    "200": {
                        "description": "a self-contained HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
                public=True,
                op_id="docs",
            )
        },
        "/workflows": {
            "post": _op(
                "Upload workflow source (a new version of each @workflow it defines)",
                {
                    "200": _json({"type": "array", "items": _ref("Workflow")}, "saved versions"),
                    "400": _error("no 'file' field, not UTF-8, a syntax error, no @workflow"),
                    "413": _E413,
                },
                tag="workflows",
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {
                                    "file": {
                                        "type": "string",
                                        "contentMediaType": "text/x-python",
                                        "description": "Python source (UTF-8, at most 1 MiB)",
                                    }
                                },
                            }
                        }
                    },
                },
                op_id="upload_workflows",
            ),
            "get": _op(
                "The latest version of every workflow",
                {"200": _json({"type": "array", "items": _ref("Workflow")}, "workflows")},
                tag="workflows",
                op_id="list_workflows",
            ),
        },
        "/workflows/{name}": {
            "get": _op(
                "One workflow's latest version, its source and its versions",
                {"200": _json(_ref("WorkflowDetail"), "the workflow"), "404": _E404},
                tag="workflows",
                params=[_NAME],
                op_id="get_workflow",
            )
        },
        "/workflows/{name}/run/sync": {
            "post": _op(
                "Start an execution and answer once it completes, fails, is cancelled or "
                "pauses (or after the timeout, as it is then)",
                {"200": execution, **run_common},
                tag="executions",
                params=[_NAME, _DETAILED, _TIMEOUT],
                body=_INPUT_BODY,
                op_id="run_sync",
            )
        },
        "/workflows/{name}/run/async": {
            "post": _op(
                "Start an execution and answer at once",
                {"200": execution, **run_common},
                tag="executions",
                params=[_NAME, _DETAILED],
                body=_INPUT_BODY,
                op_id="run_async",
            )
        },
        "/workflows/{name}/run/stream": {
            "post": _op(
                "Start an execution and stream it as Server-Sent Events: an `execution` event "
                "(summary), one message per event (`id` = seq, data = Event), a final "
                "`execution` event; the stream ends when the execution ends or pauses",
                {
                    "200": {
                        "description": "text/event-stream; each data line is one JSON object",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-items": {"oneOf": [_ref("Execution"), _ref("Event")]},
                            }
                        },
                    },
                    **run_common,
                },
                tag="executions",
                params=[_NAME],
                body=_INPUT_BODY,
                op_id="run_stream",
            )
        },
        "/workflows/{name}/status/{execution_id}": {
            "get": _op(
                "An execution of a workflow",
                {"200": execution, "404": _E404},
                tag="executions",
                params=[_NAME, _EID, _DETAILED],
                op_id="status",
            )
        },
        "/workflows/{name}/resume/{execution_id}": {
            "post": _op(
                "Resume a paused execution; the body is what its pause returns",
                {"200": execution, "409": _E409, **run_common},
                tag="executions",
                params=[_NAME, _EID, _WAIT, _TIMEOUT, _DETAILED],
                body=_RESUME_BODY,
                op_id="resume",
            )
        },
        "/executions": {
            "get": _op(
                "Executions, newest first, with filters and paging",
                {"200": _json(_ref("ExecutionList"), "one page"), "400": _E400},
                tag="executions",
                params=[
                    {
                        "name": "workflow",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "only this workflow's",
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "one state or several, comma-separated "
                        f"({', '.join(s.value for s in ExecutionState)})",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    },
                ],
                op_id="list_executions",
            )
        },
        "/executions/{execution_id}": {
            "get": _op(
                "An execution by id alone",
                {"200": execution, "404": _E404},
                tag="executions",
                params=[_EID, _DETAILED],
                op_id="get_execution",
            )
        },
        "/executions/{execution_id}/cancel": {
            "post": _op(
                "Cancel an execution. Running: the worker cancels its tasks (innermost "
                "first), rollbacks run, it ends CANCELLED (state CANCELLING meanwhile). "
                "Queued, sleeping or paused: CANCELLED at once",
                {"200": execution, "400": _E400, "404": _E404, "409": _E409},
                tag="executions",
                params=[_EID, _WAIT, _TIMEOUT, _DETAILED],
                op_id="cancel",
            )
        },
        "/workers": {
            "get": _op(
                "Connected workers with their leases and last heartbeat",
                {"200": _json({"type": "array", "items": _ref("Worker")}, "workers")},
                tag="workers",
                op_id="list_workers",
            )
        },
        "/admin/secrets": {
            "get": _op(
                "Secret names (never values)",
                {"200": _json({"type": "array", "items": {"type": "string"}}, "names, sorted")},
                tag="secrets",
                op_id="list_secrets",
            ),
            "post": _op(
                "Set or replace a secret (encrypted at rest)",
                {
                    "200": _json(_ref("SecretName"), "stored"),
                    "400": _E400,
                    "413": _E413,
                    "503": _error("the server's secret key is missing or wrong"),
                },
                tag="secrets",
                body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SecretSet")}},
                },
                op_id="set_secret",
            ),
        },
        "/admin/secrets/{name}": {
            "get": _op(
                "A secret's value (the only route that shows one)",
                {
                    "200": _json(_ref("SecretValue"), "the value"),
                    "400": _E400,
                    "404": _E404,
                    "503": _error("the server's secret key is missing or wrong"),
                },
                tag="secrets",
                params=[_SECRET],
                op_id="get_secret",
            ),
            "delete": _op(
                "Remove a secret",
                {"200": _json(_ref("SecretName"), "removed"), "400": _E400, "404": _E404},
                tag="secrets",
                params=[_SECRET],
                op_id="delete_secret",
            ),
        },
    }


_WEBSOCKETS = {
    "/executions/{execution_id}/events": {
        "summary": "An execution's events: those after seq `from` (0: all) from the store, then "
        "live ones, each exactly once, one JSON text message per Event; closed with 1000 after "
        "WORKFLOW_COMPLETED/FAILED/CANCELLED or a WORKFLOW_PAUSED that is the latest event, "
        "1001 on server shutdown, 4500 on a server error. Refused before the upgrade with an "
        "HTTP error (Error body): 400 bad `from`, 401/403 token, 404 unknown execution.",
        "parameters": [
            _EID,
            {
                "name": "from",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0, "default": 0},
                "description": "the last seq already seen",
            },
        ],
        "message": _ref("Event"),
    },
    "/workers/connect": {
        "summary": "The worker session: binary msgpack frames (docs/protocol.md); the worker "
        "token goes in the first frame (hello), a wrong one closes with 1008.",
    },
}


def spec(*, auth: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document (``auth``: whether the server requires the API token): the
    routes described here, and those the route modules describe (``OPENAPI_PATHS``)."""
    from flux.net.routes import openapi_parts  # the route modules import this module

    paths = _paths()
    components = schemas()
    more_paths, more_schemas = openapi_parts()
    for path, item in copy.deepcopy(more_paths).items():
        paths.setdefault(path, {}).update(item)
    components.update(copy.deepcopy(more_schemas))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Flux",
            "version": _flux_version,
            "description": "The HTTP API of a Flux server: workflows, executions, workers and "
            'secrets. Errors are JSON `{"error": code, "detail": text}`. '
            + (
                "This server requires `Authorization: Bearer <API token>` on every route "
                "except /health, /openapi.json and /docs."
                if auth
                else "This server has no API token (it serves loopback only)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "x-websockets": copy.deepcopy(_WEBSOCKETS),
    }
    if auth:
        doc["security"] = [{"bearer": []}]
    return doc


#: The page only loads itself, the spec and what the user sends (same origin).
DOCS_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


def docs_html(*, auth: bool = True) -> str:
    """The /docs page for a server (``auth``: whether it requires the API token)."""
    return render_docs(spec(auth=auth))


#: The page of a server that requires the API token.
DOCS_HTML = docs_html()
