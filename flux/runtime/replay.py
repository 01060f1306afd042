"""Replay's position rules: is the call the code makes now the one the history has at its place?

Pure bookkeeping over the recorded calls of one execution, used by the executor before it runs
anything. Three rules, each raising :class:`NondeterminismError` (through ``Replay.mismatch``):

1. **Another call at a recorded place.** The history records, at this id or at this parent and
   ordinal, a call of another name (or other arguments, checked by digest by the executor).
2. **An insertion.** The call is not in the history, but the history holds calls made after its
   place: a later ordinal in the same *sequential* frame (a workflow body, a task body, a
   pipeline), at this level or at any enclosing one. Children of a concurrent frame
   (``parallel``, ``map``, a graph) are not ordered among themselves, so only the levels above
   such a frame count for them.
3. **A removal.** When the workflow ends (returns or raises), every recorded call must have been
   reached; :meth:`Replay.unvisited` lists those that were not.
"""

from __future__ import annotations

from typing import Any

from .errors import NondeterminismError
from .events import ExecutionEventType as E
from .history import CallRecord


def ordinal(component: str) -> int:
    """The ordinal of one id component: ``say_hi#3`` -> 3, ``task#0@2`` -> 0."""
    tail = component.rpartition("#")[2]
    digits = tail.partition("@")[0]
    return int(digits) if digits.isdigit() else -1


def position(call_id: str) -> str:
    """Where a call sits in the program: its parent and ordinal, without its own name."""
    parent, _, leaf = call_id.rpartition("/")
    return f"{parent}/#{leaf.rpartition('#')[2]}"


def unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%23", "#").replace("%25", "%")


def short(value: Any, limit: int = 60) -> str:
    """A call's arguments as they would be written, cut to ``limit`` characters."""
    if value is None:
        return ""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict | None):
        args = value[0] if isinstance(value[0], list | tuple) else [value[0]]
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (value[1] or {}).items()]
        text = ", ".join(parts)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Replay:
    """The recorded calls of one execution and which of them this run has reached."""

    def __init__(self, execution_id: str, workflow_name: str, calls: dict[str, CallRecord]):
        self.execution_id = execution_id
        self.workflow_name = workflow_name
        self.calls = calls
        #: every recorded id and its ancestors (combinator frames such as parallel#0) -> name
        self.known: dict[str, str] = {}
        #: frame path -> the highest ordinal recorded among its direct children
        self.max_child: dict[str, int] = {}
        for call_id in calls:
            parts = call_id.split("/")
            for i in range(len(parts)):
                prefix = "/".join(parts[: i + 1])
                self.known.setdefault(prefix, parts[i].rpartition("#")[0])
                parent = "/".join(parts[:i])
                n = ordinal(parts[i])
                if n > self.max_child.get(parent, -1):
                    self.max_child[parent] = n
        self.positions: dict[str, str] = {position(c): c for c in self.known}
        #: frames whose children run concurrently (registered by the patterns as they run)
        self.concurrent: set[str] = set()
        self.visited: set[str] = set()
        self.replayed: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.calls)

    # ------------------------------------------------------------------ errors

    def error(self, call_id: str, recorded: str, current: str, why: str) -> NondeterminismError:
        width = max(len(recorded), len("recorded"))
        return NondeterminismError(
            f"execution {self.execution_id} of workflow {self.workflow_name!r}: {why}.\n"
            f"  {'recorded'.ljust(width)} | current\n"
            f"  {recorded.ljust(width)} | {current}\n"
            "A workflow must make the same calls in the same order on every run; "
            "run this execution with the code it was started with."
        )

    def mismatch(self, call_id: str, rec: CallRecord, name: str, args: Any) -> NondeterminismError:
        return self.error(
            call_id,
            f"{rec.name}({short([rec.args, rec.kwargs])})",
            f"{name}({short(args)})",
            f"the code made a different call at {call_id!r} than the history records",
        )

    # ------------------------------------------------------------------ rules

    def check_new(self, call_id: str, name: str, args: Any) -> NondeterminismError | None:
        """For a call the history does not hold at ``call_id``: the error if another call is
        recorded at its place (rule 1) or if it is an insertion (rule 2), else None."""
        if not self.calls or call_id in self.known:
            return None
        other = self.positions.get(position(call_id))
        if other is not None:
            rec = self.calls.get(other) or CallRecord(other, unescape(self.known[other]))
            self.visited.add(other)
            return self.mismatch(other, rec, name, args)
        later = self._later(call_id)
        if later is not None:
            return self.error(
                call_id,
                "(no call here)",
                f"{name}({short(args)}) at {call_id!r}",
                f"the code made a call at {call_id!r} that the history does not have, while it "
                f"records calls made after that place (such as {later!r}): a call was inserted",
            )
        return None

    def _later(self, call_id: str) -> str | None:
        """A recorded call made after ``call_id``'s place in a sequential frame, or None."""
        parts = call_id.split("/")
        for i in range(len(parts) - 1, -1, -1):
            parent = "/".join(parts[:i])
            if parent in self.concurrent:
                continue
            n = ordinal(parts[i])
            if self.max_child.get(parent, -1) > n:
                prefix = f"{parent}/" if parent else ""
                for known in self.known:
                    rest = known[len(prefix) :] if known.startswith(prefix) else None
                    if rest and "/" not in rest and ordinal(rest) > n:
                        return known
                return parent or "(root)"
        return None

    def unvisited(self) -> list[str]:
        """Recorded calls the current code never reached (a call was removed), ignoring calls
        nested under one replayed from its record and calls recorded as cancelled."""
        covered = self.replayed | self.visited
        missing = []
        for call_id, rec in self.calls.items():
            if call_id in covered or (rec.outcome is None and rec.started is None):
                continue
            if rec.outcome is not None and rec.outcome.type is E.TASK_CANCELLED:
                continue
            parts = call_id.split("/")
            ancestors = ("/".join(parts[:i]) for i in range(1, len(parts)))
            if any(a in covered or a.partition("@")[0] in covered for a in ancestors):
                continue
            missing.append(call_id)
        return missing

    def removal(self, missing: list[str]) -> NondeterminismError:
        shown = ", ".join(f"{m} ({self.calls[m].name})" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return self.error(
            missing[0],
            shown + more,
            "(not made)",
            "the history records calls the current code did not make",
        )


__all__ = ["Replay", "ordinal", "position", "short", "unescape"]
