"""The ``@task`` decorator: a task is a function whose every call is recorded and replayed."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import attrs

from . import frames
from .cache_identity import cache_key, check_cache_identity


@attrs.frozen
class TaskMetadata:
    """Injected as ``metadata=`` into a task declared with ``metadata=True``."""

    task_id: str
    task_name: str
    execution_id: str
    attempt: int = 1


def _seconds(value: float | timedelta | None, option: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"task option {option}= must be seconds or a timedelta, got {value!r}")
    if value < 0:
        raise ValueError(f"task option {option}= must not be negative, got {value!r}")
    return float(value)


@attrs.frozen
class TaskOptions:
    """The options of a task, validated once when the task is declared."""

    name: str | None = None
    retry_max_attempts: int = 0
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    timeout: float | None = None
    fallback: Callable[..., Any] | None = None
    rollback: Callable[..., Any] | None = None
    secret_requests: tuple[str, ...] = ()
    cache: bool | float = False  # True, or a time-to-live in seconds
    metadata: bool = False
    rollback_timeout: float = 30.0

    @classmethod
    def build(
        cls,
        name: str | None = None,
        retry_max_attempts: int = 0,
        retry_delay: float | timedelta = 1,
        retry_backoff: float = 2,
        timeout: float | timedelta | None = None,
        fallback: Callable[..., Any] | None = None,
        rollback: Callable[..., Any] | None = None,
        secret_requests: Iterable[str] | None = None,
        cache: bool | timedelta | float = False,
        metadata: bool = False,
        rollback_timeout: float | timedelta = 30,
    ) -> TaskOptions:
        if not isinstance(retry_max_attempts, int) or retry_max_attempts < 0:
            raise ValueError(
                f"retry_max_attempts must be a non-negative int, got {retry_max_attempts!r}"
            )
        if not isinstance(retry_backoff, int | float) or retry_backoff <= 0:
            raise ValueError(f"retry_backoff must be a positive number, got {retry_backoff!r}")
        for label, fn in (("fallback", fallback), ("rollback", rollback)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{label}= must be callable, got {fn!r}")
        secrets = tuple(secret_requests or ())
        if any(not isinstance(s, str) or not s for s in secrets):
            raise TypeError(f"secret_requests must be a list of secret names, got {secrets!r}")
        if isinstance(cache, timedelta):
            cache_value: bool | float = cache.total_seconds()
        elif isinstance(cache, bool):
            cache_value = cache
        elif isinstance(cache, int | float) and cache > 0:
            cache_value = float(cache)
        else:
            raise TypeError(f"cache= must be True, False or a timedelta, got {cache!r}")
        return cls(
            name=name,
            retry_max_attempts=retry_max_attempts,
            retry_delay=_seconds(retry_delay, "retry_delay") or 0.0,
            retry_backoff=float(retry_backoff),
            timeout=_seconds(timeout, "timeout") or None,
            fallback=fallback,
            rollback=rollback,
            secret_requests=secrets,
            cache=cache_value,
            metadata=bool(metadata),
            rollback_timeout=_seconds(rollback_timeout, "rollback_timeout") or 30.0,
        )

    def retry_wait(self, k: int) -> float:
        """Seconds to wait before retry ``k`` (1-based): ``retry_delay * retry_backoff**(k-1)``."""
        return self.retry_delay * self.retry_backoff ** (k - 1)


def _check_injected(func: Callable[..., Any], options: TaskOptions) -> None:
    """A task that asks for ``secrets`` or ``metadata`` must be able to receive them as keyword
    arguments: a parameter of that name (not positional-only) or ``**kwargs``."""
    wanted = [
        (name, option)
        for name, option, on in (
            ("secrets", "secret_requests", bool(options.secret_requests)),
            ("metadata", "metadata=True", options.metadata),
        )
        if on
    ]
    if not wanted:
        return
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: not checked
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name, option in wanted:
        p = params.get(name)
        if p is None or p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            label = getattr(func, "__qualname__", repr(func))
            raise TypeError(
                f"task {label!r} is declared with {option} but has no {name!r} parameter "
                f"to receive it: add `{name}` (or **kwargs) to its parameters"
            )


class task:  # noqa: N801 - the 0.2.7 name is lowercase
    """Declare a task: ``@task`` or ``@task.with_options(...)`` on an async or a sync function.

    Inside a workflow, calling a task returns an awaitable; awaiting it records the call in the
    history, or replays its recorded outcome. Outside a workflow the function simply runs.
    """

    TaskMetadata = TaskMetadata

    def __init__(self, func: Callable[..., Any], options: TaskOptions | None = None):
        if not callable(func):
            raise TypeError(f"@task needs a function, got {func!r}")
        self.func = func
        self.options = options or TaskOptions()
        self.is_async = inspect.iscoroutinefunction(func)
        self.name = self.options.name or func.__name__
        self.qualified_name = f"{func.__module__}.{func.__qualname__}"
        self._signature: inspect.Signature | None = None
        self._templated = "{" in self.name
        _check_injected(func, self.options)
        functools.update_wrapper(self, func)
        if self.options.cache:
            check_cache_identity(self)  # two tasks of one factory must not share entries

    @classmethod
    def with_options(cls, **options: Any) -> Callable[[Callable[..., Any]], task]:
        built = TaskOptions.build(**options)

        def decorate(func: Callable[..., Any]) -> task:
            return cls(func, built)

        return decorate

    def __call__(self, *args: Any, **kwargs: Any) -> TaskCall:
        return TaskCall(self, args, kwargs)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def cache_key(self, args: tuple, kwargs: dict) -> str | None:
        """The cache entry of a call: its arguments and the task's whole identity (qualified
        name, closure values, defaults; see :mod:`flux.runtime.cache_identity`). None when this
        call cannot be cached."""
        return cache_key(self, args, kwargs)

    def display_name(self, args: tuple, kwargs: dict) -> str:
        """The task name, with ``{arg}`` placeholders filled from the call's arguments."""
        if not self._templated:
            return self.name
        if self._signature is None:
            self._signature = inspect.signature(self.func)
        try:
            bound = self._signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            return self.name.format(**bound.arguments)
        except (KeyError, IndexError, TypeError, ValueError):
            return self.name

    async def map(self, items: Iterable[Any], *, max_concurrency: int | None = None) -> list[Any]:
        """Run this task once per item concurrently; results in item order."""
        from .patterns import parallel

        return await parallel(
            *(self(item) for item in items), max_concurrency=max_concurrency, _name="map"
        )

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class TaskCall:
    """One pending call of a task; awaiting it runs (or replays) the call."""

    __slots__ = ("task", "args", "kwargs", "_awaited")

    def __init__(self, task: task, args: tuple, kwargs: dict):
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self._awaited = False

    def __await__(self):
        return self.run().__await__()

    async def run(self, call_id: str | None = None) -> Any:
        if self._awaited:
            raise RuntimeError(f"the call of task {self.task.name!r} was already awaited")
        self._awaited = True
        frame = frames.current()
        if frame is None:
            return await call_plain(self.task.func, self.args, self.kwargs)
        return await frame.execution.run_task(frame, self, call_id)

    def close(self) -> None:
        """Mark this call as never to be awaited (so no warning is given)."""
        self._awaited = True

    def __del__(self) -> None:
        # like "coroutine ... was never awaited": a call that is never awaited never runs
        if not self._awaited:
            import warnings

            warnings.warn(
                f"the call of task {self.task.name!r} was never awaited, so it never ran "
                "(write `await {name}(...)`)".replace("{name}", self.task.name),
                RuntimeWarning,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        return f"<call of task {self.task.name}>"


async def call_plain(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run an async or sync callable; sync ones go to a worker thread."""
    if inspect.iscoroutinefunction(func):
        return await func(*args, **kwargs)
    import contextvars

    import anyio

    ctx = contextvars.copy_context()
    result = await anyio.to_thread.run_sync(
        functools.partial(ctx.run, func, *args, **kwargs), abandon_on_cancel=True
    )
    if inspect.isawaitable(result):
        return await result
    return result
