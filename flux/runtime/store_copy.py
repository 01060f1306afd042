"""Moving a store: every row of one store copied into another, empty one (``flux store copy``).

Works between any two stores of the interface (SQLite to PostgreSQL, back, or SQLite to
SQLite) and only through it (``count_rows``, ``export_rows``, ``import_rows``, see
:mod:`flux.runtime.store_bulk`): workflow versions, executions, events, secrets and cache entries,
each as stored (ciphertext stays ciphertext: both stores are read with the same key file; leases,
epochs and timestamps are kept, so a paused execution is resumable and a crashed one recoverable
from the copy).

A copy refuses a target that holds anything, reads each table in batches (at most three in
memory: one being read, one waiting, one being written), and checks at the end that the
target holds exactly what was read and that the source did not change meanwhile. It is meant for
a store nothing else uses during the copy: stop the servers and embedded engines on it first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from flux.runtime import store_bulk
from flux.runtime.errors import StoreError
from flux.runtime.settings import parse_store, redact_url
from flux.runtime.store_api import StoreAPI

__all__ = ["CopyResult", "copy_store", "copy_store_locations"]

#: Rows read and written per batch, unless asked otherwise.
DEFAULT_BATCH = 500

#: Called after each batch written: (table, rows of it copied so far, rows of it in the source
#: when the copy began).
Progress = Callable[[str, int, int], None]


@attrs.frozen
class CopyResult:
    """What a copy moved: rows per table, in :data:`~flux.runtime.store_bulk.TABLES` order."""

    source: str
    target: str
    counts: dict[str, int]

    def summary(self) -> str:
        """E.g. ``3 workflow versions, 12 executions, 140 events, 2 secrets, 0 cache entries,
        25 log lines`` (the bookkeeping of the logs is not named)."""
        return ", ".join(
            store_bulk.table(name).noun(count)
            for name, count in self.counts.items()
            if store_bulk.table(name).shown
        )


def _holdings(counts: dict[str, int]) -> str:
    held = [store_bulk.table(n).noun(c) for n, c in counts.items() if c]
    return ", ".join(held) if held else "nothing"


async def _counts(store: StoreAPI) -> dict[str, int]:
    return {name: await store.count_rows(name) for name in store_bulk.TABLES}


async def copy_store(
    source: StoreAPI,
    target: StoreAPI,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    source_name: str = "the source store",
    target_name: str = "the target store",
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``; returns the rows copied per table.

    Raises StoreError, naming what it found, if ``target`` holds any row (nothing is written
    then); if a batch cannot be read or written (``target`` then holds a partial copy, which
    the message says); or if the counts do not match at the end.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    found = await _counts(target)
    if any(found.values()):
        raise StoreError(
            f"{target_name} is not empty: it holds {_holdings(found)}; "
            "flux store copy only copies into an empty store"
        )
    before = await _counts(source)
    copied = dict.fromkeys(store_bulk.TABLES, 0)
    for name in store_bulk.TABLES:
        try:
            copied[name] = await _copy_table(
                source, target, name, batch_size, progress, before[name]
            )
        except StoreError as exc:
            raise StoreError(
                f"copying {name} from {source_name} to {target_name} failed: {exc}; "
                f"{target_name} now holds a partial copy: empty it (or delete the file) "
                "before copying again"
            ) from exc
    await _verify(source, target, before, copied, source_name, target_name)
    return copied


async def _copy_table(
    source: StoreAPI,
    target: StoreAPI,
    name: str,
    batch_size: int,
    progress: Progress | None,
    total: int,
) -> int:
    """Read batches of ``name`` while writing the previous one; returns the rows written."""
    send, receive = anyio.create_memory_object_stream[list[Any]](1)
    written = 0

    async def read() -> None:
        async with send:
            after = None
            while True:
                records, after = await source.export_rows(name, after=after, limit=batch_size)
                if not records:
                    return
                await send.send(records)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            async with receive:
                async for records in receive:
                    written += await target.import_rows(name, records)
                    if progress is not None:
                        progress(name, written, total)
    except BaseExceptionGroup as group:  # the reader's or the writer's error, as itself
        raise _single(group) from None
    return written


def _single(group: BaseExceptionGroup) -> BaseException:
    """The first error inside nested groups that is not a cancellation, else the group."""
    cancelled = anyio.get_cancelled_exc_class()
    for exc in group.exceptions:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        if not isinstance(exc, cancelled):
            return exc
    return group


async def _verify(
    source: StoreAPI,
    target: StoreAPI,
    before: dict[str, int],
    copied: dict[str, int],
    source_name: str,
    target_name: str,
) -> None:
    after = await _counts(source)
    landed = await _counts(target)
    for name in store_bulk.TABLES:
        t = store_bulk.table(name)
        if landed[name] != copied[name]:
            raise StoreError(
                f"copy check failed: {target_name} holds {t.noun(landed[name])} "
                f"after {copied[name]} were written"
            )
        if before[name] != copied[name] or after[name] != copied[name]:
            raise StoreError(
                f"copy check failed: {source_name} held {t.noun(before[name])} when the copy "
                f"began, {after[name]} when it ended, and {copied[name]} were copied: it was "
                "in use during the copy; stop what uses it, empty the target and copy again"
            )


def _same_store(source: str, target: str) -> bool:
    a, b = parse_store(source), parse_store(target)
    if a.kind != b.kind:
        return False
    if a.kind == "sqlite":
        return os.path.realpath(a.target) == os.path.realpath(b.target)
    return a.target == b.target


async def copy_store_locations(
    source: str,
    target: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> CopyResult:
    """Open the stores at ``source`` and ``target`` (paths or URLs, as ``--store`` takes them)
    and :func:`copy_store` one into the other. A SQLite source must exist (it is never
    created); the two must be different stores."""
    from flux.runtime.store import open_store

    try:
        where = parse_store(source)
        if _same_store(source, target):
            raise StoreError(f"FROM and TO are the same store ({redact_url(target)})")
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if where.kind == "sqlite" and not os.path.isfile(where.target):
        raise StoreError(f"no Flux database at {where.target} (the store to copy from)")
    source_name, target_name = redact_url(source), redact_url(target)
    async with open_store(source) as src, open_store(target) as dst:
        counts = await copy_store(
            src,
            dst,
            batch_size=batch_size,
            progress=progress,
            source_name=f"source {source_name}",
            target_name=f"target {target_name}",
        )
    return CopyResult(source_name, target_name, counts)


def key_file_note(result: CopyResult, environ: dict[str, str] | None = None) -> str | None:
    """When secrets were copied and the target's default key file (``FLUX_SECRET_KEY_FILE``, else
    beside its database) is not the source's: the line telling where the key must come from.
    Secrets are copied as ciphertext; only the source's key decrypts them."""
    from flux.runtime.settings import Settings

    if not result.counts.get("secrets"):
        return None
    env = dict(os.environ if environ is None else environ)
    env.pop("FLUX_STORE", None)
    env.pop("FLUX_DB", None)
    source_key = Settings.from_env(environ=env, store=result.source).secret_key_file
    target_key = Settings.from_env(environ=env, store=result.target).secret_key_file
    if source_key == target_key:
        return None
    return (
        f"the secrets are encrypted with {source_key}: give the target that key file "
        f"(FLUX_SECRET_KEY_FILE={source_key}, or copy it to {target_key})"
    )
