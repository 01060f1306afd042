"""Every example in examples/ runs as a script and prints what it promises."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import PYTHON, ROOT, subprocess_env

EXAMPLES = os.path.join(ROOT, "examples")

#: a line each example must print (examples that need a server are tested elsewhere)
EXPECTED = {
    "hello_world.py": "Hello, World",
    "pause_resume.py": "COMPLETED order 7 shipped, 42 EUR, approved by Grace",
    "determinism.py": "same values as recorded: yes",
    "graph.py": "Alice: COMPLETED -> APPROVED (SCORE 740)",
    "parallel.py": "COMPLETED ['Hi, World', 'Hello, World', 'Hola, World']",
    "pipeline.py": "COMPLETED 169",
    "map.py": "COMPLETED [2, 4, 6, 8, 10, 12] peak concurrency 2",
    "cache.py": "second execution ran 0 task bodies: COMPLETED",
    "values.py": "same values as the first run: True",
    "metadata.py": "COMPLETED ['xulf', 'upload_report.pdf succeeded on attempt 3']",
    "builtins.py": "resumed with the recorded values: True",
    "subworkflows.py": "COMPLETED {'apple': 5, 'unicorn': 'failed: no such item: unicorn'}",
    "cancellation.py": "CANCELLED True",
    "state_inspection.py": "COMPLETED 2.5 / FAILED ZeroDivisionError",
    "secret_management.py": "value in the history: False | in the database files: False",
    "ownership.py": "COMPLETED ['reserved', 'paid']",
    "store_copy.py": "resumed in the copy: COMPLETED reserved a lamp, approved by Grace",
    "api_models.py": "the answer matches its OpenAPI schema: True",
    "retry_failed.py": "retry: COMPLETED ['reserved lamp', 'charged 42 EUR', 'shipped to Grace'], "
    "ran ['charge', 'ship']",
    "approval_signals.py": "COMPLETED EXP-8 escalated: no decision in 2 days",
    "test_with_flux_testing.py": "flux.testing example: all tests passed",
    "nightly_schedule.py": "7 nights, 7 reports: COMPLETED",
}

SCRIPTS = sorted(
    f
    for f in os.listdir(EXAMPLES)
    if f.endswith(".py") and not f.startswith(("distributed", "postgres"))
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    out = subprocess.run(
        [PYTHON, os.path.join(EXAMPLES, script)],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the example printed nothing"
    assert "Traceback" not in out.stderr
    if script in EXPECTED:
        assert EXPECTED[script] in out.stdout.splitlines()
