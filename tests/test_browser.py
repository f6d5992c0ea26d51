"""The notebooks in a real browser: JupyterLab driven by Debian's Chromium through Playwright.

Skipped when Chromium or Playwright is missing, unless ``PPA_REQUIRE_BROWSER=1`` (CI);
the JupyterLab and Chromium fixtures live in ``browser_fixtures.py``.
Screenshots go to ``$PPA_SCREENSHOT_DIR`` or ``tests/output/browser/``. The notebooks run
their demo with ``demo_rows = 600`` (set in their parameters cell, as a user would), except
when the README's screenshots in ``docs/img`` are refreshed: those show the full demo.
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
    refreshing_readme_screenshots,
    run_all_cells,
    screenshot,
    set_parameters,
    widget,
)

from ppa_kernel.analyst.synthetic import INCOME_BANDS

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

QUICKSTART = "01-quickstart.ipynb"
QUERY_BUILDER = "03-query-builder.ipynb"
QUERY_TIMEOUT_MS = 150_000
DEMO_ROWS = 600  # the notebooks' default, 4200, only for the README's screenshots


@pytest.fixture(scope="module", autouse=True)
def small_demo(lab: LabServer) -> None:
    """The lab's copies of the notebooks start a demo of ``DEMO_ROWS`` people."""
    if not refreshing_readme_screenshots():
        for name in (QUICKSTART, QUERY_BUILDER):
            set_parameters(lab.root_dir / name, demo_rows=DEMO_ROWS)


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
                  "Cancel", "Show code", "Export"):
        assert widget(page, label).is_visible(), f"no {label!r} control in the builder"
    assert builder.locator('[title="null"]').count() == 0, "a label has title=\"null\""
    hints = builder.locator(".ppa-help").all_inner_texts()
    assert any("order you pick" in h for h in hints), hints
    assert "everyone" in builder.locator(".ppa-filters").inner_text()
    outcome = page.locator(".ppa-outcome select")
    assert outcome.evaluate("s => s.options[s.selectedIndex].text") == "rows"

    # two groups, picked against the list's order: income_band, then region (above it)
    options = page.locator(".ppa-group-by select option")
    names = [re.sub(r"^.*\.", "", o) for o in options.all_inner_texts()]
    assert names.index("region") < names.index("income_band"), names
    band = options.nth(names.index("income_band"))
    band.click()
    assert band.evaluate("o => o.selected"), "clicking income_band did not select it"
    from playwright.sync_api import expect

    order = builder.locator(".ppa-group-order")
    # the kernel answers each pick asynchronously: wait for it before the next pick
    expect(order).to_contain_text("income_band", timeout=10_000)
    options.nth(names.index("region")).click(modifiers=["Control"])
    expect(order).to_have_text(re.compile(r".*income_band\s*→\s*region"), timeout=10_000)
    measures = [o for o in outcome.locator("option").all_inner_texts() if "cost" in o]
    assert measures, "no cost measure offered as Outcome"
    outcome.select_option(label="cost_2021" if "cost_2021" in measures else measures[0])
    page.locator(".ppa-statistic select").select_option(label="mean")

    page.locator("button.ppa-run").click()
    page.locator("button.ppa-run:disabled").wait_for(timeout=10_000)  # runs in the background
    assert page.locator("button.ppa-cancel:enabled").count() == 1, "Cancel is not enabled"
    result = page.locator(".ppa-result table")
    error = page.locator(".ppa-status .ppa-error")
    result.or_(error).first.wait_for(state="visible", timeout=QUERY_TIMEOUT_MS)
    assert not error.count(), f"the builder showed an error: {error.inner_text()}"
    text = result.inner_text()
    headers = [h.strip() for h in result.locator("th").all_inner_texts()]
    assert headers.index("income_band") < headers.index("region"), headers
    shown = [b for b in INCOME_BANDS if re.search(rf"\b{b}\b", text)]
    assert shown == list(INCOME_BANDS), f"released table lacks income bands:\n{text}"
    assert page.locator("button.ppa-run:enabled").count() == 1

    show = page.locator("button.ppa-show-code")
    show.evaluate("el => el.scrollIntoView({block: 'center'})")  # as a user sees the buttons
    show.click()
    code = page.locator(".ppa-code pre")
    code.wait_for(state="visible")
    source = code.inner_text()
    assert "%%secure" in source and "groupby(['income_band', 'region'])" in source, source
    box, height = code.bounding_box(), (page.viewport_size or {}).get("height", 1000)
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= height, \
        f"the code is not in view after Show code: {box}, window height {height}"
    copy = page.locator(".ppa-code button.ppa-copy-code")
    assert copy.is_visible(), "no Copy code button"
    copy.click()
    note = page.locator(".ppa-code .ppa-copy-note")
    note.filter(has_text=re.compile("Copied|Selected")).wait_for(timeout=5_000)

    collapse_left_sidebar(page)
    path = screenshot(page, "query-builder.png", builder, height=1600)
    assert path.stat().st_size > 10_000

    # insert_code() in a cell inserts the same code as the next cell
    cells_before = page.locator(f"{NOTEBOOK} .jp-CodeCell").count()
    page.locator(f"{NOTEBOOK} .jp-Cell").last.locator(".jp-InputArea-prompt").click()
    page.keyboard.press("b")  # command mode: a new cell below, then edit it
    page.keyboard.press("Enter")
    page.keyboard.type("builder.insert_code();")
    page.keyboard.press("Control+Enter")  # run in place: no extra cell
    inserted = page.locator(f"{NOTEBOOK} .jp-CodeCell", has=page.locator(
        ".jp-InputArea-editor", has_text="groupby(['income_band', 'region'])"))
    inserted.last.wait_for(timeout=30_000)
    assert page.locator(f"{NOTEBOOK} .jp-CodeCell").count() == cells_before + 2
    assert inserted.last.locator(".jp-InputArea-editor").inner_text().startswith(
        "%%secure -o result")
