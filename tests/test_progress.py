"""Progress: one stage vocabulary, ticking clocks, marked failures, and every display."""

from __future__ import annotations

import io
import json
import sys
import time
import types

import pytest

from ppa_kernel.analyst import progress
from ppa_kernel.analyst.client import _display, progress_event
from ppa_kernel.analyst.progress import (
    FINAL,
    STAGES,
    BarDisplay,
    Display,
    RunProgress,
    TextDisplay,
    choose_mode,
    stage_of,
)
from ppa_kernel.contract.errors import ConsortiumError, PartyFailed, PlanError, PolicyRefused

PHASES = ["policy check", "connect", "shuffle", "tags", "input", "computation",
          "disclosure", "release"]
"""The phases a party reports as they end, in order (``model`` before ``release``)."""
UNDER_WAY = ["linkage", "input", "model"]
"""The phases a party reports while they are under way (with a fraction)."""


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder(Display):
    """A display that keeps every report and what the stage became."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[tuple[str, str, float | None, str, float]] = []

    def update(self, party, phase, elapsed=0.0, fraction=None):
        super().update(party, phase, elapsed, fraction)
        self.reports.append((party, phase, fraction, self.progress.stages[party],
                             time.monotonic()))


def test_every_party_phase_maps_onto_the_one_stage_vocabulary():
    for phase in [*PHASES, "model", "awaiting approval", "approved", "queued", "refused",
                  "failed"]:
        assert stage_of(phase) in STAGES, phase
    for phase in UNDER_WAY:
        assert stage_of(phase, 0.5) in STAGES, phase
    assert stage_of("linkage", 0.3) == "linkage" and stage_of("tags") == "input"
    assert stage_of("model", 0.0) == "model" and stage_of("model") == "release"
    assert stage_of("no such phase") is None
    assert "shuffle" not in STAGES and "tags" not in STAGES  # worker phases, not stages


def test_each_finished_phase_moves_a_party_to_the_next_stage():
    run = RunProgress(["a", "b"])
    seen = []
    for phase in PHASES:
        run.update("a", phase, 1.0)
        seen.append(run.stages["a"])
    assert seen == ["connecting", "linkage", "linkage", "input", "computation",
                    "disclosure check", "release", "done"]
    assert run.slowest() == "policy check"  # b has not reported yet
    assert run.summary() == "a done, b policy check"
    assert not run.update("a", "input", 2.0, 0.5)  # nothing moves a finished party
    assert not run.update("b", "no such phase") and run.stages["b"] == "policy check"


def test_a_long_phase_shows_how_far_along_it_is():
    run = RunProgress(["a"])
    run.update("a", "connect")
    assert run.update("a", "linkage", 1.0, 0.0) is False  # the same stage, just started
    assert run.label("a") == "linkage"
    run.update("a", "linkage", 1.5, 0.42)
    assert run.label("a") == "linkage 42%"
    run.update("a", "linkage", 1.6, 0.30)  # out of order: never backwards
    run.update("a", "shuffle", 1.7)  # a phase inside linkage ended: still linkage
    assert run.label("a") == "linkage 42%"
    run.update("a", "linkage", 2.0, 1.0)
    assert run.label("a") == "linkage 99%"  # 100 % only once it is over
    run.update("a", "tags", 2.5)
    assert run.label("a") == "input"
    run.update("a", "input", 2.6, 0.25)
    assert run.rows()[0][1] == "input 25%"


def test_elapsed_time_ticks_between_reports_and_stops_when_a_party_is_done():
    clock = Clock()
    run = RunProgress(["a", "b"], clock)
    clock.now += 1.5
    run.update("a", "policy check", 0.0)
    clock.now += 2.0  # no report for 2 s: the clocks still move
    assert run.rows() == [("a", "connecting", 3.5), ("b", "policy check", 3.5)]
    for phase in PHASES[1:]:
        run.update("a", phase, 0.0)
    clock.now += 4.0
    assert run.elapsed("a") == 3.5 and run.elapsed("b") == 7.5 and run.wall == 7.5
    run.finish(ok=False, errors={"b": PartyFailed("worker died", party="b")})
    clock.now += 10.0
    assert run.wall == 7.5 and run.elapsed("b") == 7.5  # every clock stops at the end


def test_a_refusal_marks_the_refusing_party_and_stops_the_others():
    out = io.StringIO()
    display = TextDisplay(stream=out)
    display.begin(["insurer", "hospital", "bureau"])
    for party in ("insurer", "hospital", "bureau"):
        display.update(party, "approved")
    display.update("hospital", "policy check")
    display.update("bureau", "policy check")
    display.update("insurer", "refused")  # the client's report of the party's error
    display.update("bureau", "failed")  # only a knock-on: its peer's worker went away
    display.close(ok=False, errors={"insurer": PlanError("unknown column", party="insurer")})
    stages = display.progress.stages
    assert stages == {"insurer": "refused", "hospital": "stopped", "bureau": "stopped"}
    assert "connecting" not in display.progress.summary()
    assert out.getvalue().splitlines()[-1].endswith("secure run failed: insurer refused")
    run = RunProgress(["a", "b"])
    run.finish(ok=False, errors={"a": PolicyRefused("no"), "b": PartyFailed("died")})
    assert run.stages == {"a": "refused", "b": "failed"}


def test_text_display_prints_each_stage_of_the_slowest_party_once():
    out = io.StringIO()
    display = TextDisplay(stream=out)
    display.begin(["a", "b"])
    for phase in PHASES:
        display.update("a", phase, 0.0)
        if phase == "connect":
            display.update("a", "linkage", 0.0, 0.5)  # fractions print nothing
        display.update("b", phase, 0.0)
    display.close(ok=True)
    display.close(ok=True)  # once per run
    stages = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert stages == ["secure run at a, b: policy check", "connecting", "linkage", "input",
                      "computation", "disclosure check", "release", "secure run finished"]


def test_the_bar_ticks_and_leaves_its_last_line(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(progress, "TICK", 0.05)
    out = io.StringIO()
    display = BarDisplay(file=out)
    display.begin(["a", "b"])
    assert display.ticking
    display.update("a", "policy check")
    before = len(out.getvalue())
    time.sleep(0.4)
    assert len(out.getvalue()) > before  # redrawn without any report
    for phase in PHASES:
        display.update("a", phase)
        display.update("b", phase)
    display.close(ok=True)
    assert not display.ticking
    text = out.getvalue()
    last = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert text.endswith("\n"), "the bar did not leave its line"
    assert last.startswith("secure run finished: a done, b done in "), last


def test_the_widget_ticks_while_the_run_lasts_and_stops_after(monkeypatch):
    pytest.importorskip("ipywidgets")
    from ppa_kernel.analyst.progress import WidgetDisplay

    monkeypatch.setattr(progress, "TICK", 0.05)
    display = WidgetDisplay(show=False)
    assert "ppa-progress" in display.widget._dom_classes
    display.begin(["a", "b"])
    display.update("a", "policy check")
    first = display.widget.value
    time.sleep(0.3)
    assert display.widget.value != first and "connecting" in display.widget.value
    display.update("a", "connect")
    display.update("a", "linkage", 1.0, 0.5)
    assert "linkage 50%" in display.widget.value
    display.close(ok=False, errors={"b": PartyFailed("lost", party="b")})
    assert not display.ticking
    closed = display.widget.value
    assert "secure run failed: b failed" in closed and "stopped" in closed
    time.sleep(0.2)
    assert display.widget.value == closed  # no ticks after the end
    display.begin(["a", "b"])  # reusable: the next run starts afresh
    assert "secure run running" in display.widget.value and "stopped" not in \
        display.widget.value
    display.close()


def test_a_broken_front_end_stops_the_ticks_not_the_run(monkeypatch):
    monkeypatch.setattr(progress, "TICK", 0.02)

    class Broken(Display):
        ticks = True
        draws = 0

        def redraw(self):
            self.draws += 1
            if self.draws > 2:
                raise RuntimeError("comm closed")

    display = Broken()
    display.begin(["a"])
    time.sleep(0.3)
    assert not display.ticking and display.draws == 3 and display.broken
    display.update("a", "policy check")  # neither raises nor draws
    display.close()
    assert display.draws == 3 and display.progress.stages["a"] == "done"


def test_progress_events_are_cut_to_sane_values():
    assert progress_event({"phase": "linkage", "fraction": 0.25, "elapsed": 3}) == \
        ("linkage", 3.0, 0.25)
    assert progress_event({"phase": "tags", "elapsed": 1.5}) == ("tags", 1.5, None)
    assert progress_event({"phase": "x" * 500, "fraction": 7, "elapsed": "soon"}) == \
        ("x" * 40, 0.0, 1.0)
    for odd in (True, float("nan"), "0.5", [0.5]):
        assert progress_event({"phase": "input", "fraction": odd})[2] is None
    assert progress_event({"phase": 3})[0] == ""


def test_a_plain_callback_hears_of_finished_phases_only():
    heard = []
    report, display = _display(lambda *args: heard.append(args))
    assert display is None
    report("a", "linkage", 1.0, 0.5)
    report("a", "tags", 2.0, None)
    assert heard == [("a", "tags", 2.0)]
    mine = Recorder()
    assert _display(mine) == (mine.update, mine)


def test_worker_step_reports_are_few_and_carry_no_data(monkeypatch, capsys):
    from ppa_kernel.party import worker

    now = [0.0]
    monkeypatch.setattr(worker.time, "perf_counter", lambda: now[0])
    phases = worker.Phases()
    for done in range(101):  # 100 steps over 10 s
        phases.step("linkage", done, 100)
        now[0] += 0.1
    phases("tags")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    steps = [e for e in events if "fraction" in e]
    assert steps[0] == {"phase": "linkage", "fraction": 0.0, "elapsed": 0.0}
    assert 25 <= len(steps) <= 10 / worker.STEP_INTERVAL + 1  # a few a second, no more
    assert all(set(e) == {"phase", "fraction", "elapsed"} for e in steps)
    assert all(0 <= e["fraction"] < 1 for e in steps)
    assert [e["fraction"] for e in steps] == sorted(e["fraction"] for e in steps)
    assert events[-1] == {"phase": "tags", "elapsed": 10.1}


def test_a_run_reports_its_progress_in_the_stage_vocabulary(consortium):
    display = Recorder()
    t = consortium.link()
    result = t.groupby("app_user").agg(n=("age", "count")).collect(progress=display)
    assert len(result) == 2
    assert {stage for *_, stage, _ in display.reports} <= set(STAGES)
    assert set(display.progress.stages.values()) == {"done"}
    steps = [r for r in display.reports if r[2] is not None]
    assert any(phase == "input" for _, phase, *_ in steps), display.reports
    assert all(0 <= r[2] < 1 for r in steps)
    for party in consortium.names:  # bounded: at most a few step reports a second
        times = [r[4] for r in steps if r[0] == party]
        assert len(times) <= 3 + 4 * (times[-1] - times[0] if times else 0)


def test_a_refused_run_leaves_no_party_connecting(consortium):
    plan = consortium.link().agg(n=("age", "count")).plan()
    plan["columns"] = {"insurer.agee": {**plan["columns"].pop("insurer.age"),
                                        "column": "agee"}}
    plan["aggregates"][0]["expr"] = {"col": "insurer.agee"}
    display = Recorder()
    with pytest.raises(ConsortiumError, match=r"\[insurer\] unknown column"):
        consortium.run(plan, progress=display)
    stages = display.progress.stages
    assert stages["insurer"] == "refused", stages
    assert all(stages[p] == "stopped" for p in consortium.names if p != "insurer"), stages
    assert not set(stages.values()) - set(FINAL)
    assert not display.ticking


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
    from ppa_kernel.analyst.progress import WidgetDisplay

    out = io.StringIO()
    names = ["insurer", "hospital", "bureau"]
    text, bar, widget = TextDisplay(stream=out), BarDisplay(file=io.StringIO()), \
        WidgetDisplay(show=False)
    try:
        for display in (text, bar, widget):
            display.begin(names)
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
        for display in (text, bar, widget):
            display.close()
