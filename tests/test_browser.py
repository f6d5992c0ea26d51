"""The notebooks in a real browser: JupyterLab driven by Debian's Chromium through Playwright.

Skipped when Chromium or Playwright is missing, unless ``PPA_REQUIRE_BROWSER=1`` (CI);
the JupyterLab and Chromium fixtures live in ``browser_fixtures.py``.
Screenshots go to ``$PPA_SCREENSHOT_DIR`` or ``tests/output/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    NOTEBOOK,
    LabServer,
    assert_no_errors,
    collapse_left_sidebar,
    outputs,
    run_all_cells,
    screenshot,
    widget,
)

from ppa_kernel.analyst.synthetic import INCOME_BANDS

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

QUICKSTART = "01-quickstart.ipynb"
QUERY_BUILDER = "03-query-builder.ipynb"
QUERY_TIMEOUT_MS = 150_000


def test_quickstart_runs_in_jupyterlab(lab: LabServer,
                                       notebook: Callable[[str], Page]) -> None:
    page = notebook(QUICKSTART)
    cells = run_all_cells(page)
    assert_no_errors(page, lab, QUICKSTART, cells)

    first_query = page.locator(f"{NOTEBOOK} .jp-CodeCell", has=page.locator(
        ".jp-InputArea-editor", has_text="%%secure")).first
    table = first_query.locator(".jp-OutputArea-output table.ppa-released").first
    progress = first_query.locator(".ppa-progress").first
    assert progress.is_visible(), "no live progress widget in JupyterLab"
    assert "secure run finished" in progress.inner_text()
    assert "linkage" not in progress.inner_text() and "done" in progress.inner_text()
    plot = outputs(page).and_(page.locator('[data-mime-type="image/png"]')).locator("img").first
    table.scroll_into_view_if_needed()
    assert table.is_visible(), "the first %%secure cell shows no result table"
    assert len(table.locator("tbody tr").all()) >= 2, table.inner_text()
    plot.scroll_into_view_if_needed()
    assert plot.is_visible(), "no matplotlib image in any output"
    assert plot.evaluate("img => img.complete && img.naturalWidth > 100"), "plot did not load"

    collapse_left_sidebar(page)
    path = screenshot(page, "quickstart.png", first_query, height=1300)
    assert path.stat().st_size > 10_000


def test_query_builder_runs_a_query_from_clicks(lab: LabServer,
                                                notebook: Callable[[str], Page]) -> None:
    page = notebook(QUERY_BUILDER)
    cells = run_all_cells(page)
    assert_no_errors(page, lab, QUERY_BUILDER, cells)

    builder = page.locator(f"{NOTEBOOK} .ppa-query-builder")
    builder.wait_for(state="visible")
    for label in ("Parties", "Filter on", "Group by", "Outcome", "Statistic", "Run",
                  "Show code", "Export"):
        assert widget(page, label).is_visible(), f"no {label!r} control in the builder"

    group = page.locator(".ppa-group-by select option",
                         has_text=re.compile(r"(^|\.)income_band$"))
    group.first.click()
    assert group.first.evaluate("o => o.selected"), "clicking income_band did not select it"
    outcome = page.locator(".ppa-outcome select")
    measures = [o for o in outcome.locator("option").all_inner_texts() if "cost" in o]
    assert measures, "no cost measure offered as Outcome"
    outcome.select_option(label="cost_2021" if "cost_2021" in measures else measures[0])
    page.locator(".ppa-statistic select").select_option(label="mean")

    page.locator("button.ppa-run").click()
    result = page.locator(".ppa-result table")
    error = page.locator(".ppa-status .ppa-error")
    result.or_(error).first.wait_for(state="visible", timeout=QUERY_TIMEOUT_MS)
    assert not error.count(), f"the builder showed an error: {error.inner_text()}"
    text = result.inner_text()
    assert "income_band" in text, text
    shown = [band for band in INCOME_BANDS if re.search(rf"\b{band}\b", text)]
    assert shown == list(INCOME_BANDS), f"released table lacks income bands:\n{text}"

    page.locator("button.ppa-show-code").click()
    code = page.locator(".ppa-code pre")
    code.wait_for(state="visible")
    assert "%%secure" in code.inner_text(), code.inner_text()
    assert "income_band" in code.inner_text(), code.inner_text()

    collapse_left_sidebar(page)
    path = screenshot(page, "query-builder.png", builder, height=1600)
    assert path.stat().st_size > 10_000
