"""The codec against real processes: deep values refused without crashing the interpreter,
classes from lazily imported modules read back in a fresh process, and the round-trip property
through the SQLite store and a fresh process."""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.runtime import codec
from flux.runtime.errors import SerializationError
from flux.runtime.store import ExecutionRecord, StoredEvent, Write, open_store

from . import codec_types as ct
from .conftest import PYTHON, subprocess_env


def run_python(code: str, tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"script_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [PYTHON, str(script), *args],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )


def test_deep_values_are_refused_and_hostile_bytes_do_not_kill_the_interpreter(tmp_path):
    out = run_python(
        """
        import dataclasses, threading, msgpack
        from flux.runtime import codec
        from flux.runtime.errors import SerializationError

        @dataclasses.dataclass
        class Node:
            value: int
            next: "Node | None" = None

        Node.__module__ = "__main__"

        def refused(value):
            try:
                codec.encode(value)
            except SerializationError as exc:
                return str(exc)
            raise AssertionError("encoded")

        chain = None
        for i in range(250):
            chain = Node(i, chain)
        print("node:", refused(chain))
        tuples = "leaf"
        for _ in range(200):
            tuples = (tuples,)
        print("tuples:", refused(tuples))

        def hostile(code, payload_of):
            data = msgpack.packb(None)
            for _ in range(20000):
                data = msgpack.packb(msgpack.ExtType(code, payload_of(data)))
            return data

        samples = {
            "tuple": hostile(codec.EXT_TUPLE, lambda d: b"\\x91" + d),
            "struct": hostile(
                codec.EXT_STRUCT,
                lambda d: b"\\x93" + msgpack.packb("__main__") + msgpack.packb("Node")
                + b"\\x81" + msgpack.packb("next") + d,
            ),
            "exception-args": hostile(
                codec.EXT_EXCEPTION,
                lambda d: b"\\x82" + msgpack.packb("type") + msgpack.packb("builtins.ValueError")
                + msgpack.packb("args") + b"\\x91" + d,
            ),
            "lists": b"\\x91" * 1_000_000 + b"\\xc0",
        }
        results = {}

        def read_all():
            for name, data in samples.items():
                for plain in (False, True):
                    try:
                        codec.decode(data, plain=plain)
                    except SerializationError as exc:
                        results[name, plain] = str(exc)[:60]

        read_all()
        print("main:", sorted(results.items()))
        results.clear()
        worker = threading.Thread(target=read_all)
        worker.start()
        worker.join()
        print("thread:", len(results))
        deepest = "leaf"
        for _ in range(codec.MAX_DEPTH):
            deepest = (deepest,)
        back = []
        worker = threading.Thread(target=lambda: back.append(codec.decode(codec.encode(deepest))))
        worker.start()
        worker.join()
        print("deepest:", back == [deepest])
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert "'__main__.Node'" in lines["node"] and "limit of 100" in lines["node"]
    assert "'builtins.tuple'" in lines["tuples"] and "limit of 100" in lines["tuples"]
    assert lines["main"].count("cannot decode") == 8  # 4 samples, trusted and plain
    assert lines["thread"] == "8"
    assert lines["deepest"] == "True"


LAZY_MODULE = """
import dataclasses


@dataclasses.dataclass(frozen=True)
class Region:
    code: str
    zone: int


class QuotaExceeded(Exception):
    def __init__(self, region):
        super().__init__(f"quota exceeded in {region.code}")
        self.region = region
"""


def test_a_frozen_key_from_a_lazily_imported_module_reads_back_in_a_fresh_process(tmp_path):
    (tmp_path / "lazy_regions.py").write_text(LAZY_MODULE)
    run = run_python(
        """
        import sys
        from flux import ExecutionContext, task, workflow

        @task
        async def totals():
            import lazy_regions  # imported by the task only
            return {lazy_regions.Region("eu", 1): 10, "all": {lazy_regions.Region("us", 2)}}

        @task
        async def refuse():
            import lazy_regions
            raise lazy_regions.QuotaExceeded(lazy_regions.Region("eu", 1))

        @workflow
        async def regions(ctx: ExecutionContext):
            value = await totals()
            try:
                await refuse()
            except Exception as exc:
                return [value, type(exc).__name__, str(exc)]

        ctx = regions.run(execution_id="regions-1")
        print(ctx.state.value, ctx.output[1:])
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "COMPLETED ['QuotaExceeded', 'quota exceeded in eu']" in run.stdout
    read = run_python(
        """
        import sys
        from flux import open_engine
        import trio

        async def main():
            assert "lazy_regions" not in sys.modules
            async with open_engine() as engine:
                ctx = await engine.get("regions-1")
            value, name, text = ctx.output
            region = next(k for k in value if k != "all")
            print(type(region).__module__, region.code, value[region])
            print(sorted(r.code for r in value["all"]))
            failed = [e for e in ctx.events if e.type.value == "TASK_FAILED"][0].value
            print(type(failed).__name__, failed.region.zone, str(failed))

        trio.run(main)
        """,
        tmp_path,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    assert read.stdout.splitlines() == [
        "lazy_regions eu 10",
        "['us']",
        "QuotaExceeded 1 quota exceeded in eu",
    ]


# -- the property: through the store and a fresh process, equal or refused at encode ------------

offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes()
    | st.datetimes(timezones=offsets | st.just(UTC))
    | st.dates()
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.sampled_from(list(ct.Status))
)
keys = st.recursive(
    scalars.filter(lambda v: not isinstance(v, float) or v == v),
    lambda inner: (
        st.tuples(inner, inner)
        | st.frozensets(inner, max_size=3)
        | st.builds(ct.FrozenKey, st.text(max_size=5), st.integers())
        | st.builds(ct.AttrsKey, st.integers(), st.tuples(st.integers()))
        | st.builds(ct.Coord, inner, inner)
    ),
    max_leaves=6,
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.sets(keys, max_size=4)
        | st.frozensets(keys, max_size=4)
        | st.builds(ct.Priced, st.integers(), inner)
        | st.builds(ct.priced, st.integers(), inner)
        | st.builds(ct.Slotted, inner, inner)
        | st.builds(
            ct.Order,
            st.integers(),
            st.lists(inner, max_size=3),
            st.dictionaries(keys, inner, max_size=2),
        )
        | st.builds(ct.Coord, inner, inner)
        | st.builds(
            ct.make_error,
            st.integers(0, 999),
            inner,
            st.none() | st.builds(ct.make_error, st.integers(), keys, st.none(), st.none()),
            st.none() | st.text(max_size=8),
        )
    )


values = st.recursive(scalars | keys, _containers, max_leaves=25)


class _Opaque:
    pass


def _nested(n: int) -> Any:
    value: Any = "leaf"
    for _ in range(n):
        value = ct.Slotted(value)
    return value


refused = st.sampled_from(
    [
        _Opaque(),
        [1, {"k": object()}],
        _nested(codec.MAX_DEPTH + 1),
        {"deep": tuple([_nested(codec.MAX_DEPTH)])},
    ]
)


async def _through_store(path: str, blobs: list[bytes]) -> list[bytes | None]:
    events = [
        StoredEvent("prop", seq, "TASK_COMPLETED", f"c#{seq}", "c", data, 0.0)
        for seq, data in enumerate(blobs, start=1)
    ]
    record = ExecutionRecord(execution_id="prop", workflow_name="prop", input=codec.encode(None))
    async with open_store(path) as store:
        await store.commit(Write("prop", events, insert=record))
        return [e.value for e in await store.load_events("prop")]


def test_property_values_round_trip_through_the_store_and_a_fresh_process(tmp_path):
    originals: list[Any] = []
    blobs: list[bytes] = []
    refusals: list[str] = []

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(values, values, values, refused))
    def collect(value: Any) -> None:
        try:
            data = codec.encode(value)
        except SerializationError as exc:
            refusals.append(str(exc))
            with pytest.raises(SerializationError):
                codec.canonical(value)
            return
        assert ct.same(value, codec.decode(data))
        originals.append(value)
        blobs.append(data)

    collect()
    assert originals and refusals
    path = str(tmp_path / "property.db")
    stored = trio.run(_through_store, path, blobs)
    assert stored == blobs
    for original, data in zip(originals, stored, strict=True):
        assert data is not None
        assert ct.same(original, codec.decode(data))

    out = run_python(
        """
        import json, sys
        import trio
        from flux.runtime import codec
        from flux.runtime.store import open_store

        async def main():
            async with open_store(sys.argv[1]) as store:
                events = await store.load_events("prop")
            from tests import codec_types  # the comparison helper only, after decoding
            return [codec_types.describe(codec.decode(e.value)) for e in events]

        decoded = None
        imported_before = "tests.codec_types" in sys.modules

        async def run():
            global decoded
            decoded = await main()

        trio.run(run)
        json.dump({"imported_before": imported_before, "decoded": decoded}, sys.stdout)
        """,
        tmp_path,
        path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["imported_before"] is False
    expected = [ct.describe(v) for v in originals]
    for i, (want, got) in enumerate(zip(expected, report["decoded"], strict=True)):
        assert want == got, (i, originals[i])
