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
}

SCRIPTS = sorted(
    f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("distributed")
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
