"""``POST /executions/{id}/retry``: retry a failed execution without redoing its work.

The dispatcher stores the retry (flux.runtime.retry: a new execution whose history is the
original's up to its first failure) and queues it like a recovered execution; a worker replays
the completed calls and runs the failed one again.
"""

from __future__ import annotations

import attrs
import trio
from quart import Response
from quart_trio import QuartTrio

from flux.net.models import to_json
from flux.net.openapi import EXECUTION_ID, TIMEOUT, WAIT, error, json_content, op, param, ref
from flux.net.routes.api import SETTLED, Api, json_response
from flux.net.views import plain_value
from flux.runtime.errors import ExecutionConflictError
from flux.runtime.records import ExecutionRecord

__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "RetryAnswer", "RetryConflict", "register"]


@attrs.frozen
class RetryAnswer:
    """The retry made: the new execution as it is now (with ``?wait=true``, once it settled)."""

    execution_id: str
    workflow_name: str
    #: the version of the workflow it runs (the original's, or the latest with ``?latest=true``)
    workflow_version: int | None
    state: str
    input: object
    output: object
    #: the failed execution it retries
    retry_of: str
    #: the retries of the original's failed subworkflows, made with it (their ids)
    child_retries: list[str]


@attrs.frozen
class RetryConflict:
    """409: the execution did not fail, or a retry of it is live."""

    error: str
    detail: str
    #: the execution's state
    state: str | None
    #: the retry in the way, if that is the reason
    retried_by: str | None


def _answer(rec: ExecutionRecord, children: list[str]) -> RetryAnswer:
    return RetryAnswer(
        execution_id=rec.execution_id,
        workflow_name=rec.workflow_name,
        workflow_version=rec.workflow_version,
        state=rec.state.value,
        input=plain_value(rec.input),
        output=plain_value(rec.output),
        retry_of=rec.retry_of or "",
        child_retries=children,
    )


def register(app: QuartTrio, api: Api) -> None:
    @app.post("/executions/<execution_id>/retry")
    async def retry(execution_id: str) -> Response:
        latest, wait, timeout = api.flag("latest"), api.flag("wait"), api.timeout_arg()
        try:
            made = await api.dispatcher.retry(execution_id, latest=latest)
        except ExecutionConflictError as exc:
            body = RetryConflict("conflict", str(exc), exc.state, exc.retried_by)
            return json_response(to_json(body), 409)
        rec = made[0]
        if wait:
            event = api.dispatcher.watch(rec.execution_id)
            try:
                now = await api.store.get_execution(rec.execution_id)
                if now is not None and now.state not in SETTLED:
                    with trio.move_on_after(timeout):
                        await event.wait()
            finally:
                api.dispatcher.unwatch(rec.execution_id, event)
            rec = await api.store.get_execution(rec.execution_id) or rec
        children = [r.execution_id for r in made[1:]]
        return json_response(to_json(_answer(rec, children)), 201)


OPENAPI_SCHEMAS = {
    "RetryAnswer": {
        "type": "object",
        "required": [
            "execution_id",
            "workflow_name",
            "workflow_version",
            "state",
            "input",
            "output",
            "retry_of",
            "child_retries",
        ],
        "properties": {
            "execution_id": {"type": "string", "description": "the new execution's id"},
            "workflow_name": {"type": "string"},
            "workflow_version": {"type": ["integer", "null"]},
            "state": ref("State"),
            "input": {"description": "the original's input"},
            "output": {"description": "as in Execution (null until it ends)"},
            "retry_of": {"type": "string", "description": "the failed execution it retries"},
            "child_retries": {
                "type": "array",
                "items": {"type": "string"},
                "description": "retries of the original's failed subworkflows, made with it",
            },
        },
    },
    "RetryConflict": {
        "type": "object",
        "required": ["error", "detail", "state", "retried_by"],
        "properties": {
            "error": {"type": "string", "const": "conflict"},
            "detail": {"type": "string"},
            "state": {"type": ["string", "null"], "description": "the execution's state"},
            "retried_by": {
                "type": ["string", "null"],
                "description": "the live (or completed) retry that stands in the way",
            },
        },
    },
}

_EID = dict(EXECUTION_ID, description="the failed execution's id")
_WAIT = dict(WAIT, description="answer once the retry completes, fails, is cancelled or pauses")
_LATEST = param(
    "latest",
    "query",
    {"type": "boolean", "default": False},
    "run the workflow's latest version instead of the original's (replay's "
    "nondeterminism rules apply: code that makes other calls stops the retry)",
)

OPENAPI_PATHS = {
    "/executions/{execution_id}/retry": {
        "post": op(
            "Retry a FAILED execution: a new execution (new id, `retry_of` the original) whose "
            "history is the original's up to its first failure, queued for a worker; completed "
            "calls are not run again, the failed one is. The original is not changed",
            {
                "201": json_content(ref("RetryAnswer"), "the retry"),
                "400": error("bad parameter"),
                "404": error("unknown execution (or, with latest, workflow)"),
                "409": error(
                    "the execution did not fail, or a retry of it is live or completed; the "
                    "body (an Error) also has `state` (the execution's) and `retried_by` (the "
                    "retry in the way, or null): see RetryConflict"
                ),
            },
            tag="executions",
            params=[_EID, _LATEST, _WAIT, TIMEOUT],
            op_id="retry",
        )
    }
}
