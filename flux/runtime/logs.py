"""Task logs: what task bodies print and log, captured per execution and call, kept with it.

Capture works through one context variable. While a task body (an attempt, a fallback, a
rollback) runs, :func:`capture` makes a :class:`TaskLog` current: the execution, the call id and
the attempt. Two hooks, installed once per process while an engine or a worker is open
(:func:`install`, reference-counted, undone by the last :func:`uninstall`), read it:

- ``logging.Logger.callHandlers`` is wrapped: every record emitted in a task body becomes a line
  (level, logger name, time, the formatted message with its exception text), then reaches the
  handlers as before (no handler is added, so ``logging.basicConfig()`` and logging's last
  resort work as without Flux; a root logger left at its default WARNING is lowered to INFO
  for the capture alone: the process's handlers still get only what they got before);
- ``sys.stdout`` and ``sys.stderr`` become proxies that split what a task body writes into lines
  (``stdout`` lines at level INFO, ``stderr`` lines at WARNING) and write everything to the real
  stream as before (``echo``); outside a task body they are the real stream.

Concurrent bodies in one process (``parallel``, ``map``, several executions) each run in their
own context, so their lines never mix; a sync body runs in a thread with a copy of the context,
and so does a thread started with ``anyio.to_thread``/``trio.to_thread`` from an async body.

Lines go to a :class:`LogSink`, a bounded in-memory buffer that a flusher task writes in batches,
off the path of the task step (embedded: ``store.append_logs``; on a worker: ``logs`` frames to
the server). Nothing here ever blocks or fails a task: a line past the execution's byte limit is
cut (the store writes ONE marker saying how much), a line longer than the line limit is cut with
a marker, a full buffer drops lines with a marker, and a write that fails is logged and its lines
dropped with a marker. Secret values the run was given are masked before a line is kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import attrs

from .secrets import redact_value
from .store_logs import MARKER_LOGGER, LogEntry, LogRecord, size_text

if TYPE_CHECKING:
    from .executor import Execution

__all__ = [
    "DEFAULT_LOG_LIMIT",
    "DEFAULT_LINE_LIMIT",
    "LogEntry",
    "LogRecord",
    "LogSink",
    "TaskLog",
    "capture",
    "check_log_limit",
    "current",
    "install",
    "uninstall",
]

log = logging.getLogger("flux.logs")

#: Bytes of log lines an execution keeps by default (FLUX_LOG_LIMIT).
DEFAULT_LOG_LIMIT = 1 << 20
#: Bytes of one line kept by default (FLUX_LOG_LINE_LIMIT); the rest is cut with a marker.
DEFAULT_LINE_LIMIT = 16 << 10
#: Bytes of lines one process holds waiting for a write; past it lines are dropped.
DEFAULT_BUFFER_LIMIT = 8 << 20
#: The largest limit an execution may ask for.
MAX_LOG_LIMIT = 1 << 30


def check_log_limit(value: Any, what: str = "log_limit") -> int:
    """``value`` as a byte limit, or ValueError naming what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LOG_LIMIT:
        raise ValueError(
            f"{what} must be a whole number of bytes from 1 to {MAX_LOG_LIMIT}, got {value!r}"
        )
    return value


def sink_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``limit``, ``line_limit`` and ``echo`` of a :class:`LogSink` from FLUX_LOG_LIMIT,
    FLUX_LOG_LINE_LIMIT and FLUX_LOG_ECHO (for a process without other Flux settings: a
    worker); a bad value raises ValueError naming it."""
    from .settings import Settings

    env = os.environ if environ is None else environ
    given = {
        field: env[var]
        for field, var in (
            ("log_limit", "FLUX_LOG_LIMIT"),
            ("log_line_limit", "FLUX_LOG_LINE_LIMIT"),
            ("log_echo", "FLUX_LOG_ECHO"),
        )
        if env.get(var)
    }
    settings = Settings(**given)  # type: ignore[arg-type]
    return {
        "limit": settings.log_limit,
        "line_limit": settings.log_line_limit,
        "echo": settings.log_echo,
    }


def marker(message: str, level: str = "WARNING") -> LogEntry:
    return LogEntry("", 0, level, MARKER_LOGGER, time.time(), message)


def truncate_line(message: str, limit: int, extra: int = 0) -> str:
    """``message`` cut to ``limit`` bytes of UTF-8 (never inside a character), with a marker
    naming how many bytes were cut (``extra`` more were cut before)."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit and not extra:
        return message
    kept = data[:limit].decode("utf-8", "ignore")
    cut = len(data) - len(kept.encode("utf-8", "surrogatepass")) + extra
    return f"{kept} [flux: line cut, {cut} more bytes]"


# ---------------------------------------------------------------------------------------------
# The sink: a bounded buffer, flushed in batches


#: ``write(execution_id, entries, limit, cut_lines, cut_bytes)``: store a batch of one execution.
Writer = Callable[[str, list[LogEntry], int, int, int], Awaitable[Any]]


@attrs.define
class _Pending:
    """What one execution has waiting in a sink."""

    limit: int
    entries: list[LogEntry] = attrs.Factory(list)
    #: bytes captured for it by this process (the store keeps the total across processes)
    captured: int = 0
    #: past the limit in this process: later lines are only counted
    over: bool = False
    cut_lines: int = 0
    cut_bytes: int = 0
    #: dropped because the buffer was full / because a write failed (with why)
    dropped_lines: int = 0
    dropped_bytes: int = 0
    failed_lines: int = 0
    failed_bytes: int = 0
    failed_why: str = ""


class LogSink:
    """Captured lines of the executions running in this process, until they are written.

    ``add`` is thread-safe and never blocks; ``flush`` writes what is pending (one batch per
    execution, in order); ``serve`` flushes in the background, ``interval`` seconds after the
    first pending line, for as long as it runs. Without ``serve``, lines wait for ``flush``
    (the engine flushes an execution's lines when its run ends).
    """

    def __init__(
        self,
        write: Writer,
        *,
        limit: int = DEFAULT_LOG_LIMIT,
        line_limit: int = DEFAULT_LINE_LIMIT,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        echo: bool = True,
        interval: float = 0.1,
        batch_bytes: int | None = None,
    ):
        self.write = write
        self.limit = check_log_limit(limit, "the log limit")
        self.line_limit = check_log_limit(line_limit, "the line limit")
        self.buffer_limit = buffer_limit
        self.echo = echo
        self.interval = interval
        #: largest batch handed to ``write`` at once (a worker: under its frame limit)
        self.batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._buffered = 0
        self._flushing: anyio.Lock | None = None
        self._flushing_loop: object = None
        self._wake: anyio.Event | None = None
        self._wake_soon: Callable[[], None] | None = None
        self._loop_thread: int | None = None
        #: counters, for tests and statistics
        self.written = 0
        self.dropped = 0

    # -- capture side (any thread) --------------------------------------------------------------

    def add(self, execution_id: str, entry: LogEntry, limit: int | None = None) -> None:
        size = entry.size
        with self._lock:
            p = self._pending.get(execution_id)
            if p is None:
                p = self._pending[execution_id] = _Pending(limit or self.limit)
            if p.over or p.captured + size > p.limit:
                p.over = True
                p.cut_lines += 1
                p.cut_bytes += size
                return
            if self._buffered + size > self.buffer_limit:
                p.dropped_lines += 1
                p.dropped_bytes += size
                self.dropped += 1
                return
            p.captured += size
            p.entries.append(entry)
            self._buffered += size
        self._notify()

    def _notify(self) -> None:
        wake = self._wake
        if wake is None or wake.is_set():
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        elif self._wake_soon is not None:
            try:
                self._wake_soon()
            except Exception:  # the loop is gone; the lines wait for the last flush
                pass

    def has(self, execution_id: str) -> bool:
        """Has anything of ``execution_id`` been captured and not forgotten?"""
        return execution_id in self._pending

    def pending(self, execution_id: str) -> int:
        """How many lines of ``execution_id`` wait to be written."""
        with self._lock:
            p = self._pending.get(execution_id)
            return len(p.entries) if p else 0

    # -- writing side (the event loop) ----------------------------------------------------------

    def _take(self, execution_id: str) -> tuple[list[LogEntry], int, int, int] | None:
        with self._lock:
            p = self._pending.get(execution_id)
            if p is None:
                return None
            entries, p.entries = p.entries, []
            self._buffered -= sum(e.size for e in entries)
            if p.dropped_lines:
                entries.append(
                    marker(
                        f"[flux] {p.dropped_lines} log line(s) ({size_text(p.dropped_bytes)}) "
                        "dropped: the log buffer of this process was full (the store or the "
                        "server fell behind)"
                    )
                )
                p.dropped_lines = p.dropped_bytes = 0
            if p.failed_lines:
                entries.insert(
                    0,
                    marker(
                        f"[flux] {p.failed_lines} log line(s) ({size_text(p.failed_bytes)}) "
                        f"lost: writing them failed: {p.failed_why}"
                    ),
                )
                p.failed_lines = p.failed_bytes = 0
            cut = p.cut_lines, p.cut_bytes
            p.cut_lines = p.cut_bytes = 0
            if not entries and not cut[0]:
                return None
            return entries, p.limit, cut[0], cut[1]

    async def flush(self, execution_id: str | None = None, *, forget: bool = False) -> None:
        """Write what is pending (of ``execution_id``, or of every execution). ``forget``: the
        execution's run ended here, drop its counters once written. Never raises for a failed
        write (it is logged, and the next batch says what was lost)."""
        loop = anyio.lowlevel.current_token()
        if self._flushing is None or self._flushing_loop is not loop:  # one lock per loop
            self._flushing, self._flushing_loop = anyio.Lock(), loop
        async with self._flushing:
            ids = [execution_id] if execution_id is not None else list(self._pending)
            for eid in ids:
                await self._flush_one(eid)
                if forget:
                    with self._lock:
                        p = self._pending.get(eid)
                        # an execution past its limit stays known, so that a thread its
                        # body left behind cannot start the count again
                        if p is not None and not (
                            p.over or p.entries or p.cut_lines or p.dropped_lines
                            or p.failed_lines
                        ):
                            del self._pending[eid]

    async def _flush_one(self, execution_id: str) -> None:
        taken = self._take(execution_id)
        if taken is None:
            return
        entries, limit, cut_lines, cut_bytes = taken
        for batch, first in self._batches(entries):
            try:
                await self.write(
                    execution_id, batch, limit, cut_lines if first else 0, cut_bytes if first else 0
                )
                self.written += len(batch)
            except Exception as exc:
                why = " ".join(str(exc).split()) or type(exc).__name__
                log.warning(
                    "execution %s: %d log line(s) dropped: writing them failed: %s",
                    execution_id,
                    len(batch),
                    why,
                )
                with self._lock:
                    p = self._pending.setdefault(execution_id, _Pending(limit))
                    real = [e for e in batch if e.logger != MARKER_LOGGER]
                    p.failed_lines += len(real)
                    p.failed_bytes += sum(e.size for e in real)
                    p.failed_why = why[:300]
                    if first:
                        p.cut_lines += cut_lines
                        p.cut_bytes += cut_bytes

    def _batches(self, entries: list[LogEntry]) -> Iterator[tuple[list[LogEntry], bool]]:
        if not entries:
            yield [], True
            return
        limit = self.batch_bytes
        batch: list[LogEntry] = []
        size = 0
        first = True
        for e in entries:
            cost = e.size + 64
            if batch and limit is not None and size + cost > limit:
                yield batch, first
                first = False
                batch, size = [], 0
            batch.append(e)
            size += cost
        yield batch, first

    async def serve(self) -> None:
        """Flush pending lines ``interval`` seconds after they arrive, until cancelled (then
        flush what is left, shielded)."""
        token = anyio.lowlevel.current_token().native_token
        self._loop_thread = threading.get_ident()
        wake = self._wake = anyio.Event()
        if hasattr(token, "run_sync_soon"):  # trio
            self._wake_soon = lambda: token.run_sync_soon(self._set_wake)
        else:  # asyncio
            self._wake_soon = lambda: token.call_soon_threadsafe(self._set_wake)
        try:
            while True:
                if not self._buffered_any():
                    await wake.wait()
                wake = self._wake = anyio.Event()
                await anyio.sleep(self.interval)
                await self.flush()
        finally:
            self._wake = None
            self._wake_soon = None
            with anyio.CancelScope(shield=True):
                await self.flush()

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _buffered_any(self) -> bool:
        # lines cut past a limit are only counted: they go with the next batch or the run's
        # end, so a body printing forever past its limit does not cause a write every interval
        with self._lock:
            return any(p.entries or p.dropped_lines for p in self._pending.values())


# ---------------------------------------------------------------------------------------------
# The task context


class TaskLog:
    """The capture of one task body: where its lines go and what they are tagged with."""

    __slots__ = (
        "sink",
        "execution_id",
        "call_id",
        "attempt",
        "limit",
        "secrets",
        "_partial",
        "_extra",
    )

    def __init__(
        self,
        sink: LogSink,
        execution_id: str,
        call_id: str,
        attempt: int,
        limit: int | None,
        secrets: Callable[[], list[str]],
    ):
        self.sink = sink
        self.execution_id = execution_id
        self.call_id = call_id
        self.attempt = attempt
        self.limit = limit
        self.secrets = secrets
        self._partial: dict[str, list[str]] = {}
        self._extra: dict[str, int] = {}

    def line(
        self,
        level: str,
        logger: str,
        message: str,
        when: float | None = None,
        *,
        extra: int = 0,
    ) -> None:
        """Keep one line (secrets masked, cut to the line limit; ``extra``: bytes of it cut
        already). Never raises."""
        try:
            secrets = self.secrets()
            if secrets:
                message = redact_value(message, secrets)
            message = truncate_line(message, self.sink.line_limit, extra)
            entry = LogEntry(
                self.call_id,
                self.attempt,
                level,
                logger,
                time.time() if when is None else when,
                message,
            )
            self.sink.add(self.execution_id, entry, self.limit)
        except Exception:  # pragma: no cover - capture must never fail a task
            log.debug("a log line of %s was lost", self.call_id, exc_info=True)

    def write(self, stream: str, text: str) -> None:
        """Text written to ``stream`` (stdout/stderr): complete lines are kept, the rest waits
        for its newline (or the end of the body). An unfinished line longer than the line
        limit is held cut, counting what it lost."""
        limit = self.sink.line_limit
        with self.sink._lock:
            parts = self._partial.setdefault(stream, [])
            extra = self._extra.get(stream, 0)
            if "\n" not in text:
                parts.append(text)
                if sum(map(len, parts)) > limit:
                    joined = "".join(parts)
                    extra += len(joined[limit:].encode("utf-8", "surrogatepass"))
                    parts[:] = [joined[:limit]]
                    self._extra[stream] = extra
                return
            head, _, rest = text.rpartition("\n")
            lines = ("".join(parts) + head).split("\n")
            parts.clear()
            self._extra.pop(stream, None)
            if rest:
                parts.append(rest)
        level = "INFO" if stream == "stdout" else "WARNING"
        for n, text_line in enumerate(lines):
            self.line(level, stream, text_line.rstrip("\r"), extra=extra if n == 0 else 0)

    def close(self) -> None:
        """The body ended: keep what it wrote without a final newline."""
        with self.sink._lock:
            left = {s: "".join(parts) for s, parts in self._partial.items() if parts}
            extras, self._extra = self._extra, {}
            self._partial.clear()
        for stream, text in left.items():
            level = "INFO" if stream == "stdout" else "WARNING"
            self.line(level, stream, text, extra=extras.get(stream, 0))


_current: contextvars.ContextVar[TaskLog | None] = contextvars.ContextVar(
    "flux_task_log", default=None
)


def current() -> TaskLog | None:
    """The capture of the task body running here, or None."""
    return _current.get()


@contextlib.contextmanager
def capture(execution: Execution, call_id: str, attempt: int) -> Iterator[None]:
    """Capture what the body run inside this block prints and logs, as lines of ``call_id``
    (its ``attempt``, 0 for a fallback or rollback) of ``execution``, when its host keeps logs
    (has a ``log_sink``)."""
    sink: LogSink | None = getattr(execution.host, "log_sink", None)
    if sink is None:
        yield
        return
    task_log = TaskLog(
        sink,
        execution.ctx.execution_id,
        call_id,
        attempt,
        getattr(execution.workflow, "log_limit", None),
        execution.host.secret_values,
    )
    token = _current.set(task_log)
    try:
        yield
    finally:
        _current.reset(token)
        task_log.close()


# ---------------------------------------------------------------------------------------------
# The hooks: a logging handler and stream proxies


def _is_internal(name: str) -> bool:
    return name == "flux" or name.startswith("flux.")


_FORMATTER = logging.Formatter()


def _record_text(record: logging.LogRecord) -> str:
    """A record's message, formatted, with its exception and stack text; a note in place of
    what cannot be formatted (a hostile ``__str__``, arguments that do not fit)."""
    try:
        message = record.getMessage()
    except Exception as exc:
        message = (
            f"[flux: this log message could not be formatted: {_safe(exc)}] "
            f"{_safe(record.msg)} % {_safe_args(record.args)}"
        )
    try:
        if record.exc_info:
            message = f"{message}\n{_FORMATTER.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{_FORMATTER.formatStack(record.stack_info)}"
    except Exception as exc:
        message = f"{message}\n[flux: the exception could not be formatted: {_safe(exc)}]"
    return message


_original_call_handlers = logging.Logger.callHandlers


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.callHandlers`` while logs are captured: a record emitted in a task body becomes
    a line of that task, then goes to the handlers as before. No handler is added anywhere, so
    ``logging.basicConfig()`` and logging's last resort behave as they would without Flux."""
    task_log = _current.get()
    if task_log is not None and not _is_internal(record.name):
        task_log.line(record.levelname, record.name, _record_text(record), record.created)
    if _manager.hides(self, record):
        return
    _original_call_handlers(self, record)


def _safe(value: Any) -> str:
    """repr of a hostile value, or a note in its place."""
    try:
        text = repr(value)
    except Exception as exc:
        try:
            name = type(exc).__name__
        except Exception:  # pragma: no cover
            name = "error"
        return f"<{type(value).__name__} whose repr raised {name}>"
    return text if len(text) <= 2000 else text[:2000] + "..."


def _safe_args(args: Any) -> str:
    if isinstance(args, tuple):
        return "(" + ", ".join(_safe(a) for a in args) + ")"
    return _safe(args)


def _emit_codes() -> frozenset[Any]:
    return frozenset({logging.StreamHandler.emit.__code__, logging.Handler.handle.__code__})


class _StreamProxy:
    """``sys.stdout`` / ``sys.stderr`` while logs are captured: in a task body, text becomes
    lines of the task (and still reaches the real stream, when echo is on); elsewhere it goes
    to the real stream only."""

    def __init__(self, name: str, target: TextIO):
        self._name = name
        self._target = target
        self._codes = _emit_codes()

    @property
    def target(self) -> TextIO:
        return self._target

    def write(self, text: str) -> int:
        task_log = _current.get()
        if task_log is not None and isinstance(text, str) and text and not self._from_logging():
            task_log.write(self._name, text)
            if not task_log.sink.echo:
                return len(text)
        return self._target.write(text)

    def _from_logging(self) -> bool:
        """Is a logging handler writing (a StreamHandler made after this proxy was installed)?
        Its record was captured by the root handler already."""
        frame = sys._getframe(2)
        for _ in range(4):
            if frame is None:
                return False
            if frame.f_code in self._codes:
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(getattr(self._target, "closed", False))

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:
        return getattr(self._target, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Manager:
    """The process-wide hooks, installed while at least one user needs them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.proxies: dict[str, _StreamProxy] = {}
        #: the root level before we lowered it to INFO (None: not lowered)
        self.saved_root_level: int | None = None

    def hides(self, logger: logging.Logger, record: logging.LogRecord) -> bool:
        """Would this record have been dropped but for the root level we lowered? Then only
        the capture sees it (the process's own handlers do not)."""
        saved = self.saved_root_level
        if saved is None or record.levelno >= saved:
            return False
        root = logging.root
        if root.level != logging.INFO:  # set since by the application: its choice
            return False
        node: logging.Logger | None = logger
        while node is not None and node is not root:
            if node.level:  # a level set below the root decided
                return False
            node = node.parent
        return True

    def install(self) -> None:
        with self.lock:
            self.users += 1
            if self.users > 1:
                return
            root = logging.root
            # an unconfigured process (root at WARNING, the default) drops INFO: let it reach
            # the capture of task bodies, and nothing else (see hides)
            if root.level > logging.INFO:
                self.saved_root_level = root.level
                root.setLevel(logging.INFO)
            logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if stream is not None and not isinstance(stream, _StreamProxy):
                    proxy = _StreamProxy(name, stream)
                    self.proxies[name] = proxy
                    setattr(sys, name, proxy)

    def uninstall(self) -> None:
        with self.lock:
            if self.users == 0:
                return
            self.users -= 1
            if self.users:
                return
            logging.Logger.callHandlers = _original_call_handlers  # type: ignore[method-assign]
            root = logging.root
            if self.saved_root_level is not None:
                if root.level == logging.INFO:
                    root.setLevel(self.saved_root_level)
                self.saved_root_level = None
            for name, proxy in self.proxies.items():
                if getattr(sys, name) is proxy:  # else someone replaced it since: leave theirs
                    setattr(sys, name, proxy.target)
            self.proxies.clear()


_manager = _Manager()


def install() -> None:
    """Install the capture hooks (the logging wrapper, the stdout/stderr proxies) if they are
    not yet; every call must be matched by one :func:`uninstall`."""
    _manager.install()


def uninstall() -> None:
    """Undo one :func:`install`; the last one restores the streams and the root logger."""
    _manager.uninstall()


def installed() -> bool:
    return _manager.users > 0
