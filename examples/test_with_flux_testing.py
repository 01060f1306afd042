"""Testing workflows with flux.testing: a week of sleep, a signal timeout and a retry backoff,
each tested in milliseconds of real time (pytest with pytest-trio's ``autojump_clock``).

    pytest examples/test_with_flux_testing.py
    python examples/test_with_flux_testing.py    # the same, through pytest
"""

import sys
import time
from datetime import timedelta

import pytest

import flux.testing
from flux import task, workflow
from flux.errors import SignalTimeoutError
from flux.runtime.events import ExecutionState
from flux.tasks import receive, sleep

attempts: list[float] = []


@task.with_options(retry_max_attempts=3, retry_delay=3600, retry_backoff=2)
async def flaky_call() -> str:
    attempts.append(time.monotonic())
    if len(attempts) < 3:
        raise ConnectionError("the partner API is down")
    return "answered"


@workflow
async def weekly_report(ctx):
    await sleep(timedelta(days=7))
    return f"report for week {ctx.input}"


@workflow
async def approval(ctx):
    try:
        return await receive("approval", timeout=timedelta(days=2))
    except SignalTimeoutError:
        return "escalated"


@workflow
async def patient(ctx):
    return await flaky_call()


@pytest.mark.trio
async def test_a_week_of_sleep_takes_no_time(autojump_clock):
    async with flux.testing.engine() as t:
        start = t.now()
        done = await t.run(weekly_report, 12)
        assert done.output == "report for week 12"
        assert t.now() - start >= timedelta(days=7)


@pytest.mark.trio
async def test_approval_signal_and_timeout(autojump_clock):
    async with flux.testing.engine() as t:
        waiting = await t.start(approval)
        assert waiting.state is ExecutionState.SCHEDULED  # released, waiting for the signal
        await t.advance(timedelta(hours=20))
        await t.send_signal(waiting.execution_id, "approval", "approved by Grace")
        assert (await t.get(waiting.execution_id)).output == "approved by Grace"

        ignored = await t.run(approval)  # nobody answers: the timeout passes
        assert ignored.output == "escalated"


@pytest.mark.trio
async def test_retry_backoff_in_virtual_time(autojump_clock):
    attempts.clear()
    async with flux.testing.engine() as t:
        done = await t.run(patient)
        assert done.output == "answered"
        assert len(attempts) == 3  # one hour, then two hours of backoff: virtual


if __name__ == "__main__":
    quiet = "ignore::pytest.PytestAssertRewriteWarning"  # flux imported anyio before pytest
    args = [__file__, "-q", "-p", "no:cacheprovider", "-W", quiet]
    code = pytest.main(args)
    print("flux.testing example: all tests passed" if code == 0 else f"pytest exit {code}")
    sys.exit(int(code))
