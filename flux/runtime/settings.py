"""Settings of a Flux process, read from the environment by a factory (no module-level state).

``Settings.from_env()`` reads:

- ``FLUX_DB``: path of the SQLite database (default ``.flux/flux.db`` under the current directory);
- ``FLUX_DURABILITY``: ``full`` (default: fsync at each commit, survives power loss) or ``normal``;
- ``FLUX_SECRET_KEY_FILE``: file holding the key that encrypts secrets at rest (default
  ``secret.key`` next to the database);
- ``FLUX_LEASE_TTL``: seconds an embedded runner's lease on an execution lasts without a
  heartbeat (default 15); another process takes a running execution over only once its lease
  has expired, or at once when its owner's process is gone;
- ``FLUX_BUSY_TIMEOUT``: seconds SQLite waits for another connection's write lock (default 5);
- ``FLUX_STORE_RETRY_FOR``: seconds a commit that failed as a whole (locked, disk full, I/O
  error) is retried with backoff before the runs waiting on it stop (default 30).

Keyword overrides given to ``from_env`` win over the environment when they are not ``None``.
"""

from __future__ import annotations

import os
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


def _ttl(value: object) -> object:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the validator names it
    return value


@attrs.frozen
class Settings:
    """Where the store lives, how hard it commits, and how long a runner's lease lasts."""

    db_path: str = attrs.field(factory=_default_db_path)
    durability: str = attrs.field(default="full", validator=_validate_durability)
    secret_key_file: str | None = attrs.field(
        default=attrs.Factory(_default_secret_key_file, takes_self=True)
    )
    lease_ttl: float = attrs.field(default=15.0, converter=_ttl, validator=_validate_ttl)
    #: seconds SQLite waits for another connection's write lock (FLUX_BUSY_TIMEOUT)
    busy_timeout: float = attrs.field(default=5.0, converter=_ttl, validator=_validate_ttl)
    #: seconds a transaction that failed as a whole is retried before runs stop
    #: (FLUX_STORE_RETRY_FOR)
    store_retry_for: float = attrs.field(default=30.0, converter=_ttl, validator=_validate_ttl)

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        db_path: str | None = None,
        durability: str | None = None,
        secret_key_file: str | None = None,
        lease_ttl: float | None = None,
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); non-``None`` overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var, override in (
            ("db_path", "FLUX_DB", db_path),
            ("durability", "FLUX_DURABILITY", durability),
            ("secret_key_file", "FLUX_SECRET_KEY_FILE", secret_key_file),
            ("lease_ttl", "FLUX_LEASE_TTL", lease_ttl),
            ("busy_timeout", "FLUX_BUSY_TIMEOUT", None),
            ("store_retry_for", "FLUX_STORE_RETRY_FOR", None),
        ):
            if override is not None:
                values[field] = override
            elif env.get(var):
                values[field] = env[var]
        if isinstance(values.get("durability"), str):
            normalized = values["durability"].strip().lower()  # type: ignore[union-attr]
            if normalized in DURABILITIES:  # else the validator names the value as given
                values["durability"] = normalized
        return cls(**values)
