"""Finding workflows in Python files and in uploaded source."""

from __future__ import annotations

import ast
import contextlib
import contextvars
import hashlib
import importlib.util
import linecache
import os
import sys
import threading
import types
import warnings
from collections.abc import Iterator

import attrs

from .errors import WorkflowError, WorkflowNotFoundError
from .workflow import workflow


class RunWhileLoadingWarning(RuntimeWarning):
    """A workflow's ``run()`` was called while Flux was loading the file that defines it, and
    did not run (see :func:`skipped_while_loading`)."""


@attrs.define
class _Loading:
    origin: str
    warned: bool = False


#: The file Flux is loading in this context (``flux run``, a worker), if any.
_loading: contextvars.ContextVar[_Loading | None] = contextvars.ContextVar(
    "flux_loading", default=None
)


@contextlib.contextmanager
def loading(origin: str) -> Iterator[None]:
    """Mark the code run inside as the top level of ``origin`` being loaded by Flux."""
    token = _loading.set(_Loading(origin))
    try:
        yield
    finally:
        _loading.reset(token)


def skipped_while_loading(wf: workflow) -> bool:
    """True when Flux is loading a file (``flux run FILE``, a worker loading uploaded source)
    and its top level calls ``wf.run()``: that call must not run (the caller runs the workflow
    it names; a worker runs what it is leased). Warns once per load."""
    state = _loading.get()
    if state is None:
        return False
    if not state.warned:
        state.warned = True
        warnings.warn(
            f"{wf.name}.run() was called at the top level of {state.origin} while Flux loaded "
            "it, and did not run; put such calls under `if __name__ == \"__main__\":`",
            RunWhileLoadingWarning,
            stacklevel=3,
        )
    return True


def workflows_in(module: types.ModuleType) -> dict[str, workflow]:
    """Every ``@workflow`` defined at the top level of ``module``, by workflow name."""
    found: dict[str, workflow] = {}
    for value in vars(module).values():
        if isinstance(value, workflow):
            found[value.name] = value
    return found


def load_file(path: str) -> types.ModuleType:
    """Import a Python file as a module (registered in ``sys.modules`` so that its exception
    classes can be rebuilt from a recorded history)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise WorkflowError(f"no such file: {path}")
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"flux_user_{stem}_{digest}"
    existing = sys.modules.get(module_name)
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise WorkflowError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    directory = os.path.dirname(path)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        with loading(path):
            spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(module_name, None)
        raise WorkflowError(f"syntax error in {path} at line {e.lineno}: {e.msg}") from None
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise WorkflowError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        if added:
            sys.path.remove(directory)
    return module


def pick(found: dict[str, workflow], name: str | None, origin: str) -> workflow:
    if name:
        if name not in found:
            raise (
                WorkflowNotFoundError(name)
                if found
                else WorkflowError(f"{origin} defines no @workflow")
            )
        return found[name]
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise WorkflowError(f"{origin} defines no @workflow")
    raise WorkflowError(
        f"{origin} defines several workflows ({', '.join(sorted(found))}); "
        f"name one as FILE:WORKFLOW"
    )


def load_workflow(target: str) -> workflow:
    """``path/to/file.py`` or ``path/to/file.py:workflow_name`` -> the workflow."""
    if os.path.exists(target) or ":" not in target:
        path, name = target, ""
    else:
        path, _, name = target.rpartition(":")
    module = load_file(path)
    return pick(workflows_in(module), name or None, path)


#: CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state: two
#: threads building ASTs at once can fail with "SystemError: AST constructor recursion depth
#: mismatch" (python/cpython#106905). Every parse of this package goes through one lock.
_PARSE_LOCK = threading.Lock()


def parse_source(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source)``, one thread at a time (see :data:`_PARSE_LOCK`)."""
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)


def check_source(source: str, filename: str = "<upload>") -> list[str]:
    """Parse uploaded source without running it; return the names of the ``@workflow``-decorated
    top-level functions. A syntax error raises WorkflowError naming the line."""
    try:
        tree = parse_source(source, filename)
    except SyntaxError as e:
        raise WorkflowError(f"syntax error in {filename} at line {e.lineno}: {e.msg}") from None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                text = ast.unparse(target)
                if text in ("workflow", "flux.workflow") or text.endswith("workflow.with_options"):
                    names.append(_declared_name(deco) or node.name)
    return names


def _declared_name(deco: ast.expr) -> str | None:
    if isinstance(deco, ast.Call):
        for kw in deco.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return None


#: One lock per module name (a source hash), so that one source is run once per process even
#: when several threads load it at once: ``sys.modules`` is process-wide, and so is this guard.
_load_locks: dict[str, threading.Lock] = {}
_load_locks_guard = threading.Lock()


def load_source(source: str, module_name: str) -> types.ModuleType:
    """Run uploaded workflow source as a module named ``module_name`` (registered in
    ``sys.modules``). Uploading source is running code: only trusted callers may do it.

    ``module_name`` names one version of the source (the worker uses its hash): loading the same
    name again, from any thread and even while a first load runs, returns the module the first
    load made, so the classes replay rebuilds are the classes the running code catches."""
    with _load_locks_guard:
        lock = _load_locks.setdefault(module_name, threading.Lock())
    with lock:
        existing = sys.modules.get(module_name)
        if existing is not None and getattr(existing, "__flux_loaded__", False):
            return existing
        module = types.ModuleType(module_name)
        module.__file__ = f"<{module_name}>"
        sys.modules[module_name] = module
        # tracebacks of uploaded code show its lines, as they do for a file
        linecache.cache[module.__file__] = (
            len(source),
            None,
            source.splitlines(True),
            module.__file__,
        )
        try:
            with loading(f"uploaded source {module_name}"):
                exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        module.__flux_loaded__ = True  # type: ignore[attr-defined]
        return module
