"""``flux start server|worker`` and the client commands ``flux workflow ...`` (over HTTP)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import anyio
import asyncclick as click

from ._cli_common import (
    _echo_execution,
    _fail,
    _finish_remote,
    _input_arg,
    _when,
    client_errors,
    client_options,
    local_store_options,
)
from .runtime.errors import FluxError
from .runtime.settings import Settings

# ---------------------------------------------------------------------------- start


def _log_to_stderr(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]


def _from_bind(error: BaseException) -> bool:
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return any("bind" in (f.line or "") or "create_sockets" in f.name for f in frames)


def _startup_message(error: BaseException, where: str | None) -> str:
    import errno
    import os

    if isinstance(error, OSError) and where and _from_bind(error):
        reason = {
            errno.EADDRINUSE: "address already in use",
            errno.EADDRNOTAVAIL: "address not available on this machine",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
        }.get(error.errno or 0)
        if reason is None:
            reason = os.strerror(error.errno) if error.errno else str(error)
        return f"cannot listen on {where}: {reason}"
    text = str(error) or type(error).__name__
    if isinstance(error, FluxError | ValueError):
        return text
    return f"{type(error).__name__}: {text}"


def startup_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A server or worker that cannot start (or stops on an error) prints one line, exit 1;
    the traceback goes to the log (at DEBUG level for the expected failures)."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        import logging

        try:
            return await func(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except BaseException as e:
            leaves = [x for x in _leaves(e) if not isinstance(x, anyio.get_cancelled_exc_class())]
            if not leaves or any(isinstance(x, KeyboardInterrupt | SystemExit) for x in leaves):
                raise
            expected = isinstance(leaves[0], OSError | FluxError | ValueError)
            # an expected failure (port, store, token, bad setting) is the line below; anything
            # else is a bug, whose traceback is logged too
            logging.getLogger("flux.cli").log(
                logging.DEBUG if expected else logging.ERROR, "stopped by", exc_info=e
            )
            where = None
            if "port" in kwargs:
                host = str(kwargs.get("host"))
                where = f"[{host}]:{kwargs['port']}" if ":" in host else f"{host}:{kwargs['port']}"
            _fail(_startup_message(leaves[0], where))

    return wrapper


@click.group("start")
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
@local_store_options(lease=False)
@startup_errors
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
    from .net.security import check_bind
    from .net.server import ServerSettings, serve_server
    from .runtime.settings import redact_url
    from .runtime.store import open_store

    _log_to_stderr(log_level)
    check_bind(host, api_token or None, worker_token or None)  # refused: before the store
    try:  # a store that cannot be opened is one line, before anything is served
        async with open_store(settings.store, durability=settings.durability):
            pass
    except (OSError, FluxError) as e:
        _fail(f"cannot open the store {redact_url(settings.store)}: {e}")
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
    "server_urls",
    multiple=True,
    default=["http://127.0.0.1:8000"],
    show_default=True,
    envvar="FLUX_SERVER_URL",
    help="a server's http(s) address; repeat it (or separate with commas) to fail over "
    "between several, round robin",
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
@click.option(
    "--load-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    envvar="FLUX_LOAD_TIMEOUT",
    help="seconds a workflow source may take to load (its top level runs) before the "
    "execution that needs it fails",
)
@click.option("--log-level", default="INFO", show_default=True)
@startup_errors
async def start_worker(
    name: str | None,
    server_urls: tuple[str, ...],
    concurrency: int,
    token: str | None,
    release_sleeps_after: float,
    load_timeout: float,
    log_level: str,
) -> None:
    """Connect to a server and run the executions it leases to this worker; with several
    servers, move to the next one when the session drops."""
    from .net.worker import serve_worker

    _log_to_stderr(log_level)
    await serve_worker(
        name,
        server_urls,
        concurrency,
        token=token,
        release_sleeps_after=release_sleeps_after,
        load_timeout=load_timeout,
        handle_signals=True,
    )


@click.group("workflow")
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
    await _say_if_no_worker(client)
    if mode == "async":
        summary = await client.run(name, value, "async")
        eid = summary["execution_id"]
        click.echo(f"execution {eid}: {summary['state']}", err=True)
        click.echo(eid)
        click.echo(f"follow with: {_follow_command(eid, client.server_url)}", err=True)
        return
    if mode == "sync":
        summary = await client.run(name, value, "sync", detailed=True)  # events: what failed
        for event in (summary.get("events") or ()) if detailed else ():
            click.echo(event_line(event), err=True)
        _finish_remote(summary)
        return
    progress = Progress(workflow_name=name)
    seen: list[Any] = []
    async with aclosing(client.stream(name, value)) as messages:
        async for message in messages:
            progress.update(message)
            if isinstance(message, dict) and "source_id" in message:
                seen.append(message)
            if not (progress.settled and "type" not in message):  # the end is printed below
                click.echo(event_line(message), err=True)
    summary = {**progress.summary, "events": seen}
    if not progress.settled and progress.execution_id:
        summary = await client.status(name, progress.execution_id, detailed=True)
    _finish_remote(summary)


def _follow_command(execution_id: str, server_url: str) -> str:
    """``flux executions follow ID``, with --server-url unless FLUX_SERVER_URL names it (the
    executions commands read the local store without one)."""
    import os
    import shlex

    words = ["flux", "executions", "follow", execution_id]
    if (os.environ.get("FLUX_SERVER_URL") or "").strip().rstrip("/") != server_url:
        words += ["--server-url", server_url]
    return shlex.join(words)


async def _say_if_no_worker(client: Any) -> None:
    """Say once, before waiting, that no worker is connected, so the run will wait in the
    queue."""
    from .net.client import FluxClientError

    try:
        workers = await client.workers()
    except FluxClientError:  # unreachable (the run request says so) or no /workers route
        return
    if not workers:
        click.echo(
            "no worker is connected: the run is queued and starts when a worker connects "
            "(flux start worker)",
            err=True,
        )


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
    summary = await client.status(name, execution_id, detailed=True)
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if detailed or k != "events"}))
    else:
        from .net.client import event_line

        _echo_execution(summary, detailed, event_line)


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


