"""Structured concurrency patterns: ``parallel``, ``map`` (on tasks), ``pipeline`` and ``call``.

Each pattern is a frame of its own: ``parallel#1/say_hi#0``. Children get their ids in argument
order before any of them runs, so ids never depend on scheduling. Children run in one anyio task
group: the first failure cancels every sibling (they record TASK_CANCELLED and run their
rollbacks), and the group raises that failure (an ExceptionGroup when several failed for real).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from . import frames
from .errors import WorkflowError
from .task import TaskCall, task

if TYPE_CHECKING:
    from .workflow import workflow

_CHILD_NAMESPACE = uuid.UUID("6f1f7c7e-6a53-4d1c-9a57-6a6c0d9b1f10")


def _child_name(item: Any) -> str:
    if isinstance(item, TaskCall):
        return item.task.display_name(item.args, item.kwargs)
    return getattr(item, "__name__", None) or getattr(item, "__qualname__", None) or "call"


async def _run_child(item: Any, frame: frames.Frame | None, call_id: str | None) -> Any:
    token = frames.enter(frame) if frame is not None else None
    try:
        if isinstance(item, TaskCall):
            return await item.run(call_id)
        if inspect.isawaitable(item):
            return await item
        raise TypeError(f"parallel() takes task calls or awaitables, got {item!r}")
    finally:
        if token is not None:
            frames.leave(token)


def _unwrap(group: BaseExceptionGroup, what: str = "parallel") -> BaseException:
    """The one real failure of a task group, or an ExceptionGroup naming how many failed."""
    cancelled = anyio.get_cancelled_exc_class()
    real = [e for e in group.exceptions if not isinstance(e, cancelled)]
    if len(real) == 1 and len(group.exceptions) == 1:
        return real[0]
    if real and len(real) == len(group.exceptions) and all(isinstance(e, Exception) for e in real):
        return ExceptionGroup(f"{what}: {len(real)} calls failed", real)
    return group


async def parallel(
    *calls: Awaitable[Any], max_concurrency: int | None = None, _name: str = "parallel"
) -> list[Any]:
    """Run the calls concurrently and return their results in argument order."""
    if len(calls) == 1 and isinstance(calls[0], list | tuple):
        calls = tuple(calls[0])
    if max_concurrency is not None and (
        not isinstance(max_concurrency, int)
        or isinstance(max_concurrency, bool)
        or max_concurrency < 1
    ):
        for c in calls:
            _close(c)
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    parent = frames.current()
    results: list[Any] = [None] * len(calls)
    limiter = anyio.Semaphore(max_concurrency) if max_concurrency else None
    if parent is not None:
        pid = parent.next_id(_name)
        try:
            parent.execution.check_position(pid, _name, concurrent=True)
        except BaseException:
            for c in calls:
                _close(c)
            raise
        group = parent.child(pid)
        ids: list[str | None] = [group.next_id(_child_name(c)) for c in calls]
        # each child runs in a frame of its own, whose id is the child's id
        child_frames: list[frames.Frame | None] = [group.child(i) for i in ids]  # type: ignore[arg-type]
        held = parent.execution._release(parent)
    else:
        ids = [None] * len(calls)
        child_frames = [None] * len(calls)
        held = False

    async def runner(i: int) -> None:
        if limiter is None:
            results[i] = await _run_child(calls[i], child_frames[i], ids[i])
        else:
            async with limiter:
                results[i] = await _run_child(calls[i], child_frames[i], ids[i])

    try:
        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(calls)):
                    tg.start_soon(runner, i)
        except BaseExceptionGroup as group_error:
            error = _unwrap(group_error, _name)
            if error is group_error:
                raise
            raise error from None
    finally:
        for c in calls:
            _close(c)
        if parent is not None:
            parent.execution._acquire(held)
    return results


def _close(item: Any) -> None:
    if isinstance(item, TaskCall):
        item.close()
    elif inspect.iscoroutine(item) and inspect.getcoroutinestate(item) == "CORO_CREATED":
        item.close()


async def pipeline(*tasks: task | Callable[[Any], Awaitable[Any]], input: Any = None) -> Any:
    """Feed ``input`` to the first task, its output to the next, and so on; return the last."""
    if len(tasks) == 1 and isinstance(tasks[0], list | tuple):
        tasks = tuple(tasks[0])
    parent = frames.current()
    if parent is None:
        value = input
        for t in tasks:
            value = await t(value)
        return value
    pid = parent.next_id("pipeline")
    parent.execution.check_position(pid, "pipeline")
    frame = parent.child(pid)
    held = parent.execution._release(parent)
    token = frames.enter(frame)
    try:
        value = input
        for t in tasks:
            step = t(value)
            value = await (step.run() if isinstance(step, TaskCall) else step)
        return value
    finally:
        frames.leave(token)
        parent.execution._acquire(held)


def child_execution_id(parent_id: str, call_id: str) -> str:
    """The id of the child started at ``call_id`` by execution ``parent_id`` (stable)."""
    return uuid.uuid5(_CHILD_NAMESPACE, f"{parent_id}/{call_id}").hex


async def call(child: workflow, input: Any = None) -> Any:
    """Run ``child`` as a subworkflow (an execution of its own) and return its output.

    Its id derives from this execution's id and the call id, so a replay of the parent never
    starts it twice; the child's failure raises here; a paused child pauses the parent.
    """
    from .workflow import workflow as workflow_cls

    if not isinstance(child, workflow_cls):
        raise WorkflowError(f"call() takes a @workflow, got {child!r}")
    frame = frames.current()
    if frame is None:
        ctx = await child.arun(input)
        return _child_result(ctx)
    return await frame.execution.call_child(frame, child, input)


def _child_result(ctx: Any) -> Any:
    if ctx.has_failed and isinstance(ctx.output, BaseException):
        raise ctx.output
    return ctx.output


__all__ = ["parallel", "pipeline", "call", "child_execution_id"]
