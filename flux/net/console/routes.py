"""The console's routes: a Quart blueprint mounted at ``/ui`` that renders the store's records
with Jinja2 templates (``templates/console``) and acts through the server's dispatcher, exactly
as the HTTP API does. Pages are whole documents; the fragments the script polls for live
updates (``?partial=1``, ``/live``) are rendered by the same templates."""

from __future__ import annotations

import functools
import json
import time
from typing import Any
from urllib.parse import urlencode

import trio
from quart import Blueprint, Response, g, redirect, render_template, request, url_for

from flux.net.console import auth as a
from flux.net.console import views as v
from flux.net.console.dag import build_dags
from flux.net.console.logs import logs_context
from flux.net.dispatch import ExecutionConflictError
from flux.net.models import (
    ErrorValue,
    Event,
    ExecutionListItem,
    Health,
    Worker,
    Workflow,
    WorkflowDetail,
)
from flux.runtime import codec
from flux.runtime.errors import (
    ExecutionNotFoundError,
    SerializationError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord
from flux.runtime.secrets import MAX_VALUE as MAX_SECRET_VALUE
from flux.runtime.secrets import SecretKeyError, check_name

#: Executions a page of the list shows.
PAGE_SIZE = 50
#: Events a page of an execution's events table shows.
EVENTS_PAGE = 100
#: Executions a filtered search (id prefix, time range) looks through at most.
SCAN_LIMIT = 100_000
_STATES = list(ExecutionState.__members__)
_SETTLED = {"COMPLETED", "FAILED", "CANCELLED"}


class ConsoleError(Exception):
    """A request the console refuses, shown as a page with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def console_blueprint(server: Any) -> Blueprint:
    """The console for ``server`` (a :class:`flux.net.server.FluxServer`)."""
    bp = Blueprint(
        "console",
        __name__,
        url_prefix="/ui",
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    c = Console(server)
    bp.before_request(c.guard)
    bp.after_request(c.headers)
    bp.register_error_handler(ConsoleError, c.refused)
    routes: list[tuple[str, Any, list[str]]] = [
        ("/login", c.login, ["GET", "POST"]),
        ("/logout", c.logout, ["POST"]),
        ("", c.home, ["GET"]),
        ("/", c.home, ["GET"]),
        ("/executions", c.executions, ["GET"]),
        ("/executions/<execution_id>", c.execution, ["GET"]),
        ("/executions/<execution_id>/live", c.execution_live, ["GET"]),
        ("/executions/<execution_id>/logs", c.execution_logs, ["GET"]),
        ("/executions/<execution_id>/resume", c.resume, ["POST"]),
        ("/executions/<execution_id>/cancel", c.cancel, ["POST"]),
        ("/executions/<execution_id>/retry", c.retry, ["POST"]),
        ("/workflows", c.workflows, ["GET"]),
        ("/workflows/<name>", c.workflow, ["GET"]),
        ("/workflows/<name>/run", c.run, ["POST"]),
        ("/workers", c.workers, ["GET"]),
        ("/secrets", c.secrets_page, ["GET"]),
        ("/secrets", c.secrets_set, ["POST"]),
        ("/secrets/remove", c.secrets_remove, ["POST"]),
    ]
    for rule, view, methods in routes:
        endpoint = "home_slash" if rule == "/" else view.__name__
        bp.add_url_rule(rule, endpoint, view, methods=methods)
    return bp


def _static_prefix() -> str:
    return url_for("console.static", filename="x")[:-1]


class Console:
    """The console's request handlers for one server."""

    def __init__(self, server: Any):
        self.server = server
        self.store = server.store
        self.dispatcher = server.dispatcher
        self.cfg = server.server_settings
        self.rules = a.ConsoleAuth(self.cfg.api_token)

    # ------------------------------------------------------------------ guard and headers

    async def guard(self) -> Response | None:
        """Loopback rule, session and CSRF token, login: before every console request."""
        rules = self.rules
        if not rules.needs_login and not (
            a.loopback_peer(request.remote_addr) and a.loopback_host(request.headers.get("Host"))
        ):
            raise ConsoleError(403, "Without an API token the console serves this machine only.")
        session = request.cookies.get(a.SESSION_COOKIE)
        g.new_session = None
        if not session or len(session) > 64:
            session = g.new_session = rules.new_session()
        g.csrf = rules.csrf_token(session)
        g.logged_in = rules.logged_in(request.cookies.get(a.TOKEN_COOKIE))
        if request.method == "POST":
            form = await request.form
            if not a.same_origin(request.headers.get("Origin"), request.headers.get("Host")):
                raise ConsoleError(403, "This form was sent from another site: refused.")
            if not rules.csrf_ok(request.cookies.get(a.SESSION_COOKIE), form.get("csrf")):
                raise ConsoleError(
                    403, "The form's security token is missing or stale: reload the page and retry."
                )
        open_paths = (url_for("console.login"), _static_prefix())
        if not g.logged_in and not request.path.startswith(open_paths):
            if request.method != "GET" or request.args.get("partial"):
                raise ConsoleError(401, "Log in to the console first.")
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return None

    async def headers(self, response: Response) -> Response:
        response.headers["Content-Security-Policy"] = a.CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.path.startswith(_static_prefix()):
            response.headers["Cache-Control"] = "public, max-age=300"
        new = getattr(g, "new_session", None)
        if new:
            self._cookie(response, a.SESSION_COOKIE, new)
        return response

    @staticmethod
    def _cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=a.COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
        )

    async def refused(self, exc: ConsoleError) -> tuple[str, int]:
        return await self.page("error.html", title="Error", message=exc.message), exc.status

    async def page(self, template: str, **context: Any) -> str:
        context.setdefault("title", "Flux")
        return await render_template(
            f"console/{template}",
            csrf=getattr(g, "csrf", ""),
            logged_in=getattr(g, "logged_in", False),
            needs_login=self.rules.needs_login,
            notice=request.args.get("notice", ""),
            v=v,
            **context,
        )

    @staticmethod
    def back(endpoint: str, notice: str = "", **values: Any) -> Response:
        if notice:
            values["notice"] = notice
        return redirect(url_for(endpoint, **values), 303)

    # ------------------------------------------------------------------ login

    async def login(self) -> Any:
        nxt = request.args.get("next") or url_for("console.executions")
        if not nxt.startswith("/ui") or nxt.startswith("//"):
            nxt = url_for("console.executions")
        if not self.rules.needs_login:
            return redirect(nxt, 303)
        if request.method == "POST":
            form = await request.form
            if self.rules.check_login(form.get("token")):
                response = redirect(nxt, 303)
                token = self.rules.api_token or ""
                self._cookie(response, a.TOKEN_COOKIE, token, max_age=30 * 86400)
                return response
            body = await self.page("login.html", title="Log in", next=nxt, failed=True)
            return body, 401
        return await self.page("login.html", title="Log in", next=nxt, failed=False)

    async def logout(self) -> Response:
        response = redirect(url_for("console.login"), 303)
        response.delete_cookie(a.TOKEN_COOKIE, path=a.COOKIE_PATH)
        return response

    # ------------------------------------------------------------------ executions

    async def home(self) -> Response:
        return redirect(url_for("console.executions"), 302)

    async def executions(self) -> Any:
        args = request.args
        query = (args.get("q") or "").strip()
        workflow = args.get("workflow") or None
        state = (args.get("state") or "").upper() or None
        if state and state not in _STATES:
            raise ConsoleError(400, f"Unknown state {state!r}: use one of {', '.join(_STATES)}.")
        try:
            since = v.parse_time(args.get("since"), "From")
            until = v.parse_time(args.get("until"), "To")
            page_no = max(int(args.get("page") or 1), 1)
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        if query and not args.get("partial"):
            if await self.store.get_execution(query) is not None:
                return redirect(url_for("console.execution", execution_id=query), 303)
        offset = (page_no - 1) * PAGE_SIZE
        if query or since is not None or until is not None:
            counts, total, records = await self._scan(workflow, state, query, since, until, offset)
        else:
            records = await self.store.list_executions(
                workflow_name=workflow, state=state, limit=PAGE_SIZE, offset=offset
            )
            total = await self.store.count_executions(workflow_name=workflow, state=state)
            counts = {
                s: await self.store.count_executions(workflow_name=workflow, state=s)
                for s in _STATES
            }
        filters = {
            k: args[k] for k in ("q", "workflow", "state", "since", "until") if args.get(k)
        }
        live_query = urlencode({**filters, "partial": 1, "page": page_no})
        return await self.page(
            "_executions.html" if args.get("partial") else "executions.html",
            title="Executions",
            records=[ExecutionListItem.of(r) for r in records],
            versions={r.execution_id: r.workflow_version for r in records},
            total=total,
            page_no=page_no,
            pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
            offset=offset,
            counts=counts,
            filters=filters,
            query_for=lambda **kw: "?" + urlencode({**filters, **kw}),
            workflows=[w.name for w in await self.store.list_workflows()],
            states=_STATES,
            live=page_no == 1 or any(r.state.value not in _SETTLED for r in records),
            live_url=f"{url_for('console.executions')}?{live_query}",
        )

    async def _scan(
        self,
        workflow: str | None,
        state: str | None,
        query: str,
        since: float | None,
        until: float | None,
        offset: int,
    ) -> tuple[dict[str, int], int, list[ExecutionRecord]]:
        """Filters the store cannot apply (id prefix, time range), over at most SCAN_LIMIT
        executions: the counts by state of the matches, how many are in ``state``, the page."""
        every = await self.store.list_executions(workflow_name=workflow, limit=SCAN_LIMIT)
        matching = [
            r
            for r in every
            if (not query or r.execution_id.startswith(query))
            and (since is None or r.created_at >= since)
            and (until is None or r.created_at <= until)
        ]
        counts = dict.fromkeys(_STATES, 0)
        for r in matching:
            counts[r.state.value] += 1
        chosen = [r for r in matching if state is None or r.state.value == state]
        return counts, len(chosen), chosen[offset : offset + PAGE_SIZE]

    async def _one(self, execution_id: str) -> ExecutionRecord:
        rec = await self.store.get_execution(execution_id)
        if rec is None:
            raise ConsoleError(404, f"No execution {execution_id!r}.")
        return rec

    async def _execution_context(self, execution_id: str) -> dict[str, Any]:
        """What the execution page's live part shows."""
        rec = await self._one(execution_id)
        events = await self.store.load_events(execution_id)
        timeline = await trio.to_thread.run_sync(v.build_timeline, events)
        execution = ExecutionListItem.of(rec)  # the facts GET /executions shows
        error = None
        if rec.state is ExecutionState.FAILED:
            failed = [e for e in events if e.type == "WORKFLOW_FAILED"]
            error = (ErrorValue.of(Event.of(failed[-1]).value) if failed else None) or (
                ErrorValue.of(execution.output)
            )
        pause = None
        if rec.state is ExecutionState.PAUSED:
            paused = [e for e in events if e.type == "WORKFLOW_PAUSED"]
            pause = Event.of(paused[-1]).value if paused else None
        settled = rec.state.value in _SETTLED
        end = rec.updated_at if settled else time.time()
        dags = await trio.to_thread.run_sync(build_dags, events, settled)
        return dict(
            dags=dags,
            rec=rec,  # what only the console shows: version, lease owner, cancel requested
            execution=execution,
            input=execution.input,
            output=execution.output,
            error=error,
            pause=pause,
            events=events,
            timeline=timeline,
            took=v.duration(end - rec.created_at),
            settled=settled,
            live_url=url_for("console.execution_live", execution_id=execution_id),
        )

    async def execution(self, execution_id: str) -> Any:
        context = await self._execution_context(execution_id)
        rec, events = context["rec"], context["events"]
        pages = max((len(events) + EVENTS_PAGE - 1) // EVENTS_PAGE, 1)
        try:
            page_no = min(max(int(request.args.get("events") or 1), 1), pages)
        except ValueError:
            raise ConsoleError(400, "events must be a page number") from None
        shown = events[(page_no - 1) * EVENTS_PAGE : page_no * EVENTS_PAGE]
        rows = [Event.of(e) for e in shown]
        parent = await self.store.get_execution(rec.parent_id) if rec.parent_id else None
        children = await self.store.list_executions(parent_id=execution_id, limit=200)
        retried_by = await self.store.retries_of(execution_id)
        context["logs"] = await logs_context(self.store, rec)
        return await self.page(
            "execution.html",
            title=f"Execution {execution_id}",
            event_rows=rows,
            events_page=page_no,
            events_pages=pages,
            parent=None if parent is None else ExecutionListItem.of(parent),
            children=[ExecutionListItem.of(c) for c in children],
            retried_by=retried_by,
            **context,
        )

    async def execution_live(self, execution_id: str) -> Any:
        context = await self._execution_context(execution_id)
        return await self.page("_execution_live.html", **context)

    async def execution_logs(self, execution_id: str) -> Any:
        rec = await self._one(execution_id)
        return await self.page("_logs_panel.html", logs=await logs_context(self.store, rec))

    def _encoded(self, raw: str, what: str) -> bytes:
        """A form's JSON text as the codec's bytes, within the server's value limit."""
        try:
            value = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise ConsoleError(400, f"{what} is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConsoleError(400, f"{what} is nested too deeply") from None
        try:
            data = codec.encode(value)
        except (SerializationError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ConsoleError(400, f"{what} cannot be stored: {exc}") from None
        limit = self.cfg.max_value_size
        if len(data) > limit:
            detail = f"{what} is {len(data)} bytes encoded, over the limit of {limit}"
            raise ConsoleError(413, detail)
        return data

    @staticmethod
    async def _act(fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except (ExecutionNotFoundError, WorkflowNotFoundError) as exc:
            raise ConsoleError(404, str(exc)) from None
        except ExecutionConflictError as exc:
            raise ConsoleError(409, str(exc)) from None

    async def resume(self, execution_id: str) -> Response:
        await self._one(execution_id)
        form = await request.form
        data = self._encoded(form.get("value", ""), "The resume value")
        await self._act(self.dispatcher.resume, execution_id, data)
        return self.back("console.execution", "Resumed.", execution_id=execution_id)

    async def cancel(self, execution_id: str) -> Response:
        await self._one(execution_id)
        rec = await self._act(self.dispatcher.cancel, execution_id)
        note = "Cancelled." if rec.state is ExecutionState.CANCELLED else "Cancel requested."
        return self.back("console.execution", note, execution_id=execution_id)

    async def retry(self, execution_id: str) -> Response:
        await self._one(execution_id)
        form = await request.form
        retry = functools.partial(self.dispatcher.retry, latest=form.get("latest") == "1")
        made = await self._act(retry, execution_id)
        note = f"Retry of {execution_id}."
        return self.back("console.execution", note, execution_id=made[0].execution_id)

    # ------------------------------------------------------------------ workflows

    async def workflows(self) -> Any:
        records = await self.store.list_workflows()
        workflows = [Workflow.of(r) for r in records]
        return await self.page("workflows.html", title="Workflows", records=workflows)

    async def workflow(self, name: str) -> Any:
        versions = await self.store.list_workflow_versions(name)
        if not versions:
            raise ConsoleError(404, f"No workflow {name!r}.")
        try:
            wanted = int(request.args.get("version") or versions[-1].version)
        except ValueError:
            raise ConsoleError(400, "version must be a number") from None
        record = await self.store.get_workflow(name, wanted)
        if record is None:
            raise ConsoleError(404, f"Workflow {name!r} has no version {wanted}.")
        recent = await self.store.list_executions(workflow_name=name, limit=10)
        lines = await trio.to_thread.run_sync(v.highlight, record.source)
        return await self.page(
            "workflow.html",
            title=f"Workflow {name}",
            record=WorkflowDetail.of(record, versions),  # the version shown, as the API has it
            lines=lines,
            recent=[ExecutionListItem.of(r) for r in recent],
        )

    async def run(self, name: str) -> Response:
        form = await request.form
        mode = form.get("mode", "async")
        if mode not in ("sync", "async"):
            raise ConsoleError(400, f"Unknown run mode {mode!r}: sync or async.")
        data = self._encoded(form.get("input", ""), "The input")
        raw_version = form.get("version") or ""
        if raw_version and not raw_version.isdigit():
            raise ConsoleError(400, f"version must be a number, not {raw_version!r}")
        version = int(raw_version) if raw_version else None
        if version is not None and await self.store.get_workflow(name, version) is None:
            raise ConsoleError(404, f"Workflow {name!r} has no version {version}.")
        start = functools.partial(self.dispatcher.start, version=version)
        rec = await self._act(start, name, data)
        if mode == "sync":
            await self._settle(rec.execution_id)
        return self.back("console.execution", "Started.", execution_id=rec.execution_id)

    async def _settle(self, execution_id: str) -> None:
        """Wait until the execution completes, fails, is cancelled or pauses (sync_timeout)."""
        event = self.dispatcher.watch(execution_id)
        try:
            current = await self.store.get_execution(execution_id)
            if current is not None and current.state.value not in (*_SETTLED, "PAUSED"):
                with trio.move_on_after(self.cfg.sync_timeout):
                    await event.wait()
        finally:
            self.dispatcher.unwatch(execution_id, event)

    # ------------------------------------------------------------------ workers and secrets

    async def workers(self) -> Any:
        return await self.page(
            "workers.html",
            title="Workers",
            workers=[Worker.of(w) for w in self.dispatcher.workers_info()],
            now=time.time(),  # the dispatcher stamps connections and heartbeats in wall time
            health=Health.of(self.dispatcher.statistics()),
            live_url=url_for("console.workers") + "?partial=1",
            partial=bool(request.args.get("partial")),
        )

    async def secrets_page(self) -> Any:
        names = sorted(await self.dispatcher.secrets.names())
        return await self.page("secrets.html", title="Secrets", names=names)

    async def secrets_set(self) -> Response:
        form = await request.form
        try:
            name = check_name(form.get("name", "").strip())
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        value = form.get("value", "")
        if not value:
            raise ConsoleError(400, "A secret needs a value.")
        if len(value.encode("utf-8")) > MAX_SECRET_VALUE:
            raise ConsoleError(413, f"A secret's value is limited to {MAX_SECRET_VALUE} bytes.")
        try:
            await self.dispatcher.secrets.set(name, value)
        except SecretKeyError as exc:
            raise ConsoleError(503, str(exc)) from None
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        return self.back("console.secrets_page", f"Secret {name} set.")

    async def secrets_remove(self) -> Response:
        form = await request.form
        try:
            name = check_name(form.get("name", ""))
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        if not await self.dispatcher.secrets.remove(name):
            raise ConsoleError(404, f"Secret {name!r} is not set.")
        return self.back("console.secrets_page", f"Secret {name} removed.")
