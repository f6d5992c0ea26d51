"""A histogram with a suppressed bin in JupyterLab: the figure renders, and the suppressed
bin is an ``x`` on the zero line labelled ``suppressed (<k)``, never a bar.

The notebook prints what the figure's suppressed-bin artists say (labels, marker heights,
bar heights there), so the page's text output can be checked beside the rendered PNG.
Saves ``suppressed-bars.png`` when ``$PPA_SCREENSHOT_DIR`` is set. Skipped without
Chromium or Playwright (see ``browser_fixtures.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    NOTEBOOK,
    LabServer,
    assert_no_errors,
    collapse_left_sidebar,
    run_all_cells,
    screenshot,
    write_notebook,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NAME = "suppressed-bars.ipynb"
EDGES = [18, 30, 45, 60, 75, 90]  # [75, 90] holds fewer than k of the demo's app users
CELLS = [
    "%load_ext ppa_kernel",
    "%ppa demo --rows 600",
    "%%secure -o ages\n"
    "t = link(insurer, hospital, bureau)\n"
    f"t[t.app_user].histogram('age', bins={EDGES})",
    "import matplotlib.pyplot as plt\n"
    "from ppa_kernel.analyst.plotting import SUPPRESSED_GID, SUPPRESSED_LABEL_GID\n"
    "ax = ages.ppa.plot()\n"
    "gone = ages.attrs['suppressed']['count'].to_numpy()\n"
    "heights = [p.get_height() for c in ax.containers for p in c.patches]\n"
    "print('labels:', [t.get_text() for t in ax.texts if t.get_gid() == SUPPRESSED_LABEL_GID])\n"
    "print('markers at:', [float(y) for m in ax.lines if m.get_gid() == SUPPRESSED_GID\n"
    "                      for y in m.get_ydata()])\n"
    "print('suppressed bar heights:', [float(h) for h, g in zip(heights, gone) if g])\n"
    "print('k:', ages.attrs['plan']['min_cell_size'])\n"
    "plt.show()",
]
LABELS = re.compile(r"labels: \[('suppressed \(<\d+\)'(, )?)+\]")



def test_a_suppressed_bin_renders_as_a_labelled_marker(lab: LabServer,
                                                       notebook: Callable[[str], Page]) -> None:
    write_notebook(lab.root_dir / NAME, CELLS)
    page = notebook(NAME)
    cells = run_all_cells(page, timeout=150)
    assert_no_errors(page, lab, NAME, cells)

    plot_cell = page.locator(f"{NOTEBOOK} .jp-CodeCell", has=page.locator(
        ".jp-InputArea-editor", has_text="ages.ppa.plot()")).first
    text = plot_cell.locator(".jp-OutputArea-output").first.inner_text()
    k = int(re.search(r"k: (\d+)", text).group(1))
    labels = LABELS.search(text)
    assert labels, f"no suppressed-bin label in the output:\n{text}"
    assert f"suppressed (<{k})" in labels.group(0)
    count = labels.group(0).count("suppressed (")
    assert f"markers at: [{', '.join(['0.0'] * count)}]" in text, text
    assert f"suppressed bar heights: [{', '.join(['0.0'] * count)}]" in text, text

    image = plot_cell.locator('[data-mime-type="image/png"] img').first
    image.scroll_into_view_if_needed()
    assert image.is_visible(), "the histogram was not rendered"
    assert image.evaluate("img => img.complete && img.naturalWidth > 100"), "plot did not load"

    if os.environ.get("PPA_SCREENSHOT_DIR"):
        collapse_left_sidebar(page)
        path = screenshot(page, "suppressed-bars.png", plot_cell, height=900)
        assert path.stat().st_size > 10_000
