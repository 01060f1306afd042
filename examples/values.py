"""What the codec gives back: the same values, of the same types, with no constructor run twice.

    python examples/values.py

The workflow's tasks return a named tuple, a dict keyed by a frozen dataclass, a dataclass whose
``__post_init__`` converts dollars to cents, and raise an exception whose ``__init__`` formats
its message. The script then reads the execution back from the store, as a process resuming it
after a crash would, and shows that every value came back equal and of the same type: ``p.x``
still works, the amount is still 500 cents (not 50000), and the error's message is not
formatted twice.
"""

import dataclasses
from typing import NamedTuple

import trio

from flux import ExecutionContext, open_engine, task, workflow


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Region:
    code: str


@dataclasses.dataclass
class Payment:
    dollars: int

    def __post_init__(self) -> None:
        self.cents = self.dollars * 100  # must not run again when the value is read back


class InsufficientFunds(Exception):
    def __init__(self, need: int):
        super().__init__(f"insufficient funds: need {need}")
        self.need = need


@task
async def locate() -> Point:
    return Point(3, 4)


@task
async def totals() -> dict:
    return {Region("eu"): 10, Region("us"): 32}


@task
async def pay(dollars: int) -> Payment:
    return Payment(dollars)


@task
async def withdraw(amount: int) -> None:
    raise InsufficientFunds(amount)


@workflow
async def values(ctx: ExecutionContext):
    point = await locate()
    by_region = await totals()
    payment = await pay(5)
    try:
        await withdraw(7)
    except InsufficientFunds as exc:
        refused = (str(exc), exc.need)
    return {
        "x": point.x,
        "point": point,
        "eu": by_region[Region("eu")],
        "payment": payment,
        "refused": refused,
    }


async def main() -> None:
    async with open_engine() as engine:
        first = await values.arun(engine=engine)
    async with open_engine() as engine:  # another engine: everything decoded from the store
        again = await engine.get(first.execution_id)
    out = again.output
    print(f"first run: {first.state.value} {first.output['refused']}")
    print(
        f"read back: point.x={out['point'].x} ({type(out['point']).__name__}), "
        f"eu={out['eu']}, cents={out['payment'].cents}, refused={out['refused']}"
    )
    error = next(e.value for e in again.events if e.type.value == "TASK_FAILED")
    print(f"recorded error: {type(error).__name__}: {error} (need={error.need})")
    print(f"same values as the first run: {out == first.output}")


if __name__ == "__main__":
    trio.run(main)
