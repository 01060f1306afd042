"""``flux secrets set NAME`` without a value reads it from standard input (issue 9, item 13):
the value never sits on a command line."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flux(tmp_path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLUX_SECRET_KEY_FILE=str(tmp_path / "k.key"))
    env.pop("FLUX_SECRET_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "flux.cli", *args, "--db", str(tmp_path / "s.db")],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_secret_value_from_standard_input(tmp_path):
    value = "p@ss word\twith spaces"
    done = flux(tmp_path, "secrets", "set", "DB_PASSWORD", stdin=value + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "secret DB_PASSWORD set" and value not in done.stdout
    got = flux(tmp_path, "secrets", "get", "DB_PASSWORD")
    assert got.returncode == 0 and got.stdout == value + "\n"
    # exactly what was piped, a trailing CRLF dropped too; inner newlines kept
    flux(tmp_path, "secrets", "set", "PEM", stdin="line1\nline2\r\n")
    assert flux(tmp_path, "secrets", "get", "PEM").stdout == "line1\nline2\n"


def test_an_empty_standard_input_sets_nothing(tmp_path):
    done = flux(tmp_path, "secrets", "set", "EMPTY", stdin="")
    assert done.returncode != 0 and "no value given for secret EMPTY" in done.stderr
    listed = flux(tmp_path, "secrets", "list")
    assert "EMPTY" not in listed.stdout
