"""The schedules tables, for both stores: the SQL of their methods, run in the store's thread.

Every function takes a DB-API connection (sqlite3 or psycopg, already inside the one
transaction the calling store opened) and a :class:`Dialect`, so the SQLite and PostgreSQL
stores share one implementation of the rules. The claim of due schedules is the important one:
it reads the schedules due at ``now`` (on PostgreSQL ``FOR UPDATE SKIP LOCKED``, so several
servers split them; on SQLite the store's ``BEGIN IMMEDIATE`` serializes writers), asks
:func:`flux.runtime.schedules.plan` what to do, and in the same transaction inserts the
executions it starts (``ON CONFLICT DO NOTHING`` on their deterministic ids), records each
decision and advances the schedule. A due time is therefore started once, by one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .events import TERMINAL_STATES, ExecutionEventType, ExecutionState
from .records import EVENT_COLUMNS, EXECUTION_COLUMNS, ExecutionRecord
from .schedules import (
    FIRE_COLUMNS,
    SCHEDULE_COLUMNS,
    ScheduleError,
    ScheduleExistsError,
    ScheduleFireRecord,
    ScheduleNotFoundError,
    ScheduleRecord,
    plan,
    trigger_execution_id,
)
from .schedules import execution_id as due_execution_id

__all__ = [
    "KEEP_FIRES",
    "Dialect",
    "Started",
    "claim_due",
    "create",
    "delete",
    "get",
    "list_all",
    "list_fires",
    "next_wake",
    "set_paused",
    "trigger",
]

#: How many recorded decisions each schedule keeps (older ones are deleted as new ones come,
#: every 50 decisions: between two prunes a schedule holds up to 50 more).
KEEP_FIRES = 200

#: Old decisions are deleted each time a schedule's count crosses a multiple of this.
_PRUNE_EVERY = 50
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))


@attrs.frozen
class Dialect:
    """What differs between the stores: the parameter mark, the row lock of the claim, and
    how an execution row's values are bound."""

    mark: str
    lock: str
    execution_values: Callable[[ExecutionRecord], tuple[Any, ...]]

    def sql(self, text: str) -> str:
        return text if self.mark == "?" else text.replace("?", self.mark)


@attrs.frozen
class Started:
    """An execution a claim started: queue it (server) or run it (embedded)."""

    execution_id: str
    schedule: str
    workflow: str
    due_at: float


_SELECT = f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM schedules"
_SELECT_S = f"SELECT {', '.join('s.' + c for c in SCHEDULE_COLUMNS)}"


def _record(row: Sequence[Any]) -> ScheduleRecord:
    values = dict(zip(SCHEDULE_COLUMNS, row, strict=True))
    if isinstance(values["input"], memoryview):
        values["input"] = bytes(values["input"])
    return ScheduleRecord(**values)


def _values(rec: ScheduleRecord) -> tuple[Any, ...]:
    return attrs.astuple(rec, recurse=False)


def create(conn: Any, d: Dialect, rec: ScheduleRecord) -> ScheduleRecord:
    marks = ", ".join("?" * len(SCHEDULE_COLUMNS))
    cursor = conn.execute(
        d.sql(
            f"INSERT INTO schedules ({', '.join(SCHEDULE_COLUMNS)}) VALUES ({marks}) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        _values(rec),
    )
    if cursor.rowcount != 1:
        raise ScheduleExistsError(rec.name)
    return rec


def get(conn: Any, d: Dialect, name: str) -> ScheduleRecord | None:
    row = conn.execute(d.sql(f"{_SELECT} WHERE name = ?"), (name,)).fetchone()
    return None if row is None else _record(row)


def list_all(conn: Any, d: Dialect) -> list[ScheduleRecord]:
    return [_record(r) for r in conn.execute(f"{_SELECT} ORDER BY name").fetchall()]


def delete(conn: Any, d: Dialect, name: str) -> bool:
    conn.execute(d.sql("DELETE FROM schedule_fires WHERE schedule_name = ?"), (name,))
    return conn.execute(d.sql("DELETE FROM schedules WHERE name = ?"), (name,)).rowcount == 1


def _locked(conn: Any, d: Dialect, name: str) -> ScheduleRecord:
    lock = " FOR UPDATE" if d.lock else ""
    row = conn.execute(d.sql(f"{_SELECT} WHERE name = ?{lock}"), (name,)).fetchone()
    if row is None:
        raise ScheduleNotFoundError(name)
    return _record(row)


def set_paused(conn: Any, d: Dialect, name: str, paused: bool, now: float) -> ScheduleRecord:
    """Pause, or resume (its next due time is then the first one after ``now``: due times
    that passed while paused are not caught up)."""
    rec = _locked(conn, d, name)
    if bool(rec.paused) == paused:
        return rec
    next_due = rec.next_due_at if paused else rec.spec.next_after(now)
    conn.execute(
        d.sql("UPDATE schedules SET paused = ?, next_due_at = ?, updated_at = ? WHERE name = ?"),
        (int(paused), next_due, now, name),
    )
    return attrs.evolve(rec, paused=int(paused), next_due_at=next_due, updated_at=now)


def trigger(conn: Any, d: Dialect, name: str, now: float) -> str:
    """Ask for one execution now; returns its id. A trigger not served yet is refused."""
    rec = _locked(conn, d, name)
    if rec.trigger_at is not None:
        pending = trigger_execution_id(name, rec.trigger_at)
        raise ScheduleError(
            f"schedule {name!r} already has a trigger waiting to start execution {pending}"
        )
    conn.execute(d.sql("UPDATE schedules SET trigger_at = ? WHERE name = ?"), (now, name))
    return trigger_execution_id(name, now)


def list_fires(
    conn: Any, d: Dialect, name: str, limit: int
) -> list[tuple[ScheduleFireRecord, str | None]]:
    """The latest ``limit`` decisions of schedule ``name``, newest first, each with the state
    of the execution it started (None: none, or gone)."""
    rows = conn.execute(
        d.sql(
            f"SELECT {', '.join('f.' + c for c in FIRE_COLUMNS)}, e.state FROM schedule_fires f "
            "LEFT JOIN executions e ON e.execution_id = f.execution_id "
            "WHERE f.schedule_name = ? ORDER BY f.seq DESC LIMIT ?"
        ),
        (name, limit),
    ).fetchall()
    return [(ScheduleFireRecord(*r[:-1]), r[-1]) for r in rows]


def next_wake(conn: Any, d: Dialect, workflows: Iterable[str] | None) -> float | None:
    """The earliest time a claim may find something: the earliest next due time of an active
    schedule; ``-inf`` when a trigger waits or a buffered due time may start now."""
    names = _names(workflows)
    where, params = _workflow_filter(d, names)
    row = conn.execute(
        d.sql(
            "SELECT MIN(s.next_due_at), "
            "SUM(CASE WHEN s.trigger_at IS NOT NULL OR (s.buffered_at IS NOT NULL AND "
            f"(e.state IS NULL OR e.state IN ({', '.join('?' * len(_TERMINAL))}))) "
            "THEN 1 ELSE 0 END) "
            "FROM schedules s LEFT JOIN executions e ON e.execution_id = s.last_execution_id "
            f"WHERE (s.paused = 0 OR s.trigger_at IS NOT NULL){where}"
        ),
        (*_TERMINAL, *params),
    ).fetchone()
    if row is None:
        return None
    if row[1]:
        return float("-inf")
    return None if row[0] is None else float(row[0])


def _names(workflows: Iterable[str] | None) -> list[str] | None:
    return None if workflows is None else sorted(set(workflows))


def _workflow_filter(d: Dialect, names: list[str] | None) -> tuple[str, list[Any]]:
    if names is None:
        return "", []
    if not names:
        return " AND 1 = 0", []
    return f" AND s.workflow IN ({', '.join('?' * len(names))})", list(names)


def claim_due(
    conn: Any,
    d: Dialect,
    now: float,
    *,
    workflows: Iterable[str] | None = None,
    pin_version: bool = False,
    limit: int = 50,
) -> list[Started]:
    """Start what the schedules due at ``now`` call for (see the module docstring).

    ``workflows``: only schedules of these workflows (an embedded runner knows only some);
    ``pin_version``: executions run the latest uploaded version of their workflow (server),
    and a schedule whose workflow was never uploaded records an ``error``."""
    names = _names(workflows)
    where, params = _workflow_filter(d, names)
    rows = conn.execute(
        d.sql(
            f"{_SELECT_S}, e.state FROM schedules s LEFT JOIN executions e "
            "ON e.execution_id = s.last_execution_id "
            "WHERE ((s.paused = 0 AND (s.next_due_at <= ? OR (s.buffered_at IS NOT NULL AND "
            f"(e.state IS NULL OR e.state IN ({', '.join('?' * len(_TERMINAL))}))))) "
            f"OR s.trigger_at IS NOT NULL){where} "
            f"ORDER BY s.next_due_at LIMIT ?{d.lock}"
        ),
        (now, *_TERMINAL, *params, limit),
    ).fetchall()
    started: list[Started] = []
    for row in rows:
        state = row[-1]
        running = state is not None and ExecutionState(state) not in TERMINAL_STATES
        started.extend(_claim_one(conn, d, _record(row[:-1]), now, pin_version, running))
    return started


def _claim_one(
    conn: Any, d: Dialect, rec: ScheduleRecord, now: float, pin_version: bool, running: bool
) -> list[Started]:
    try:
        decided = plan(
            rec.spec,
            now=now,
            next_due_at=None if rec.paused else rec.next_due_at,
            last_due_at=rec.last_due_at,
            buffered_at=None if rec.paused else rec.buffered_at,
            overlap=rec.overlap,
            catch_up=rec.catch_up,
            running=running,
        )
    except (ScheduleError, ValueError, ArithmeticError, LookupError, TypeError) as exc:
        # a row no rule can read (written by hand, or by another version): pause it, say why
        _broken(conn, d, rec, now, f"{type(exc).__name__}: {exc}")
        return []
    fires: list[tuple[float, str, str | None, str]] = []
    started: list[Started] = []
    version, missing = _version(conn, d, rec.workflow) if pin_version else (None, False)
    last_execution = rec.last_execution_id
    wanted = [(t, due_execution_id(rec.name, t), "started") for t in decided.start]
    if rec.trigger_at is not None:
        wanted.append((rec.trigger_at, trigger_execution_id(rec.name, rec.trigger_at), "trig"))
    for due in decided.record:
        if due.outcome != "started":
            fires.append((due.due_at, due.outcome, None, due.detail))
    for due_at, eid, kind in wanted:
        outcome = "triggered" if kind == "trig" else "started"
        detail = next(
            (x.detail for x in decided.record if x.outcome == "started" and x.due_at == due_at),
            "" if kind != "trig" else "manual trigger",
        )
        if missing:
            fires.append(
                (due_at, "error", eid, f"workflow {rec.workflow!r} is not registered")
            )
            continue
        if _insert_execution(conn, d, rec, eid, version, now):
            fires.append((due_at, outcome, eid, detail))
            started.append(Started(eid, rec.name, rec.workflow, due_at))
            last_execution = eid
        else:
            fires.append((due_at, "duplicate", eid, "an execution with this id already exists"))
    fires.sort(key=lambda f: f[0])
    count = rec.fire_count
    marks = ", ".join("?" * len(FIRE_COLUMNS))
    for due_at, outcome, eid, detail in fires:
        count += 1
        conn.execute(
            d.sql(f"INSERT INTO schedule_fires ({', '.join(FIRE_COLUMNS)}) VALUES ({marks})"),
            (rec.name, count, due_at, outcome, eid, detail, now),
        )
    if count // _PRUNE_EVERY != rec.fire_count // _PRUNE_EVERY:  # now and then, not each time
        conn.execute(
            d.sql("DELETE FROM schedule_fires WHERE schedule_name = ? AND seq <= ?"),
            (rec.name, count - KEEP_FIRES),
        )
    conn.execute(
        d.sql(
            "UPDATE schedules SET next_due_at = ?, last_due_at = ?, buffered_at = ?, "
            "trigger_at = NULL, last_execution_id = ?, fire_count = ? WHERE name = ?"
        ),
        (
            rec.next_due_at if rec.paused else decided.next_due_at,
            decided.last_due_at,
            rec.buffered_at if rec.paused else decided.buffered_at,
            last_execution,
            count,
            rec.name,
        ),
    )
    return started


def _broken(conn: Any, d: Dialect, rec: ScheduleRecord, now: float, why: str) -> None:
    seq = rec.fire_count + 1
    marks = ", ".join("?" * len(FIRE_COLUMNS))
    conn.execute(
        d.sql(f"INSERT INTO schedule_fires ({', '.join(FIRE_COLUMNS)}) VALUES ({marks})"),
        (rec.name, seq, now, "error", None, f"schedule paused, it cannot be evaluated: {why}",
         now),
    )
    conn.execute(
        d.sql(
            "UPDATE schedules SET paused = 1, trigger_at = NULL, fire_count = ?, updated_at = ? "
            "WHERE name = ?"
        ),
        (seq, now, rec.name),
    )


def _version(conn: Any, d: Dialect, workflow: str) -> tuple[int | None, bool]:
    row = conn.execute(
        d.sql("SELECT MAX(version) FROM workflows WHERE name = ?"), (workflow,)
    ).fetchone()
    version = None if row is None else row[0]
    return version, version is None


_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EXECUTION_COLUMNS))}) "
    "ON CONFLICT (execution_id) DO NOTHING"
)
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)


def _insert_execution(
    conn: Any, d: Dialect, rec: ScheduleRecord, eid: str, version: int | None, now: float
) -> bool:
    """Insert the execution ``eid`` (SCHEDULED, no lease, with its WORKFLOW_STARTED event);
    False when that id exists already."""
    record = ExecutionRecord(
        execution_id=eid,
        workflow_name=rec.workflow,
        workflow_version=version,
        input=rec.input,
        state=ExecutionState.SCHEDULED,
        created_at=now,
    )
    cursor = conn.execute(d.sql(_INSERT_EXECUTION), d.execution_values(record))
    if cursor.rowcount != 1:
        return False
    started = ExecutionEventType.WORKFLOW_STARTED.value
    conn.execute(
        d.sql(_INSERT_EVENT), (eid, 1, started, rec.workflow, rec.workflow, rec.input, now)
    )
    return True


# ---------------------------------------------------------------------------------- schema

_COLUMNS_SQL = """
    name TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT,
    timezone TEXT,
    every BIGINT,
    input {blob} NOT NULL,
    overlap TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    next_due_at {real},
    last_due_at {real},
    last_execution_id TEXT,
    buffered_at {real},
    trigger_at {real},
    fire_count BIGINT NOT NULL DEFAULT 0
"""
_FIRES_SQL = """
    schedule_name TEXT NOT NULL,
    seq BIGINT NOT NULL,
    due_at {real} NOT NULL,
    outcome TEXT NOT NULL,
    execution_id TEXT,
    detail TEXT NOT NULL,
    recorded_at {real} NOT NULL,
    PRIMARY KEY (schedule_name, seq)
"""


def _tables(blob: str, real: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE schedules ({_COLUMNS_SQL.format(blob=blob, real=real)})",
        "CREATE INDEX schedules_next_due_at ON schedules (next_due_at)",
        f"CREATE TABLE schedule_fires ({_FIRES_SQL.format(real=real)})",
    )


#: The statements of the schedules migration, per store.
SQLITE_SCHEDULE_TABLES = _tables("BLOB", "REAL")
PG_SCHEDULE_TABLES = _tables("BYTEA", "DOUBLE PRECISION")


# ---------------------------------------------------------------------------------- the methods


class ScheduleMethods:
    """The schedule methods of :class:`~flux.runtime.store_api.StoreAPI`, shared by both stores
    (mixed into each). A store provides ``_schedule_call(fn, *args)``: ``fn(conn, dialect,
    *args)`` in one transaction in its worker thread."""

    _schedule_call: Callable[..., Any]

    async def create_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        """Store a new schedule; ScheduleExistsError when the name is taken."""
        return await self._schedule_call(create, record)

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        return await self._schedule_call(get, name)

    async def list_schedules(self) -> list[ScheduleRecord]:
        return await self._schedule_call(list_all)

    async def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its recorded decisions (its executions stay)."""
        return await self._schedule_call(delete, name)

    async def set_schedule_paused(self, name: str, paused: bool, now: float) -> ScheduleRecord:
        return await self._schedule_call(set_paused, name, paused, now)

    async def trigger_schedule(self, name: str, now: float) -> str:
        return await self._schedule_call(trigger, name, now)

    async def schedule_fires(
        self, name: str, limit: int = 20
    ) -> list[tuple[ScheduleFireRecord, str | None]]:
        return await self._schedule_call(list_fires, name, limit)

    async def next_schedule_wake(self, workflows: Iterable[str] | None = None) -> float | None:
        return await self._schedule_call(next_wake, workflows)

    async def claim_due_schedules(
        self,
        now: float,
        *,
        workflows: Iterable[str] | None = None,
        pin_version: bool = False,
        limit: int = 50,
    ) -> list[Started]:
        return await self._schedule_call(_claim_kw, now, workflows, pin_version, limit)


def _claim_kw(
    conn: Any, d: Dialect, now: float, workflows: Any, pin_version: bool, limit: int
) -> list[Started]:
    return claim_due(conn, d, now, workflows=workflows, pin_version=pin_version, limit=limit)


def sqlite_dialect() -> Dialect:
    return Dialect("?", "", lambda r: tuple(
        v.value if isinstance(v, ExecutionState) else v for v in attrs.astuple(r, recurse=False)
    ))


def pg_dialect(execution_values: Callable[[ExecutionRecord], tuple[Any, ...]]) -> Dialect:
    return Dialect("%s", " FOR UPDATE OF s SKIP LOCKED", execution_values)
