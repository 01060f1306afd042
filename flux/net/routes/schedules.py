"""Schedules over HTTP: ``/schedules`` (create, list), ``/schedules/{name}`` (show, delete) and
``/schedules/{name}/pause|resume|trigger``. The server's schedule loop
(:mod:`flux.net.schedule_runner`) starts what is due; these routes change the store and wake it.
"""

from __future__ import annotations

from typing import Any

import attrs
from quart import Response
from quart_trio import QuartTrio

from flux.net.models import to_json
from flux.net.openapi import error, json_content, op, ref
from flux.net.routes.api import Api, ApiError, json_response
from flux.runtime.schedule_views import Schedule, ScheduleDetails, ScheduleFire, details, view
from flux.runtime.schedules import (
    CATCH_UP_POLICIES,
    OVERLAP_POLICIES,
    ScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    check_name,
    new_record,
)

__all__ = ["OPENAPI_MODELS", "OPENAPI_PATHS", "OPENAPI_SCHEMAS", "register"]

_FIELDS = {
    "name", "workflow", "cron", "timezone", "every", "input", "overlap", "catch_up", "paused"
}


@attrs.frozen
class ScheduleTriggered:
    """The answer to a trigger: the id the execution gets once the loop starts it."""

    schedule: str
    execution_id: str


@attrs.frozen
class ScheduleDeleted:
    """The answer to a delete."""

    schedule: str
    deleted: bool


def _name(name: str) -> str:
    try:
        return check_name(name)
    except ScheduleError as exc:
        raise ApiError(400, "bad-schedule-name", str(exc)) from None


def _not_found(name: str) -> ApiError:
    return ApiError(404, "schedule-not-found", f"no schedule named {name!r}")


def register(app: QuartTrio, api: Api) -> None:
    def changed() -> None:
        api.server.schedules.changed()

    @app.post("/schedules")
    async def schedules_create() -> Response:
        body = await api.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad-request", "send a JSON object describing the schedule")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ApiError(
                400, "bad-request", f"unknown field(s) {', '.join(unknown)}: expected "
                f"{', '.join(sorted(_FIELDS))}"
            )
        for key in ("name", "workflow", "cron", "timezone", "overlap", "catch_up"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, "bad-request", f"{key} must be a string")
        every = body.get("every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, str | int)):
            raise ApiError(400, "bad-request", "every must be a duration (\"30s\") or seconds")
        paused = body.get("paused", False)
        if not isinstance(paused, bool):
            raise ApiError(400, "bad-request", "paused must be true or false")
        workflow = body.get("workflow")
        data = api.encode_value(body.get("input"), "the schedule's input")
        try:
            rec = new_record(
                body.get("name"),
                workflow,
                input=data,
                now=api.dispatcher.wall(),
                cron=body.get("cron"),
                timezone=body.get("timezone"),
                every=every,
                overlap=body.get("overlap") or "skip",
                catch_up=body.get("catch_up") or "none",
                paused=paused,
            )
        except ScheduleError as exc:
            raise ApiError(400, "bad-schedule", str(exc)) from None
        if await api.store.get_workflow(rec.workflow) is None:
            raise ApiError(
                404, "workflow-not-found",
                f"workflow {rec.workflow!r} is not registered on this server (upload it first)",
            )
        try:
            await api.store.create_schedule(rec)
        except ScheduleExistsError as exc:
            raise ApiError(409, "schedule-exists", str(exc)) from None
        changed()
        return json_response(to_json(view(rec)), status=201)

    @app.get("/schedules")
    async def schedules_list() -> Response:
        return json_response(to_json([view(r) for r in await api.store.list_schedules()]))

    @app.get("/schedules/<name>")
    async def schedules_show(name: str) -> Response:
        name = _name(name)
        upcoming = api.int_arg("upcoming", 5, 0, 100)
        recent = api.int_arg("recent", 20, 0, 200)
        try:
            shown = await details(
                api.store, name, api.dispatcher.wall(), upcoming=upcoming, recent=recent
            )
        except ScheduleNotFoundError:
            raise _not_found(name) from None
        return json_response(to_json(shown))

    @app.delete("/schedules/<name>")
    async def schedules_delete(name: str) -> Response:
        name = _name(name)
        if not await api.store.delete_schedule(name):
            raise _not_found(name)
        changed()
        return json_response(to_json(ScheduleDeleted(name, True)))

    async def set_paused(name: str, paused: bool) -> Response:
        name = _name(name)
        try:
            rec = await api.store.set_schedule_paused(name, paused, api.dispatcher.wall())
        except ScheduleNotFoundError:
            raise _not_found(name) from None
        changed()
        return json_response(to_json(view(rec)))

    @app.post("/schedules/<name>/pause")
    async def schedules_pause(name: str) -> Response:
        return await set_paused(name, True)

    @app.post("/schedules/<name>/resume")
    async def schedules_resume(name: str) -> Response:
        return await set_paused(name, False)

    @app.post("/schedules/<name>/trigger")
    async def schedules_trigger(name: str) -> Response:
        name = _name(name)
        try:
            eid = await api.store.trigger_schedule(name, api.dispatcher.wall())
        except ScheduleNotFoundError:
            raise _not_found(name) from None
        except ScheduleError as exc:
            raise ApiError(409, "trigger-pending", str(exc)) from None
        changed()
        return json_response(to_json(ScheduleTriggered(name, eid)), status=202)


# ---------------------------------------------------------------------------------- OpenAPI

_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
}
_E400 = error("bad input: a bad name, cron expression, time zone, interval or policy")
_E404 = error("no such schedule (or, on create, the workflow is not registered)")
_ONE = json_content(ref("Schedule"), "the schedule")

#: The answers' schemas are generated from these classes (flux.net.models_schema).
OPENAPI_MODELS = (Schedule, ScheduleFire, ScheduleDetails, ScheduleTriggered, ScheduleDeleted)

#: The request body of POST /schedules.
OPENAPI_SCHEMAS: dict[str, Any] = {
    "ScheduleCreate": {
        "type": "object",
        "required": ["name", "workflow"],
        "description": "Give `cron` (with an optional `timezone`, default UTC) or `every`.",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
            "workflow": {"type": "string"},
            "cron": {"type": "string", "examples": ["0 2 * * *", "@hourly"]},
            "timezone": {"type": "string", "examples": ["Europe/Berlin"]},
            "every": {
                "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}],
                "examples": ["30s", "5m", "1h30m"],
            },
            "input": {},
            "overlap": {"enum": list(OVERLAP_POLICIES), "default": "skip"},
            "catch_up": {"enum": list(CATCH_UP_POLICIES), "default": "none"},
            "paused": {"type": "boolean", "default": False},
        },
    },
}


def _int_param(name: str, default: int, high: int, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": what,
        "schema": {"type": "integer", "minimum": 0, "maximum": high, "default": default},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/schedules": {
        "post": op(
            "Create a schedule of a registered workflow",
            {
                "201": _ONE,
                "400": _E400,
                "404": _E404,
                "409": error("a schedule with this name exists"),
                "413": error("the input is over the value size limit"),
            },
            tag="schedules",
            body={
                "required": True,
                "content": {"application/json": {"schema": ref("ScheduleCreate")}},
            },
            op_id="create_schedule",
        ),
        "get": op(
            "Every schedule, by name",
            {"200": json_content({"type": "array", "items": ref("Schedule")}, "schedules")},
            tag="schedules",
            op_id="list_schedules",
        ),
    },
    "/schedules/{name}": {
        "get": op(
            "A schedule, its next due times and its latest decisions with their executions",
            {
                "200": json_content(ref("ScheduleDetails"), "the schedule"),
                "400": _E400,
                "404": _E404,
            },
            tag="schedules",
            params=[
                _NAME_PARAM,
                _int_param("upcoming", 5, 100, "how many next due times"),
                _int_param("recent", 20, 200, "how many latest decisions"),
            ],
            op_id="show_schedule",
        ),
        "delete": op(
            "Delete a schedule (the executions it started stay)",
            {
                "200": json_content(ref("ScheduleDeleted"), "deleted"),
                "400": _E400,
                "404": _E404,
            },
            tag="schedules",
            params=[_NAME_PARAM],
            op_id="delete_schedule",
        ),
    },
    "/schedules/{name}/pause": {
        "post": op(
            "Pause a schedule (nothing more starts until it is resumed)",
            {"200": _ONE, "400": _E400, "404": _E404},
            tag="schedules",
            params=[_NAME_PARAM],
            op_id="pause_schedule",
        )
    },
    "/schedules/{name}/resume": {
        "post": op(
            "Resume a schedule (due times missed while paused are not caught up)",
            {"200": _ONE, "400": _E400, "404": _E404},
            tag="schedules",
            params=[_NAME_PARAM],
            op_id="resume_schedule",
        )
    },
    "/schedules/{name}/trigger": {
        "post": op(
            "Start one execution of the schedule now (whatever its overlap policy or pause)",
            {
                "202": json_content(ref("ScheduleTriggered"), "the execution it starts"),
                "400": _E400,
                "404": _E404,
                "409": error("an earlier trigger has not started yet"),
            },
            tag="schedules",
            params=[_NAME_PARAM],
            op_id="trigger_schedule",
        )
    },
}
