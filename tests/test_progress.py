"""Progress displays: stage mapping, text lines, and the choice of display."""

from __future__ import annotations

import io
import sys
import types

import pytest

from ppa_kernel.analyst import progress
from ppa_kernel.analyst.progress import RunProgress, TextDisplay, choose_mode

PHASES = ["policy check", "connect", "shuffle", "tags", "input", "computation",
          "disclosure", "release"]


def test_each_finished_phase_moves_a_party_to_the_next_stage():
    run = RunProgress(["a", "b"])
    seen = []
    for phase in PHASES:
        run.update("a", phase, 1.0)
        seen.append(run.stages["a"])
    assert seen == ["connecting", "linkage", "linkage", "linkage", "computation",
                    "disclosure check", "release", "done"]
    assert run.slowest() == "policy check"  # b has not reported yet
    assert run.summary() == "a done, b policy check"


def test_text_display_prints_each_stage_of_the_slowest_party_once():
    out = io.StringIO()
    display = TextDisplay(RunProgress(["a", "b"]), stream=out)
    for phase in PHASES:
        display.update("a", phase, 0.0)
        display.update("b", phase, 0.0)
    display.close(ok=True)
    stages = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert stages == ["secure run at a, b: policy check", "connecting", "linkage",
                      "computation", "disclosure check", "release", "secure run finished"]


def test_choice_of_display(monkeypatch):
    monkeypatch.delenv(progress.ENV_MODE, raising=False)
    assert choose_mode("text") == "text"
    with pytest.raises(ValueError, match="progress must be one of"):
        choose_mode("fancy")
    monkeypatch.setenv(progress.ENV_MODE, "off")
    assert choose_mode() == "off"
    monkeypatch.delenv(progress.ENV_MODE)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert choose_mode() == "off"


@pytest.mark.parametrize(("metadata", "widget"), [
    ({"cellId": "3f2a", "deletedCells": [], "recordTiming": False}, True),  # JupyterLab
    ({}, False),  # papermill / nbclient send no cell metadata
])
def test_widget_only_for_live_front_ends(monkeypatch, metadata, widget):
    pytest.importorskip("ipywidgets")
    kernel = types.SimpleNamespace(get_parent=lambda channel="shell": {"metadata": metadata})
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    monkeypatch.delenv(progress.ENV_MODE, raising=False)
    assert progress.widget_frontend() is widget
    assert choose_mode() == ("widget" if widget else "text")


def test_every_display_names_the_parties_waiting_for_approval():
    pytest.importorskip("ipywidgets")
    from ppa_kernel.analyst.progress import BarDisplay, WidgetDisplay

    out = io.StringIO()
    text = TextDisplay(RunProgress(["insurer", "hospital", "bureau"]), stream=out)
    bar = BarDisplay(RunProgress(["insurer", "hospital", "bureau"]))
    widget = WidgetDisplay(RunProgress(["insurer", "hospital", "bureau"]))
    try:
        for display in (text, bar, widget):
            display.update("insurer", "approved", 0.0)
            display.update("bureau", "approved", 0.0)
            display.update("hospital", "awaiting approval", 4.0)
        assert "waiting for approval at hospital" in out.getvalue()
        assert "(waiting for approval at hospital)" in bar.bar.desc
        assert "running, waiting for approval at hospital" in widget.widget.value
        for display in (text, bar, widget):
            display.update("hospital", "approved", 0.0)
        assert "waiting for approval" not in bar.bar.desc
        assert "waiting for approval" not in widget.widget.value
    finally:
        bar.close()
