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


def _when(ts: datetime | float | None) -> str:
    if ts is None:
        return "-"
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S")


@executions.command("list")
@click.option("--workflow", "workflow_name", help="only this workflow")
@click.option("--state", type=click.Choice([s.value for s in ExecutionState], case_sensitive=False))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@local_store_options
@flux_errors
async def executions_list(
    workflow_name: str | None,
    state: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    settings: Settings,
) -> None:
    """List executions, newest first."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        records = await engine.store.list_executions(
            workflow_name=workflow_name,
            state=ExecutionState(state.upper()) if state else None,
            limit=limit,
            offset=offset,
        )
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "execution_id": r.execution_id,
                        "workflow_name": r.workflow_name,
                        "state": r.state.value,
                        "created_at": r.created_at,
                        "updated_at": r.updated_at,
                    }
                    for r in records
                ]
            )
        )
        return
    if not records:
        click.echo("no executions", err=True)
        return
    click.echo(f"{'EXECUTION ID':32}  {'WORKFLOW':24}  {'STATE':10}  UPDATED")
    for r in records:
        click.echo(
            f"{r.execution_id:32}  {r.workflow_name[:24]:24}  {r.state.value:10}  "
            f"{_when(r.updated_at)}"
        )


@executions.command("show")
@click.argument("execution_id")
@click.option("--events", is_flag=True, help="list the history too")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@local_store_options
@flux_errors
async def executions_show(
    execution_id: str, events: bool, as_json: bool, settings: Settings
) -> None:
    """Show one execution (and its events)."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        ctx = await engine.get(execution_id)
    if as_json:
        click.echo(ctx.to_json(events=events))
        return
    click.echo(f"execution  {ctx.execution_id}")
    click.echo(f"workflow   {ctx.workflow_name}")
    click.echo(f"state      {ctx.state.value}")
    click.echo(f"input      {_show(ctx.input)}")
    click.echo(f"output     {_show(ctx.output)}")
    if events:
        for e in ctx.events:
            click.echo(
                f"  {e.id:>4}  {_when(e.time)}  {e.type.value:24}  {e.source_id:28}  "
                f"{_show(e.value)}"
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
@local_store_options
@flux_errors
async def secrets_list(settings: Settings) -> None:
    """List secret names (never values)."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        names = await engine.secrets.names()
    for name in names:
        click.echo(name)


@secrets.command("set")
@click.argument("name")
@click.argument("value")
@local_store_options
@flux_errors
async def secrets_set(name: str, value: str, settings: Settings) -> None:
    """Set (or replace) a secret."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        await engine.secrets.set(name, value)
    click.echo(f"secret {name} set")


@secrets.command("get")
@click.argument("name")
@local_store_options
@flux_errors
async def secrets_get(name: str, settings: Settings) -> None:
    """Print a secret's value (use with care)."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        click.echo(await engine.secrets.get(name))


@secrets.command("remove")
@click.argument("name")
@local_store_options
@flux_errors
async def secrets_remove(name: str, settings: Settings) -> None:
    """Remove a secret."""
    from .runtime.engine import open_engine

    async with open_engine(settings) as engine:
        removed = await engine.secrets.remove(name)
    if not removed:
        _fail(f"secret {name!r} is not set")
    click.echo(f"secret {name} removed")


# ---------------------------------------------------------------------------- start


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
@click.option("--log-level", default="INFO", show_default=True)
@local_store_options
@flux_errors
async def start_server(
    host: str,
    port: int,
    lease_ttl: float,
    max_frame_size: int,
    log_level: str,
    settings: Settings,
) -> None:
    """Serve the HTTP API and the worker endpoint, owning the store (--db)."""
    import logging

    from .net.server import ServerSettings, serve_server

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    await serve_server(
        settings,
        ServerSettings(host=host, port=port, lease_ttl=lease_ttl, max_frame_size=max_frame_size),
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
@click.option("--token", envvar="FLUX_WORKER_TOKEN", help="worker token, if the server wants one")
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
    import logging

    from .net.worker import serve_worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    await serve_worker(
        name,
        server_url,
        concurrency,
        token=token,
        release_sleeps_after=release_sleeps_after,
        handle_signals=True,
    )


def main() -> None:
    cli(_anyio_backend="trio")


if __name__ == "__main__":
    main()
