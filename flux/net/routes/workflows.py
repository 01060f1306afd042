"""Workflow routes: upload sources, list and show workflows, run one (sync, async, or as an SSE
stream), and the per-workflow status and resume routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from flux.net.dispatch import source_hash
from flux.net.models import Error, Event, Execution, Workflow, WorkflowDetail, to_json
from flux.net.routes.api import Api, ApiError, json_response, sse
from flux.net.streams import follow
from flux.net.uploads import workflow_names
from flux.runtime.errors import WorkflowError, WorkflowNotFoundError
from flux.runtime.records import ExecutionRecord

__all__ = ["register", "workflow_json"]

log = logging.getLogger("flux.server")


def workflow_json(r: Any) -> dict[str, Any]:
    """A workflow version as the API shows it: :meth:`flux.net.models.Workflow.of`."""
    return to_json(Workflow.of(r))


def register(app: QuartTrio, api: Api) -> None:
    @app.post("/workflows")
    async def upload() -> Response:
        try:
            files = await request.files
        except RecursionError:  # pragma: no cover - defensive
            raise ApiError(400, "bad-upload", "the multipart body is malformed") from None
        upload = files.get("file")
        if upload is None:
            raise ApiError(400, "no-file", "send the workflow source as a multipart field 'file'")
        raw = upload.read(api.cfg.max_source_size + 1)
        if len(raw) > api.cfg.max_source_size:
            raise ApiError(
                413,
                "too-large",
                f"the workflow source exceeds the limit of {api.cfg.max_source_size} bytes",
            )
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad-source", f"the source is not UTF-8: {exc}") from None
        filename = upload.filename or "<upload>"
        try:
            names = await trio.to_thread.run_sync(workflow_names, source, filename)
        except (WorkflowError, ValueError, RecursionError, MemoryError) as exc:
            raise ApiError(400, "bad-source", str(exc) or type(exc).__name__) from None
        if not names:
            raise ApiError(400, "bad-source", f"{filename} defines no @workflow")
        digest = source_hash(source)
        saved = [await api.store.save_workflow(n, source, digest) for n in dict.fromkeys(names)]
        return json_response(to_json([Workflow.of(r) for r in saved]))

    @app.get("/workflows")
    async def list_workflows() -> Response:
        records = await api.store.list_workflows()
        return json_response(to_json([Workflow.of(r) for r in records]))

    @app.get("/workflows/<name>")
    async def get_workflow(name: str) -> Response:
        record = await api.store.get_workflow(name)
        if record is None:
            raise WorkflowNotFoundError(name)
        versions = await api.store.list_workflow_versions(name)
        return json_response(to_json(WorkflowDetail.of(record, versions)))

    @app.post("/workflows/<name>/run/<mode>")
    async def run(name: str, mode: str) -> Response:
        if mode not in ("sync", "async", "stream"):
            raise ApiError(404, "not-found", f"unknown run mode {mode!r} (sync, async or stream)")
        detailed = api.flag("detailed")
        timeout = api.timeout_arg()
        value = await api.json_body()
        rec = await api.dispatcher.start(name, api.encode_value(value, "the input"))
        if mode == "async":
            return json_response(to_json(await api.shown(rec, detailed)))
        if mode == "sync":
            return await api.settle(rec.execution_id, detailed, timeout)
        return event_stream(rec)

    def event_stream(rec: ExecutionRecord) -> Response:
        """Server-Sent Events: the summary (event ``execution``), every event (default event
        type, ``id`` = seq), the final summary (event ``execution``)."""
        eid = rec.execution_id

        async def body() -> AsyncIterator[bytes]:
            yield sse(to_json(Execution.of(rec)), "execution")
            try:
                async for e in follow(
                    api.dispatcher,
                    api.store,
                    eid,
                    0,
                    stop=api.closing,
                    keepalive=api.cfg.keepalive,
                ):
                    if e is None:
                        yield b": keep-alive\n\n"
                        continue
                    yield sse(to_json(Event.of(e)), event_id=e.seq)
                final = await api.store.get_execution(eid)
                if final is not None:
                    yield sse(to_json(Execution.of(final)), "execution")
            except Exception as exc:  # the stream is open: tell the client in it
                log.exception("stream of %s failed", eid)
                failure = Error("internal", f"the stream failed: {exc}")
                yield sse(to_json(failure), "error")

        response = Response(body(), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None  # an execution may take long: no response timeout
        return response

    @app.get("/workflows/<name>/status/<execution_id>")
    async def status(name: str, execution_id: str) -> Response:
        rec = await api.execution(name, execution_id)
        return json_response(to_json(await api.shown(rec, api.flag("detailed"))))

    @app.post("/workflows/<name>/resume/<execution_id>")
    async def resume(name: str, execution_id: str) -> Response:
        await api.execution(name, execution_id)
        detailed, wait, timeout = api.flag("detailed"), api.flag("wait"), api.timeout_arg()
        value = await api.json_body()
        rec = await api.dispatcher.resume(execution_id, api.encode_value(value, "the resume value"))
        if wait:
            return await api.settle(execution_id, detailed, timeout)
        return json_response(to_json(await api.shown(rec, detailed)))
