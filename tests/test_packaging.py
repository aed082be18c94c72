"""The source checkout's ``reflectrl/`` folder is a whole package, as the installed one is.

``pip install .`` maps the top-level folders envs/, modules/ and datamodules/ to ``reflectrl.*``
(setuptools package-dir). Run in the checkout's root, ``python -m reflectrl`` (the warm-up steps)
and ``python -m benchmarks.X`` import the checkout's ``reflectrl/`` instead of the installed one:
its subpackages must still be found.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SUBPACKAGE_FOLDERS = ("envs", "modules", "datamodules")
"""The folders ``[tool.setuptools] package-dir`` maps to ``reflectrl.<folder>``."""


def test_the_subpackage_folders_are_those_of_pyproject() -> None:
    import reflectrl

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder for name, folder in setuptools["package-dir"].items() if name != "reflectrl" and "/" not in folder}
    assert mapped == set(SUBPACKAGE_FOLDERS) == set(reflectrl.SUBPACKAGE_FOLDERS)


def test_the_checkout_finds_its_subpackages_without_any_install() -> None:
    # -S: no site-packages, so no editable-install finder can map the subpackages.
    code = (
        "import importlib.util\n"
        f"for name in {SUBPACKAGE_FOLDERS!r}:\n"
        "    spec = importlib.util.find_spec('reflectrl.' + name)\n"
        "    print(spec.origin if spec else None)\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    origins = out.stdout.split()
    assert origins == [str(REPO / name / "__init__.py") for name in SUBPACKAGE_FOLDERS], out


def test_an_installed_package_is_left_as_it_is(tmp_path: Path) -> None:
    site = tmp_path / "site"
    package = site / "reflectrl"
    package.mkdir(parents=True)
    shutil.copy(REPO / "reflectrl" / "__init__.py", package / "__init__.py")
    for name in SUBPACKAGE_FOLDERS:
        (package / name).mkdir()
        (package / name / "__init__.py").write_text("")
        (site / name).mkdir()  # a top-level folder of that name elsewhere on the path must not count
        (site / name / "__init__.py").write_text("")
    (site / "pyproject.toml").write_text("")
    code = "import reflectrl, reflectrl.envs; print(list(reflectrl.__path__)); print(reflectrl.envs.__file__)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=site, capture_output=True, text=True, check=True)
    path, envs = out.stdout.splitlines()
    assert path == repr([str(package)]) and envs == str(package / "envs" / "__init__.py"), out


def test_every_benchmark_answers_help_without_running() -> None:
    """The README's ``python -m benchmarks.X`` commands: ``--help`` prints usage and exits at once."""
    names = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py") if path.stem != "__init__")
    processes = {
        name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in names
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.startswith("usage:"), (name, err[-500:])
