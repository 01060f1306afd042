"""An async client of the Flux HTTP API (httpx on anyio: works on trio and asyncio).

::

    async with FluxClient("http://127.0.0.1:8000", token=...) as flux:
        await flux.register("workflows.py")
        done = await flux.run("hello", "World")               # the summary of the execution
        async for event in flux.stream("hello", "World"):     # Server-Sent Events, as models
            print(event_line(event))

Every method returns the server's answer parsed into the API's models (:mod:`flux.net.models`:
``Execution``, ``Event``, ``Workflow``, ``WorkflowDetail``, ``ExecutionListItem``, ``Worker``,
``Health``), the same classes the server builds its answers from. A model reads both ways:
attributes typed (``done.state is ExecutionState.COMPLETED``, ``done.events[0].source_id``) and,
being a read-only dict of its JSON, like the JSON itself (``done["state"] == "COMPLETED"``,
``json.dumps(done)``). An answer that does not have its model's shape raises
:class:`FluxClientError` ``bad-response``. Every failure raises one
:class:`FluxClientError` carrying the HTTP ``status``, the API's error ``code`` and its
``detail``, with a one-line message such as ``404 workflow-not-found: no workflow named 'x'``;
a server that cannot be reached gives ``cannot reach the Flux server at URL: ...``.

:meth:`FluxClient.follow` reads an execution's events over the server's WebSocket stream
(:data:`EVENTS_WS_PATH`) with a small wsproto client on anyio streams: no background task, so it
is safe as a plain async generator (close it with :func:`contextlib.aclosing` if you stop early).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import attrs
import cattrs
import httpx

from flux.net.models import (
    Event,
    Execution,
    ExecutionListItem,
    Health,
    Worker,
    Workflow,
    WorkflowDetail,
    from_json,
)
from flux.runtime.context import to_jsonable
from flux.runtime.errors import FluxError

__all__ = [
    "DEFAULT_SERVER_URL",
    "EVENTS_WS_PATH",
    "FluxClient",
    "FluxClientError",
    "Progress",
    "event_line",
]

#: Where a client looks for the server unless told (``--server-url``, ``FLUX_SERVER_URL``).
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
#: The WebSocket stream of an execution's events; ``?from=N`` skips the first N events.
EVENTS_WS_PATH = "/executions/{execution_id}/events"
EVENTS_FROM_PARAM = "from"

#: Workflow events after which an execution has ended (a follower stops there).
TERMINAL_EVENTS = {
    "WORKFLOW_COMPLETED": "COMPLETED",
    "WORKFLOW_FAILED": "FAILED",
    "WORKFLOW_CANCELLED": "CANCELLED",
}
#: Workflow events that change the execution's state (the terminal ones and these).
STATE_EVENTS = {
    **TERMINAL_EVENTS,
    "WORKFLOW_SCHEDULED": "SCHEDULED",
    "WORKFLOW_CLAIMED": "CLAIMED",
    "WORKFLOW_STARTED": "RUNNING",
    "WORKFLOW_RESUMED": "RUNNING",
    "WORKFLOW_PAUSED": "PAUSED",
}
SETTLED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "PAUSED"})

#: Largest WebSocket message :meth:`FluxClient.follow` accepts.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_NO_BODY: Any = object()


class FluxClientError(FluxError):
    """The Flux server answered with an error, or could not be reached.

    ``status`` is the HTTP status (``None`` when there was no HTTP answer: unreachable server,
    timeout, broken stream), ``code`` the API's error code (``"unreachable"``, ``"timeout"``,
    ``"bad-response"`` ... for errors found on this side) and ``detail`` the explanation."""

    def __init__(self, status: int | None, code: str, detail: str, message: str | None = None):
        self.status = status
        self.code = code
        self.detail = detail
        if message is None:
            message = f"{status} {code}: {detail}" if status is not None else f"{code}: {detail}"
        super().__init__(message)


def _error_from(status: int, body: bytes, reason: str = "") -> FluxClientError:
    """Build the error of an HTTP answer with status >= 400 (JSON ``{"error", "detail"}``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and "error" in data:
        detail = data.get("detail")
        detail = "" if detail is None else str(detail)
        return FluxClientError(status, str(data["error"]), detail)
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    if len(text) > 200:
        text = text[:200] + "..."
    return FluxClientError(status, f"http-{status}", text or reason or "no detail")


def _name(value: str) -> str:
    return quote(str(value), safe="")


def _items(data: Any, *keys: str) -> list[Any]:
    """A list the server returns either bare or wrapped (``{"executions": [...], ...}``)."""
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), list):
                return data[key]
    if isinstance(data, list):
        return data
    raise FluxClientError(None, "bad-response", f"expected a list, got {_short(data)}")


def _parsed(data: Any, cls: Any, what: str) -> Any:
    """``data`` parsed into the model ``cls`` (``list[Model]`` ...); bad-response naming
    ``what`` when it does not have that shape."""
    try:
        return from_json(data, cls)
    except Exception as exc:  # cattrs' ClassValidationError (an ExceptionGroup) and the like
        try:
            reasons = "; ".join(cattrs.transform_error(exc, path="$"))
        except Exception:
            reasons = str(exc) or type(exc).__name__
        raise FluxClientError(
            None, "bad-response", f"{what} is not {_shape_name(cls)}: {reasons}: {_short(data)}"
        ) from None


def _shape_name(cls: Any) -> str:
    args = getattr(cls, "__args__", None)
    return f"a list of {args[0].__name__}" if args else f"a {cls.__name__}"


def _message(value: Any, event: str = "message") -> Any:
    """A streamed message as its model: an execution summary (SSE ``execution`` events) or an
    event; another JSON value is returned as it is."""
    if event == "execution" or (
        isinstance(value, dict) and "execution_id" in value and "state" in value
    ):
        return _parsed(value, Execution, "a streamed execution")
    if isinstance(value, dict) and "type" in value and "source_id" in value:
        return _parsed(value, Event, "a streamed event")
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FluxClient:
    """An async client of one Flux server. Use it as ``async with FluxClient(...) as c:``.

    ``server_url`` defaults to ``$FLUX_SERVER_URL``, else :data:`DEFAULT_SERVER_URL`; ``token``
    (sent as ``Authorization: Bearer <token>``) to ``$FLUX_API_TOKEN``. ``timeout`` bounds every
    request in seconds, except those that wait for an execution by design (``run`` in sync mode,
    ``resume`` with ``wait``, ``stream`` and ``follow``: the server bounds those)."""

    def __init__(
        self,
        server_url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ):
        url = (server_url or os.environ.get("FLUX_SERVER_URL") or DEFAULT_SERVER_URL).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must be http(s)://host[:port], got {url!r}")
        self.server_url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("FLUX_API_TOKEN") or None
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FluxClient:
        headers = {"Accept": "application/json", "User-Agent": "flux-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.AsyncClient(
            base_url=self.server_url, headers=headers, timeout=self.timeout
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use the client as `async with FluxClient(...) as client:`")
        return self._http

    # ------------------------------------------------------------------ plumbing

    def _unreachable(self, exc: Exception) -> FluxClientError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return FluxClientError(
                None,
                "timeout",
                reason,
                f"the Flux server at {self.server_url} did not answer in time ({reason})",
            )
        if isinstance(exc, httpx.ConnectError | OSError):
            return FluxClientError(
                None,
                "unreachable",
                reason,
                f"cannot reach the Flux server at {self.server_url}: {reason}",
            )
        return FluxClientError(
            None,
            "connection-lost",
            reason,
            f"lost the connection to the Flux server at {self.server_url}: {reason}",
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = _NO_BODY,
        files: Any = None,
        wait: bool = False,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        if body is not _NO_BODY:
            kwargs["content"] = json.dumps(to_jsonable(body)).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        if files is not None:
            kwargs["files"] = files
        if wait:  # the server bounds these (e.g. run/sync returns after its sync timeout)
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=None)
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content, response.reason_phrase)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise FluxClientError(
                response.status_code,
                "bad-response",
                f"{method} {path} did not return JSON: {_short(response.text)}",
            ) from None

    # ------------------------------------------------------------------ workflows

    async def register(
        self, path_or_source: str | os.PathLike[str] | bytes, filename: str | None = None
    ) -> list[Workflow]:
        """Upload workflow source: a file path, or the source itself (``str`` with a newline, or
        ``bytes``). Returns one ``{name, version, source_hash, created_at}`` per workflow."""
        if isinstance(path_or_source, bytes):
            source, default_name = path_or_source, "workflow.py"
        elif isinstance(path_or_source, str) and "\n" in path_or_source:
            source, default_name = path_or_source.encode(), "workflow.py"
        else:
            path = os.fspath(path_or_source)
            with open(path, "rb") as f:
                source = f.read()
            default_name = os.path.basename(path)
        files = {"file": (filename or default_name, source, "text/x-python")}
        items = _items(await self._request("POST", "/workflows", files=files), "workflows")
        return _parsed(items, list[Workflow], "the upload's answer")

    async def list_workflows(self) -> list[Workflow]:
        """The latest version of every workflow: ``{name, version, source_hash, created_at}``."""
        items = _items(await self._request("GET", "/workflows"), "workflows")
        return _parsed(items, list[Workflow], "the workflow list")

    async def get_workflow(self, name: str) -> WorkflowDetail:
        """One workflow's latest version, with its ``source`` and all its ``versions``."""
        data = await self._request("GET", f"/workflows/{_name(name)}")
        return _parsed(data, WorkflowDetail, f"workflow {name!r}")

    # ------------------------------------------------------------------ executions

    async def run(
        self, name: str, input: Any = None, mode: str = "sync", *, detailed: bool = False
    ) -> Execution:
        """Start an execution: ``sync`` returns once it completes, fails or pauses (or the
        server's sync timeout passes), ``async`` at once. Returns its summary
        ``{workflow_name, execution_id, input, output, state}`` (``events`` with ``detailed``)."""
        if mode not in ("sync", "async"):
            hint = "; use stream() for live events" if mode == "stream" else ""
            raise ValueError(f"mode must be 'sync' or 'async', not {mode!r}{hint}")
        data = await self._request(
            "POST",
            f"/workflows/{_name(name)}/run/{mode}",
            params={"detailed": "true" if detailed else None},
            body=input,
            wait=mode == "sync",
        )
        return _parsed(data, Execution, "the run's answer")

    async def stream(self, name: str, input: Any = None) -> AsyncIterator[Any]:
        """Start an execution and yield each Server-Sent Event of ``run/stream`` as its model
        (an ``Execution`` summary first and last, an ``Event`` for each event), until the server
        ends the stream (the execution completed, failed, was cancelled or paused). An ``error``
        event (or an ``{"error", "detail"}`` message) raises."""
        path = f"/workflows/{_name(name)}/run/stream"
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        content = json.dumps(to_jsonable(input)).encode()
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self.http.stream(
                "POST", path, content=content, headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    raise _error_from(response.status_code, body, response.reason_phrase)
                kind = response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):
                    body = await response.aread()
                    raise FluxClientError(
                        response.status_code,
                        "bad-response",
                        f"POST {path} did not answer with an event stream ({kind or 'no type'})"
                        f": {_short(body.decode('utf-8', 'replace'))}",
                    )
                parser = _SSEParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield _message(_sse_data(*event), event[0])
                event = parser.feed("")
                if event is not None:
                    yield _message(_sse_data(*event), event[0])
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def status(self, name: str, execution_id: str, detailed: bool = False) -> Execution:
        """An execution's summary (with its ``events`` when ``detailed``)."""
        data = await self._request(
            "GET",
            f"/workflows/{_name(name)}/status/{_name(execution_id)}",
            params={"detailed": "true" if detailed else None},
        )
        return _parsed(data, Execution, f"execution {execution_id!r}")

    async def resume(
        self,
        name: str,
        execution_id: str,
        value: Any = None,
        *,
        wait: bool = False,
        detailed: bool = False,
    ) -> Execution:
        """Resume a paused execution with ``value`` (what its pause returns). With ``wait``, return
        once it completes, fails or pauses again (the server bounds the wait)."""
        data = await self._request(
            "POST",
            f"/workflows/{_name(name)}/resume/{_name(execution_id)}",
            params={"wait": "true" if wait else None, "detailed": "true" if detailed else None},
            body=value,
            wait=wait,
        )
        return _parsed(data, Execution, f"execution {execution_id!r}")

    async def send_signal(self, execution_id: str, topic: str, value: Any = None) -> dict[str, Any]:
        """Send a signal: ``value`` (any JSON value) is queued for the execution's next
        ``receive(topic)``. Returns ``{execution_id, topic, signal_id, sent_at, state}``; a
        finished execution is a 409 FluxClientError (its detail names the state), an unknown
        one a 404."""
        return await self._request(
            "POST", f"/executions/{_name(execution_id)}/signals/{_name(topic)}", body=value
        )

    async def queued_signals(self, execution_id: str) -> list[dict[str, Any]]:
        """The signals sent to an execution that it has not received yet, oldest first."""
        return _items(await self._request("GET", f"/executions/{_name(execution_id)}/signals"))

    async def get_execution(self, execution_id: str, detailed: bool = False) -> Execution:
        """Any execution's summary by id alone (with its ``events`` when ``detailed``)."""
        data = await self._request(
            "GET",
            f"/executions/{_name(execution_id)}",
            params={"detailed": "true" if detailed else None},
        )
        return _parsed(data, Execution, f"execution {execution_id!r}")

    async def cancel(self, execution_id: str, *, wait: bool = False) -> Execution:
        """Cancel a running, paused or queued execution; returns its summary. A running one is
        ``CANCELLING`` until its worker has stopped it; with ``wait``, return once it has (the
        server bounds the wait)."""
        data = await self._request(
            "POST",
            f"/executions/{_name(execution_id)}/cancel",
            params={"wait": "true" if wait else None},
            wait=wait,
        )
        return _parsed(data, Execution, f"execution {execution_id!r}")

    async def retry(
        self, execution_id: str, *, latest: bool = False, wait: bool = False
    ) -> dict[str, Any]:
        """Retry a FAILED execution: a new execution (new id, ``retry_of`` it) whose history is
        the original's up to its first failure, so completed calls are not run again; returns
        it (``execution_id``, ``state``, ``retry_of``, ``child_retries``...). ``latest``: run
        the workflow's latest version; ``wait``: return once it settles (the server bounds the
        wait). FluxClientError 409 if it did not fail or a retry of it is live, 404 if unknown."""
        return await self._request(
            "POST",
            f"/executions/{_name(execution_id)}/retry",
            params={"latest": "true" if latest else None, "wait": "true" if wait else None},
            wait=wait,
        )

    async def list_executions(
        self,
        workflow: str | None = None,
        state: str | Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[ExecutionListItem]:
        """Executions, newest first, optionally of one workflow and in one state (or any of
        several). Each is a summary with ``parent_id``, ``created_at`` and ``updated_at``."""
        if state is not None and not isinstance(state, str):
            state = ",".join(state)
        params = {"workflow": workflow, "state": state, "limit": limit, "offset": offset}
        items = _items(await self._request("GET", "/executions", params=params), "executions")
        return _parsed(items, list[ExecutionListItem], "the execution list")

    async def follow(self, execution_id: str, from_offset: int = 0) -> AsyncIterator[Any]:
        """Yield an execution's events (``Event`` models) over the WebSocket stream: first the ones
        after the first ``from_offset``, then live ones, until the execution ends (a
        ``WORKFLOW_COMPLETED/FAILED/CANCELLED`` event) or the server closes the stream."""
        if from_offset < 0:
            raise ValueError(f"from_offset must be 0 or more, not {from_offset}")
        path = EVENTS_WS_PATH.format(execution_id=_name(execution_id))
        target = f"{path}?{urlencode({EVENTS_FROM_PARAM: from_offset})}"
        headers = [(b"user-agent", b"flux-client")]
        if self.token:
            headers.append((b"authorization", f"Bearer {self.token}".encode()))
        ws = _WebSocket(self, target, headers)
        try:
            await ws.connect()
            while True:
                message = await ws.receive()
                if message is None:
                    return
                if isinstance(message, dict) and "error" in message and "type" not in message:
                    raise FluxClientError(
                        None, str(message["error"]), str(message.get("detail", ""))
                    )
                message = _message(message)
                yield message
                if isinstance(message, dict) and message.get("type") in TERMINAL_EVENTS:
                    return
        finally:
            await ws.aclose()

    # ------------------------------------------------------------------ task logs

    async def logs(
        self,
        execution_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        """A page of an execution's task log lines: ``{"execution_id", "state", "lines",
        "after"}``, each line ``{"seq", "call_id", "attempt", "level", "logger", "time",
        "message"}``; pass ``after`` back for the next page."""
        params = {"after": after or None, "limit": limit, "call": call_id}
        return await self._request(
            "GET", f"/executions/{_name(execution_id)}/logs", params=params
        )

    async def follow_logs(
        self, execution_id: str, *, after: int = 0, call_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield an execution's task log lines (after seq ``after``) as they are stored,
        until the execution ends or pauses and its last lines were sent (the server's
        ``end`` event), or the server closes the stream."""
        path = f"/executions/{_name(execution_id)}/logs"
        params = {"follow": "true", "after": after or None, "call": call_id}
        params = {k: v for k, v in params.items() if v is not None}
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self.http.stream(
                "GET",
                path,
                params=params,
                headers={"Accept": "text/event-stream"},
                timeout=timeout,
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    raise _error_from(response.status_code, body, response.reason_phrase)
                parser = _SSEParser()
                async for raw in response.aiter_lines():
                    event = parser.feed(raw)
                    if event is None:
                        continue
                    value = _sse_data(*event)
                    if event[0] == "end":
                        return
                    if event[0] == "log":
                        yield value
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # ------------------------------------------------------------------ operations

    async def workers(self) -> list[Worker]:
        """The connected workers, with their leases and last heartbeat."""
        items = _items(await self._request("GET", "/workers"), "workers")
        return _parsed(items, list[Worker], "the worker list")

    async def health(self) -> Health:
        """The server is up, with its dispatcher's figures."""
        return _parsed(await self._request("GET", "/health"), Health, "the health answer")

    # ------------------------------------------------------------------ secrets

    async def secrets_list(self) -> list[str]:
        """Secret names (never values)."""
        items = _items(await self._request("GET", "/admin/secrets"), "secrets", "names")
        return [item["name"] if isinstance(item, dict) else str(item) for item in items]

    async def secrets_set(self, name: str, value: Any) -> None:
        """Set (or replace) a secret."""
        await self._request("POST", "/admin/secrets", body={"name": name, "value": value})

    async def secrets_get(self, name: str) -> Any:
        """A secret's value."""
        data = await self._request("GET", f"/admin/secrets/{_name(name)}")
        return data["value"] if isinstance(data, dict) and "value" in data else data

    async def secrets_remove(self, name: str) -> None:
        """Remove a secret (a 404 error when it is not set)."""
        await self._request("DELETE", f"/admin/secrets/{_name(name)}")

    # -- schedules (docs/schedules.md) --------------------------------------------------------

    async def schedule_create(
        self,
        name: str,
        workflow: str,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        every: str | int | None = None,
        input: Any = None,
        overlap: str = "skip",
        catch_up: str = "none",
        paused: bool = False,
    ) -> dict[str, Any]:
        """Create a schedule of a workflow registered on the server; returns it."""
        body = {
            "name": name,
            "workflow": workflow,
            "cron": cron,
            "timezone": timezone,
            "every": every,
            "input": input,
            "overlap": overlap,
            "catch_up": catch_up,
            "paused": paused,
        }
        return await self._request(
            "POST", "/schedules", body={k: v for k, v in body.items() if v is not None}
        )

    async def schedules_list(self) -> list[dict[str, Any]]:
        return await self._request("GET", "/schedules")

    async def schedule_show(
        self, name: str, *, upcoming: int = 5, recent: int = 20
    ) -> dict[str, Any]:
        """``{"schedule", "upcoming", "recent"}``: the schedule, its next due times and its
        latest decisions (with the states of the executions they started)."""
        return await self._request(
            "GET",
            f"/schedules/{_name(name)}",
            params={"upcoming": upcoming, "recent": recent},
        )

    async def schedule_pause(self, name: str) -> dict[str, Any]:
        return await self._request("POST", f"/schedules/{_name(name)}/pause")

    async def schedule_resume(self, name: str) -> dict[str, Any]:
        return await self._request("POST", f"/schedules/{_name(name)}/resume")

    async def schedule_delete(self, name: str) -> None:
        await self._request("DELETE", f"/schedules/{_name(name)}")

    async def schedule_trigger(self, name: str) -> str:
        """Start one execution now; returns its id."""
        data = await self._request("POST", f"/schedules/{_name(name)}/trigger")
        return str(data["execution_id"])


# ---------------------------------------------------------------------------- Server-Sent Events


class _SSEParser:
    """The event-stream format, line by line: ``feed`` returns ``(event, data)`` at each blank
    line that ends an event with data (comments, ``id`` and ``retry`` are ignored)."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data:
                self.event = ""
                return None
            out = (self.event or "message", "\n".join(self.data))
            self.event, self.data = "", []
            return out
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        return None


def _sse_data(event: str, data: str) -> Any:
    try:
        value = json.loads(data)
    except ValueError:
        raise FluxClientError(
            None, "bad-response", f"an event of the stream is not JSON: {_short(data)}"
        ) from None
    if event == "error" or (
        isinstance(value, dict) and "error" in value and "detail" in value and "type" not in value
    ):
        if isinstance(value, dict):
            raise FluxClientError(
                value.get("status"), str(value.get("error", "error")), str(value.get("detail"))
            )
        raise FluxClientError(None, "error", _short(value))
    return value


# ---------------------------------------------------------------------------- WebSocket


class _WebSocket:
    """A minimal WebSocket client (wsproto on an anyio stream) that only receives JSON text
    messages and answers pings; nothing runs in the background."""

    def __init__(self, client: FluxClient, target: str, headers: list[tuple[bytes, bytes]]):
        from wsproto import ConnectionType, WSConnection

        self.client = client
        self.target = target
        self.headers = headers
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.stream: anyio.abc.ByteStream | None = None
        self.pending: list[Any] = []
        self.parts: list[str] = []
        self.size = 0
        self.closed: tuple[int, str] | None = None
        self.backlog: list[Any] = []

    async def connect(self) -> None:
        from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

        parts = urlsplit(self.client.server_url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        prefix = parts.path.rstrip("/")
        try:
            with anyio.fail_after(self.client.timeout):
                self.stream = await anyio.connect_tcp(
                    host,
                    port,
                    tls=tls,
                    ssl_context=ssl.create_default_context() if tls else None,
                    tls_hostname=host if tls else None,
                )
                await self._send(
                    Request(
                        host=parts.netloc.rpartition("@")[2],
                        target=prefix + self.target,
                        extra_headers=self.headers,
                    )
                )
                reject: RejectConnection | None = None
                body = b""
                while True:
                    events = await self._events()
                    for i, event in enumerate(events):
                        if isinstance(event, AcceptConnection):
                            self.backlog = events[i + 1 :]  # messages in the same read
                            return
                        if isinstance(event, RejectConnection):
                            reject = event
                            if not event.has_body:
                                raise _error_from(event.status_code, b"")
                        elif isinstance(event, RejectData):
                            body += event.data
                            if event.body_finished and reject is not None:
                                raise _error_from(reject.status_code, body)
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise self.client._unreachable(
                exc
                if not isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError)
                else OSError("the server closed the connection during the WebSocket handshake")
            ) from exc

    async def receive(self) -> Any:
        """The next JSON message, or ``None`` once the server closed the stream normally."""
        from wsproto.events import BytesMessage, CloseConnection, Message, Ping

        while not self.pending:
            if self.closed is not None:
                code, reason = self.closed
                if code in (1000, 1001):
                    return None
                raise _close_error(code, reason)
            try:
                events = await self._events()
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                reason = str(exc) or "the server closed the connection"
                raise self.client._unreachable(
                    RuntimeError(f"the event stream broke: {reason}")
                ) from exc
            for event in events:
                if isinstance(event, Message):
                    data = event.data
                    if isinstance(event, BytesMessage):
                        data = bytes(data).decode("utf-8", "replace")
                    self.size += len(data)
                    if self.size > MAX_MESSAGE_SIZE:
                        raise FluxClientError(
                            None, "too-large", f"a stream message exceeds {MAX_MESSAGE_SIZE} bytes"
                        )
                    self.parts.append(data)
                    if event.message_finished:
                        text, self.parts, self.size = "".join(self.parts), [], 0
                        try:
                            self.pending.append(json.loads(text))
                        except ValueError:
                            raise FluxClientError(
                                None,
                                "bad-response",
                                f"a stream message is not JSON: {_short(text)}",
                            ) from None
                elif isinstance(event, Ping):
                    await self._send(event.response())
                elif isinstance(event, CloseConnection):
                    await self._close_reply(event)
        return self.pending.pop(0)

    async def _close_reply(self, event: Any) -> None:
        from wsproto.connection import ConnectionState

        self.closed = (event.code, event.reason or "")
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            try:
                await self._send(event.response())
            except (OSError, anyio.BrokenResourceError):
                pass

    async def _events(self) -> list[Any]:
        from wsproto.connection import ConnectionState

        if self.backlog:
            events, self.backlog = self.backlog, []
            return events
        events = list(self.ws.events())
        if events:
            return events
        assert self.stream is not None
        if self.ws.state is ConnectionState.CLOSED:
            raise anyio.EndOfStream
        data = await self.stream.receive(65536)
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def _send(self, event: Any) -> None:
        assert self.stream is not None
        await self.stream.send(self.ws.send(event))

    async def aclose(self) -> None:
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        if self.stream is None:
            return
        stream, self.stream = self.stream, None
        with anyio.move_on_after(1, shield=True):
            try:
                if self.ws.state is ConnectionState.OPEN:
                    await stream.send(self.ws.send(CloseConnection(code=1000)))
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            await stream.aclose()


def _close_error(code: int, reason: str) -> FluxClientError:
    """The error of a WebSocket closed abnormally; 4000 + HTTP status maps back to that status."""
    status = code - 4000 if 4400 <= code < 4600 else None
    try:
        data = json.loads(reason)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return FluxClientError(status, str(data["error"]), str(data.get("detail", "")))
    return FluxClientError(status, f"closed-{code}", reason or "the server closed the stream")


# ---------------------------------------------------------------------------- presenting


def _clock(value: Any) -> str:
    if isinstance(value, str) and "T" in value:
        return value.split("T", 1)[1][:8]
    return "--:--:--"


def event_line(message: Any, width: int = 160) -> str:
    """One readable line for a streamed message: an event (``id``, time, type, call id,
    value) or an execution summary (``execution ID: STATE``)."""
    if isinstance(message, dict) and "type" in message and "source_id" in message:
        value = message.get("value")
        shown = value if isinstance(value, str) and value.isprintable() else json.dumps(value)
        line = (
            f"{message.get('id', ''):>4}  {_clock(message.get('time'))}  "
            f"{message['type']:24}  {str(message['source_id']):28}  "
        )
        room = max(width - len(line), 20)
        return line + (shown if len(shown) <= room else shown[: room - 3] + "...")
    if isinstance(message, dict) and "execution_id" in message and "state" in message:
        return f"execution {message['execution_id']}: {message['state']}"
    return _short(message, width)


@attrs.define
class Progress:
    """What a stream of messages says about one execution so far: feed it every message of
    :meth:`FluxClient.stream` or :meth:`FluxClient.follow`, then read ``summary``.

    Summaries (``{execution_id, state, ...}``) are taken as they are; workflow events
    (``WORKFLOW_STARTED`` ... ``WORKFLOW_COMPLETED``) update the state, the name and, at the
    end, the output (the completed value or the error)."""

    execution_id: str | None = None
    workflow_name: str | None = None
    input: Any = None
    output: Any = None
    state: str | None = None
    events: int = 0

    def update(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if message.get("execution_id"):
            self.execution_id = str(message["execution_id"])
        if "type" in message and "source_id" in message:
            self.events += 1
            kind = message["type"]
            if kind in STATE_EVENTS:
                self.state = STATE_EVENTS[kind]
                self.workflow_name = message.get("name") or message.get("source_id")
                if kind == "WORKFLOW_STARTED" and self.events == 1:
                    self.input = message.get("value")
                if kind in TERMINAL_EVENTS:
                    self.output = message.get("value")
        elif "state" in message:
            self.state = str(message["state"])
            for key in ("workflow_name", "input", "output"):
                if key in message:
                    setattr(self, key, message[key])

    @property
    def settled(self) -> bool:
        """Completed, failed, cancelled or paused."""
        return self.state in SETTLED_STATES

    @property
    def summary(self) -> dict[str, Any]:
        """The API's summary shape, from what the stream said."""
        return {
            "workflow_name": self.workflow_name,
            "execution_id": self.execution_id,
            "input": self.input,
            "output": self.output,
            "state": self.state,
        }
