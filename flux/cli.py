"""The ``flux`` command line (asyncclick on trio). Thin: parsing and printing only."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncclick as click

from .runtime.context import ExecutionContext, to_jsonable
from .runtime.errors import FluxError
from .runtime.events import ExecutionState
from .runtime.settings import Settings
from .runtime.workflow import MISSING


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return MISSING
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"{what} is not valid JSON ({e.msg} at column {e.colno}): {text!r}", 2)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), indent=None)


def local_store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--db`` and ``--durability`` for commands that open the local store."""

    @click.option("--db", "db", envvar="FLUX_DB", help="SQLite file (default: .flux/flux.db)")
    @click.option(
        "--durability",
        type=click.Choice(["full", "normal"]),
        envvar="FLUX_DURABILITY",
        help="full (fsync each commit, default) or normal",
    )
    @functools.wraps(func)
    async def wrapper(*args: Any, db: str | None, durability: str | None, **kwargs: Any) -> Any:
        try:
            settings = Settings.from_env(db_path=db, durability=durability)
        except ValueError as e:
            _fail(str(e), 2)
        return await func(*args, settings=settings, **kwargs)

    return wrapper


def flux_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a FluxError (or bad input) as one clear line and exit non-zero."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except BrokenPipeError:  # e.g. `flux executions list | head -1`
            sys.stderr.close()
            sys.exit(0)
        except (FluxError, ValueError, OSError) as e:
            _fail(f"{e}")

    return wrapper


@click.group()
@click.version_option(package_name="flux-core", prog_name="flux")
async def cli() -> None:
    """Flux: durable workflows on structured concurrency."""


# ---------------------------------------------------------------------------- run (embedded)


@cli.command("run")
@click.argument("target", metavar="FILE[:WORKFLOW]")
@click.argument("input_json", metavar="[INPUT_JSON]", required=False)
@click.option("--execution-id", help="resume (paused), recover (crashed) or show (finished)")
@local_store_options
@flux_errors
async def run_command(
    target: str, input_json: str | None, execution_id: str | None, settings: Settings
) -> None:
    """Run a workflow embedded (no server) and print its output.

    With --execution-id of a paused execution, INPUT_JSON is the value its pause returns.
    """
    from .runtime.engine import open_engine
    from .runtime.loader import load_workflow

    wf = load_workflow(target)
    value = _json_arg(input_json, "INPUT_JSON")
    async with open_engine(settings) as engine:
        if execution_id:
            ctx = await engine.run(wf, None, execution_id=execution_id, resume_value=value)
        else:
            ctx = await engine.run(wf, None if value is MISSING else value)
    _finish(ctx, resume_hint=f"flux run {target} --execution-id {ctx.execution_id} [VALUE]")


def _finish(ctx: ExecutionContext, resume_hint: str | None = None) -> None:
    click.echo(f"execution {ctx.execution_id}: {ctx.state.value}", err=True)
    if ctx.state is ExecutionState.COMPLETED:
        click.echo(_show(ctx.output))
        return
    if ctx.state is ExecutionState.FAILED:
        error = ctx.output
        if isinstance(error, BaseException):
            type_name = getattr(error, "type_name", None) or type(error).__name__
            message = getattr(error, "message", None)
            if not isinstance(message, str):
                message = str(error)
            _fail(f"workflow {ctx.workflow_name} failed: {type_name}: {message}")
        _fail(f"workflow {ctx.workflow_name} failed: {_show(error)}")
    if ctx.state is ExecutionState.PAUSED:
        if resume_hint:
            click.echo(f"paused; resume with: {resume_hint}", err=True)
        return
    if ctx.state is ExecutionState.CANCELLED:
        _fail(f"workflow {ctx.workflow_name} was cancelled", 2)


# ---------------------------------------------------------------------------- executions


@cli.group("executions")
async def executions() -> None:
    """Inspect and control executions in the local store."""


def _when(ts: datetime | float | str | None) -> str:
    if ts is None:
        return "-"
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError:
            return ts
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def server_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--server-url`` and ``--token``: ask a Flux server instead of the local store."""
    func = click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")(
        func
    )
    return click.option(
        "--server-url", help="ask this Flux server over HTTP instead of the local store"
    )(func)


@executions.command("list")
@click.option("--workflow", "workflow_name", help="only this workflow")
@click.option("--state", type=click.Choice([s.value for s in ExecutionState], case_sensitive=False))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@server_option
@local_store_options
@flux_errors
async def executions_list(
    workflow_name: str | None,
    state: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """List executions, newest first."""
    state = state.upper() if state else None
    if server_url:
        async with _remote_client(server_url, token) as client:
            found = await client.list_executions(workflow_name, state, limit, offset)
        rows = [
            {
                k: r.get(k)
                for k in ("execution_id", "workflow_name", "state", "created_at", "updated_at")
            }
            for r in found
        ]
    else:
        from .runtime.engine import open_engine

        async with open_engine(settings) as engine:
            records = await engine.store.list_executions(
                workflow_name=workflow_name,
                state=ExecutionState(state) if state else None,
                limit=limit,
                offset=offset,
            )
        rows = [
            {
                "execution_id": r.execution_id,
                "workflow_name": r.workflow_name,
                "state": r.state.value,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in records
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no executions", err=True)
        return
    click.echo(f"{'EXECUTION ID':32}  {'WORKFLOW':24}  {'STATE':10}  UPDATED")
    for r in rows:
        click.echo(
            f"{r['execution_id']:32}  {str(r['workflow_name'])[:24]:24}  {r['state']:10}  "
            f"{_when(r['updated_at'])}"
        )


@executions.command("show")
@click.argument("execution_id")
@click.option("--events", is_flag=True, help="list the history too")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@server_option
@local_store_options
@flux_errors
async def executions_show(
    execution_id: str,
    events: bool,
    as_json: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Show one execution (and its events)."""
    if server_url:
        async with _remote_client(server_url, token) as client:
            data = await client.get_execution(execution_id, detailed=events)
        data = {k: v for k, v in data.items() if events or k != "events"}
    else:
        from .runtime.engine import open_engine

        async with open_engine(settings) as engine:
            ctx = await engine.get(execution_id)
        data = to_jsonable(ctx.to_dict() if events else ctx.summary())
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(f"execution  {data['execution_id']}")
    click.echo(f"workflow   {data['workflow_name']}")
    click.echo(f"state      {data['state']}")
    click.echo(f"input      {_show(data.get('input'))}")
    click.echo(f"output     {_show(data.get('output'))}")
    for e in data.get("events") or []:
        click.echo(
            f"  {e['id']:>4}  {_when(e.get('time'))}  {e['type']:24}  {e['source_id']:28}  "
            f"{_show(e.get('value'))}"
        )


@executions.command("cancel")
@click.argument("execution_id")
@local_store_options
@flux_errors
async def executions_cancel(execution_id: str, settings: Settings) -> None:
    """Cancel a paused, queued or running execution (a running one stops at its next step)."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        ctx = await engine.cancel(execution_id)
    if ctx.state is ExecutionState.CANCELLED:
        click.echo(f"execution {execution_id}: CANCELLED")
    elif ctx.has_finished:
        _fail(f"execution {execution_id} already finished ({ctx.state.value}): nothing to cancel")
    else:
        click.echo(f"execution {execution_id}: cancel requested (state {ctx.state.value})")


# ---------------------------------------------------------------------------- secrets (local)


@cli.group("secrets")
async def secrets() -> None:
    """Manage secrets (encrypted in the store)."""


@secrets.command("list")
@click.option(
    "--server-url",
    help="manage the secrets of this server over HTTP instead of the local store",
)
@click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")
@local_store_options
@flux_errors
async def secrets_list(settings: Settings, server_url: str | None, token: str | None) -> None:
    """List secret names (never values)."""
    from .runtime.engine import open_engine

    if server_url:
        async with _remote_client(server_url, token) as client:
            names = await client.secrets_list()
    else:
        async with open_engine(settings) as engine:
            names = await engine.secrets.names()
    for name in names:
        click.echo(name)


def _secret_from_input(name: str) -> str:
    """A secret's value from a hidden prompt (terminal) or standard input (one trailing newline
    dropped), so that it never sits in the command line (``ps``, shell history)."""
    import getpass

    if sys.stdin.isatty():
        value = getpass.getpass(f"value of secret {name} (not shown): ")
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value:
        raise click.UsageError(f"no value given for secret {name}")
    return value


@secrets.command("set")
@click.argument("name")
@click.argument("value", required=False)
@click.option(
    "--server-url",
    help="manage the secrets of this server over HTTP instead of the local store",
)
@click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")
@local_store_options
@flux_errors
async def secrets_set(
    name: str, value: str | None, settings: Settings, server_url: str | None, token: str | None
) -> None:
    """Set (or replace) a secret. Without VALUE it is read from standard input, or from a
    hidden prompt on a terminal (a value on the command line shows in ``ps``)."""
    from .runtime.engine import open_engine

    if value is None:
        value = _secret_from_input(name)

    if server_url:
        async with _remote_client(server_url, token) as client:
            await client.secrets_set(name, value)
    else:
        async with open_engine(settings) as engine:
            await engine.secrets.set(name, value)
    click.echo(f"secret {name} set")


@secrets.command("get")
@click.argument("name")
@click.option(
    "--server-url",
    help="manage the secrets of this server over HTTP instead of the local store",
)
@click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")
@local_store_options
@flux_errors
async def secrets_get(
    name: str, settings: Settings, server_url: str | None, token: str | None
) -> None:
    """Print a secret's value (use with care)."""
    from .runtime.engine import open_engine

    if server_url:
        async with _remote_client(server_url, token) as client:
            click.echo(await client.secrets_get(name))
        return
    async with open_engine(settings) as engine:
        click.echo(await engine.secrets.get(name))


@secrets.command("remove")
@click.argument("name")
@click.option(
    "--server-url",
    help="manage the secrets of this server over HTTP instead of the local store",
)
@click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")
@local_store_options
@flux_errors
async def secrets_remove(
    name: str, settings: Settings, server_url: str | None, token: str | None
) -> None:
    """Remove a secret."""
    from .runtime.engine import open_engine

    if server_url:
        async with _remote_client(server_url, token) as client:
            await client.secrets_remove(name)  # a secret that is not set is a 404 error
        click.echo(f"secret {name} removed")
        return
    async with open_engine(settings) as engine:
        removed = await engine.secrets.remove(name)
    if not removed:
        _fail(f"secret {name!r} is not set")
    click.echo(f"secret {name} removed")


# ---------------------------------------------------------------------------- start


def _log_to_stderr(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")


@cli.group("start")
async def start() -> None:
    """Start a Flux server or worker (long-running; stop with Ctrl+C or SIGTERM)."""


@start.command("server")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="port (0: any free port)",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="seconds a worker lease lives without a heartbeat",
)
@click.option(
    "--max-frame-size",
    type=click.IntRange(1024),
    default=8 * 1024 * 1024,
    show_default=True,
    help="largest worker frame in bytes",
)
@click.option(
    "--api-token",
    envvar="FLUX_API_TOKEN",
    help="bearer token the HTTP API and admin routes require (env FLUX_API_TOKEN)",
)
@click.option(
    "--worker-token",
    envvar="FLUX_WORKER_TOKEN",
    help="token workers must present (env FLUX_WORKER_TOKEN); without both tokens the "
    "server binds loopback only",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="a browser origin allowed to call the API, e.g. https://ops.example.com "
    "(repeatable; default: no CORS headers)",
)
@click.option(
    "--max-body-size",
    type=click.IntRange(1024),
    default=16 * 1024 * 1024,
    show_default=True,
    help="largest HTTP request body in bytes",
)
@click.option(
    "--max-value-size",
    type=click.IntRange(1024),
    default=4 * 1024 * 1024,
    show_default=True,
    help="largest stored input or resume value in bytes",
)
@click.option("--log-level", default="INFO", show_default=True)
@local_store_options
@flux_errors
async def start_server(
    host: str,
    port: int,
    lease_ttl: float,
    max_frame_size: int,
    api_token: str | None,
    worker_token: str | None,
    cors_origins: tuple[str, ...],
    max_body_size: int,
    max_value_size: int,
    log_level: str,
    settings: Settings,
) -> None:
    """Serve the HTTP API and the worker endpoint, owning the store (--db)."""
    from .net.server import ServerSettings, serve_server

    _log_to_stderr(log_level)
    await serve_server(
        settings,
        ServerSettings(
            host=host,
            port=port,
            lease_ttl=lease_ttl,
            max_frame_size=max_frame_size,
            api_token=api_token or None,
            worker_token=worker_token or None,
            cors_origins=cors_origins,
            max_body_size=max_body_size,
            max_value_size=max_value_size,
        ),
        handle_signals=True,
    )


@start.command("worker")
@click.argument("name", required=False)
@click.option(
    "--server-url",
    default="http://127.0.0.1:8000",
    show_default=True,
    envvar="FLUX_SERVER_URL",
    help="the server's http(s) address",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="executions run at once",
)
@click.option(
    "--token",
    "--worker-token",
    "token",
    envvar="FLUX_WORKER_TOKEN",
    help="worker token, if the server wants one (env FLUX_WORKER_TOKEN)",
)
@click.option(
    "--release-sleeps-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="give an execution back during durable sleeps longer than this (seconds)",
)
@click.option("--log-level", default="INFO", show_default=True)
@flux_errors
async def start_worker(
    name: str | None,
    server_url: str,
    concurrency: int,
    token: str | None,
    release_sleeps_after: float,
    log_level: str,
) -> None:
    """Connect to a server and run the executions it leases to this worker."""
    from .net.worker import serve_worker

    _log_to_stderr(log_level)
    await serve_worker(
        name,
        server_url,
        concurrency,
        token=token,
        release_sleeps_after=release_sleeps_after,
        handle_signals=True,
    )


# ---------------------------------------------------------------------------- client (over HTTP)

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--server-url`` and ``--token`` for commands that talk to a Flux server; the command
    gets an open ``client`` (:class:`flux.net.client.FluxClient`)."""

    @click.option(
        "--server-url",
        envvar="FLUX_SERVER_URL",
        default=DEFAULT_SERVER_URL,
        show_default=True,
        help="the server's http(s) address (env FLUX_SERVER_URL)",
    )
    @click.option("--token", envvar="FLUX_API_TOKEN", help="API token (env FLUX_API_TOKEN)")
    @functools.wraps(func)
    async def wrapper(*args: Any, server_url: str, token: str | None, **kwargs: Any) -> Any:
        async with _remote_client(server_url, token) as client:
            return await func(*args, client=client, **kwargs)

    return wrapper


def _remote_client(server_url: str, token: str | None) -> Any:
    from .net.client import FluxClient

    try:
        return FluxClient(server_url, token)
    except ValueError as e:
        _fail(str(e), 2)


def client_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A server's error (or an unreachable server) as one line, exit 1; bad input, exit 2."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(0)
        except FluxError as e:
            _fail(f"{e}")
        except (ValueError, OSError) as e:
            _fail(f"{e}", 2)

    return wrapper


def _input_arg(text: str | None, what: str) -> Any:
    value = _json_arg(text, what)
    return None if value is MISSING else value


def _error_text(error: Any) -> str:
    if isinstance(error, dict) and "message" in error:
        type_name = str(error.get("type") or "Error").rsplit(".", 1)[-1]
        return f"{type_name}: {error['message']}"
    return _show(error)


def _finish_remote(summary: dict[str, Any]) -> None:
    """Print where an execution stands: its output (stdout) once it completed, a hint when
    paused or still running; a failure or cancellation exits non-zero as ``flux run`` does."""
    eid = summary.get("execution_id")
    name = summary.get("workflow_name") or "?"
    state = summary.get("state")
    click.echo(f"execution {eid}: {state}" if eid else f"workflow {name}: {state}", err=True)
    if state == "COMPLETED":
        click.echo(_show(summary.get("output")))
    elif state == "FAILED":
        _fail(f"workflow {name} failed: {_error_text(summary.get('output'))}")
    elif state == "CANCELLED":
        _fail(f"workflow {name} was cancelled", 2)
    elif state == "PAUSED":
        click.echo(f"paused; resume with: flux workflow resume {name} {eid} [VALUE]", err=True)
    elif eid:
        click.echo(f"not finished yet; check with: flux workflow status {name} {eid}", err=True)


def _echo_summary(summary: dict[str, Any]) -> None:
    from .net.client import event_line

    click.echo(f"execution  {summary.get('execution_id')}")
    click.echo(f"workflow   {summary.get('workflow_name')}")
    click.echo(f"state      {summary.get('state')}")
    click.echo(f"input      {_show(summary.get('input'))}")
    click.echo(f"output     {_show(summary.get('output'))}")
    for event in summary.get("events") or ():
        click.echo(event_line(event))


@cli.group("workflow")
async def workflow_group() -> None:
    """Register, run and control workflows on a Flux server (over HTTP)."""


@workflow_group.command("register")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@client_options
@client_errors
async def workflow_register(file: str, client: Any) -> None:
    """Upload FILE; every @workflow in it gets a new version."""
    for w in await client.register(file):
        click.echo(f"registered {w['name']} version {w['version']}")


@workflow_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@client_options
@client_errors
async def workflow_list(as_json: bool, client: Any) -> None:
    """List the workflows the server knows (their latest version)."""
    workflows = await client.list_workflows()
    if as_json:
        click.echo(json.dumps(workflows))
        return
    if not workflows:
        click.echo("no workflows", err=True)
        return
    click.echo(f"{'NAME':32}  {'VERSION':>7}  CREATED")
    for w in workflows:
        click.echo(f"{w['name']:32}  {w['version']:>7}  {_when(w.get('created_at'))}")


@workflow_group.command("show")
@click.argument("name")
@click.option("--source", is_flag=True, help="print only the source")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@client_options
@client_errors
async def workflow_show(name: str, source: bool, as_json: bool, client: Any) -> None:
    """Show a workflow: its latest version, its versions and (with --source) its source."""
    w = await client.get_workflow(name)
    if as_json:
        click.echo(json.dumps(w))
    elif source:
        click.echo(w.get("source", ""), nl=False)
    else:
        click.echo(f"name       {w['name']}")
        click.echo(f"version    {w['version']}")
        click.echo(f"versions   {', '.join(str(v) for v in w.get('versions', []))}")
        click.echo(f"created    {_when(w.get('created_at'))}")
        click.echo(f"hash       {w.get('source_hash')}")


@workflow_group.command("run")
@click.argument("name")
@click.argument("input_json", metavar="[INPUT]", required=False)
@click.option(
    "--mode",
    type=click.Choice(["sync", "async", "stream"]),
    default="sync",
    show_default=True,
    help="sync: wait for the end; async: print the id at once; stream: show each event live",
)
@click.option("--detailed", is_flag=True, help="(sync) list the events too")
@client_options
@client_errors
async def workflow_run(
    name: str, input_json: str | None, mode: str, detailed: bool, client: Any
) -> None:
    """Run workflow NAME on the server; INPUT is JSON ('"World"' for a string)."""
    from contextlib import aclosing

    from .net.client import Progress, event_line

    value = _input_arg(input_json, "INPUT")
    if mode == "async":
        summary = await client.run(name, value, "async")
        eid = summary["execution_id"]
        click.echo(f"execution {eid}: {summary['state']}", err=True)
        click.echo(eid)
        click.echo(f"follow with: flux executions follow {eid}", err=True)
        return
    if mode == "sync":
        summary = await client.run(name, value, "sync", detailed=detailed)
        for event in summary.get("events") or ():
            click.echo(event_line(event), err=True)
        _finish_remote(summary)
        return
    progress = Progress(workflow_name=name)
    async with aclosing(client.stream(name, value)) as messages:
        async for message in messages:
            progress.update(message)
            if not (progress.settled and "type" not in message):  # the end is printed below
                click.echo(event_line(message), err=True)
    summary = progress.summary
    if not progress.settled and progress.execution_id:
        summary = await client.status(name, progress.execution_id)
    _finish_remote(summary)


@workflow_group.command("status")
@click.argument("name")
@click.argument("execution_id")
@click.option("--detailed", is_flag=True, help="list the events too")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@client_options
@client_errors
async def workflow_status(
    name: str, execution_id: str, detailed: bool, as_json: bool, client: Any
) -> None:
    """Show an execution of workflow NAME."""
    summary = await client.status(name, execution_id, detailed=detailed)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _echo_summary(summary)


@workflow_group.command("resume")
@click.argument("name")
@click.argument("execution_id")
@click.argument("value_json", metavar="[VALUE]", required=False)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="wait until the execution completes, fails or pauses again",
)
@client_options
@client_errors
async def workflow_resume(
    name: str, execution_id: str, value_json: str | None, wait: bool, client: Any
) -> None:
    """Resume a paused execution; VALUE (JSON) is what its pause returns."""
    value = _input_arg(value_json, "VALUE")
    summary = await client.resume(name, execution_id, value, wait=wait)
    if wait:
        _finish_remote(summary)
    else:
        click.echo(f"execution {summary['execution_id']}: {summary['state']}")


@workflow_group.command("cancel")
@click.argument("execution_id")
@click.option("--wait", is_flag=True, help="wait until a running execution has stopped")
@client_options
@client_errors
async def workflow_cancel(execution_id: str, wait: bool, client: Any) -> None:
    """Cancel a running, paused or queued execution."""
    summary = await client.cancel(execution_id, wait=wait)
    state = summary.get("state")
    if state == "CANCELLED":
        click.echo(f"execution {execution_id}: CANCELLED")
    elif state in ("COMPLETED", "FAILED"):
        _fail(f"execution {execution_id} already finished ({state}): nothing to cancel")
    else:
        click.echo(f"execution {execution_id}: cancel requested (state {state})")


@executions.command("follow")
@click.argument("execution_id")
@click.option(
    "--from",
    "from_offset",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="skip the first N events",
)
@client_options
@client_errors
async def executions_follow(execution_id: str, from_offset: int, client: Any) -> None:
    """Print an execution's events from a server as they happen (a line each), then its output."""
    from contextlib import aclosing

    from .net.client import Progress, event_line

    progress = Progress(execution_id=execution_id)
    async with aclosing(client.follow(execution_id, from_offset)) as events:
        async for event in events:
            progress.update(event)
            click.echo(event_line(event))
    summary = progress.summary
    if not progress.settled:  # the stream ended early (e.g. --from past the end): ask
        summary = await client.get_execution(execution_id)
    _finish_remote(summary)


def main() -> None:
    cli(_anyio_backend="trio")


if __name__ == "__main__":
    main()
