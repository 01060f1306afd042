"""Settings of a Flux process, read from the environment by a factory (no module-level state).

``Settings.from_env()`` reads:

- ``FLUX_STORE``: where the store lives: a path or ``sqlite:///path`` for SQLite,
  ``postgresql://user:password@host:port/database`` for PostgreSQL (see :func:`parse_store`);
  default: the SQLite file ``FLUX_DB`` names;
- ``FLUX_DB``: path of the SQLite database (default ``.flux/flux.db`` under the current directory);
- ``FLUX_DURABILITY``: ``full`` (default: fsync at each commit, survives power loss) or ``normal``;
- ``FLUX_SECRET_KEY_FILE``: file holding the key that encrypts secrets at rest (default
  ``secret.key`` next to the database);
- ``FLUX_LEASE_TTL``: seconds an embedded runner's lease on an execution lasts without a
  heartbeat (default 15); another process takes a running execution over only once its lease
  has expired, or at once when its owner's process is gone;
- ``FLUX_BUSY_TIMEOUT``: seconds SQLite waits for another connection's write lock (default 5);
- ``FLUX_STORE_RETRY_FOR``: seconds a commit that failed as a whole (locked, disk full, I/O
  error) is retried with backoff before the runs waiting on it stop (default 30);
- ``FLUX_LOG_LIMIT``: bytes of task log lines kept per execution (default 1 MiB; a workflow's
  ``log_limit=`` option wins), ``FLUX_LOG_LINE_LIMIT``: bytes of one line (default 16 KiB),
  ``FLUX_LOG_ECHO``: ``0`` to keep what task bodies print out of this process's own output
  (default ``1``: captured lines are still written to stdout/stderr). See docs/logs.md.

Keyword overrides given to ``from_env`` win over the environment when they are not ``None``; an
explicit ``db_path`` wins over ``FLUX_STORE``, and ``FLUX_STORE`` over ``FLUX_DB``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import attrs

#: The durability levels the store knows, see :func:`flux.runtime.store.open_store`.
DURABILITIES = ("full", "normal")

DEFAULT_DB_PATH = os.path.join(".flux", "flux.db")


def check_durability(value: str) -> str:
    """Return ``value`` if it names a durability level, else raise ``ValueError`` naming it."""
    if value not in DURABILITIES:
        raise ValueError(
            f"unknown durability {value!r}: expected one of {', '.join(map(repr, DURABILITIES))}"
        )
    return value


#: URL schemes naming a PostgreSQL store (both are libpq's).
POSTGRES_SCHEMES = ("postgresql", "postgres")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@attrs.frozen
class StoreLocation:
    """Which kind of store a location names, and where: a file path for ``"sqlite"``, the URL
    (handed to libpq as it is) for ``"postgresql"``."""

    kind: str
    target: str


def parse_store(location: str) -> StoreLocation:
    """Tell a SQLite location from a PostgreSQL one, or raise ``ValueError`` naming what is wrong.

    - a plain path (``flux.db``, ``/var/lib/flux/flux.db``): SQLite;
    - ``sqlite:///`` followed by the path, as in SQLAlchemy: ``sqlite:///flux.db`` is relative
      to the current directory, ``sqlite:////var/lib/flux.db`` (four slashes) is absolute;
    - ``postgresql://user:password@host:port/database`` (or ``postgres://``, and any libpq URL
      parameter after ``?``): PostgreSQL.
    """
    if not isinstance(location, str) or not location.strip():
        raise ValueError(f"empty store location {location!r}: give a path or a URL")
    match = _SCHEME.match(location)
    if match is None:
        return StoreLocation("sqlite", location)
    scheme = match.group(1).lower()
    if scheme in POSTGRES_SCHEMES:
        return StoreLocation("postgresql", location)
    if scheme == "sqlite":
        rest = location[match.end() :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(
                f"store URL {location!r} names no file: write sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        if "?" in rest or "#" in rest:
            raise ValueError(f"store URL {location!r}: SQLite URLs take no parameters")
        return StoreLocation("sqlite", rest[1:])
    raise ValueError(
        f"unknown store URL scheme {scheme!r} in {redact_url(location)!r}: expected a "
        "path, sqlite:///path or postgresql://user:password@host:port/database"
    )


def redact_url(location: str) -> str:
    """``location`` with its password (``user:password@`` or a ``password=`` parameter) shown as
    ``***``, fit for messages and logs."""
    hidden = re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", location)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", hidden, flags=re.IGNORECASE)


def _validate_store(_instance: object, _attribute: object, value: str) -> None:
    parse_store(value)


def _default_store(settings: Settings) -> str:
    return settings.db_path


def _validate_durability(_instance: object, _attribute: object, value: str) -> None:
    check_durability(value)


def _default_db_path() -> str:
    return os.path.join(os.getcwd(), DEFAULT_DB_PATH)


def _default_secret_key_file(settings: Settings) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(settings.db_path)), "secret.key")


def _validate_ttl(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"{attribute.name} must be a positive number of seconds, got {value!r}"
        )


def _validate_bytes(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    from flux.runtime.logs import check_log_limit

    check_log_limit(value, attribute.name)


def _int(value: object) -> object:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value  # the validator names it
    return value


def _flag(value: object) -> object:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"FLUX_LOG_ECHO must be 1 or 0 (true/false), got {value!r}")
    return value


def _ttl(value: object) -> object:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the validator names it
    return value


@attrs.frozen
class Settings:
    """Where the store lives, how hard it commits, and how long a runner's lease lasts.

    ``store`` is the location the store is opened from (a path or a URL, see
    :func:`parse_store`); it defaults to ``db_path``, which stays the SQLite file's path (and
    places the default secret key file) for the code and the commands that predate ``store``.
    """

    db_path: str = attrs.field(factory=_default_db_path)
    durability: str = attrs.field(default="full", validator=_validate_durability)
    secret_key_file: str | None = attrs.field(
        default=attrs.Factory(_default_secret_key_file, takes_self=True)
    )
    store: str = attrs.field(
        default=attrs.Factory(_default_store, takes_self=True),
        validator=_validate_store,
        repr=lambda value: repr(redact_url(value)),
    )
    lease_ttl: float = attrs.field(default=15.0, converter=_ttl, validator=_validate_ttl)
    #: seconds SQLite waits for another connection's write lock (FLUX_BUSY_TIMEOUT)
    busy_timeout: float = attrs.field(default=5.0, converter=_ttl, validator=_validate_ttl)
    #: seconds a transaction that failed as a whole is retried before runs stop
    #: (FLUX_STORE_RETRY_FOR)
    store_retry_for: float = attrs.field(default=30.0, converter=_ttl, validator=_validate_ttl)
    #: bytes of task log lines kept per execution (FLUX_LOG_LIMIT; see docs/logs.md)
    log_limit: int = attrs.field(default=1 << 20, converter=_int, validator=_validate_bytes)
    #: bytes of one task log line (FLUX_LOG_LINE_LIMIT)
    log_line_limit: int = attrs.field(default=16 << 10, converter=_int, validator=_validate_bytes)
    #: whether captured task output still reaches this process's stdout/stderr (FLUX_LOG_ECHO)
    log_echo: bool = attrs.field(default=True, converter=_flag)

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        db_path: str | None = None,
        durability: str | None = None,
        secret_key_file: str | None = None,
        lease_ttl: float | None = None,
        store: str | None = None,
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); non-``None`` overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if store is not None:
            values["store"] = store
        elif db_path is None and env.get("FLUX_STORE"):
            values["store"] = env["FLUX_STORE"]
        for field, var, override in (
            ("db_path", "FLUX_DB", db_path),
            ("durability", "FLUX_DURABILITY", durability),
            ("secret_key_file", "FLUX_SECRET_KEY_FILE", secret_key_file),
            ("lease_ttl", "FLUX_LEASE_TTL", lease_ttl),
            ("busy_timeout", "FLUX_BUSY_TIMEOUT", None),
            ("store_retry_for", "FLUX_STORE_RETRY_FOR", None),
            ("log_limit", "FLUX_LOG_LIMIT", None),
            ("log_line_limit", "FLUX_LOG_LINE_LIMIT", None),
            ("log_echo", "FLUX_LOG_ECHO", None),
        ):
            if override is not None:
                values[field] = override
            elif env.get(var):
                values[field] = env[var]
        if isinstance(values.get("durability"), str):
            normalized = values["durability"].strip().lower()  # type: ignore[union-attr]
            if normalized in DURABILITIES:  # else the validator names the value as given
                values["durability"] = normalized
        if "store" in values and db_path is None:
            location = parse_store(values["store"])
            if location.kind == "sqlite":  # FLUX_DB's role: the secret key file goes next to it
                values["db_path"] = location.target
        return cls(**values)
