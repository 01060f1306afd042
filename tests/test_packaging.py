"""The development commands of the seed: Poetry reads the project, builds it, installs it.

Poetry is installed from the package registry into a virtualenv kept between runs (under the
system's temporary directory). One test reads pyproject.toml with its poetry-core (what ``poetry
install`` builds the project with) and builds the wheel; the other runs the real commands,
``poetry install`` then ``poetry run pytest``, in a fresh copy of the tree (tracked and new files,
nothing ignored: no .venv, no egg-info).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import ROOT

POETRY_HOME = Path(tempfile.gettempdir()) / "flux-test-poetry"


def _tree_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def _fresh_copy(target: Path) -> Path:
    for name in _tree_files():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), dest)
    return target


BUILD = """
import json, sys, zipfile
from pathlib import Path
from poetry.core.factory import Factory
from poetry.core.masonry.builders.wheel import WheelBuilder

project, dist = Path(sys.argv[1]), Path(sys.argv[2])
poetry = Factory().create_poetry(project)
wheel = WheelBuilder.make_in(poetry, dist)
with zipfile.ZipFile(dist / wheel) as z:
    names = z.namelist()
    entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
print(json.dumps({
    "name": poetry.package.name,
    "packages": [p["include"] for p in poetry.local_config["packages"]],
    "dev": sorted(d.name for d in poetry.package.dependency_group("dev").dependencies),
    "files": names,
    "entry_points": entry_points,
}))
"""


def _poetry() -> Path:
    """Poetry from the registry, in a virtualenv kept between runs (its python has
    poetry-core, which Poetry builds and installs the project with)."""
    exe = POETRY_HOME / "venv" / "bin" / "poetry"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(POETRY_HOME / "venv")], check=True)
        done = subprocess.run(
            [str(POETRY_HOME / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "poetry"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    return exe


@pytest.mark.slow
def test_poetry_core_reads_the_project_and_builds_the_wheel(tmp_path):
    python = _poetry().parent / "python"
    project = _fresh_copy(tmp_path / "clone")
    done = subprocess.run(
        [str(python), "-c", BUILD, str(project), str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout)
    assert built["name"] == "flux-core" and built["packages"] == ["flux"]
    assert {"pytest", "pytest-trio", "hypothesis", "ruff"} <= set(built["dev"])
    wanted = {"flux/cli.py", "flux/errors.py", "flux/config.py", "flux/runtime/engine.py"}
    assert wanted <= set(built["files"])
    assert "flux=flux.cli:main" in built["entry_points"].replace(" ", "")


@pytest.mark.slow
def test_poetry_install_in_a_fresh_copy(tmp_path):
    poetry = _poetry()
    project = _fresh_copy(tmp_path / "clone")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))
    }
    env.update(
        POETRY_VIRTUALENVS_IN_PROJECT="true",
        POETRY_CACHE_DIR=str(POETRY_HOME / "cache"),
        POETRY_NO_INTERACTION="1",
        FLUX_DB=str(tmp_path / "flux.db"),
    )

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(poetry), *args], cwd=project, env=env, capture_output=True, text=True,
            timeout=timeout,
        )

    installed = run("install")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "Installing the current project: flux-core" in installed.stdout
    assert (project / ".venv" / "bin" / "flux").exists()
    tests = run("run", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_options.py")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert tests.stdout.strip().splitlines()[-1].split()[0].isdigit()  # "N passed in ..."
    assert " passed" in tests.stdout.strip().splitlines()[-1]
    version = run("run", "flux", "--version")
    assert version.returncode == 0 and version.stdout == "flux, version 0.3.0\n"
    imported = run("run", "python", "-c", "import flux, sys; print(flux.__file__)")
    assert imported.stdout.strip() == str(project / "flux" / "__init__.py")
