"""The wheel holds every module of the source tree; widgets/ installs as ppa_kernel.widgets.

The query builder's source is the repository's top-level ``widgets/`` folder, mapped to the
import name ``ppa_kernel.widgets`` by ``package-dir`` in pyproject.toml, whose package list
is written out (setuptools' ``packages.find`` cannot be combined with that mapping). These
tests build a real wheel, so a package left out of that list, or a mapping that breaks,
fails here instead of in a user's install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"ppa_kernel": REPO / "ppa_kernel", "ppa_kernel/widgets": REPO / "widgets"}
"""Where each installed folder's modules come from (the installed path -> the source folder)."""
BUILD_TIMEOUT = 180
# Left out of the copy the wheel is built from: version control, environments, caches,
# build output and what the tests, demo and benchmarks write (see .gitignore).
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", "ppa-demo", "bench-output", "test-output", "output",
)


def source_modules() -> set[str]:
    """Every module of the source tree, as its path inside an installed ppa_kernel."""
    modules = set()
    for installed, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts:
                modules.add(f"{installed}/{path.relative_to(folder).as_posix()}")
    return modules


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the repository, built (like ``pip wheel``) from a clean copy of it.

    The copy keeps ``build/`` and ``*.egg-info`` out of the repository, and keeps a stale
    ``build/lib`` from an earlier layout out of the wheel (setuptools would pack it, and so
    hide a package missing from the list).
    """
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    wheels = root / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(wheels), str(source)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env, cwd=root)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    built = sorted(wheels.glob("ppa_workbench-*.whl"))
    assert len(built) == 1, built
    return built[0]


def test_wheel_holds_every_module_of_the_source_tree(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    modules = {name for name in names if name.endswith(".py")}
    for name in ("__init__.py", "panel.py", "spec.py"):
        assert f"ppa_kernel/widgets/{name}" in modules
    assert modules == source_modules()
    assert not [name for name in names if name.startswith("widgets/")], \
        "widgets/ must install as ppa_kernel/widgets/, never as a top-level package"


def test_unpacked_wheel_imports_ppa_kernel_widgets(wheel: Path, tmp_path: Path) -> None:
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    script = (
        "import json, ppa_kernel, ppa_kernel.widgets, ppa_kernel.widgets.spec\n"
        "from ppa_kernel import query_builder\n"
        "from ppa_kernel.widgets import QueryBuilder\n"
        "import ppa_kernel.widgets.panel as panel\n"
        "assert query_builder is ppa_kernel.widgets.query_builder\n"
        "assert QueryBuilder is panel.QueryBuilder\n"
        "print(json.dumps([ppa_kernel.__file__, ppa_kernel.widgets.__file__,\n"
        "                  ppa_kernel.widgets.spec.__file__, panel.__file__]))\n"
    )
    # Only the unpacked wheel on PYTHONPATH, run from inside it: the repository is not on
    # the path, while numpy, pandas and ipywidgets still come from site-packages.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env, cwd=installed)
    assert done.returncode == 0, done.stderr
    files = [Path(file).resolve() for file in json.loads(done.stdout)]
    for file in files:
        assert file.is_relative_to(installed.resolve()), file
    assert files[1] == (installed / "ppa_kernel" / "widgets" / "__init__.py").resolve()


def test_ppa_kernel_widgets_is_the_widgets_folder() -> None:
    """In the repository's own (editable) install, ``ppa_kernel.widgets`` is ``widgets/``."""
    import ppa_kernel.widgets

    assert ppa_kernel.widgets.__file__ is not None, (
        "ppa_kernel.widgets is an empty namespace package: a leftover ppa_kernel/widgets/ "
        "folder (such as its __pycache__) shadows widgets/; remove it")
    if Path(ppa_kernel.__file__).resolve().parent != REPO / "ppa_kernel":
        pytest.skip("ppa_kernel is not imported from this repository")
    assert Path(ppa_kernel.widgets.__file__).resolve() == REPO / "widgets" / "__init__.py"
