"""Shared pieces of the ``flux`` command line: errors as one line, JSON arguments, store and
server options, and how an execution (a failed one with its traceback) is printed."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncclick as click

from .runtime.context import to_jsonable
from .runtime.errors import FluxError
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


def local_store_options(
    func: Callable[..., Any] | None = None, *, lease: bool = True
) -> Any:
    """``--db``, ``--store``, ``--durability`` and (with ``lease``) ``--lease-ttl`` for commands
    that open the local store (``--store``/``FLUX_STORE`` wins over ``--db``/``FLUX_DB``)."""
    if func is None:
        return functools.partial(local_store_options, lease=lease)

    @click.option("--db", "db", envvar="FLUX_DB", help="SQLite file (default: .flux/flux.db)")
    @click.option(
        "--store",
        "store",
        envvar="FLUX_STORE",
        help="the store: a SQLite path, sqlite:///path or postgresql://user:pass@host/db",
    )
    @click.option(
        "--durability",
        type=click.Choice(["full", "normal"]),
        envvar="FLUX_DURABILITY",
        help="full (fsync each commit, default) or normal",
    )
    @functools.wraps(func)
    async def wrapper(
        *args: Any,
        db: str | None,
        store: str | None,
        durability: str | None,
        **kwargs: Any,
    ) -> Any:
        ttl = kwargs.pop("embedded_lease_ttl", None)
        try:
            settings = Settings.from_env(
                db_path=db, durability=durability, store=store or None, lease_ttl=ttl
            )
        except ValueError as e:
            _fail(str(e), 2)
        return await func(*args, settings=settings, **kwargs)

    if lease:
        return click.option(
            "--lease-ttl",
            "embedded_lease_ttl",
            type=click.FloatRange(min=0, min_open=True),
            envvar="FLUX_LEASE_TTL",
            help="seconds this process's lease on an execution lasts without a heartbeat "
            "(default 15)",
        )(wrapper)
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


def _failure_lines(error: Any, events: Any) -> tuple[list[str], str]:
    """The traceback lines (user frames) and the one-line headline of a failed execution; for
    an exception group, each failure with its call and traceback."""
    from .runtime.failures import describe_failure

    failure = describe_failure(error, events or ())
    where = f" at task {failure.call_id}" if failure.call_id else ""
    lines: list[str] = []
    for n, part in enumerate(failure.parts, 1):
        at = f" at task {part.call_id}" if part.call_id else ""
        lines.append(f"failure {n} of {len(failure.parts)}{at}: {part.headline}")
        lines.extend(f"  {line}" for line in part.traceback.splitlines())
    if not failure.parts and failure.traceback:
        lines = failure.traceback.splitlines()
    return lines, f"failed{where}: {failure.headline}"


def _fail_with_traceback(workflow_name: str, error: Any, events: Any) -> None:
    lines, headline = _failure_lines(error, events)
    for line in lines:
        click.echo(line, err=True)
    _fail(f"workflow {workflow_name} {headline}")


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


def sqlite_file(settings: Settings) -> str | None:
    """The SQLite file the settings' store names, or None for a PostgreSQL store."""
    from .runtime.settings import parse_store

    where = parse_store(settings.store)
    return where.target if where.kind == "sqlite" else None


def _existing_store(settings: Settings, execution_id: str | None = None) -> None:
    """Commands on existing executions never create a database: a missing SQLite file is an
    error naming it (and the execution asked for). A PostgreSQL store is opened as it is."""
    import os

    path = sqlite_file(settings)
    if path is not None and not os.path.isfile(path):
        what = f"no execution with id {execution_id!r}: " if execution_id else ""
        _fail(
            f"{what}no Flux database at {path} (nothing has run with this store "
            "yet; --db, --store or FLUX_STORE names another, --server-url asks a server)"
        )


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
    if data.get("retry_of"):
        click.echo(f"retry of   {data['retry_of']}")
    if data.get("retried_by"):
        click.echo(f"retried by {', '.join(data['retried_by'])}")
    click.echo(f"input      {_show(data.get('input'))}")
    if failure is None:
        click.echo(f"output     {_show(data.get('output'))}")
    else:
        calls = [p.call_id for p in failure.parts if p.call_id] or [failure.call_id]
        click.echo(f"error      {failure.headline}")
        click.echo(f"failed at  {', '.join(c for c in calls if c) or 'the workflow body'}")
    for e in data.get("events") or [] if with_events else []:
        click.echo(event_line(e))
    if failure is not None:
        for line in _failure_lines(data.get("output"), data.get("events"))[0]:
            click.echo(line)


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


