"""Browser fixtures shared by every browser test file: one JupyterLab per run, one Chromium
per test file.

Starting JupyterLab costs seconds; the browser tests of all files share it (session scope).
Chromium is driven by Playwright's sync API, which keeps an asyncio loop running in the main
thread while it is open: a session-wide browser would break every later test that calls
``asyncio.run``, so each browser test file gets its own (module scope, about a second).
``notebook`` opens a notebook page and, afterwards, closes it and shuts the kernels (and
the demo parties they started) down. Skipped when Chromium or Playwright is missing, unless
``PPA_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    CHROMIUM,
    REPO,
    BrowserTestError,
    LabServer,
    chromium,
    lab_server,
    open_notebook,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab serving a copy of ``notebooks/`` (tests may add notebooks of their own)."""
    reason = missing_browser()
    if reason:
        if os.environ.get("PPA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PPA_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab-root") / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    with lab_server(root, tmp_path_factory.mktemp("lab-server")) as server:
        yield server


@pytest.fixture(scope="module")
def browser(lab: LabServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def notebook(lab: LabServer, browser: BrowserContext) -> Iterator[Callable[[str], Page]]:
    """Open a notebook; afterwards close its page and shut its kernel (and demo) down."""
    pages: list[Page] = []

    def open_(name: str) -> Page:
        if not (lab.root_dir / name).exists():
            raise BrowserTestError(f"notebooks/{name} does not exist")
        pages.append(open_notebook(browser, lab, name))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()
    lab.shutdown_kernels()
