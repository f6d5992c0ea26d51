"""Completion and one-line errors of %%secure cells in JupyterLab (Chromium via Playwright).

A small notebook of its own starts a small demo, runs a cell with a misspelt party, and
then Tab is pressed in a %%secure cell being typed: JupyterLab's completer pops up with
what the kernel's matcher offers (the whole cell goes to the kernel's completer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from browser_support import NOTEBOOK, LabServer, run_all_cells, write_notebook

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NAME = "completion-check.ipynb"
CELLS = [
    "%load_ext ppa_kernel\n%ppa demo --rows 40",
    "%%secure\nt = link(insurer, hospitel)\nt.count()",
    "%%secure\nt = link(insurer, bureau)\n",
]



def code_cell(page: Page, index: int) -> Locator:
    return page.locator(f"{NOTEBOOK} .jp-CodeCell").nth(index)


def completions_after(page: Page, typed: str) -> list[str]:
    """Type at the end of the last cell, press Tab, and read the completer's items."""
    page.keyboard.type(typed)
    page.keyboard.press("Tab")
    popup = page.locator(".jp-Completer:not(.lm-mod-hidden)")
    popup.locator(".jp-Completer-item").first.wait_for(state="visible", timeout=15_000)
    items = popup.locator(".jp-Completer-item .jp-Completer-match").all_inner_texts()
    page.keyboard.press("Escape")
    popup.wait_for(state="hidden", timeout=5_000)
    return [item.strip() for item in items]


def test_secure_cell_completes_and_a_typo_is_one_line(lab: LabServer,
                                                      notebook: Callable[[str], Page]) -> None:
    write_notebook(lab.root_dir / NAME, CELLS)
    page = notebook(NAME)
    cells = run_all_cells(page, timeout=90)
    assert re.search(r"\d", cells[0]["prompt"]), "the demo cell did not run"

    error = code_cell(page, 1).locator(".jp-OutputArea-output").first
    text = error.inner_text().strip()
    assert len(text.splitlines()) == 1, text
    assert "did you mean hospital?" in text and "line 2" in text, text
    assert "Traceback" not in text and "NameError" not in text, text

    editor = code_cell(page, 2).locator(".jp-InputArea-editor .cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    parties = completions_after(page, "x = link(")
    assert sorted(parties) == ["bureau", "hospital", "insurer"], parties
    page.keyboard.type("insurer)")
    page.keyboard.press("Enter")
    attributes = completions_after(page, "t.")
    assert {"age", "cost_2021", "income_band", "groupby", "agg"} <= set(attributes), attributes
    columns = completions_after(page, 'groupby(["')
    assert {"age", "sex", "income_band", "education"} <= set(columns), columns
    assert not {"app_user", "readmitted", "groupby"} & set(columns), columns
