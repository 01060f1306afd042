"""The console's logs panel: an execution's task log lines, a page at a time, live while it
runs (the page's poller refetches the panel, see console.js), filtered to one call when the
timeline's bar of that call was clicked (``?call=ID``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from quart import request, url_for

from flux.runtime.log_reader import iso_time, settled
from flux.runtime.store_logs import LogRecord

__all__ = ["LOGS_PAGE", "logs_context"]

#: Lines a page of the panel shows.
LOGS_PAGE = 500


def _after() -> int:
    try:
        return max(int(request.args.get("logs_after") or 0), 0)
    except ValueError:
        return 0


def _call() -> str | None:
    raw = request.args.get("call") or None
    if raw is not None and (len(raw) > 2000 or any(ord(c) < 32 for c in raw)):
        return None
    return raw


def _line(r: LogRecord) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "call_id": r.call_id,
        "attempt": r.attempt,
        "level": r.level,
        "logger": r.logger,
        "iso": iso_time(r.time) or "",
        "message": r.message,
        "marker": r.logger == "flux.logs",
    }


async def logs_context(store: Any, rec: Any) -> dict[str, Any]:
    """What the logs panel of execution ``rec`` shows for this request."""
    eid = rec.execution_id
    call, after = _call(), _after()
    found = await store.load_logs(eid, after, LOGS_PAGE + 1, call)
    more = len(found) > LOGS_PAGE
    lines = found[:LOGS_PAGE]

    def link(**args: Any) -> str:
        query = {k: v for k, v in args.items() if v}
        return url_for("console.execution", execution_id=eid) + (
            f"?{urlencode(query)}" if query else ""
        )

    live = {k: v for k, v in (("call", call), ("logs_after", after)) if v}
    live_url = url_for("console.execution_logs", execution_id=eid)
    if live:
        live_url += f"?{urlencode(live)}"
    return {
        "call": call,
        "after": after,
        "lines": [_line(r) for r in lines],
        "next_url": link(call=call, logs_after=lines[-1].seq) if more else None,
        "first_url": link(call=call) if after else None,
        "all_url": link(logs_after=None),
        "call_url": lambda call_id: link(call=call_id),
        # live while it runs, and while this page is not full
        "live_url": None if settled(rec.state) or more else live_url,
        "api_url": f"/executions/{eid}/logs",
    }
