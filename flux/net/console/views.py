"""What the console's pages show, computed from store records: no I/O and no framework here.

The pages render the HTTP API's own models (:mod:`flux.net.models`: ``ExecutionListItem``,
``Event``, ``ErrorValue``, ``Workflow``, ``WorkflowDetail``, ``Worker``, ``Health``), built by
the same functions the API answers with, so a page shows exactly what ``GET`` returns (values
decoded plain: no class is rebuilt from what a worker wrote). What only the console computes
(the timeline, durations, highlighted source) is here.

The timeline turns an execution's events into one row per task call, placed by its call-id
tree (``parallel#4/kid_task#1`` sits under ``parallel#4``, siblings in program order), each row
carrying the segments to draw: the first attempt, every retry, the fallback, the rollback, a
pause or a durable sleep, each of its own kind so the page shows them distinctly.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import time
import tokenize
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from markupsafe import Markup, escape

from flux.net.models import ErrorValue
from flux.net.views import plain_value
from flux.runtime import codec
from flux.runtime.errors import SerializationError
from flux.runtime.records import StoredEvent

#: Event types that end a task call, and the state each leaves the call in.
_OUTCOMES = {
    "TASK_COMPLETED": "completed",
    "TASK_FAILED": "failed",
    "TASK_CANCELLED": "cancelled",
    "TASK_RESUMED": "completed",
}
#: Event types that open a segment of a call, with the segment's kind.
_OPENERS = {
    "TASK_RETRY_STARTED": "retry",
    "TASK_FALLBACK_STARTED": "fallback",
    "TASK_ROLLBACK_STARTED": "rollback",
    "TASK_PAUSED": "pause",
}
#: Event types that close the open segment, with the outcome they give it.
_CLOSERS = {
    "TASK_RETRY_COMPLETED": "completed",
    "TASK_RETRY_FAILED": "failed",
    "TASK_FALLBACK_COMPLETED": "completed",
    "TASK_FALLBACK_FAILED": "failed",
    "TASK_ROLLBACK_COMPLETED": "completed",
    "TASK_ROLLBACK_FAILED": "failed",
}
#: The most timeline rows a page draws; past it the page says how many were left out.
MAX_TIMELINE_ROWS = 1000


def decode(data: bytes | None) -> Any:
    """A stored value as the API shows it (:func:`flux.net.views.plain_value`: plain JSON
    types, a notice in place of one that cannot be shown; it never raises)."""
    return plain_value(data)


#: The most characters of one value a page shows (the API has it whole).
MAX_SHOWN = 100_000


def pretty(value: Any, limit: int = MAX_SHOWN) -> str:
    """A JSON value indented for a <pre> block, cut past ``limit`` characters with a note."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    if len(text) > limit:
        return f"{text[:limit]}\n... ({len(text) - limit} more characters: GET the API for all)"
    return text


def as_error(value: Any) -> ErrorValue | None:
    """The recorded error a shown value holds (type, message, traceback), or None."""
    return ErrorValue.of(value)


def _moment(ts: float | str | None) -> datetime | None:
    """A Unix time or an ISO 8601 text (an ``Event``'s ``time``) as an aware datetime."""
    if ts is None or ts == "":
        return None
    try:
        if isinstance(ts, str):
            moment = datetime.fromisoformat(ts)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def iso(ts: float | str | None) -> str:
    moment = _moment(ts)
    return "" if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


def shown_time(ts: float | str | None) -> str:
    """UTC, to the second, as the pages print it (the script rewrites it in local time)."""
    moment = _moment(ts)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {rest:02d}s" if hours else f"{minutes}m {rest:02d}s"


def parse_time(raw: str | None, what: str) -> float | None:
    """A form's ``YYYY-MM-DDTHH:MM`` (UTC) as a timestamp; ValueError names the field."""
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        detail = f"{what} must be a date and time like 2026-01-31T12:00, not {raw!r}"
        raise ValueError(detail) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# ---------------------------------------------------------------------------- the timeline


@attrs.define
class Segment:
    """One drawn piece of a call: ``kind`` is attempt, retry, fallback, rollback, pause or
    sleep; ``outcome`` completed, failed, cancelled or running."""

    kind: str
    start: float
    end: float | None = None
    outcome: str = "running"
    left: float = 0.0
    width: float = 0.0


@attrs.define
class Row:
    """One call of the timeline (or a group frame such as ``parallel#4`` that holds calls)."""

    call_id: str
    name: str
    depth: int
    kind: str = "task"
    state: str = "running"
    start: float | None = None
    end: float | None = None
    child_id: str | None = None
    retries: int = 0
    segments: list[Segment] = attrs.Factory(list)
    children: list[Row] = attrs.Factory(list)

    @property
    def label(self) -> str:
        return self.call_id.rsplit("/", 1)[-1]

    @property
    def took(self) -> str:
        if self.start is None or self.end is None:
            return ""
        return duration(self.end - self.start)


@attrs.frozen
class Timeline:
    rows: list[Row]
    start: float
    end: float
    calls: int
    left_out: int

    @property
    def span(self) -> str:
        return duration(self.end - self.start)


def _order_key(call_id: str) -> tuple[int, str]:
    last = call_id.rsplit("/", 1)[-1]
    _, _, ordinal = last.rpartition("#")
    return (int(ordinal), last) if ordinal.isdigit() else (1 << 30, last)


def _started_details(event: StoredEvent) -> tuple[str, str | None]:
    """(kind, child execution id) of a call from its TASK_STARTED event."""
    if event.name == "sleep" and event.call_id.rsplit("/", 1)[-1].startswith("sleep#"):
        return "sleep", None
    if event.value is None or b"child" not in event.value:
        return "task", None
    try:
        value = codec.decode(event.value, plain=True)
    except SerializationError:
        return "task", None
    if isinstance(value, dict):
        for key in ("child_id", "child", "child_execution_id"):
            if isinstance(value.get(key), str):
                return "child", value[key]
    return "task", None


def _apply(row: Row, event: StoredEvent) -> None:
    kind = event.type
    if kind == "TASK_STARTED":
        row.kind, row.child_id = _started_details(event)
        row.start = event.time if row.start is None else row.start
        row.segments.append(Segment("sleep" if row.kind == "sleep" else "attempt", event.time))
        return
    if row.start is None:
        row.start = event.time
    if kind in _OPENERS:
        seg_kind = _OPENERS[kind]
        if row.segments and row.segments[-1].end is None:
            previous = row.segments[-1]
            previous.end = event.time
            failed = seg_kind in ("retry", "fallback", "rollback")
            previous.outcome = "failed" if failed else "paused"
        if seg_kind == "retry":
            row.retries += 1
        if seg_kind == "pause":
            row.kind = "pause"
        row.segments.append(Segment(seg_kind, event.time))
    elif kind in _CLOSERS:
        if row.segments and row.segments[-1].end is None:
            row.segments[-1].end = event.time
            row.segments[-1].outcome = _CLOSERS[kind]
    elif kind in _OUTCOMES:
        row.state = _OUTCOMES[kind]
        row.end = event.time
        for seg in row.segments:
            if seg.end is None:
                seg.end = event.time
                seg.outcome = row.state
    if kind == "TASK_PAUSED":
        row.state = "paused"


def build_timeline(
    events: Sequence[StoredEvent], now: float | None = None, *, max_rows: int = MAX_TIMELINE_ROWS
) -> Timeline:
    """The timeline of an execution's events (task events only; workflow events bound it)."""
    now = time.time() if now is None else now
    rows: dict[str, Row] = {}
    first = last = None
    settled = False
    for e in events:
        first = e.time if first is None else min(first, e.time)
        last = e.time if last is None else max(last, e.time)
        if e.type in ("WORKFLOW_COMPLETED", "WORKFLOW_FAILED", "WORKFLOW_CANCELLED"):
            settled = True
        elif e.type in ("WORKFLOW_STARTED", "WORKFLOW_RESUMED"):
            settled = False
        if not e.type.startswith("TASK_"):
            continue
        row = rows.get(e.call_id)
        if row is None:
            row = rows[e.call_id] = Row(e.call_id, e.name, e.call_id.count("/"))
        _apply(row, e)
    start = first if first is not None else now
    end = (last if settled or last is None else max(last, now)) if first is not None else now
    roots = _tree(rows)
    flat: list[Row] = []
    _flatten(roots, flat, max_rows)
    span = max(end - start, 1e-6)
    for row in flat:
        for seg in row.segments:
            seg_end = seg.end if seg.end is not None else end
            seg.left = round(max(seg.start - start, 0.0) / span * 100, 3)
            seg.width = round(max((seg_end - seg.start) / span * 100, 0.4), 3)
            seg.left = min(seg.left, 100 - seg.width) if seg.width < 100 else 0.0
    every: list[Row] = []
    _flatten(roots, every, 1 << 62)
    return Timeline(flat, start, end, len(rows), len(every) - len(flat))


def _tree(rows: dict[str, Row]) -> list[Row]:
    """Link each row under its call-id parent, making group rows for frames without events."""
    every = dict(rows)
    for call_id in list(rows):
        parts = call_id.split("/")
        for n in range(1, len(parts)):
            prefix = "/".join(parts[:n])
            if prefix not in every:
                name = parts[n - 1].rsplit("#", 1)[0]
                every[prefix] = Row(prefix, name, n - 1, kind="group", state="")
    roots: list[Row] = []
    for call_id in sorted(every, key=lambda c: (c.count("/"), _order_key(c))):
        row = every[call_id]
        parent = call_id.rsplit("/", 1)[0] if "/" in call_id else None
        (every[parent].children if parent else roots).append(row)
    for row in every.values():
        row.children.sort(key=lambda r: _order_key(r.call_id))
    for row in sorted(every.values(), key=lambda r: -r.depth):
        if row.kind == "group" and row.children:
            _span_group(row)
    roots.sort(key=lambda r: _order_key(r.call_id))
    return roots


def _span_group(row: Row) -> None:
    starts = [c.start for c in row.children if c.start is not None]
    ends = [c.end for c in row.children if c.end is not None]
    if not starts:
        return
    row.start = min(starts)
    running = any(c.state in ("running", "paused") for c in row.children)
    row.end = None if running or not ends else max(ends)
    states = {c.state for c in row.children}
    for state in ("failed", "running", "paused", "cancelled", "completed"):
        if state in states:
            row.state = state
            break
    row.segments = [Segment("group", row.start, row.end, row.state)]


def _flatten(rows: Iterable[Row], out: list[Row], limit: int) -> None:
    for row in rows:
        if len(out) >= limit:
            return
        out.append(row)
        _flatten(row.children, out, limit)


# ---------------------------------------------------------------------------- source


_TOKEN_CLASSES = {
    tokenize.COMMENT: "com",
    tokenize.STRING: "str",
    tokenize.NUMBER: "num",
}
_BUILTINS = frozenset({"True", "False", "None", "self", "ctx"})
_DEFINED = re.compile(r"^(def|class)$")


def highlight(source: str) -> list[Markup]:
    """The source as escaped HTML lines, Python tokens wrapped in classed spans (keywords,
    strings, comments, numbers, decorators and defined names). Source that does not tokenize is
    shown plain."""
    lines = source.splitlines() or [""]
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [Markup(escape(line)) for line in lines]
    marks: dict[int, list[tuple[int, int, str]]] = {}
    previous = ""
    for tok in tokens:
        css = _TOKEN_CLASSES.get(tok.type)
        if tok.type == tokenize.NAME:
            if keyword.iskeyword(tok.string):
                css = "kw"
            elif _DEFINED.match(previous):
                css = "def"
            elif tok.string in _BUILTINS:
                css = "const"
        elif tok.type == tokenize.OP and tok.string == "@":
            css = "dec"
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            previous = tok.string
        if css is None:
            continue
        (srow, scol), (erow, ecol) = tok.start, tok.end
        for row in range(srow, erow + 1):
            start = scol if row == srow else 0
            end = ecol if row == erow else len(lines[row - 1]) if row - 1 < len(lines) else 0
            marks.setdefault(row, []).append((start, end, css))
    out = []
    for number, line in enumerate(lines, 1):
        pieces, at = [], 0
        for start, end, css in sorted(marks.get(number, [])):
            if start < at:
                continue
            pieces.append(escape(line[at:start]))
            pieces.append(Markup('<span class="%s">%s</span>') % (css, line[start:end]))
            at = end
        pieces.append(escape(line[at:]))
        out.append(Markup("").join(pieces))
    return out
