"""The Flux server: a Quart-Trio app (HTTP API + the worker WebSocket) served by hypercorn on trio.

``create_app(settings, server_settings)`` builds the app; ``serve_server(...)`` serves it and
reports the bound address through ``task_status``, so ``await nursery.start(serve_server, ...)``
works with port 0. The app owns the SQLite store and a :class:`~flux.net.dispatch.Dispatcher`
running in the app's nursery; every worker session goes through the sans-IO protocol in
:mod:`flux.net.protocol`.

The routes are described in :mod:`flux.net.openapi` (served at ``/openapi.json``, rendered at
``/docs``) and docs/http-api.md; tokens, the loopback rule and CORS come from
:mod:`flux.net.security`, event streams from :mod:`flux.net.streams`.
"""

from __future__ import annotations

import contextlib
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
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from flux.net import console
from flux.net import protocol as p
from flux.net.dispatch import (
    Dispatcher,
    DispatchSettings,
    ExecutionConflictError,
)
from flux.net.routes import (
    Api,
    ApiError,
    error_response,
    register_routes,
    too_large_body,
)
from flux.net.schedule_runner import ServerSchedules
from flux.net.security import (
    ServerConfigError,
    check_bearer,
    check_bind,
    check_origins,
    token_matches,
)
from flux.net.views import summary
from flux.runtime.errors import (
    ExecutionNotFoundError,
    WorkflowNotFoundError,
)
from flux.runtime.secrets import SecretKeyError, SecretStore
from flux.runtime.settings import Settings
from flux.runtime.store import Store, open_store

__all__ = [
    "ServerAddress",
    "ServerConfigError",
    "ServerSettings",
    "create_app",
    "serve_server",
    "summary",
]

log = logging.getLogger("flux.server")

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
    #: Bearer token for the HTTP API and admin routes (None: none required; loopback only).
    api_token: str | None = attrs.field(default=None, repr=False)
    #: Token workers must send in their hello (None: none required; loopback only).
    worker_token: str | None = attrs.field(default=None, repr=False)
    #: Browser origins allowed to call the API (CORS); empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: Largest uploaded workflow source (the multipart file), in bytes.
    max_source_size: int = 1024 * 1024
    #: Largest value stored from a request: a run's input, a resume value (encoded bytes).
    max_value_size: int = 4 * 1024 * 1024
    #: Largest message of the events WebSocket, both ways (an event whose JSON is larger is sent
    #: with its value replaced by a notice).
    max_stream_message: int = 1024 * 1024
    #: Seconds without an event after which a stream sends a keep-alive (SSE comment).
    keepalive: float = 15.0
    #: The most executions one worker is leased at once, whatever capacity it claims.
    max_capacity: int = 1024
    #: Seconds a request/response pair of a worker session may take: the worker waits this long
    #: for an ack, secrets or a cache value (then gives the lease up), and the server this long
    #: for room in a worker's outbox (then closes the session; its leases expire and are
    #: granted again).
    request_timeout: float = 30.0

    @property
    def dispatch(self) -> DispatchSettings:
        return DispatchSettings(self.lease_ttl, self.heartbeat_interval, self.max_capacity)


@attrs.frozen
class ServerAddress:
    """Where a server listens; ``serve_server`` reports it through ``task_status``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


class FluxServer:
    """What the app holds: the store, the dispatcher and the worker sessions."""

    def __init__(self, settings: Settings, server_settings: ServerSettings, store: Store | None):
        self.settings = settings
        self.server_settings = server_settings
        self._own_store = store is None
        self.store = store or open_store(
            settings.store,
            durability=settings.durability,
            busy_timeout=settings.busy_timeout,
            retry_for=settings.store_retry_for,
        )
        self.dispatcher = Dispatcher(
            self.store,
            server_settings.dispatch,
            secrets=SecretStore(self.store, settings),
        )
        self.schedules = ServerSchedules(self.store, self.dispatcher)
        self.closing = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        await self.store.__aenter__()
        await nursery.start(self.dispatcher.run)
        await nursery.start(self.schedules.run)

    def begin_shutdown(self) -> None:
        """Tell sessions and streams to end (the server is stopping)."""
        self.closing.set()

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
        if cfg.worker_token and not token_matches(hello.token, cfg.worker_token):
            why = "missing worker token" if not hello.token else "wrong worker token"
            log.warning("worker %r from %s refused: %s", hello.name, peer, why)
            with trio.move_on_after(1):
                try:
                    await ws.send(session.send(p.Error(code="unauthorized", detail=why)))
                finally:
                    await ws.close(p.close_code_for("unauthorized"), f"unauthorized: {why}")
            return
        name = hello.name
        if len(name) > p.MAX_WORKER_NAME:
            name = name[: p.MAX_WORKER_NAME - 3] + "..."
            log.info("worker name from %s cut to %d characters: %r", peer, p.MAX_WORKER_NAME, name)
        worker_id = f"{name}-{uuid.uuid4().hex[:8]}"
        dispatch = cfg.dispatch
        capacity = min(hello.capacity, dispatch.max_capacity)
        timeout = cfg.request_timeout
        await ws.send(
            session.send(
                p.Welcome(
                    worker_id=worker_id,
                    heartbeat_interval=dispatch.heartbeat,
                    lease_ttl=dispatch.lease_ttl,
                    max_frame_size=cfg.max_frame_size,
                    max_value_size=max(cfg.max_frame_size - p.FRAME_ENVELOPE, 1),
                    request_timeout=timeout,
                    capacity=capacity,
                    log_limit=self.settings.log_limit,
                )
            )
        )
        # small: a worker that reads slowly makes its senders wait, not the server's memory grow
        send_frames, frames = trio.open_memory_channel[bytes](min(4 * capacity + 64, 1024))
        stalled = trio.Event()

        async def send(msg: p.Message) -> None:
            if session.state is p.SessionState.CLOSED:
                raise WorkerGoneError(f"the session of {worker_id} is closed")
            frame = session.send(msg)
            try:
                try:
                    send_frames.send_nowait(frame)  # room: no need to wait
                    return
                except trio.WouldBlock:
                    pass
                with trio.move_on_after(timeout):
                    await send_frames.send(frame)
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise WorkerGoneError(f"the session of {worker_id} is closed") from None
            stalled.set()  # the worker reads nothing: end the session (its leases expire)
            raise WorkerGoneError(f"worker {worker_id} took no frame for {timeout:g}s")

        link = self.dispatcher.add_worker(worker_id, name, capacity, send)
        failure: p.RemoteProtocolError | None = None
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    async for frame in frames:
                        await ws.send(frame)

                async def closer() -> None:
                    async with trio.open_nursery() as inner:
                        for event in (self.closing, stalled):
                            inner.start_soon(_set_then_cancel, event, inner.cancel_scope)
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
        finally:
            # closed first, so that nothing more is put on its way to this worker
            send_frames.close()
            self.dispatcher.remove_worker(link)
        if stalled.is_set() and failure is None:
            failure = p.RemoteProtocolError(
                "slow", f"the worker read no frame for {timeout:g}s", close_code=1008
            )
        if failure is not None:
            await _refuse(ws, session, failure, f"{peer} ({worker_id})")
        elif self.closing.is_set():
            with trio.move_on_after(1):
                await ws.close(1001, "server shutting down")


class WorkerGoneError(ConnectionError):
    """A message could not be put on its way to a worker: its session is closed, closing or
    stalled. The dispatcher treats it as not sent (the lease expires or is granted again)."""


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


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


class _HTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP handling, with bodies over the limit answered before Quart sees them.

    Quart-Trio cancels the request's task as soon as the client's side of the exchange ends.
    When a response is answered before its request body was all read (a 413), that end comes
    while hypercorn is still inside the response's last ``send``, finishing the exchange;
    cancelled there, hypercorn neither closes the connection nor makes it ready for the next
    request, and that next request hangs. So a body whose declared ``Content-Length`` is over
    the limit is answered here, outside Quart's cancel scope, while what arrives of the body is
    read and dropped; the answer says ``Connection: close`` and hypercorn closes the connection
    after it. (A chunked body over the limit is found by Quart as it reads; the last send of
    such an early answer is shielded, and bounded, for the same reason.)"""

    async def __call__(self, receive: Any, send: Any) -> None:
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        declared = _content_length(self.scope)
        if limit is not None and declared is not None and declared > limit:
            await _refuse_body(receive, send, limit)
            return
        body_done = False

        async def receive_noting_the_end() -> Any:
            nonlocal body_done
            message = await receive()
            if message.get("type") == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def send_early_last_shielded(message: Any) -> None:
            last = message.get("type") == "http.response.body" and not message.get("more_body")
            if body_done or not last:
                await send(message)
                return
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                with contextlib.suppress(trio.BusyResourceError):  # see _refuse_body
                    await send(message)

        await super().__call__(receive_noting_the_end, send_early_last_shielded)


def _content_length(scope: Any) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse_body(receive: Any, send: Any, limit: int) -> None:
    """Answer 413 at the ASGI level, dropping the body's chunks meanwhile (hypercorn can then
    finish the exchange and close the connection)."""

    async def drain() -> None:
        while (await receive()).get("type") != "http.disconnect":
            pass

    body = json.dumps(
        {
            "error": "too-large",
            "detail": f"the request body exceeds the server's limit of {limit} bytes",
        }
    ).encode()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        # BusyResourceError: hypercorn closing the connection (on the client's next bytes)
        # races with the end of this answer; the connection is closed either way
        with trio.move_on_after(10), contextlib.suppress(trio.BusyResourceError):
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                        (b"x-content-type-options", b"nosniff"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
        nursery.cancel_scope.cancel()


class _App(QuartTrio):
    asgi_http_class = _HTTPConnection



def create_app(
    settings: Settings | None = None,
    server_settings: ServerSettings | None = None,
    *,
    store: Store | None = None,
) -> QuartTrio:
    """Build the Flux server app. It opens the store (unless given one) when it starts serving
    and closes it when it stops. Every route is described by :func:`flux.net.openapi.spec`."""
    settings = settings or Settings.from_env()
    server_settings = server_settings or ServerSettings()
    cfg = server_settings
    origins = check_origins(cfg.cors_origins)
    # not named "flux": Quart gives its app logger a handler, which would print every record of
    # the flux.* loggers a second time beside the root handler
    app = _App("flux.server.app", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_size
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 2
    server = FluxServer(settings, cfg, store)
    app.extensions["flux"] = server

    @app.before_serving
    async def _start() -> None:
        await server.start(app.nursery)

    @app.after_serving
    async def _stop() -> None:
        await server.stop()

    # ------------------------------------------------------------------ errors

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.detail)
        if exc.status == 413:  # see _too_large_body
            response.headers["Connection"] = "close"
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="flux"'
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return too_large_body(cfg.max_body_size)
        code = (exc.name or "error").lower().replace(" ", "-")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(WorkflowNotFoundError)
    async def _no_workflow(exc: WorkflowNotFoundError) -> Response:
        return error_response(404, "workflow-not-found", str(exc))

    @app.errorhandler(ExecutionNotFoundError)
    async def _no_execution(exc: ExecutionNotFoundError) -> Response:
        return error_response(404, "execution-not-found", str(exc))

    @app.errorhandler(ExecutionConflictError)
    async def _conflict(exc: ExecutionConflictError) -> Response:
        return error_response(409, "conflict", str(exc))

    @app.errorhandler(SecretKeyError)
    async def _secret_key(exc: SecretKeyError) -> Response:
        return error_response(503, "secret-key", str(exc))

    @app.errorhandler(Exception)
    async def _internal(exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", f"{type(exc).__name__}: the server failed")

    # ------------------------------------------------------------------ auth and CORS

    def public(path: str) -> bool:
        # the console checks its own login cookie and CSRF token (flux/net/console/auth.py)
        return path in _PUBLIC_PATHS or console.owns(path)

    @app.before_request
    async def _guard() -> Response | None:
        if origins and request.method == "OPTIONS":
            return _preflight(request.headers.get("Origin"), origins)
        if public(request.path):
            return None
        failure = check_bearer(request.headers.get("Authorization"), cfg.api_token)
        if failure is not None:
            raise ApiError(failure.status, failure.code, failure.detail)
        return None

    @app.after_request
    async def _headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origins and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    register_routes(app, Api(server))
    app.register_blueprint(console.console_blueprint(server))
    return app


#: Paths served without a token: liveness for load balancers, and the API's own description.
_PUBLIC_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs"})


def _preflight(origin: str | None, origins: tuple[str, ...]) -> Response:
    response = Response("", status=204)
    if origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers["Vary"] = "Origin"
    return response


# ---------------------------------------------------------------------------- serving


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
    notice = check_bind(
        server_settings.host, server_settings.api_token, server_settings.worker_token
    )
    check_origins(server_settings.cors_origins)
    if notice is not None:
        log.warning("%s", notice)
    if app is None:
        app = create_app(settings, server_settings, store=store)
    server: FluxServer = app.extensions["flux"]
    config = HypercornConfig()
    host = server_settings.host
    config.bind = [
        f"[{host}]:{server_settings.port}" if ":" in host else f"{host}:{server_settings.port}"
    ]
    config.graceful_timeout = server_settings.graceful_timeout
    config.websocket_max_message_size = max(
        2 * server_settings.max_frame_size, server_settings.max_stream_message
    )
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
        server.begin_shutdown()

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            bind = (binds or [""])[0]
            port = int(bind.rsplit(":", 1)[1]) if bind else server_settings.port
            address = ServerAddress(server_settings.host, port)
            log.info("flux server listening on %s", address.url)
            task_status.started(address)

    await hypercorn_serve(app, config, shutdown_trigger=trigger, task_status=_Status())
