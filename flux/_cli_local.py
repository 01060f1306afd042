"""``flux run`` (embedded), ``flux executions ...``, ``flux secrets ...`` and ``flux store ...``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import Any

import anyio
import asyncclick as click

from ._cli_common import (
    FINISHED_STATES,
    _duration,
    _echo_execution,
    _existing_store,
    _fail,
    _fail_with_traceback,
    _finish_remote,
    _json_arg,
    _remote_client,
    _show,
    _when,
    flux_errors,
    local_store_options,
    server_option,
    sqlite_file,
)
from .runtime.context import ExecutionContext, to_jsonable
from .runtime.events import ExecutionState
from .runtime.settings import Settings
from .runtime.workflow import MISSING

# ---------------------------------------------------------------------------- run (embedded)


@click.command("run")
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
    Ctrl-C stops the run where it is and prints the command that resumes it.
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
        # Ctrl-C (SIGINT) is handled here, not raised as KeyboardInterrupt into whichever task
        # runs: an interrupt reaching a task would cancel the run and record it CANCELLED
        with anyio.open_signal_receiver(signal.SIGINT) as interrupts:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follower.follow)
                    tg.start_soon(_stop_on_interrupt, interrupts, follower, resume)
                    if record is not None:  # resume, recover or show: the value is for pause
                        ctx = await engine.run(wf, None, execution_id=eid, resume_value=value)
                    else:  # a new execution (with the id given, or a fresh one)
                        start = None if value is MISSING else value
                        ctx = await engine.run(wf, start, execution_id=eid)
                    tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _single(group) from None
        await follower.poll()
    _finish(ctx, resume_hint=f"{resume} [VALUE]", quiet=quiet)


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested groups (what the command raised), else the group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _stop_on_interrupt(interrupts: Any, follower: Any, resume: str) -> None:
    """On Ctrl-C: show the outcomes committed so far, say how to resume, and stop this process
    at once, like a crash: every outcome the workflow acted on is committed, nothing else is
    written (no cancellation is recorded), so the execution is left as it was, resumable."""
    async for _ in interrupts:
        with anyio.move_on_after(1):
            await follower.poll()
        click.echo(f"interrupted: execution {follower.execution_id} stopped where it was", err=True)
        click.echo(f"resume with: {resume}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _resume_command(target: str, execution_id: str, settings: Settings) -> str:
    """The exact command that continues this execution, with --db when it is not the
    default one."""
    import shlex

    from .runtime.settings import Settings as Defaults
    from .runtime.settings import redact_url

    words = ["flux", "run", target, "--execution-id", execution_id]
    path = sqlite_file(settings)
    if path is None:
        words += ["--store", redact_url(settings.store)]
    elif os.path.abspath(path) != os.path.abspath(Defaults().db_path):
        words += ["--db", path]
    return shlex.join(words)


def _follower(store: Any, execution_id: str, seen: list[Any], quiet: bool) -> Any:
    from .runtime.journal import decode_event
    from .runtime.progress import StoreFollower, outcome_line

    def emit(stored: Any) -> None:
        if quiet:
            return
        line = outcome_line(to_jsonable(decode_event(stored).to_dict()), width)
        if line is not None:
            click.echo(line, err=True)

    after = max((e.seq for e in seen), default=0)
    width = max(shutil.get_terminal_size((160, 24)).columns, 80)
    return StoreFollower(store, execution_id, emit, after_seq=after)


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
    if ctx.state is ExecutionState.SCHEDULED and resume_hint:
        from .runtime.signals import waiting_topics_of

        for topic in sorted(waiting_topics_of(ctx.events)):
            click.echo(
                f"waiting for a signal on {topic!r}; send it with: flux executions signal "
                f"{ctx.execution_id} {topic} [VALUE], then continue with: "
                f"{resume_hint.removesuffix(' [VALUE]')}",
                err=True,
            )


# ---------------------------------------------------------------------------- executions


@click.group("executions")
async def executions() -> None:
    """Inspect and control executions: a server's with --server-url (or FLUX_SERVER_URL),
    else the local store's."""


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
    data = to_jsonable(ctx.to_dict())
    if ctx.retry_of is not None:
        data["retry_of"] = ctx.retry_of
    if ctx.retried_by:
        data["retried_by"] = ctx.retried_by
    return data


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


@executions.command("signal")
@click.argument("execution_id")
@click.argument("topic")
@click.argument("value", required=False)
@server_option
@local_store_options
@flux_errors
async def executions_signal(
    execution_id: str,
    topic: str,
    value: str | None,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Send a signal: VALUE (JSON, default null) goes to the execution's next receive(TOPIC)."""
    data = _json_arg(value, "VALUE")
    data = None if data is MISSING else data
    if server_url:
        async with _remote_client(server_url, token) as client:
            sent = await client.send_signal(execution_id, topic, data)
        signal_id, state = sent.get("signal_id"), sent.get("state")
    else:
        from .runtime.engine import open_engine

        _existing_store(settings, execution_id)
        async with open_engine(settings, cancel_poll=None) as engine:
            record = await engine.send_signal(execution_id, topic, data)
            signal_id = record.id
            state = (await engine.store.get_execution(execution_id)).state.value
    click.echo(f"execution {execution_id}: signal {topic!r} queued (#{signal_id}, state {state})")


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
    from .runtime.engine import open_engine
    from .runtime.journal import decode_event
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
    _finish(ctx, resume_hint=f"flux run FILE --execution-id {execution_id} [VALUE]")


@executions.command("logs")
@click.argument("execution_id")
@click.option(
    "-f", "--follow", is_flag=True, help="go on printing lines as they come, until it ends"
)
@click.option("--call", "call_id", help="only the lines of this call id (and the calls below it)")
@click.option("--after", type=click.IntRange(0), default=0, help="only lines after this seq")
@click.option("--json", "as_json", is_flag=True, help="print each line as one JSON object")
@server_option
@local_store_options
@flux_errors
async def executions_logs(
    execution_id: str,
    follow: bool,
    call_id: str | None,
    after: int,
    as_json: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Print what an execution's task bodies printed and logged, in order (with --follow,
    live until the execution ends or pauses)."""
    from contextlib import aclosing

    from .runtime.log_reader import line_text

    def show(line: Any) -> None:
        data = line if isinstance(line, dict) else line.to_dict()
        click.echo(json.dumps(to_jsonable(data)) if as_json else line_text(data))

    if server_url:
        async with _remote_client(server_url, token) as client:
            if follow:
                async with aclosing(
                    client.follow_logs(execution_id, after=after, call_id=call_id)
                ) as lines:
                    async for line in lines:
                        show(line)
                return
            while True:
                page = await client.logs(execution_id, after=after, call_id=call_id)
                for line in page["lines"]:
                    show(line)
                if not page["lines"]:
                    return
                after = page["after"]
    from .runtime.engine import open_engine

    _existing_store(settings, execution_id)
    async with open_engine(settings, cancel_poll=None) as engine:
        if not follow:
            for line in await engine.logs(execution_id, after=after, call_id=call_id):
                show(line)
            return
        async with aclosing(
            engine.follow_logs(execution_id, after=after, call_id=call_id)
        ) as pages:
            async for found in pages:
                for line in found or ():
                    show(line)


# ---------------------------------------------------------------------------- secrets (local)


@click.group("secrets")
async def secrets() -> None:
    """Manage secrets (encrypted in the store)."""


def secret_target(func: Any) -> Any:
    """The options every ``flux secrets`` command takes: the local store's, or ``--server-url``
    (and ``--token``) to manage a server's secrets over HTTP; errors as one line."""
    func = flux_errors(func)
    func = local_store_options(func)
    func = click.option(
        "--token", envvar="FLUX_API_TOKEN", help="API token, with --server-url"
    )(func)
    return click.option(
        "--server-url",
        help="manage the secrets of this server over HTTP instead of the local store",
    )(func)


@secrets.command("list")
@secret_target
async def secrets_list(settings: Settings, server_url: str | None, token: str | None) -> None:
    """List secret names (never values)."""
    from .runtime.engine import open_engine

    if server_url:
        async with _remote_client(server_url, token) as client:
            names = await client.secrets_list()
    else:
        _existing_store(settings)  # reading never creates a store
        async with open_engine(settings, cancel_poll=None) as engine:
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
@secret_target
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
@secret_target
async def secrets_get(
    name: str, settings: Settings, server_url: str | None, token: str | None
) -> None:
    """Print a secret's value (use with care)."""
    from .runtime.engine import open_engine

    if server_url:
        async with _remote_client(server_url, token) as client:
            click.echo(await client.secrets_get(name))
        return
    path = sqlite_file(settings)
    if path is not None and not os.path.isfile(path):  # reading never creates a store
        _fail(f"secret {name!r} is not set: no Flux database at {path}")
    async with open_engine(settings, cancel_poll=None) as engine:
        click.echo(await engine.secrets.get(name))


@secrets.command("remove")
@click.argument("name")
@secret_target
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




# ---------------------------------------------------------------------------- store


@click.group("store")
async def store_group() -> None:
    """Work on whole stores (SQLite files, PostgreSQL databases)."""


@store_group.command("copy")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="rows read and written per transaction",
)
@click.option("-q", "--quiet", is_flag=True, help="print nothing but errors")
@flux_errors
async def store_copy(source: str, target: str, batch_size: int, quiet: bool) -> None:
    """Copy every execution, event, workflow version, secret, schedule and cache entry from the
    store FROM into the empty store TO (each a SQLite path, sqlite:///path or postgresql://...),
    then check the counts. Stop what uses FROM first; TO must hold nothing.
    """
    from .runtime.store_copy import copy_store_locations, key_file_note

    step = max(batch_size, 50_000)

    def progress(table: str, copied: int, total: int) -> None:
        if not quiet and (copied >= total or copied % step < batch_size):
            click.echo(f"  {table}: {copied} of {total}", err=True)

    result = await copy_store_locations(
        source, target, batch_size=batch_size, progress=progress
    )
    if not quiet:
        click.echo(f"copied {result.summary()} from {result.source} to {result.target}")
    note = key_file_note(result)
    if note is not None:
        click.echo(f"note: {note}", err=True)
