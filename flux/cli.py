"""The ``flux`` command line (asyncclick on trio). Thin: parsing and printing only.

The commands live in ``flux._cli_local`` (``run``, ``executions``, ``secrets``, ``store``) and
``flux._cli_server`` (``start``, ``workflow``); this module assembles them and is the entry point.
"""

from __future__ import annotations

import warnings
from typing import Any

import asyncclick as click

from ._cli_local import executions, run_command, secrets, store_group
from ._cli_retry import executions_retry
from ._cli_schedules import schedules_group, start_scheduler
from ._cli_server import start, workflow_group


@click.group()
@click.version_option(package_name="flux-core", prog_name="flux")
async def cli() -> None:
    """Flux: durable workflows on structured concurrency."""


executions.add_command(executions_retry)
for _command in (run_command, executions, secrets, store_group, start, workflow_group):
    cli.add_command(_command)
cli.add_command(schedules_group)
start.add_command(start_scheduler)


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
