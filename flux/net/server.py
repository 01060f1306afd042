"""The Flux server: a Quart-Trio app (HTTP API + the worker WebSocket) served by hypercorn on trio.

``create_app(settings, server_settings)`` builds the app; ``serve_server(...)`` serves it and
reports the bound address through ``task_status``, so ``await nursery.start(serve_server, ...)``
works with port 0. The app owns the SQLite store and a :class:`~flux.net.dispatch.Dispatcher`
running in the app's nursery; every worker session goes through the sans-IO protocol in
:mod:`flux.net.protocol`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from flux.net import protocol as p
from flux.net.dispatch import (
    Dispatcher,
    DispatchSettings,
    ExecutionConflictError,
    source_hash,
)
from flux.runtime import codec
from flux.runtime.context import to_jsonable
from flux.runtime.engine import decode_event
from flux.runtime.errors import (
    ExecutionNotFoundError,
    SerializationError,
    WorkflowError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionState
from flux.runtime.loader import check_source
from flux.runtime.secrets import SecretStore
from flux.runtime.settings import Settings
from flux.runtime.store import ExecutionRecord, Store, open_store

__all__ = ["ServerAddress", "ServerSettings", "create_app", "serve_server"]

log = logging.getLogger("flux.server")

_SETTLED = frozenset(
    {
        ExecutionState.COMPLETED,
        ExecutionState.FAILED,
        ExecutionState.CANCELLED,
        ExecutionState.PAUSED,
    }
)


@attrs.frozen
class ServerSettings:
    """How the server serves (the store's own settings are :class:`flux.Settings`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: A lease not extended by a heartbeat within this many seconds expires.
    lease_ttl: float = 5.0
    #: Workers heartbeat this often (default: a third of lease_ttl).
    heartbeat_interval: float | None = None
    #: Largest worker frame, both ways (a lease carries the whole history).
    max_frame_size: int = 8 * 1024 * 1024
    #: Largest HTTP request body (uploads, inputs).
    max_body_size: int = 16 * 1024 * 1024
    #: ``run/sync`` returns the execution as it is after this many seconds at most.
    sync_timeout: float = 300.0
    #: Seconds a new worker connection has to say hello.
    hello_timeout: float = 10.0
    #: Seconds given to connections to finish on shutdown.
    graceful_timeout: float = 5.0

    @property
    def dispatch(self) -> DispatchSettings:
        return DispatchSettings(self.lease_ttl, self.heartbeat_interval)


@attrs.frozen
class ServerAddress:
    """Where a server listens; ``serve_server`` reports it through ``task_status``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ApiError(Exception):
    """An HTTP error with the API's JSON shape ``{"error": code, "detail": text}``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _error_response(status: int, code: str, detail: str) -> Response:
    return Response(
        json.dumps({"error": code, "detail": detail}),
        status=status,
        mimetype="application/json",
    )


def _json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(to_jsonable(data)), status=status, mimetype="application/json")


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return codec.decode(data)
    except SerializationError as exc:
        return f"<undecodable: {exc}>"


def summary(record: ExecutionRecord) -> dict[str, Any]:
    """The API's summary shape of an execution."""
    return {
        "workflow_name": record.workflow_name,
        "execution_id": record.execution_id,
        "input": _decode(record.input),
        "output": _decode(record.output),
        "state": record.state.value,
    }


class FluxServer:
    """What the app holds: the store, the dispatcher and the worker sessions."""

    def __init__(self, settings: Settings, server_settings: ServerSettings, store: Store | None):
        self.settings = settings
        self.server_settings = server_settings
        self._own_store = store is None
        self.store = store or open_store(settings.db_path, durability=settings.durability)
        self.dispatcher = Dispatcher(
            self.store,
            server_settings.dispatch,
            secrets=SecretStore(self.store, settings),
        )
        self.closing = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        await self.store.__aenter__()
        await nursery.start(self.dispatcher.run)

    async def stop(self) -> None:
        self.closing.set()
        if self._own_store:
            await self.store.aclose()

    # ------------------------------------------------------------------ worker sessions

    async def worker_session(self, ws: Any) -> None:
        """Serve one worker connection until it closes, breaks the protocol or we shut down."""
        cfg = self.server_settings
        session = p.ServerSession(max_frame_size=cfg.max_frame_size)
        peer = ws.headers.get("Remote-Addr", "?")
        await ws.accept()
        try:
            with trio.fail_after(cfg.hello_timeout):
                hello = session.receive_bytes(_frame(await ws.receive()))
        except p.RemoteProtocolError as exc:
            await _refuse(ws, session, exc, peer)
            return
        except trio.TooSlowError:
            await ws.close(int(p.CloseCode.POLICY_VIOLATION), "no hello in time")
            return
        assert isinstance(hello, p.Hello)
        # Tokens are checked here once the API's security part lands: hello.token.
        worker_id = f"{hello.name}-{uuid.uuid4().hex[:8]}"
        dispatch = cfg.dispatch
        await ws.send(
            session.send(
                p.Welcome(
                    worker_id=worker_id,
                    heartbeat_interval=dispatch.heartbeat,
                    lease_ttl=dispatch.lease_ttl,
                )
            )
        )
        send_frames, frames = trio.open_memory_channel[bytes](4 * hello.capacity + 64)

        def send(msg: p.Message) -> None:
            send_frames.send_nowait(session.send(msg))

        link = self.dispatcher.add_worker(worker_id, hello.name, hello.capacity, send)
        failure: p.RemoteProtocolError | None = None
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    async for frame in frames:
                        await ws.send(frame)

                async def closer() -> None:
                    await self.closing.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(writer)
                nursery.start_soon(closer)
                while True:
                    data = await ws.receive()
                    try:
                        msg = session.receive_bytes(_frame(data))
                    except p.RemoteProtocolError as exc:
                        failure = exc
                        nursery.cancel_scope.cancel()
                        break
                    if isinstance(msg, p.Error):
                        log.warning("worker %s closed with %s: %s", worker_id, msg.code, msg.detail)
                        nursery.cancel_scope.cancel()
                        break
                    await self.dispatcher.on_message(link, msg)
        except trio.WouldBlock:
            failure = p.RemoteProtocolError("slow", "worker does not read its frames")
        finally:
            self.dispatcher.remove_worker(link)
        if failure is not None:
            await _refuse(ws, session, failure, f"{peer} ({worker_id})")
        elif self.closing.is_set():
            with trio.move_on_after(1):
                await ws.close(1001, "server shutting down")


def _frame(data: bytes | str | None) -> bytes | str:
    return b"" if data is None else data


async def _refuse(ws: Any, session: p.Session, exc: p.ProtocolError, peer: str) -> None:
    log.warning("worker session from %s closed: %s", peer, exc.close_reason)
    with trio.move_on_after(1):
        try:
            await ws.send(session.error_frame(exc))
        finally:
            await ws.close(exc.close_code, exc.close_reason)


# ---------------------------------------------------------------------------- the app


def create_app(
    settings: Settings | None = None,
    server_settings: ServerSettings | None = None,
    *,
    store: Store | None = None,
) -> QuartTrio:
    """Build the Flux server app. It opens the store (unless given one) when it starts serving
    and closes it when it stops."""
    settings = settings or Settings.from_env()
    server_settings = server_settings or ServerSettings()
    app = QuartTrio("flux")
    app.config["MAX_CONTENT_LENGTH"] = server_settings.max_body_size
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 2
    server = FluxServer(settings, server_settings, store)
    app.extensions["flux"] = server
    dispatcher = server.dispatcher

    @app.before_serving
    async def _start() -> None:
        await server.start(app.nursery)

    @app.after_serving
    async def _stop() -> None:
        await server.stop()

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.detail)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "-")
        return _error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(WorkflowNotFoundError)
    async def _no_workflow(exc: WorkflowNotFoundError) -> Response:
        return _error_response(404, "workflow-not-found", str(exc))

    @app.errorhandler(ExecutionNotFoundError)
    async def _no_execution(exc: ExecutionNotFoundError) -> Response:
        return _error_response(404, "execution-not-found", str(exc))

    @app.errorhandler(ExecutionConflictError)
    async def _conflict(exc: ExecutionConflictError) -> Response:
        return _error_response(409, "conflict", str(exc))

    async def json_body() -> Any:
        data = await request.get_data(cache=False)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad-json", f"the request body is not valid JSON: {exc}") from None

    def flag(name: str) -> bool:
        return request.args.get(name, "").lower() in ("1", "true", "yes")

    async def execution(name: str, execution_id: str) -> ExecutionRecord:
        rec = await server.store.get_execution(execution_id)
        if rec is None or rec.workflow_name != name:
            raise ApiError(
                404,
                "execution-not-found",
                f"no execution {execution_id!r} of workflow {name!r}",
            )
        return rec

    async def shown(rec: ExecutionRecord, detailed: bool) -> dict[str, Any]:
        out = summary(rec)
        if detailed:
            events = await server.store.load_events(rec.execution_id)
            out["events"] = [_event_json(e) for e in events]
        return out

    @app.get("/health")
    async def health() -> Response:
        stats = dispatcher.statistics()
        return _json_response(
            {
                "status": "ok",
                "workers": stats.workers,
                "capacity": stats.capacity,
                "leases": stats.leases,
                "queued": stats.ready,
            }
        )

    @app.post("/workflows")
    async def upload() -> Response:
        files = await request.files
        upload = files.get("file")
        if upload is None:
            raise ApiError(400, "no-file", "send the workflow source as a multipart field 'file'")
        raw = upload.read()
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad-source", f"the source is not UTF-8: {exc}") from None
        filename = upload.filename or "<upload>"
        try:
            names = check_source(source, filename)
        except WorkflowError as exc:
            raise ApiError(400, "bad-source", str(exc)) from None
        if not names:
            raise ApiError(400, "bad-source", f"{filename} defines no @workflow")
        digest = source_hash(source)
        saved = [await server.store.save_workflow(n, source, digest) for n in dict.fromkeys(names)]
        return _json_response(
            [
                {
                    "name": r.name,
                    "version": r.version,
                    "source_hash": r.source_hash,
                    "created_at": r.created_at,
                }
                for r in saved
            ]
        )

    @app.get("/workflows")
    async def list_workflows() -> Response:
        records = await server.store.list_workflows()
        return _json_response(
            [
                {
                    "name": r.name,
                    "version": r.version,
                    "source_hash": r.source_hash,
                    "created_at": r.created_at,
                }
                for r in records
            ]
        )

    @app.get("/workflows/<name>")
    async def get_workflow(name: str) -> Response:
        record = await server.store.get_workflow(name)
        if record is None:
            raise WorkflowNotFoundError(name)
        versions = await server.store.list_workflow_versions(name)
        return _json_response(
            {
                "name": record.name,
                "version": record.version,
                "source_hash": record.source_hash,
                "created_at": record.created_at,
                "source": record.source,
                "versions": [v.version for v in versions],
            }
        )

    @app.post("/workflows/<name>/run/<mode>")
    async def run(name: str, mode: str) -> Response:
        if mode not in ("sync", "async"):
            raise ApiError(404, "not-found", f"unknown run mode {mode!r} (sync or async)")
        value = await json_body()
        rec = await dispatcher.start(name, codec.encode(value))
        if mode == "async":
            return _json_response(await shown(rec, flag("detailed")))
        return await settle(rec.execution_id, flag("detailed"))

    async def settle(execution_id: str, detailed: bool) -> Response:
        timeout = server_settings.sync_timeout
        if "timeout" in request.args:
            try:
                timeout = min(float(request.args["timeout"]), timeout)
            except ValueError:
                raise ApiError(400, "bad-timeout", "timeout must be seconds") from None
        event = dispatcher.watch(execution_id)
        try:
            rec = await server.store.get_execution(execution_id)
            if rec is not None and rec.state not in _SETTLED:
                with trio.move_on_after(timeout):
                    await event.wait()
        finally:
            dispatcher.unwatch(execution_id, event)
        rec = await server.store.get_execution(execution_id)
        assert rec is not None
        return _json_response(await shown(rec, detailed))

    @app.get("/workflows/<name>/status/<execution_id>")
    async def status(name: str, execution_id: str) -> Response:
        rec = await execution(name, execution_id)
        return _json_response(await shown(rec, flag("detailed")))

    @app.post("/workflows/<name>/resume/<execution_id>")
    async def resume(name: str, execution_id: str) -> Response:
        await execution(name, execution_id)
        value = await json_body()
        rec = await dispatcher.resume(execution_id, codec.encode(value))
        if flag("wait"):
            return await settle(execution_id, flag("detailed"))
        return _json_response(await shown(rec, flag("detailed")))

    @app.websocket("/workers/connect")
    async def workers_connect() -> None:
        await server.worker_session(websocket._get_current_object())

    return app


def _event_json(e: Any) -> dict[str, Any]:
    try:
        return to_jsonable(decode_event(e).to_dict())
    except SerializationError as exc:
        return {
            "id": e.seq,
            "type": e.type,
            "source_id": e.call_id,
            "name": e.name,
            "value": f"<undecodable: {exc}>",
            "time": e.time,
        }


# ---------------------------------------------------------------------------- serving


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _signalled(signals: tuple[int, ...]) -> None:
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


async def serve_server(
    settings: Settings | None = None,
    server_settings: ServerSettings | None = None,
    *,
    store: Store | None = None,
    app: QuartTrio | None = None,
    handle_signals: bool = False,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Flux server until cancelled, ``shutdown_trigger`` returns, or (with
    ``handle_signals``) SIGTERM/SIGINT; then shut down gracefully: worker sessions are closed,
    queued writes committed and the store closed. Reports the bound :class:`ServerAddress`.

    ``app`` serves an app made by :func:`create_app` (its ``extensions["flux"]`` holds the
    :class:`FluxServer`, e.g. for tests); ``settings`` and ``server_settings`` must be the ones
    it was made with."""
    settings = settings or Settings.from_env()
    server_settings = server_settings or ServerSettings()
    if not _is_loopback(server_settings.host):
        log.warning(
            "binding %s, which is not a loopback address, and worker/API tokens are not "
            "enforced yet: anyone who can reach this port can run code on your workers",
            server_settings.host,
        )
    if app is None:
        app = create_app(settings, server_settings, store=store)
    server: FluxServer = app.extensions["flux"]
    config = HypercornConfig()
    host = server_settings.host
    config.bind = [
        f"[{host}]:{server_settings.port}" if ":" in host else f"{host}:{server_settings.port}"
    ]
    config.graceful_timeout = server_settings.graceful_timeout
    config.websocket_max_message_size = 2 * server_settings.max_frame_size
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    async def trigger() -> None:
        async with trio.open_nursery() as nursery:

            async def wait_for(fn: Callable[[], Awaitable[None]]) -> None:
                await fn()
                nursery.cancel_scope.cancel()

            if shutdown_trigger is not None:
                nursery.start_soon(wait_for, shutdown_trigger)
            if handle_signals:
                nursery.start_soon(wait_for, lambda: _signalled((signal.SIGTERM, signal.SIGINT)))
            if shutdown_trigger is None and not handle_signals:
                nursery.start_soon(wait_for, trio.sleep_forever)
        server.closing.set()

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            bind = (binds or [""])[0]
            port = int(bind.rsplit(":", 1)[1]) if bind else server_settings.port
            address = ServerAddress(server_settings.host, port)
            log.info("flux server listening on %s", address.url)
            task_status.started(address)

    await hypercorn_serve(app, config, shutdown_trigger=trigger, task_status=_Status())
