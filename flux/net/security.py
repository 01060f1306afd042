"""Security of the server: bearer tokens, the loopback rule, CORS origins, declared secrets.

No I/O and no framework here; :mod:`flux.net.server` applies these rules to requests.

* Tokens are compared in constant time (:func:`hmac.compare_digest` over UTF-8 bytes).
* ``Authorization: Bearer <token>`` missing or malformed -> 401 ``unauthorized`` (with a
  ``WWW-Authenticate: Bearer`` header); present but wrong -> 403 ``forbidden``.
* Without both tokens the server may only bind a loopback address (:func:`check_bind`).
"""

from __future__ import annotations

import ast
import hmac
import ipaddress
import re
from collections.abc import Iterable

import attrs

from flux.runtime.errors import FluxError
from flux.runtime.loader import parse_source

__all__ = [
    "AuthFailure",
    "ServerConfigError",
    "check_bearer",
    "check_bind",
    "check_origins",
    "declared_secrets",
    "is_loopback",
    "token_matches",
]


class ServerConfigError(FluxError):
    """The server was asked to start in an unsafe or impossible configuration."""


@attrs.frozen
class AuthFailure:
    """Why a request is refused: the HTTP status, the error code and a detail for the user."""

    status: int
    code: str
    detail: str


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_token: str | None, worker_token: str | None) -> str | None:
    """Refuse (:class:`ServerConfigError`) to bind a non-loopback ``host`` unless both tokens are
    set. Returns a notice to print at start when serving without tokens, else None."""
    missing = [
        flag
        for flag, token in (
            ("--api-token (FLUX_API_TOKEN)", api_token),
            ("--worker-token (FLUX_WORKER_TOKEN)", worker_token),
        )
        if not token
    ]
    if not missing:
        return None
    if not is_loopback(host):
        raise ServerConfigError(
            f"refusing to bind {host}: it is not a loopback address and the server has no "
            f"{' and no '.join(missing)}. Anyone who can reach the port could run code on "
            "your workers and read your secrets. Set both tokens, or bind 127.0.0.1 (and put "
            "a reverse proxy in front, see docs/deployment.md)."
        )
    return (
        f"no {' and no '.join(missing)}: serving on loopback ({host}) only; "
        "set both tokens to bind another address"
    )


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (the time does not depend on where the strings differ)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_bearer(header: str | None, expected: str | None) -> AuthFailure | None:
    """Check an ``Authorization`` header against ``expected`` (None: no token required)."""
    if not expected:
        return None
    if not header:
        return AuthFailure(
            401, "unauthorized", "this server requires an API token: Authorization: Bearer <token>"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return AuthFailure(
            401, "unauthorized", "malformed Authorization header: expected 'Bearer <token>'"
        )
    if not token_matches(token, expected):
        return AuthFailure(403, "forbidden", "the API token is not valid")
    return None


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """Validate CORS origins: explicit ``scheme://host[:port]`` values only, never ``*``."""
    out = []
    for origin in origins:
        origin = origin.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*" or "*" in origin:
            raise ServerConfigError("a CORS origin must be explicit: '*' is not allowed")
        if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
            raise ServerConfigError(
                f"CORS origin {origin!r} must look like https://host[:port] (no path)"
            )
        out.append(origin)
    return tuple(out)


def declared_secrets(source: str) -> frozenset[str] | None:
    """The secret names the tasks of a workflow source declare with ``secret_requests=[...]``
    (literal strings), or None when some ``secret_requests`` is not a literal list of strings
    (then the server cannot tell, and any name is allowed for a leased execution)."""
    try:
        tree = parse_source(source)
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg != "secret_requests":
                continue
            value = kw.value
            if isinstance(value, ast.List | ast.Tuple | ast.Set):
                for item in value.elts:
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        names.add(item.value)
                    else:
                        return None
            elif isinstance(value, ast.Constant) and value.value is None:
                continue
            else:
                return None
    return frozenset(names)


def _template_pattern(name: str) -> re.Pattern[str]:
    """A task name as a pattern: ``fetch_{url}`` matches every name it formats to."""
    parts = re.split(r"\{[^{}]*\}", name)
    return re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)


def task_secret_declarations(source: str) -> list[tuple[re.Pattern[str], frozenset[str]]] | None:
    """For each ``@task.with_options(..., secret_requests=[...])`` of a source: a pattern of the
    names its calls are recorded under (its ``name=``, else the function's name) and the secrets
    it declares. None when some declaration cannot be read statically (names not literal, or
    ``secret_requests`` given outside a decorator): then the server falls back to
    :func:`declared_secrets` for the whole source."""
    try:
        tree = parse_source(source)
    except SyntaxError:
        return []
    found: list[tuple[re.Pattern[str], frozenset[str]]] = []
    decorators: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call):
                continue
            keywords = {kw.arg: kw.value for kw in deco.keywords}
            if "secret_requests" not in keywords:
                continue
            decorators.add(id(deco))
            value = keywords["secret_requests"]
            if isinstance(value, ast.Constant) and value.value is None:
                continue
            if not isinstance(value, ast.List | ast.Tuple | ast.Set) or not all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
            ):
                return None
            names = frozenset(e.value for e in value.elts)  # type: ignore[attr-defined]
            label = keywords.get("name")
            if label is None:
                pattern = re.compile(re.escape(node.name))
            elif isinstance(label, ast.Constant) and isinstance(label.value, str):
                pattern = _template_pattern(label.value)
            else:
                pattern = re.compile(".*", re.DOTALL)
            found.append((pattern, names))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and id(node) not in decorators
            and any(kw.arg == "secret_requests" for kw in node.keywords)
        ):
            return None
    return found


def secrets_for_call(
    declarations: list[tuple[re.Pattern[str], frozenset[str]]], task_name: str
) -> frozenset[str]:
    """The secrets the task recorded as ``task_name`` may receive."""
    allowed: set[str] = set()
    for pattern, names in declarations:
        if pattern.fullmatch(task_name):
            allowed |= names
    return frozenset(allowed)
