"""``flux executions retry ID``: retry a failed execution, embedded or on a server."""

from __future__ import annotations

import asyncclick as click

from ._cli_common import (
    _existing_store,
    _fail,
    _finish_remote,
    _remote_client,
    flux_errors,
    local_store_options,
    server_option,
)
from .runtime.settings import Settings


@click.command("retry")
@click.argument("execution_id")
@click.argument("target", metavar="[FILE[:WORKFLOW]]", required=False)
@click.option(
    "--wait",
    is_flag=True,
    help="wait until the retry completes, fails or pauses (embedded: runs it here, needs FILE)",
)
@click.option(
    "--latest",
    is_flag=True,
    help="(with --server-url) run the workflow's latest version, not the original's",
)
@server_option
@local_store_options
@flux_errors
async def executions_retry(
    execution_id: str,
    target: str | None,
    wait: bool,
    latest: bool,
    server_url: str | None,
    token: str | None,
    settings: Settings,
) -> None:
    """Retry a FAILED execution: a new execution whose history is the original's up to its
    first failure, so the calls that completed are not run again and the failed one is.

    With --server-url the server queues it for a worker (the original's workflow version, or
    the latest with --latest). Embedded, give the workflow's FILE[:WORKFLOW] to run the retry
    here (fixed code, same calls); without FILE it is only created, for `flux run FILE
    --execution-id NEW` to run.
    """
    if server_url:
        if target:
            _fail("with --server-url the server runs the workflow's stored source: give no FILE")
        async with _remote_client(server_url, token) as client:
            made = await client.retry(execution_id, latest=latest, wait=wait)
        click.echo(f"execution {made['execution_id']}: retry of {execution_id}", err=True)
        for child in made.get("child_retries") or ():
            click.echo(f"  with the retry {child} of a failed subworkflow", err=True)
        if wait:
            _finish_remote(made)
        else:
            click.echo(made["execution_id"])
        return
    if latest:
        _fail("--latest needs --server-url (embedded, the retry runs the FILE you give)")
    if wait and not target:
        _fail("embedded, --wait runs the retry here: give the workflow's FILE[:WORKFLOW]")
    from ._cli_local import _finish
    from .runtime.engine import open_engine
    from .runtime.loader import load_workflow

    wf = load_workflow(target) if target else None
    _existing_store(settings, execution_id)
    async with open_engine(settings) as engine:
        ctx = await engine.retry(execution_id, wf)
    click.echo(f"execution {ctx.execution_id}: retry of {execution_id}", err=True)
    if wf is None:
        click.echo(ctx.execution_id)
        click.echo(f"run it with: flux run FILE --execution-id {ctx.execution_id}", err=True)
        return
    _finish(ctx)


__all__ = ["executions_retry"]
