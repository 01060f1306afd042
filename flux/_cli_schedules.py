"""``flux schedules ...`` (the local store's, or a server's with --server-url) and
``flux start scheduler`` (runs the local store's schedules in this process)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncclick as click

from ._cli_common import (
    _existing_store,
    _fail,
    _input_arg,
    _remote_client,
    _show,
    _when,
    flux_errors,
    local_store_options,
    server_option,
)
from .runtime.context import to_jsonable
from .runtime.schedules import CATCH_UP_POLICIES, OVERLAP_POLICIES
from .runtime.settings import Settings

__all__ = ["schedules_group", "start_scheduler"]

Local = Callable[[Any], Awaitable[Any]]
Remote = Callable[[Any], Awaitable[Any]]


def _plain(value: Any) -> Any:
    """A view of the engine (attrs) or a server's JSON, as plain JSON data."""
    import attrs

    if attrs.has(type(value)):
        value = attrs.asdict(value, recurse=True)
    elif isinstance(value, list):
        value = [_plain(v) for v in value]
    return to_jsonable(value)


async def _on(
    settings: Settings,
    server_url: str | None,
    token: str | None,
    local: Local,
    remote: Remote,
    *,
    writes: bool = False,
) -> Any:
    """Run ``remote(client)`` against the server, else ``local(engine.schedules)``."""
    if server_url:
        async with _remote_client(server_url, token) as client:
            return _plain(await remote(client))
    from .runtime.engine import open_engine

    if not writes:
        _existing_store(settings)
    async with open_engine(settings, cancel_poll=None) as engine:
        return _plain(await local(engine.schedules))


def _target(func: Any) -> Any:
    return flux_errors(local_store_options(server_option(func), lease=False))


@click.group("schedules")
async def schedules_group() -> None:
    """Run workflows on a schedule (cron in a time zone, or every interval): the local
    store's schedules, or a server's with --server-url (or FLUX_SERVER_URL)."""


@schedules_group.command("create")
@click.argument("name")
@click.option("--workflow", "workflow_name", required=True, help="the workflow's name")
@click.option("--cron", help='a cron expression, e.g. "0 2 * * *" or @hourly')
@click.option("--timezone", help="the cron's IANA time zone (default UTC), e.g. Europe/Berlin")
@click.option("--every", help="an interval instead of --cron: 30s, 5m, 1h30m, 2d, 1w")
@click.option("--input", "input_json", help="the JSON input of each execution")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAP_POLICIES),
    default="skip",
    show_default=True,
    help="a due time while the previous execution still runs: skip it, allow it, or keep "
    "one waiting (buffer-one)",
)
@click.option(
    "--catch-up",
    type=click.Choice(CATCH_UP_POLICIES),
    default="none",
    show_default=True,
    help="due times missed while nothing ran: none, the last one, or all (at most 100)",
)
@click.option("--paused", is_flag=True, help="create it paused")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_target
async def schedules_create(
    name: str,
    workflow_name: str,
    cron: str | None,
    timezone: str | None,
    every: str | None,
    input_json: str | None,
    overlap: str,
    catch_up: str,
    paused: bool,
    as_json: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Create schedule NAME of workflow --workflow (on a server: a registered one)."""
    if (cron is None) == (every is None):
        _fail("give either --cron or --every", 2)
    if timezone is not None and cron is None:
        _fail("--timezone goes with --cron", 2)
    value = _input_arg(input_json, "--input")
    options = dict(
        cron=cron,
        timezone=timezone,
        every=every,
        input=value,
        overlap=overlap,
        catch_up=catch_up,
        paused=paused,
    )
    shown = await _on(
        settings,
        server_url,
        token,
        lambda s: s.create(name, workflow_name, **options),
        lambda c: c.schedule_create(name, workflow_name, **options),
        writes=True,
    )
    if as_json:
        click.echo(json.dumps(shown))
        return
    click.echo(f"schedule {name} created: {_when_text(shown)}; next {_next(shown)}")


def _when_text(s: dict[str, Any]) -> str:
    if s.get("every"):
        return f"every {s['every']}"
    return f"cron {s.get('cron')!r} in {s.get('timezone')}"


def _next(s: dict[str, Any]) -> str:
    if s.get("paused"):
        return "(paused)"
    return _when(s.get("next_due_at")) + " UTC" if s.get("next_due_at") else "-"


@schedules_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_target
async def schedules_list(
    as_json: bool, server_url: str | None, token: str | None, settings: Settings
) -> None:
    """List the schedules."""
    rows = await _on(settings, server_url, token, lambda s: s.list(), lambda c: c.schedules_list())
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no schedules", err=True)
        return
    click.echo(f"{'NAME':24}  {'WORKFLOW':20}  {'WHEN':32}  {'NEXT (UTC)':19}  LAST EXECUTION")
    for s in rows:
        click.echo(
            f"{s['name'][:24]:24}  {s['workflow'][:20]:20}  {_when_text(s)[:32]:32}  "
            f"{_next(s).removesuffix(' UTC'):19}  {s.get('last_execution_id') or '-'}"
        )


@schedules_group.command("show")
@click.argument("name")
@click.option("--upcoming", type=click.IntRange(0, 100), default=5, show_default=True)
@click.option("--recent", type=click.IntRange(0, 200), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_target
async def schedules_show(
    name: str,
    upcoming: int,
    recent: int,
    as_json: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Show a schedule, its next due times and the executions it started (with states)."""
    data = await _on(
        settings,
        server_url,
        token,
        lambda s: s.show(name, upcoming=upcoming, recent=recent),
        lambda c: c.schedule_show(name, upcoming=upcoming, recent=recent),
    )
    if as_json:
        click.echo(json.dumps(data))
        return
    s = data["schedule"]
    click.echo(f"schedule  {s['name']}{'  (paused)' if s['paused'] else ''}")
    click.echo(f"workflow  {s['workflow']}")
    click.echo(f"when      {_when_text(s)}")
    click.echo(f"input     {_show(s.get('input'))}")
    click.echo(f"policies  overlap {s['overlap']}, catch-up {s['catch_up']}")
    if s.get("buffered_at"):
        click.echo(f"buffered  {_when(s['buffered_at'])} UTC (starts when the running one ends)")
    if s.get("trigger_pending"):
        click.echo("trigger   pending (starts when a scheduler or the server looks)")
    click.echo("next due (UTC):")
    for t in data["upcoming"] or ["-"]:
        click.echo(f"  {_when(t) if t != '-' else t}")
    click.echo("recent:")
    if not data["recent"]:
        click.echo("  nothing yet")
    for f in data["recent"]:
        what = f["execution_id"] or "-"
        state = f" {f['state']}" if f.get("state") else ""
        detail = f"  ({f['detail']})" if f.get("detail") else ""
        click.echo(f"  {_when(f['due_at'])}  {f['outcome']:9}  {what}{state}{detail}")


def _simple(command: str, summary: str) -> Any:
    """``pause``, ``resume``, ``delete`` and ``trigger``: one schedule, one line printed."""

    @schedules_group.command(command, help=summary)
    @click.argument("name")
    @_target
    async def run(
        name: str, server_url: str | None, token: str | None, settings: Settings
    ) -> None:
        local = {
            "pause": lambda s: s.pause(name),
            "resume": lambda s: s.resume(name),
            "delete": lambda s: s.delete(name),
            "trigger": lambda s: s.trigger(name),
        }[command]
        remote = {
            "pause": lambda c: c.schedule_pause(name),
            "resume": lambda c: c.schedule_resume(name),
            "delete": lambda c: c.schedule_delete(name),
            "trigger": lambda c: c.schedule_trigger(name),
        }[command]
        result = await _on(settings, server_url, token, local, remote)
        if command == "trigger":
            click.echo(f"schedule {name}: triggered execution {result}")
            if not server_url:
                click.echo(
                    "it starts when a scheduler on this store looks (flux start scheduler)",
                    err=True,
                )
        elif command == "resume":
            click.echo(f"schedule {name} resumed; next {_next(result)}")
        else:
            click.echo(f"schedule {name} {command}d" if command != "pause" else
                       f"schedule {name} paused")

    return run


_simple("pause", "Pause a schedule: nothing more starts until it is resumed.")
_simple("resume", "Resume a schedule (due times that passed while paused are not caught up).")
_simple("delete", "Delete a schedule (the executions it started stay).")
_simple(
    "trigger",
    "Start one execution now, whatever the overlap policy (even when paused), by the runner "
    "of the schedule: the server, or a running `flux start scheduler`.",
)


@click.command("scheduler")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="longest sleep between two looks at the store (changes by other processes)",
)
@click.option(
    "--max-running",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="executions run at once (the others wait, SCHEDULED)",
)
@click.option("--log-level", default="INFO", show_default=True)
@local_store_options
@flux_errors
async def start_scheduler(
    files: tuple[str, ...], refresh: float, max_running: int, log_level: str, settings: Settings
) -> None:
    """Run the local store's schedules of the workflows in FILES (none: the workflows uploaded
    to the store), in this process (like `flux run`), until Ctrl+C or SIGTERM, which stop the
    executions it runs (the next scheduler goes on with them) rather than cancel them."""
    import logging

    from .runtime.scheduler import serve, workflows_from_files

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    workflows = workflows_from_files(files) if files else None

    def started(engine: Any, names: list[str]) -> None:
        click.echo(f"scheduler running workflow(s) {', '.join(names)}", err=True)

    await serve(
        settings,
        workflows,
        refresh=refresh,
        max_running=max_running,
        handle_signals=True,
        started=started,
    )
