"""The ``@workflow`` decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .context import ExecutionContext
from .errors import WorkflowError

if TYPE_CHECKING:
    from .engine import Engine

#: Marks "no resume value given" (``None`` is a valid resume value).
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class workflow:  # noqa: N801 - the 0.2.7 name is lowercase
    """Declare a workflow: an ``async def`` taking one ``ctx: ExecutionContext[T]`` argument.

    ``wf.run(input)`` runs it to its end (or a pause) and returns the ``ExecutionContext``;
    ``await wf.arun(input)`` does the same inside any anyio app (trio or asyncio).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        timeout: float | timedelta | None = None,
        log_limit: int | None = None,
    ):
        if not inspect.iscoroutinefunction(func):
            raise WorkflowError(
                f"@workflow needs an async function, got {getattr(func, '__name__', func)!r}"
            )
        params = [
            p
            for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(params) != 1:
            raise WorkflowError(
                f"workflow {func.__name__!r} must take exactly one argument "
                f"(ctx: ExecutionContext), it takes {len(params)}"
            )
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise WorkflowError(f"workflow timeout must be positive seconds, got {timeout!r}")
        self.func = func
        self.name = name or func.__name__
        self.timeout = float(timeout) if timeout is not None else None
        if log_limit is not None:
            from .logs import check_log_limit

            try:
                check_log_limit(log_limit)
            except ValueError as e:
                raise WorkflowError(f"workflow {func.__name__!r}: {e}") from None
        #: bytes of task log lines each execution keeps (None: FLUX_LOG_LIMIT's)
        self.log_limit = log_limit
        self.qualified_name = f"{func.__module__}.{func.__qualname__}"
        functools.update_wrapper(self, func)

    @classmethod
    def with_options(
        cls,
        *,
        name: str | None = None,
        timeout: float | timedelta | None = None,
        log_limit: int | None = None,
    ) -> Callable[[Callable[..., Any]], workflow]:
        def decorate(func: Callable[..., Any]) -> workflow:
            return cls(func, name=name, timeout=timeout, log_limit=log_limit)

        return decorate

    def run(
        self,
        input: Any = None,
        *,
        execution_id: str | None = None,
        resume_value: Any = MISSING,
        db: str | None = None,
        durability: str | None = None,
        wait: bool | float = False,
    ) -> ExecutionContext:
        """Run to the end, a pause, or a failure, and return the ``ExecutionContext``.

        With ``execution_id`` of a paused execution, resume it (``resume_value``, or ``input``
        when given, becomes the value ``pause()`` returns); of a finished one, return it as is;
        of one another live process is running, raise ExecutionLeasedError naming it (or, with
        ``wait=True`` or a number of seconds, wait for that process to finish or pause first).
        """
        import anyio

        from .loader import skipped_while_loading

        if skipped_while_loading(self):
            return self._not_run(input, execution_id)
        return anyio.run(
            functools.partial(
                self.arun,
                input,
                execution_id=execution_id,
                resume_value=resume_value,
                db=db,
                durability=durability,
                wait=wait,
            ),
            backend="trio",
        )

    async def arun(
        self,
        input: Any = None,
        *,
        execution_id: str | None = None,
        resume_value: Any = MISSING,
        engine: Engine | None = None,
        db: str | None = None,
        durability: str | None = None,
        wait: bool | float = False,
    ) -> ExecutionContext:
        """``run`` for async code: works in any anyio app, on trio or asyncio."""
        from .engine import open_engine
        from .loader import skipped_while_loading

        if skipped_while_loading(self):
            return self._not_run(input, execution_id)
        if engine is not None:
            return await engine.run(
                self, input, execution_id=execution_id, resume_value=resume_value, wait=wait
            )
        async with open_engine(db=db, durability=durability) as own:
            return await own.run(
                self, input, execution_id=execution_id, resume_value=resume_value, wait=wait
            )

    def retry(
        self, execution_id: str, *, db: str | None = None, durability: str | None = None
    ) -> ExecutionContext:
        """Retry the failed execution ``execution_id`` of this workflow and run the retry to
        its end (see ``Engine.retry``): its completed calls are not run again."""
        import anyio

        return anyio.run(
            functools.partial(self.aretry, execution_id, db=db, durability=durability),
            backend="trio",
        )

    async def aretry(
        self,
        execution_id: str,
        *,
        engine: Engine | None = None,
        db: str | None = None,
        durability: str | None = None,
    ) -> ExecutionContext:
        """``retry`` for async code."""
        from .engine import open_engine

        if engine is not None:
            return await engine.retry(execution_id, self)
        async with open_engine(db=db, durability=durability) as own:
            return await own.retry(execution_id, self)

    def _not_run(self, input: Any, execution_id: str | None) -> ExecutionContext:
        """What a run skipped while Flux loads the file returns: a context that never started
        (state CREATED, no events, nothing stored)."""
        return ExecutionContext(execution_id or "", self.name, input)

    async def __call__(self, ctx: ExecutionContext) -> Any:
        return await self.func(ctx)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"
