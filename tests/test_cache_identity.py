"""Cached tasks are keyed on their whole identity: tasks made by one factory share nothing."""

from __future__ import annotations

import dataclasses
import subprocess
import textwrap
import threading
from typing import Any

import pytest

from flux import ExecutionContext, open_engine, task, workflow
from flux.runtime import codec

from .conftest import PYTHON, subprocess_env

runs: list[tuple[str, int]] = []


@pytest.fixture(autouse=True)
def _reset():
    runs.clear()


def make_multiplier(factor: int):
    @task.with_options(cache=True, name=f"times_{factor}")
    async def multiply(x: int) -> int:
        runs.append((f"x{factor}", x))
        return x * factor

    return multiply


double = make_multiplier(2)
triple = make_multiplier(3)
double_again = make_multiplier(2)


@workflow
async def multiplied(ctx: ExecutionContext[int]):
    return [await double(ctx.input), await triple(ctx.input)]


@workflow
async def multiplied_again(ctx: ExecutionContext[int]):
    return [await double_again(ctx.input)]


@pytest.mark.trio
async def test_tasks_of_one_factory_do_not_share_entries():
    async with open_engine() as engine:
        first = await multiplied.arun(5, engine=engine)
        second = await multiplied.arun(5, engine=engine)
        third = await multiplied_again.arun(5, engine=engine)
    assert first.output == [10, 15]
    assert second.output == [10, 15]
    assert third.output == [10]
    assert runs == [("x2", 5), ("x3", 5)]  # the same factory argument shares its entries
    assert double.qualified_name == triple.qualified_name
    assert double.cache_key((5,), {}) != triple.cache_key((5,), {})
    assert double.cache_key((5,), {}) == double_again.cache_key((5,), {})


@task.with_options(cache=True)
async def plain_cached(x: int) -> int:
    return x


def test_a_module_level_task_keeps_its_key():
    # entries written before keys included closures stay valid for tasks that have none
    expected = codec.digest([plain_cached.qualified_name, [5], {"k": 1}])
    assert plain_cached.cache_key((5,), {"k": 1}) == expected


def test_defaults_and_closed_over_code_tell_tasks_apart():
    def helper_a(x):
        return x

    def helper_b(x):
        return -x

    def make(helper, scale: int = 1):
        @task.with_options(cache=True)
        async def apply(x, scale=scale):
            return helper(x) * scale

        return apply

    a, b, a2, a_scaled = make(helper_a), make(helper_b), make(helper_a), make(helper_a, 3)
    keys = [t.cache_key((1,), {}) for t in (a, b, a2, a_scaled)]
    assert keys[0] != keys[1]  # other function closed over
    assert keys[0] == keys[2]
    assert keys[0] != keys[3]  # other default

    def make_with_task(inner):
        @task.with_options(cache=True)
        async def outer(x):
            return await inner(x)

        return outer

    assert make_with_task(double).cache_key((1,), {}) != make_with_task(triple).cache_key(
        (1,), {}
    )
    sentinel_a, sentinel_b = object(), object()

    def make_sentinel(sentinel):
        @task.with_options(cache=True)
        async def with_sentinel(x, missing=sentinel):
            return x

        return with_sentinel

    # a default the codec cannot carry takes part by its type
    assert make_sentinel(sentinel_a).cache_key((1,), {}) == make_sentinel(sentinel_b).cache_key(
        (1,), {}
    )


def test_a_closure_the_codec_cannot_carry_refuses_cache_at_declaration():
    lock = threading.Lock()

    with pytest.raises(ValueError) as info:

        @task.with_options(cache=True)
        async def guarded(x):
            with lock:
                return x

    message = str(info.value)
    assert "'guarded'" in message
    assert "closure variable 'lock'" in message
    assert "_thread.lock" in message
    assert "cache=True" in message

    @task  # without cache=True the same closure is fine
    async def unguarded(x):
        with lock:
            return x


def test_a_recursive_factory_task_is_accepted():
    def make(n: int):
        @task.with_options(cache=True)
        async def countdown(x: int) -> Any:
            return x if x <= 0 else await countdown(x - n)

        return countdown

    one, two = make(1), make(2)
    assert one.cache_key((3,), {}) != two.cache_key((3,), {})
    assert one.cache_key((3,), {}) == make(1).cache_key((3,), {})


def test_factory_entries_across_processes(tmp_path):
    script = tmp_path / "factory.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from flux import task, workflow, ExecutionContext

            def make_multiplier(factor):
                @task.with_options(cache=True)
                async def multiply(x):
                    with open(sys.argv[1], "a") as f:
                        f.write(f"x{factor}({x})\\n")
                    return x * factor
                return multiply

            factors = [int(f) for f in sys.argv[2].split(",")]
            tasks = [make_multiplier(f) for f in factors]

            @workflow
            async def wf(ctx: ExecutionContext[int]):
                return [await t(ctx.input) for t in tasks]

            print(wf.run(5).output)
            """
        )
    )
    marker = tmp_path / "runs.txt"
    env = subprocess_env(tmp_path)
    outputs = []
    for factors in ("2,3", "3,2", "2,4"):
        out = subprocess.run(
            [PYTHON, str(script), str(marker), factors],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout.strip())
    assert outputs == ["[10, 15]", "[15, 10]", "[10, 20]"]
    # the second process found both entries, the third only x2's: x4 ran once
    assert marker.read_text() == "x2(5)\nx3(5)\nx4(5)\n"


@dataclasses.dataclass(frozen=True)
class Pricer:
    rate: int

    async def price(self, x: int) -> int:
        return x * self.rate


def test_a_bound_method_counts_its_object():
    cheap = task.with_options(cache=True)(Pricer(1).price)
    dear = task.with_options(cache=True)(Pricer(5).price)
    assert cheap.cache_key((2,), {}) != dear.cache_key((2,), {})
    assert cheap.cache_key((2,), {}) == task.with_options(cache=True)(Pricer(1).price).cache_key(
        (2,), {}
    )

    class Opaque:
        async def price(self, x: int) -> int:
            return x

    with pytest.raises(ValueError, match="Opaque"):
        task.with_options(cache=True)(Opaque().price)
