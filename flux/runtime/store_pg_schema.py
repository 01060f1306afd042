"""The PostgreSQL store's schema: its migrations, and the SQL both its paths share.

Migration ``i`` (0-based) of :data:`MIGRATIONS` brings a database from schema version ``i`` to
``i + 1`` (version 0: an empty database). :func:`migrate` applies the missing ones in one
transaction, under an advisory lock, and refuses a database with a newer schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flux.runtime.errors import StoreError
from flux.runtime.records import EVENT_COLUMNS, EXECUTION_COLUMNS, WORKFLOW_COLUMNS
from flux.runtime.schedule_store import PG_SCHEDULE_TABLES

try:
    import psycopg
except ImportError:  # the extra is not installed: PostgresStore() says so
    psycopg = None  # type: ignore[assignment]

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQL_INSERT_EXECUTION",
    "SQL_SELECT_EVENTS",
    "SQL_SELECT_EXECUTION",
    "SQL_SELECT_WORKFLOW",
    "migrate",
    "one_line",
]

_MIGRATION_LOCK = 0x464C5558  # "FLUX": the advisory lock held while migrating


def _migrate_1(conn: Any) -> None:
    """initial schema"""
    conn.execute(
        """
        CREATE TABLE flux_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE flux_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE workflows (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            source TEXT NOT NULL,
            source_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE executions (
            execution_id TEXT PRIMARY KEY,
            workflow_name TEXT NOT NULL,
            workflow_version BIGINT,
            parent_id TEXT,
            input BYTEA NOT NULL,
            output BYTEA,
            state TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            lease_owner TEXT,
            lease_epoch BIGINT NOT NULL DEFAULT 0,
            lease_expires_at DOUBLE PRECISION,
            wake_at DOUBLE PRECISION,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            -- insertion order, the tie-break of listings (SQLite's rowid)
            row_id BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
        );
        CREATE INDEX executions_created_at ON executions (created_at DESC, row_id DESC);
        CREATE INDEX executions_state ON executions (state, created_at DESC, row_id DESC);
        CREATE INDEX executions_workflow_name
            ON executions (workflow_name, created_at DESC, row_id DESC);
        CREATE INDEX executions_parent_id ON executions (parent_id, created_at DESC, row_id DESC);
        CREATE TABLE events (
            execution_id TEXT NOT NULL REFERENCES executions (execution_id),
            seq BIGINT NOT NULL,
            type TEXT NOT NULL,
            call_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value BYTEA,
            time DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (execution_id, seq)
        );
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            ciphertext BYTEA NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            value BYTEA,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION
        );
        """
    )


def _migrate_task_logs(conn: Any) -> None:
    """task logs"""
    from flux.runtime.store_logs import POSTGRES_SCHEMA

    conn.execute(POSTGRES_SCHEMA)


def _migrate_retry_of(conn: Any) -> None:
    """executions.retry_of: the failed execution a retry was made from"""
    conn.execute(
        """
        ALTER TABLE executions ADD COLUMN retry_of TEXT;
        CREATE INDEX executions_retry_of ON executions (retry_of, created_at, row_id);
        """
    )


def _migrate_schedules(conn: Any) -> None:
    """schedules"""
    for statement in PG_SCHEDULE_TABLES:
        conn.execute(statement)


#: Migration ``i`` (0-based) brings a database from schema version ``i`` to ``i + 1``; version 0
#: is an empty database. Append, never edit: all that are due run in the opening transaction,
#: and each is recorded in ``flux_migrations`` (its docstring's first line is its name).
MIGRATIONS: tuple[Callable[[Any], None], ...] = (
    _migrate_1,
    _migrate_task_logs,
    _migrate_retry_of,
    _migrate_schedules,
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_KEY = "schema_version"

SQL_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(EXECUTION_COLUMNS))})"
)
SQL_SELECT_EXECUTION = f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM executions"
SQL_SELECT_EVENTS = (
    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events "
    "WHERE execution_id = %s AND seq > %s ORDER BY seq"
)
SQL_SELECT_WORKFLOW = f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows"



def one_line(exc: BaseException, *secrets: str) -> str:
    """An error's message on one line, with every secret given replaced by ``***``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def migrate(conn: Any, where: str, password: str = "") -> None:
    """Bring the database of ``conn`` (in autocommit mode) to the latest schema version, or
    raise StoreError naming ``where``; ``password`` is kept out of the messages."""
    latest = len(MIGRATIONS)  # not SCHEMA_VERSION: tests substitute MIGRATIONS
    try:
        with conn.transaction():
            # two processes opening a new database at once: the second waits, then sees
            # the schema the first created
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            version = _schema_version(conn)
            if version > latest:
                raise StoreError(
                    f"database {where!r} has schema version {version}, newer than version "
                    f"{latest} that this Flux knows; upgrade Flux to open it"
                )
            for target, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                try:
                    with conn.transaction():
                        migrate(conn)
                except Exception as exc:
                    raise StoreError(
                        f"migrating database {where!r} to schema version {target} failed: "
                        f"{one_line(exc, password)}"
                    ) from exc
                name = (migrate.__doc__ or migrate.__name__).strip().splitlines()[0]
                conn.execute(
                    "INSERT INTO flux_migrations (version, name, applied_at) "
                    "VALUES (%s, %s, %s)",
                    (target, name, time.time()),
                )
            if version < latest:
                conn.execute(
                    "INSERT INTO flux_meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_VERSION_KEY, str(latest)),
                )
    except psycopg.Error as exc:
        raise StoreError(f"store {where!r}: {one_line(exc, password)}") from exc


def _schema_version(conn: Any) -> int:
    if conn.execute("SELECT to_regclass('flux_meta')").fetchone()[0] is None:
        return 0
    row = conn.execute("SELECT value FROM flux_meta WHERE key = %s", (_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])
