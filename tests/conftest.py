"""Shared fixtures: every test gets its own store and key file under tmp_path."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest_pg import pg_cluster, pg_url  # noqa: F401 - fixtures for every test module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def flux_home(tmp_path, monkeypatch):
    """Point FLUX_DB and the secret key file at this test's own directory."""
    monkeypatch.setenv("FLUX_DB", str(tmp_path / "flux.db"))
    monkeypatch.setenv("FLUX_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)
    monkeypatch.delenv("FLUX_DURABILITY", raising=False)
    monkeypatch.delenv("FLUX_STORE", raising=False)
    return tmp_path


@pytest.fixture
def db_path(flux_home):
    return str(flux_home / "flux.db")


def subprocess_env(tmp_path) -> dict[str, str]:
    """Environment for a child Python process using this test's store."""
    env = dict(os.environ)
    env["FLUX_DB"] = str(tmp_path / "flux.db")
    env["FLUX_SECRET_KEY_FILE"] = str(tmp_path / "secret.key")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FLUX_SECRET_KEY", None)
    return env


PYTHON = sys.executable


@pytest.fixture
def settled_clock():
    """A virtual clock that jumps only after the loop has been idle for 200 ms of real time.

    pytest-trio's ``autojump_clock`` jumps as soon as every task is blocked, which includes a
    task waiting for a store commit in a worker thread: virtual time can then run ahead of a
    commit. Tests where timers race against commits use this clock instead.
    """
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0.2)
