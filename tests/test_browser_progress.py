"""The live progress widget in JupyterLab: its clock ticks between the parties' reports
and long phases show how far along they are; a ``--progress bar`` cell keeps its line.

A MutationObserver in the page records every text the ``.ppa-progress`` widget shows while
a ``%%secure`` cell runs (sampling from Python could miss a short stage); the test then
reads the record. Skipped without Chromium or Playwright (see ``browser_fixtures.py``).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from browser_support import NOTEBOOK, LabServer, assert_no_errors, run_all_cells, write_notebook

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NAME = "progress-ticks.ipynb"
CELLS = [
    "%load_ext ppa_kernel",
    "%ppa demo --rows 4000",  # large enough that linkage lasts past a step report
    "%%secure -o fit\n"
    "t = link(insurer, hospital, bureau)\n"
    "t.groupby('app_user').agg(mean=('cost_2021', 'mean'))",
    "%%secure -o again --progress bar\nt = link(insurer, hospital)\nt.agg(n=('age', 'count'))",
]
RECORD = """(selector) => {
  window.ppaProgress = [];
  let last = null;
  new MutationObserver(() => {
    const widget = document.querySelector(selector + ' .ppa-progress');
    if (!widget || widget.textContent === last) return;
    last = widget.textContent;
    window.ppaProgress.push({
      at: performance.now() / 1000,
      text: last,
      rows: Array.from(widget.querySelectorAll('tr')).slice(1)
        .map(tr => Array.from(tr.cells).map(td => td.textContent)),
    });
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
WALL = re.compile(r"\((\d+\.\d) s\)")
FRACTION = re.compile(r"^(linkage|input) \d{1,2}%$")



def ticks(record: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Consecutive shown states in which no party's stage changed but the clocks moved."""
    pairs = []
    for before, after in itertools.pairwise(record):
        stages = [[row[0], row[1]] for row in before["rows"]]
        if stages != [[row[0], row[1]] for row in after["rows"]]:
            continue
        if all(s in ("done", "refused", "failed", "stopped") for _, s in stages):
            continue
        wall = [float(WALL.search(r["text"]).group(1)) for r in (before, after)]
        parties = [float(b[2].split()[0]) < float(a[2].split()[0])
                   for b, a in zip(before["rows"], after["rows"], strict=True)]
        if wall[1] > wall[0] and all(parties):
            pairs.append((before, after))
    return pairs


def test_the_progress_widget_ticks_and_shows_fractions(lab: LabServer,
                                                       notebook: Callable[[str], Page]) -> None:
    write_notebook(lab.root_dir / NAME, CELLS)
    page = notebook(NAME)
    page.evaluate(RECORD, NOTEBOOK)
    started = time.monotonic()
    cells = run_all_cells(page, timeout=150)
    assert_no_errors(page, lab, NAME, cells)
    record: list[dict[str, Any]] = page.evaluate("window.ppaProgress")
    assert record, "the widget never showed anything"
    shown = "\n".join(r["text"] for r in record)
    assert record[-1]["text"].startswith("secure run finished"), record[-1]["text"]
    assert {row[1] for row in record[-1]["rows"]} == {"done"}
    assert len(record[-1]["rows"]) == 3
    moved = ticks(record)
    assert len(moved) >= 2, f"the clock did not tick between reports:\n{shown}"
    assert moved[-1][1]["at"] - moved[0][0]["at"] > 0.5, shown
    fractions = [row[1] for r in record for row in r["rows"] if FRACTION.match(row[1])]
    assert fractions, f"no stage showed how far along it was:\n{shown}"
    assert time.monotonic() - started < 120
    bar_cell = page.locator(f"{NOTEBOOK} .jp-CodeCell", has=page.locator(
        ".jp-InputArea-editor", has_text="--progress bar")).first
    # tqdm's notebook bar writes figure spaces (U+2007) for spaces
    bar = bar_cell.locator(".jp-OutputArea-output").first.inner_text().replace("\u2007", " ")
    assert "secure run finished: insurer done, hospital done, bureau done" in bar, bar
