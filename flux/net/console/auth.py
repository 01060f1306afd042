"""The console's safety rules: who may see it, and which form posts are genuine.

- With an API token, the console asks for it once (a login form) and keeps it in an
  ``HttpOnly; SameSite=Strict`` cookie scoped to ``/ui``; every page checks that cookie against the
  token in constant time.
- Without tokens the server only binds loopback (see :mod:`flux.net.security`); the console also
  refuses a peer that is not loopback and a ``Host`` that is not a loopback name, so a web page
  that rebinds its DNS name to 127.0.0.1 cannot read or drive it.
- Every POST carries a CSRF token derived from a random per-browser session cookie with an HMAC
  keyed by a server key, and is refused without it; a POST whose ``Origin`` is another site is
  refused too.

No I/O and no framework here: :mod:`flux.net.console.routes` applies these to requests.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from flux.net.security import is_loopback, token_matches

#: The cookie holding the API token after a login.
TOKEN_COOKIE = "flux_console_token"
#: The random per-browser session the CSRF token is bound to.
SESSION_COOKIE = "flux_console_session"
#: Where the cookies apply.
COOKIE_PATH = "/ui"

#: No inline script or style, nothing from elsewhere, no framing, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class ConsoleAuth:
    """The rules for one server: its API token (or None) and the key CSRF tokens are made with."""

    def __init__(self, api_token: str | None):
        self.api_token = api_token
        if api_token:
            # the same key on every server sharing the token: a form from one is good on another
            self._key = hashlib.sha256(b"flux-console-csrf\0" + api_token.encode()).digest()
        else:
            self._key = secrets.token_bytes(32)

    @property
    def needs_login(self) -> bool:
        return bool(self.api_token)

    def logged_in(self, cookie: str | None) -> bool:
        return not self.api_token or token_matches(cookie, self.api_token)

    def check_login(self, given: str | None) -> bool:
        return bool(self.api_token) and token_matches((given or "").strip(), self.api_token)

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, given: str | None) -> bool:
        if not session or not given:
            return False
        return hmac.compare_digest(self.csrf_token(session), given)


def loopback_peer(remote_addr: str | None) -> bool:
    """Whether the connection comes from this machine."""
    if not remote_addr:
        return False
    host = remote_addr.rsplit(":", 1)[0] if remote_addr.count(":") == 1 else remote_addr
    return is_loopback(host.strip("[]"))


def loopback_host(host_header: str | None) -> bool:
    """Whether a ``Host`` header names this machine (``localhost``, 127.x, ``[::1]``, any port)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """Whether a request's ``Origin`` (when the browser sent one) is this server."""
    if origin is None:
        return True
    if origin == "null" or not host_header:
        return False
    _, _, rest = origin.partition("://")
    return rest.rstrip("/").lower() == host_header.strip().lower()
