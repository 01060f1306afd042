"""The console's routes: a Quart blueprint mounted at ``/ui`` that renders the store's records
with Jinja2 templates (``templates/console``) and acts through the server's dispatcher, exactly
as the HTTP API does. Pages are whole documents; the few fragments the script polls for live
updates (``?partial=1``) are the same templates' blocks."""

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
from flux.net.dispatch import ExecutionConflictError
from flux.runtime import codec
from flux.runtime.errors import (
    ExecutionNotFoundError,
    SerializationError,
    WorkflowNotFoundError,
)
from flux.runtime.events import ExecutionState
from flux.runtime.secrets import MAX_VALUE as MAX_SECRET_VALUE
from flux.runtime.secrets import check_name

PAGE_SIZE = 50
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
    cfg = server.server_settings
    rules = a.ConsoleAuth(cfg.api_token)

    # ------------------------------------------------------------------ guard and headers

    @bp.before_request
    async def _guard() -> Response | None:
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
        open_paths = (url_for("console.login"), url_for("console.static", filename="x")[:-1])
        if not g.logged_in and not request.path.startswith(open_paths):
            if request.method != "GET" or request.args.get("partial"):
                raise ConsoleError(401, "Log in to the console first.")
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return None

    @bp.after_request
    async def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = a.CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.path.startswith(url_for("console.static", filename="x")[:-1]):
            response.headers["Cache-Control"] = "public, max-age=300"
        new = getattr(g, "new_session", None)
        if new:
            _cookie(response, a.SESSION_COOKIE, new)
        return response

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

    @bp.errorhandler(ConsoleError)
    async def _refused(exc: ConsoleError) -> tuple[str, int]:
        return await page("error.html", title="Error", message=exc.message), exc.status

    async def page(template: str, **context: Any) -> str:
        context.setdefault("title", "Flux")
        return await render_template(
            f"console/{template}",
            csrf=getattr(g, "csrf", ""),
            logged_in=getattr(g, "logged_in", False),
            needs_login=rules.needs_login,
            notice=request.args.get("notice", ""),
            v=v,
            **context,
        )

    def back(endpoint: str, notice: str = "", **values: Any) -> Response:
        if notice:
            values["notice"] = notice
        return redirect(url_for(endpoint, **values), 303)

    # ------------------------------------------------------------------ login

    @bp.route("/login", methods=["GET", "POST"])
    async def login() -> Any:
        nxt = request.args.get("next") or url_for("console.executions")
        if not nxt.startswith("/ui") or nxt.startswith("//"):
            nxt = url_for("console.executions")
        if not rules.needs_login:
            return redirect(nxt, 303)
        if request.method == "POST":
            form = await request.form
            if rules.check_login(form.get("token")):
                response = redirect(nxt, 303)
                _cookie(response, a.TOKEN_COOKIE, rules.api_token or "", max_age=30 * 86400)
                return response
            body = await page("login.html", title="Log in", next=nxt, failed=True)
            return body, 401
        return await page("login.html", title="Log in", next=nxt, failed=False)

    @bp.post("/logout")
    async def logout() -> Response:
        response = redirect(url_for("console.login"), 303)
        response.delete_cookie(a.TOKEN_COOKIE, path=a.COOKIE_PATH)
        return response

    # ------------------------------------------------------------------ executions

    @bp.get("")
    @bp.get("/")
    async def home() -> Response:
        return redirect(url_for("console.executions"), 302)

    @bp.get("/executions")
    async def executions() -> Any:
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
            exact = await server.store.get_execution(query)
            if exact is not None:
                return redirect(url_for("console.execution", execution_id=query), 303)
        store = server.store
        offset = (page_no - 1) * PAGE_SIZE
        if query or since is not None or until is not None:
            every = await store.list_executions(
                workflow_name=workflow, state=state, limit=SCAN_LIMIT
            )
            chosen = [
                r
                for r in every
                if (not query or r.execution_id.startswith(query))
                and (since is None or r.created_at >= since)
                and (until is None or r.created_at <= until)
            ]
            total, records = len(chosen), chosen[offset : offset + PAGE_SIZE]
        else:
            records = await store.list_executions(
                workflow_name=workflow, state=state, limit=PAGE_SIZE, offset=offset
            )
            total = await store.count_executions(workflow_name=workflow, state=state)
        counts = {s: await store.count_executions(workflow_name=workflow, state=s) for s in _STATES}
        filters = {
            k: args.get(k, "") for k in ("q", "workflow", "state", "since", "until") if args.get(k)
        }
        context = dict(
            title="Executions",
            records=records,
            total=total,
            page_no=page_no,
            pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
            offset=offset,
            counts=counts,
            filters=filters,
            query_for=lambda **kw: "?" + urlencode({**filters, **kw}),
            workflows=[w.name for w in await store.list_workflows()],
            states=_STATES,
            live=any(r.state.value not in _SETTLED for r in records) or page_no == 1,
            live_url=url_for("console.executions") + "?" + urlencode({**filters, "partial": 1,
                                                                      "page": page_no}),
        )
        template = "_executions.html" if args.get("partial") else "executions.html"
        return await page(template, **context)

    async def one_execution(execution_id: str) -> Any:
        rec = await server.store.get_execution(execution_id)
        if rec is None:
            raise ConsoleError(404, f"No execution {execution_id!r}.")
        return rec

    async def execution_context(execution_id: str) -> dict[str, Any]:
        rec = await one_execution(execution_id)
        events = await server.store.load_events(execution_id)
        timeline = await trio.to_thread.run_sync(v.build_timeline, events)
        error = None
        output = v.decode(rec.output)
        if rec.state is ExecutionState.FAILED:
            failed = [e for e in events if e.type == "WORKFLOW_FAILED"]
            error = v.as_error(v.decode(failed[-1].value) if failed else output) or v.as_error(
                output
            )
        pause = None
        if rec.state is ExecutionState.PAUSED:
            paused = [e for e in events if e.type == "WORKFLOW_PAUSED"]
            pause = v.decode(paused[-1].value) if paused else None
        end = rec.updated_at if rec.state.value in _SETTLED else time.time()
        return dict(
            rec=rec,
            input=v.decode(rec.input),
            output=output,
            error=error,
            pause=pause,
            events=events,
            timeline=timeline,
            took=v.duration(end - rec.created_at),
            settled=rec.state.value in _SETTLED,
            live_url=url_for("console.execution_live", execution_id=execution_id),
        )

    @bp.get("/executions/<execution_id>")
    async def execution(execution_id: str) -> Any:
        context = await execution_context(execution_id)
        rec, events = context["rec"], context["events"]
        pages = max((len(events) + EVENTS_PAGE - 1) // EVENTS_PAGE, 1)
        try:
            page_no = min(max(int(request.args.get("events") or 1), 1), pages)
        except ValueError:
            raise ConsoleError(400, "events must be a page number") from None
        shown = events[(page_no - 1) * EVENTS_PAGE : page_no * EVENTS_PAGE]
        rows = [
            {"e": e, "value": v.decode(e.value) if e.value is not None else None} for e in shown
        ]
        parent = await server.store.get_execution(rec.parent_id) if rec.parent_id else None
        children = await server.store.list_executions(parent_id=execution_id, limit=200)
        return await page(
            "execution.html",
            title=f"Execution {execution_id}",
            event_rows=rows,
            events_page=page_no,
            events_pages=pages,
            parent=parent,
            children=children,
            **context,
        )

    @bp.get("/executions/<execution_id>/live")
    async def execution_live(execution_id: str) -> Any:
        return await page("_execution_live.html", **await execution_context(execution_id))

    def encoded(raw: str, what: str) -> bytes:
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
        if len(data) > cfg.max_value_size:
            raise ConsoleError(
                413, f"{what} is {len(data)} bytes encoded, over the limit of {cfg.max_value_size}"
            )
        return data

    async def act(fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except ExecutionNotFoundError as exc:
            raise ConsoleError(404, str(exc)) from None
        except WorkflowNotFoundError as exc:
            raise ConsoleError(404, str(exc)) from None
        except ExecutionConflictError as exc:
            raise ConsoleError(409, str(exc)) from None

    @bp.post("/executions/<execution_id>/resume")
    async def resume(execution_id: str) -> Response:
        await one_execution(execution_id)
        form = await request.form
        data = encoded(form.get("value", ""), "The resume value")
        await act(server.dispatcher.resume, execution_id, data)
        return back("console.execution", "Resumed.", execution_id=execution_id)

    @bp.post("/executions/<execution_id>/cancel")
    async def cancel(execution_id: str) -> Response:
        await one_execution(execution_id)
        rec = await act(server.dispatcher.cancel, execution_id)
        note = "Cancelled." if rec.state is ExecutionState.CANCELLED else "Cancel requested."
        return back("console.execution", note, execution_id=execution_id)

    # ------------------------------------------------------------------ workflows

    @bp.get("/workflows")
    async def workflows() -> Any:
        records = await server.store.list_workflows()
        return await page("workflows.html", title="Workflows", records=records)

    @bp.get("/workflows/<name>")
    async def workflow(name: str) -> Any:
        versions = await server.store.list_workflow_versions(name)
        if not versions:
            raise ConsoleError(404, f"No workflow {name!r}.")
        try:
            wanted = int(request.args.get("version") or versions[-1].version)
        except ValueError:
            raise ConsoleError(400, "version must be a number") from None
        record = await server.store.get_workflow(name, wanted)
        if record is None:
            raise ConsoleError(404, f"Workflow {name!r} has no version {wanted}.")
        recent = await server.store.list_executions(workflow_name=name, limit=10)
        lines = await trio.to_thread.run_sync(v.highlight, record.source)
        return await page(
            "workflow.html",
            title=f"Workflow {name}",
            record=record,
            versions=versions,
            lines=lines,
            recent=recent,
        )

    @bp.post("/workflows/<name>/run")
    async def run(name: str) -> Response:
        form = await request.form
        mode = form.get("mode", "async")
        if mode not in ("sync", "async"):
            raise ConsoleError(400, f"Unknown run mode {mode!r}: sync or async.")
        data = encoded(form.get("input", ""), "The input")
        raw_version = form.get("version") or ""
        if raw_version and not raw_version.isdigit():
            raise ConsoleError(400, f"version must be a number, not {raw_version!r}")
        version = int(raw_version) if raw_version else None
        if version is not None and await server.store.get_workflow(name, version) is None:
            raise ConsoleError(404, f"Workflow {name!r} has no version {version}.")
        rec = await act(functools.partial(server.dispatcher.start, version=version), name, data)
        eid = rec.execution_id
        if mode == "sync":
            event = server.dispatcher.watch(eid)
            try:
                current = await server.store.get_execution(eid)
                if current is not None and current.state.value not in (*_SETTLED, "PAUSED"):
                    with trio.move_on_after(cfg.sync_timeout):
                        await event.wait()
            finally:
                server.dispatcher.unwatch(eid, event)
        return back("console.execution", "Started.", execution_id=eid)

    # ------------------------------------------------------------------ workers and secrets

    @bp.get("/workers")
    async def workers() -> Any:
        info = server.dispatcher.workers_info()
        return await page(
            "workers.html",
            title="Workers",
            workers=info,
            now=time.time(),  # the dispatcher stamps connections and heartbeats in wall time
            stats=server.dispatcher.statistics(),
            live_url=url_for("console.workers") + "?partial=1",
            partial=bool(request.args.get("partial")),
        )

    secrets = server.dispatcher.secrets

    @bp.get("/secrets")
    async def secrets_page() -> Any:
        names = sorted(await secrets.names())
        return await page("secrets.html", title="Secrets", names=names)

    @bp.post("/secrets")
    async def secrets_set() -> Response:
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
            await secrets.set(name, value)
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        return back("console.secrets_page", f"Secret {name} set.")

    @bp.post("/secrets/remove")
    async def secrets_remove() -> Response:
        form = await request.form
        try:
            name = check_name(form.get("name", ""))
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        if not await secrets.remove(name):
            raise ConsoleError(404, f"Secret {name!r} is not set.")
        return back("console.secrets_page", f"Secret {name} removed.")

    return bp
