"""Checks of uploaded workflow source before it is stored (nothing in it is run here).

The server registers a workflow under the name its source declares, read from the syntax tree:
``@workflow`` gives the function's name, ``@workflow.with_options(name="...")`` the given
name. That name must be the one the worker finds when it runs the source, so it must be a plain
string literal, and a usable path segment of the HTTP API: not empty, no ``/``, no control
characters, at most :data:`MAX_WORKFLOW_NAME` characters. Anything else is refused at upload,
naming the function, instead of registering a name no run can reach.
"""

from __future__ import annotations

import ast

from flux.runtime.errors import WorkflowError
from flux.runtime.loader import check_source, parse_source

__all__ = ["MAX_WORKFLOW_NAME", "workflow_names"]

#: Longest workflow name accepted at upload.
MAX_WORKFLOW_NAME = 200


def _is_workflow_decorator(deco: ast.expr) -> bool:
    target = deco.func if isinstance(deco, ast.Call) else deco
    text = ast.unparse(target)
    return text in ("workflow", "flux.workflow") or text.endswith("workflow.with_options")


def _name_problem(deco: ast.expr) -> str | None:
    """What is wrong with the ``name=`` a workflow decorator gives, or None."""
    if not isinstance(deco, ast.Call):
        return None
    if deco.args:
        return "takes no positional arguments: give the name as name='...'"
    for kw in deco.keywords:
        if kw.arg is None:
            return "passes **options: give the name as a string literal, name='...'"
        if kw.arg != "name":
            continue
        value = kw.value
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            return (
                f"has name={ast.unparse(value)[:60]}, which is not a string literal: the "
                "server reads names from the source without running it"
            )
        name = value.value
        if not name:
            return "has an empty name"
        if "/" in name:
            return f"has name {name[:60]!r}, which contains '/' (names are URL path segments)"
        for i, c in enumerate(name):
            if not c.isprintable():
                return f"has name {name[:60]!r}, with a control character ({c!r} at index {i})"
        if len(name) > MAX_WORKFLOW_NAME:
            return f"has a name of {len(name)} characters, over the limit of {MAX_WORKFLOW_NAME}"
    return None


def workflow_names(source: str, filename: str = "<upload>") -> list[str]:
    """The names of the workflows ``source`` defines (as :func:`check_source` reads them).
    Raises WorkflowError naming the line on a syntax error, and naming the function whose
    ``@workflow.with_options(name=...)`` is not a usable literal name."""
    names = check_source(source, filename)
    tree = parse_source(source, filename)
    for node in tree.body:
        if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if not _is_workflow_decorator(deco):
                continue
            problem = _name_problem(deco)
            if problem is not None:
                raise WorkflowError(
                    f"{filename}, line {deco.lineno}: the workflow decorator of function "
                    f"{node.name!r} {problem}"
                )
    return names
