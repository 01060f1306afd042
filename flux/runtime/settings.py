"""Settings of a Flux process, read from the environment by a factory (no module-level state).

``Settings.from_env()`` reads:

- ``FLUX_DB``: path of the SQLite database (default ``.flux/flux.db`` under the current directory);
- ``FLUX_DURABILITY``: ``full`` (default: fsync at each commit, survives power loss) or ``normal``;
- ``FLUX_SECRET_KEY_FILE``: file holding the key that encrypts secrets at rest (default
  ``secret.key`` next to the database).

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


@attrs.frozen
class Settings:
    """Where the store lives and how hard it commits."""

    db_path: str = attrs.field(factory=_default_db_path)
    durability: str = attrs.field(default="full", validator=_validate_durability)
    secret_key_file: str | None = attrs.field(
        default=attrs.Factory(_default_secret_key_file, takes_self=True)
    )

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        db_path: str | None = None,
        durability: str | None = None,
        secret_key_file: str | None = None,
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); non-``None`` overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for field, var, override in (
            ("db_path", "FLUX_DB", db_path),
            ("durability", "FLUX_DURABILITY", durability),
            ("secret_key_file", "FLUX_SECRET_KEY_FILE", secret_key_file),
        ):
            if override is not None:
                values[field] = override
            elif env.get(var):
                values[field] = env[var]
        if "durability" in values:
            normalized = values["durability"].strip().lower()
            if normalized in DURABILITIES:  # else the validator names the value as given
                values["durability"] = normalized
        return cls(**values)
