"""The ``flux`` command line (asyncclick on trio). Thin: parsing and printing only."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
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
        # some messages end with "at" already ("Unterminated string starting at")
        where = "column" if e.msg.endswith(" at") else "at column"
        _fail(f"{what} is not valid JSON ({e.msg} {where} {e.colno}): {text!r}", 2)


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
@click.option("-q", "--quiet", is_flag=True, help="print the output alone (errors still shown)")
@local_store_options
@flux_errors
async def run_command(
    target: str,
    input_json: str | None,
    execution_id: str | None,
    quiet: bool,
    settings: Settings,
) -> None:
    """Run a workflow embedded (no server): its id first, a line per task outcome as it
    goes (on stderr), its output last (on stdout).

    With --execution-id of a paused execution, INPUT_JSON is the value its pause returns.
    Ctrl-C stops the run and prints the command that resumes it.
    """
    from .runtime.engine import new_execution_id, open_engine
    from .runtime.loader import load_workflow

    wf = load_workflow(target)
    value = _json_arg(input_json, "INPUT_JSON")
    eid = execution_id or new_execution_id()
    resume = _resume_command(target, eid, settings)
    async with open_engine(settings) as engine:
        record = await engine.store.get_execution(eid) if execution_id else None
        seen = await engine.store.load_events(eid) if record is not None else []
        if not quiet and not (record is not None and record.state.is_terminal):
            doing = {None: "running", "PAUSED": "resuming", "RUNNING": "recovering"}
            verb = doing.get(record.state.value if record else None, "running")
            click.echo(f"execution {eid}: {verb} workflow {wf.name}", err=True)
        follower = _follower(engine.store, eid, seen, quiet)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(follower.follow)
                if execution_id:
                    ctx = await engine.run(wf, None, execution_id=eid, resume_value=value)
                else:
                    start = None if value is MISSING else value
                    ctx = await engine.run(wf, start, execution_id=eid)
                tg.cancel_scope.cancel()
            await follower.poll()
        except BaseException as e:
            if not _interrupted(e):
                raise
            _stopped_by_interrupt(eid, resume)
    _finish(ctx, resume_hint=f"{resume} [VALUE]", quiet=quiet)


def _resume_command(target: str, execution_id: str, settings: Settings) -> str:
    """The exact command that continues this execution, with --db when it is not the
    default one."""
    import os
    import shlex

    from .runtime.settings import Settings as Defaults

    words = ["flux", "run", target, "--execution-id", execution_id]
    if os.path.abspath(settings.db_path) != os.path.abspath(Defaults().db_path):
        words += ["--db", settings.db_path]
    return shlex.join(words)


def _follower(store: Any, execution_id: str, seen: list[Any], quiet: bool) -> Any:
    from .runtime.engine import decode_event
    from .runtime.progress import StoreFollower, outcome_line

    def emit(stored: Any) -> None:
        if quiet:
            return
        line = outcome_line(to_jsonable(decode_event(stored).to_dict()))
        if line is not None:
            click.echo(line, err=True)

    after = max((e.seq for e in seen), default=0)
    return StoreFollower(store, execution_id, emit, after_seq=after)


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C, alone or inside an exception group."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(KeyboardInterrupt) is not None
    return False


def _stopped_by_interrupt(execution_id: str, resume: str) -> None:
    click.echo(f"interrupted: execution {execution_id} stopped where it was", err=True)
    click.echo(f"resume with: {resume}", err=True)
    sys.exit(130)


def _finish(ctx: ExecutionContext, resume_hint: str | None = None, quiet: bool = False) -> None:
    if not quiet:
        click.echo(f"execution {ctx.execution_id}: {ctx.state.value}", err=True)
    if ctx.state is ExecutionState.COMPLETED:
        click.echo(_show(ctx.output))
        return
    if ctx.state is ExecutionState.FAILED:
        data = to_jsonable(ctx.to_dict())
        _fail_with_traceback(ctx.workflow_name, data["output"], data["events"])
    if ctx.state is ExecutionState.PAUSED:
        if resume_hint:
            click.echo(f"paused; resume with: {resume_hint}", err=True)
        return
    if ctx.state is ExecutionState.CANCELLED:
        _fail(f"workflow {ctx.workflow_name} was cancelled", 2)


def _failure_lines(error: Any, events: Any) -> tuple[list[str], str]:
    """The traceback lines (user frames) and the one-line headline of a failed execution."""
    from .runtime.failures import describe_failure

    failure = describe_failure(error, events or ())
    where = f" at task {failure.call_id}" if failure.call_id else ""
    lines = failure.traceback.splitlines() if failure.traceback else []
    return lines, f"failed{where}: {failure.headline}"


def _fail_with_traceback(workflow_name: str, error: Any, events: Any) -> None:
    lines, headline = _failure_lines(error, events)
    for line in lines:
        click.echo(line, err=True)
    _fail(f"workflow {workflow_name} {headline}")


# ---------------------------------------------------------------------------- executions


@cli.group("executions")
async def executions() -> None:
    """Inspect and control executions: a server's with --server-url (or FLUX_SERVER_URL),
    else the local store's."""


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


def _timestamp(ts: datetime | float | str | None) -> float | None:
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError:
            return None
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    return float(ts) if isinstance(ts, int | float) else None


FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def _duration(row: dict[str, Any]) -> str:
    """How long a finished execution took (created to last update); ``-`` while it is not
    finished."""
    start, end = _timestamp(row.get("created_at")), _timestamp(row.get("updated_at"))
    if row.get("state") not in FINISHED_STATES or start is None or end is None:
        return "-"
    seconds = max(end - start, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def server_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--server-url`` (or ``FLUX_SERVER_URL``) and ``--token``: ask a Flux server instead of
    the local store."""
    func = click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")(
        func
    )
    return click.option(
        "--server-url",
        envvar="FLUX_SERVER_URL",
        help="ask this Flux server over HTTP instead of the local store (env FLUX_SERVER_URL)",
    )(func)


def _existing_store(settings: Settings, execution_id: str | None = None) -> None:
    """Commands on existing executions never create a database: a missing file is an error
    naming it (and the execution asked for)."""
    import os

    if not os.path.isfile(settings.db_path):
        what = f"no execution with id {execution_id!r}: " if execution_id else ""
        _fail(
            f"{what}no Flux database at {settings.db_path} (nothing has run with this store "
            "yet; --db or FLUX_DB names another, --server-url asks a server)"
        )


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
    keys = ("execution_id", "workflow_name", "state", "created_at", "updated_at")
    if server_url:
        async with _remote_client(server_url, token) as client:
            found = await client.list_executions(workflow_name, state, limit, offset)
        rows = [{k: r.get(k) for k in keys} for r in found]
    else:
        from .runtime.engine import open_engine

        _existing_store(settings)
        async with open_engine(settings, cancel_poll=None) as engine:
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
    click.echo(f"{'EXECUTION ID':32}  {'WORKFLOW':24}  {'STATE':10}  {'DURATION':>8}  UPDATED")
    for r in rows:
        click.echo(
            f"{r['execution_id']:32}  {str(r['workflow_name'])[:24]:24}  {r['state']:10}  "
            f"{_duration(r):>8}  {_when(r['updated_at'])}"
        )


async def _execution_data(
    execution_id: str, server_url: str | None, token: str | None, settings: Settings
) -> dict[str, Any]:
    """An execution with its events, as JSON: from the server, else from the local store."""
    if server_url:
        async with _remote_client(server_url, token) as client:
            return await client.get_execution(execution_id, detailed=True)
    from .runtime.engine import open_engine

    _existing_store(settings, execution_id)
    async with open_engine(settings, cancel_poll=None) as engine:
        ctx = await engine.get(execution_id)
    return to_jsonable(ctx.to_dict())


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
    """Show one execution (and its events); a failed one with its traceback."""
    data = await _execution_data(execution_id, server_url, token, settings)
    if as_json:
        click.echo(json.dumps({k: v for k, v in data.items() if events or k != "events"}))
        return
    _echo_execution(data, events)


def _event_text(event: dict[str, Any]) -> str:
    from .runtime.failures import error_summary

    value = event.get("value")
    if str(event.get("type", "")).endswith("_FAILED"):
        summary = error_summary(value)
        if summary is not None:
            return summary
    return _show(value)


def _local_event_line(e: dict[str, Any]) -> str:
    return (
        f"  {e['id']:>4}  {_when(e.get('time'))}  {e['type']:24}  {e['source_id']:28}  "
        f"{_event_text(e)}"
    )


def _echo_execution(
    data: dict[str, Any],
    with_events: bool,
    event_line: Callable[[dict[str, Any]], str] = _local_event_line,
) -> None:
    """The execution's fields, its events (``with_events``) and, when it failed, the failing
    call and the traceback."""
    from .runtime.failures import describe_failure

    failed = data.get("state") == "FAILED"
    failure = describe_failure(data.get("output"), data.get("events") or ()) if failed else None
    click.echo(f"execution  {data.get('execution_id')}")
    click.echo(f"workflow   {data.get('workflow_name')}")
    click.echo(f"state      {data.get('state')}")
    click.echo(f"input      {_show(data.get('input'))}")
    if failure is None:
        click.echo(f"output     {_show(data.get('output'))}")
    else:
        click.echo(f"error      {failure.headline}")
        click.echo(f"failed at  {failure.call_id or 'the workflow body'}")
    for e in data.get("events") or [] if with_events else []:
        click.echo(event_line(e))
    if failure is not None and failure.traceback:
        click.echo(failure.traceback)


@executions.command("cancel")
@click.argument("execution_id")
@click.option("--wait", is_flag=True, help="(with --server-url) wait until it has stopped")
@server_option
@local_store_options
@flux_errors
async def executions_cancel(
    execution_id: str, wait: bool, server_url: str | None, token: str | None, settings: Settings
) -> None:
    """Cancel a paused, queued or running execution (a running one stops at its next step)."""
    if server_url:
        async with _remote_client(server_url, token) as client:
            summary = await client.cancel(execution_id, wait=wait)
        state = str(summary.get("state"))
    else:
        from .runtime.engine import open_engine

        _existing_store(settings, execution_id)
        async with open_engine(settings, cancel_poll=None) as engine:
            state = (await engine.cancel(execution_id)).state.value
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
@server_option
@local_store_options
@flux_errors
async def executions_follow(
    execution_id: str,
    from_offset: int,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Print an execution's events as they happen (a line each), then its output."""
    if server_url:
        async with _remote_client(server_url, token) as client:
            await _follow_remote(client, execution_id, from_offset)
        return
    await _follow_local(execution_id, from_offset, settings)


async def _follow_remote(client: Any, execution_id: str, from_offset: int) -> None:
    from contextlib import aclosing

    from .net.client import Progress, event_line

    progress = Progress(execution_id=execution_id)
    seen: list[dict[str, Any]] = []
    async with aclosing(client.follow(execution_id, from_offset)) as events:
        async for event in events:
            progress.update(event)
            seen.append(event)
            click.echo(event_line(event))
    summary = progress.summary
    if not progress.settled or summary.get("state") == "FAILED":  # ask where it stands
        summary = await client.get_execution(execution_id, detailed=True)
    _finish_remote(summary)


async def _follow_local(execution_id: str, from_offset: int, settings: Settings) -> None:
    """Follow an execution in the local store: print its events after the first
    ``from_offset`` until it is finished or paused (another process runs it)."""
    from .net.client import event_line
    from .runtime.engine import decode_event, open_engine
    from .runtime.progress import StoreFollower

    _existing_store(settings, execution_id)
    async with open_engine(settings, cancel_poll=None) as engine:
        if await engine.store.get_execution(execution_id) is None:
            _fail(f"no execution with id {execution_id!r}")
        follower = StoreFollower(
            engine.store,
            execution_id,
            lambda e: click.echo(event_line(to_jsonable(decode_event(e).to_dict()))),
            after_seq=from_offset,
        )
        while True:
            await follower.poll()
            record = await engine.store.get_execution(execution_id)
            if record is None or record.state.value in FINISHED_STATES | {"PAUSED"}:
                break
            await anyio.sleep(0.2)
        await follower.poll()
        ctx = await engine.get(execution_id)
    _finish_remote(to_jsonable(ctx.to_dict()))


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


@secrets.command("set")
@click.argument("name")
@click.argument("value")
@click.option(
    "--server-url",
    help="manage the secrets of this server over HTTP instead of the local store",
)
@click.option("--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url")
@local_store_options
@flux_errors
async def secrets_set(
    name: str, value: str, settings: Settings, server_url: str | None, token: str | None
) -> None:
    """Set (or replace) a secret."""
    from .runtime.engine import open_engine

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
    the traceback goes to the log at DEBUG level."""

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
            logging.getLogger("flux.cli").debug("stopped by", exc_info=e)
            where = None
            if "port" in kwargs:
                host = str(kwargs.get("host"))
                where = f"[{host}]:{kwargs['port']}" if ":" in host else f"{host}:{kwargs['port']}"
            _fail(_startup_message(leaves[0], where))

    return wrapper


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
    from .net.server import ServerSettings, serve_server
    from .runtime.store import open_store

    _log_to_stderr(log_level)
    try:  # a store that cannot be opened is one line, before anything is served
        async with open_store(settings.db_path, durability=settings.durability):
            pass
    except (OSError, FluxError) as e:
        _fail(f"cannot open the store {settings.db_path}: {e}")
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
@startup_errors
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
        _fail_with_traceback(name, summary.get("output"), summary.get("events"))
    elif state == "CANCELLED":
        _fail(f"workflow {name} was cancelled", 2)
    elif state == "PAUSED":
        click.echo(f"paused; resume with: flux workflow resume {name} {eid} [VALUE]", err=True)
    elif eid:
        click.echo(f"not finished yet; check with: flux workflow status {name} {eid}", err=True)


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
    await _say_if_no_worker(client)
    if mode == "async":
        summary = await client.run(name, value, "async")
        eid = summary["execution_id"]
        click.echo(f"execution {eid}: {summary['state']}", err=True)
        click.echo(eid)
        click.echo(f"follow with: flux executions follow {eid}", err=True)
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


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Flux's own warnings as one ``warning: ...`` line; others as Python prints them."""
    from .runtime.loader import RunWhileLoadingWarning
    from .runtime.secrets import ShortSecretWarning

    if issubclass(category, RunWhileLoadingWarning | ShortSecretWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show_warning(message, category, *args, **kwargs)


_python_show_warning = warnings.showwarning


def main() -> None:
    warnings.showwarning = _show_warning
    cli(_anyio_backend="trio")


if __name__ == "__main__":
    main()
