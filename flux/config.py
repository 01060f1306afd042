"""flux-core 0.2.7's configuration import path: ``Configuration.get().settings``.

0.2.7 kept one process-wide, mutable configuration object. Flux has no module-level state:
``Configuration.get()`` reads the environment each time it is called (it is cheap) and returns a
read-only view, so two calls in one process agree unless the environment changed in between.
``override(**values)`` returns a new view with those values instead of changing a shared one.

The values are those of :class:`flux.runtime.settings.Settings` (``FLUX_DB``,
``FLUX_DURABILITY``, ``FLUX_SECRET_KEY_FILE``) under 0.2.7's names, plus the server and logging
settings 0.2.7 code reads (``FLUX_SERVER_HOST``, ``FLUX_SERVER_PORT``, ``FLUX_SERVER_URL`` as
``api_url``, ``FLUX_DEBUG``, ``FLUX_LOG_LEVEL``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from .runtime.settings import Settings

__all__ = ["Configuration", "ExecutorSettings", "FluxSettings"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@attrs.frozen
class ExecutorSettings:
    """0.2.7's ``settings.executor``: the defaults a task gets when it sets none."""

    max_workers: int | None = None
    default_timeout: float = 0
    retry_attempts: int = 0
    retry_delay: float = 1
    retry_backoff: float = 2


@attrs.frozen
class FluxSettings:
    """The settings 0.2.7 code reads, as Flux uses them (read-only)."""

    home: str
    database_path: str
    database_url: str
    durability: str
    secret_key_file: str | None
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    api_url: str = "http://127.0.0.1:8000"
    debug: bool = False
    log_level: str = "INFO"
    serializer: str = "msgpack"
    executor: ExecutorSettings = ExecutorSettings()

    def runtime_settings(self) -> Settings:
        """The :class:`flux.runtime.settings.Settings` these stand for (for ``open_engine``)."""
        return Settings(
            db_path=self.database_path,
            durability=self.durability,
            secret_key_file=self.secret_key_file,
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}={env[name]!r} is not a boolean (use 1/0, true/false, yes/no)")


def _port(env: Mapping[str, str]) -> int:
    text = env.get("FLUX_SERVER_PORT", "").strip()
    if not text:
        return 8000
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"FLUX_SERVER_PORT={text!r} is not a port number (0-65535)")
    return int(text)


def read_settings(environ: Mapping[str, str] | None = None) -> FluxSettings:
    """Build the settings from ``environ`` (default ``os.environ``); a malformed value raises
    ``ValueError`` naming the variable."""
    env = os.environ if environ is None else environ
    runtime = Settings.from_env(environ=env)
    db_path = os.path.abspath(runtime.db_path)
    host = env.get("FLUX_SERVER_HOST", "").strip() or "127.0.0.1"
    port = _port(env)
    return FluxSettings(
        home=os.path.dirname(db_path),
        database_path=db_path,
        database_url=f"sqlite:///{db_path}",
        durability=runtime.durability,
        secret_key_file=runtime.secret_key_file,
        server_host=host,
        server_port=port,
        api_url=env.get("FLUX_SERVER_URL", "").strip() or f"http://{host}:{port}",
        debug=_flag(env, "FLUX_DEBUG"),
        log_level=(env.get("FLUX_LOG_LEVEL", "").strip() or "INFO").upper(),
    )


class Configuration:
    """``Configuration.get().settings``, as in 0.2.7 (see the module docstring)."""

    def __init__(self, settings: FluxSettings):
        self._settings = settings

    @classmethod
    def get(cls, environ: Mapping[str, str] | None = None) -> Configuration:
        """The configuration the environment gives now."""
        return cls(read_settings(environ))

    @property
    def settings(self) -> FluxSettings:
        return self._settings

    def override(self, **values: Any) -> Configuration:
        """A new configuration with ``values`` in place of these (unknown names raise
        ``TypeError`` naming them); this one is unchanged."""
        known = {a.name for a in attrs.fields(FluxSettings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(
                f"unknown setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return Configuration(attrs.evolve(self._settings, **values))

    def reload(self) -> Configuration:
        """The configuration the environment gives now (0.2.7's ``reload``)."""
        return Configuration.get()

    def __repr__(self) -> str:
        return f"Configuration({self._settings!r})"
