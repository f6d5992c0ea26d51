"""Progress of a secure run: each party's stage, how far along it is, and elapsed time.

Party kernels report each phase of a run as it *ends* (``policy check``, ``connect``,
``shuffle``, ``tags``, ``input``, ``computation``, ``disclosure``, ``model``,
``release``) and, during the long ones, how far along a phase under way is (``linkage``,
``input``: a fraction of public step counts, at most a few reports a second). The
client adds ``refused`` and ``failed`` for a party whose error it received.
:func:`stage_of` maps every such phase onto one vocabulary, :data:`STAGES`, which every
display (and the query builder) shows; :class:`RunProgress` keeps each party's stage and
clock. Displays:

* ``bar``    -- one tqdm line, kept once the run ends (terminals and plain scripts);
* ``text``   -- a printed line per stage change (papermill and other saved outputs);
* ``widget`` -- an ipywidgets table updated in place (JupyterLab and other live front-ends);
* ``off``    -- nothing.

The bar and the widget tick: a daemon thread redraws them twice a second while the run
lasts, so elapsed time moves between the parties' reports.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ppa_kernel.contract.errors import PlanError, PolicyRefused

logger = logging.getLogger(__name__)

MODES = ("auto", "widget", "text", "bar", "off")
ENV_MODE = "PPA_PROGRESS"
"""Environment variable that overrides the automatic choice of display."""

APPROVAL = "waiting for approval"
FINAL = ("done", "refused", "failed", "stopped")
"""Stages a party does not leave: finished, refused the plan, failed, or stopped because
another party refused or failed."""
STAGES = ("policy check", APPROVAL, "queued", "connecting", "linkage", "input", "computation",
          "disclosure check", "model", "release", *FINAL)
"""Every stage a party can be in, in the order a run goes through them."""

STAGE_AFTER = {"awaiting approval": APPROVAL, "approved": "queued", "queued": "queued",
               "policy check": "connecting", "connect": "linkage", "shuffle": "linkage",
               "tags": "input", "input": "computation", "computation": "disclosure check",
               "disclosure": "release", "model": "release", "release": "done",
               "refused": "refused", "failed": "failed", "stopped": "stopped"}
"""The stage a party is in once the named phase has ended."""
UNDER_WAY = {"linkage": "linkage", "shuffle": "linkage", "tags": "linkage", "input": "input",
             "computation": "computation", "disclosure": "disclosure check", "model": "model"}
"""The stage of a phase reported while it is under way (with a fraction)."""

TICK = 0.5
"""Seconds between redraws of a ticking display (bar, widget)."""

ProgressCallback = Callable[[str, str, float], None]
"""``callback(party, phase, elapsed)``, called for every finished phase (and ``refused``
or ``failed``); reports of a phase under way go only to a :class:`Display`."""


def stage_of(phase: str, fraction: float | None = None) -> str | None:
    """The stage (one of :data:`STAGES`) a party is in after reporting ``phase``: ended
    (``fraction`` None) or under way (a fraction); None for a phase this version does not
    know."""
    table = STAGE_AFTER if fraction is None else UNDER_WAY
    stage = table.get(phase)
    if stage is None and phase in STAGES:
        return phase
    return stage


def error_stage(error: BaseException) -> str:
    """``refused`` for a party that refused the plan (policy, plan checks), else ``failed``."""
    return "refused" if isinstance(error, PlanError | PolicyRefused) else "failed"


class RunProgress:
    """Each party's stage, fraction done and clock; safe to update from several threads.

    A party's elapsed time is wall time since the run was sent, read from ``clock`` when
    asked, and stops once the party reaches a final stage (:data:`FINAL`).
    """

    def __init__(self, names: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.ended: float | None = None
        self.stages = {name: "policy check" for name in names}
        self.fractions: dict[str, float | None] = {name: None for name in names}
        self.finished: dict[str, float] = {}
        self._lock = threading.Lock()

    def update(self, party: str, phase: str, elapsed: float = 0.0,
               fraction: float | None = None) -> bool:
        """Record a report (``elapsed``: the party's own clock, unused); True when the
        party's stage changed. Reports of unknown phases or parties, and any report after a
        final stage, change nothing."""
        stage = stage_of(phase, fraction)
        with self._lock:
            current = self.stages.get(party)
            if stage is None or current is None or current in FINAL:
                return False
            changed = current != stage
            self.stages[party] = stage
            if changed:
                self.fractions[party] = fraction or None
            elif fraction is not None:
                self.fractions[party] = max(fraction, self.fractions[party] or 0.0)
            if stage in FINAL:
                self.finished[party] = self.clock()
        return changed

    def finish(self, ok: bool, errors: Mapping[str, BaseException] | None = None) -> None:
        """The run ended: mark each party with an error ``refused`` or ``failed``, and
        every other party that did not finish ``stopped`` (also one marked failed while the
        run went on, if its error was only a knock-on of another's); stop every clock."""
        errors = errors or {}
        with self._lock:
            now = self.clock()
            self.ended = now
            for party, stage in self.stages.items():
                if stage == "done":
                    pass
                elif party in errors:
                    stage = error_stage(errors[party])
                else:
                    stage = "done" if ok else "stopped"
                if stage != self.stages[party]:
                    self.stages[party], self.fractions[party] = stage, None
                self.finished.setdefault(party, now)

    @property
    def wall(self) -> float:
        """Seconds since the run was sent (until it ended)."""
        return (self.ended if self.ended is not None else self.clock()) - self.started

    def elapsed(self, party: str) -> float:
        """Seconds since the run was sent, until ``party`` reached a final stage."""
        end = self.finished.get(party)
        return (end if end is not None else self.clock()) - self.started

    def label(self, party: str) -> str:
        """A party's stage as shown: with its percentage while a long phase is under way."""
        with self._lock:
            stage, fraction = self.stages[party], self.fractions[party]
        if fraction:
            return f"{stage} {min(int(fraction * 100), 99)}%"
        return stage

    def rows(self) -> list[tuple[str, str, float]]:
        """(party, stage label, elapsed seconds) for every party."""
        return [(name, self.label(name), self.elapsed(name)) for name in list(self.stages)]

    def slowest(self) -> str:
        """The earliest stage any party is still in."""
        order = {stage: i for i, stage in enumerate(STAGES)}
        with self._lock:
            return min(self.stages.values(), key=lambda s: order.get(s, len(STAGES)))

    def summary(self) -> str:
        """One line: every party's stage."""
        return ", ".join(f"{party} {stage}" for party, stage, _ in self.rows())

    def waiting_at(self) -> list[str]:
        """The parties waiting for a reviewer's approval."""
        with self._lock:
            return [name for name, s in self.stages.items() if s == APPROVAL]

    def describe(self, stage: str) -> str:
        """A stage as the analyst reads it: "waiting for approval at hospital"."""
        if stage != APPROVAL:
            return stage
        return f"{APPROVAL} at {', '.join(self.waiting_at())}"

    def outcome(self, ok: bool) -> str:
        """The closing words: "finished", or "failed: hospital refused, ..."."""
        if ok:
            return "finished"
        with self._lock:
            marked = [f"{p} {s}" for p, s in self.stages.items() if s in ("refused", "failed")]
        return "failed" + (f": {', '.join(marked)}" if marked else "")


class _Ticker:
    """A daemon thread calling ``tick`` every :data:`TICK` seconds until stopped (or until
    ``tick`` returns False)."""

    def __init__(self, tick: Callable[[], bool]) -> None:
        self._stop = threading.Event()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name="ppa-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK) and self._tick():
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * TICK)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Display:
    """A progress display, reusable for several runs: ``begin`` when a run is sent,
    ``update`` on every report, ``close`` once it ended (also after errors).

    Subclasses draw in the hooks ``_started``, ``_reported``, ``_closed`` and ``redraw``.
    A hook that raises (a front-end gone) is logged once and the display stops drawing:
    a broken display never breaks the run it shows.
    """

    ticks = False
    """Whether the display redraws on a timer between reports."""

    def __init__(self, progress: RunProgress | None = None) -> None:
        self.progress = progress or RunProgress([])
        self._ticker: _Ticker | None = None
        self._lock = threading.RLock()
        self.running = False
        self.broken = False

    def begin(self, names: list[str]) -> None:
        """A run at ``names`` starts now: fresh stages, clocks from zero, ticking."""
        self._stop_ticking()
        self.progress = RunProgress(names, self.progress.clock)
        self.running, self.broken = True, False
        self._draw(self._started)
        self._draw(self.redraw)
        if self.ticks:
            self._ticker = _Ticker(lambda: self._draw(self.redraw))

    def update(self, party: str, phase: str, elapsed: float = 0.0,
               fraction: float | None = None) -> None:
        """A party's report: ``phase`` ended, or (with ``fraction``) is that far along."""
        changed = self.progress.update(party, phase, elapsed, fraction)
        self._draw(self._reported, changed)

    def close(self, ok: bool = True, errors: Mapping[str, BaseException] | None = None) -> None:
        """Stop ticking and show the final state (``ok`` False: the run failed; ``errors``:
        each refusing or failing party's error). Once per run: later calls do nothing."""
        self._stop_ticking()
        if not self.running:
            return
        self.running = False
        self.progress.finish(ok, errors)
        self._draw(self._closed, ok)

    def redraw(self) -> None:
        """Show the current state (called on reports and, for ticking displays, on a timer)."""

    @property
    def ticking(self) -> bool:
        """Whether the timer thread is running."""
        return self._ticker is not None and self._ticker.alive

    def _draw(self, hook: Callable[..., None], *args: Any) -> bool:
        """Call a drawing hook unless the display broke; False once it has."""
        if self.broken:
            return False
        try:
            hook(*args)
        except Exception:
            self.broken = True
            logger.exception("the progress display failed; it stops updating")
        return not self.broken

    def _started(self) -> None:
        """Hook: a run began (after ``progress`` was reset)."""

    def _reported(self, changed: bool) -> None:
        self.redraw()

    def _closed(self, ok: bool) -> None:
        self.redraw()

    def _stop_ticking(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()


class TextDisplay(Display):
    """A printed line each time the slowest party enters a new stage (saved outputs)."""

    def __init__(self, progress: RunProgress | None = None, stream: Any = None) -> None:
        super().__init__(progress)
        self.stream = stream
        self.shown = ""

    def _print(self, text: str) -> None:
        print(f"[{self.progress.wall:6.1f} s] {text}", file=self.stream or sys.stdout,
              flush=True)

    def _started(self) -> None:
        self.shown = "policy check"
        self._print(f"secure run at {', '.join(self.progress.stages)}: policy check")

    def _reported(self, changed: bool) -> None:
        stage = self.progress.describe(self.progress.slowest())
        if changed and stage != self.shown and stage not in FINAL:
            self.shown = stage
            self._print(stage)

    def _closed(self, ok: bool) -> None:
        self._print(f"secure run {self.progress.outcome(ok)}")


class BarDisplay(Display):
    """One tqdm line naming every party's stage; ticks, and stays once the run ended."""

    ticks = True

    def __init__(self, progress: RunProgress | None = None, file: Any = None) -> None:
        super().__init__(progress)
        self.file = file
        self.bar: Any = None

    def _started(self) -> None:
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=None, desc="secure run", bar_format="{desc} [{elapsed}]",
                        leave=True, file=self.file)

    def _text(self) -> str:
        waiting = self.progress.describe(APPROVAL) if self.progress.waiting_at() else ""
        return f"secure run: {self.progress.summary()}" + (f" ({waiting})" if waiting else "")

    def redraw(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.set_description_str(self._text(), refresh=True)

    def _closed(self, ok: bool) -> None:
        with self._lock:
            if self.bar is None:
                return
            self.bar.set_description_str(
                f"secure run {self.progress.outcome(ok)}: {self.progress.summary()} "
                f"in {self.progress.wall:.1f} s", refresh=False)
            self.bar.bar_format = "{desc}"
            self.bar.close()  # leave=True: the last line stays


class WidgetDisplay(Display):
    """A live table of parties, stages and elapsed time: an ipywidgets HTML widget (CSS
    class ``ppa-progress``), redrawn on every report and twice a second.

    ``show=False`` does not display it: place :attr:`widget` in a container of your own
    and pass the display as ``progress=`` to each run (``Consortium.run``,
    ``Query.collect``); it starts afresh with every run.
    """

    ticks = True

    def __init__(self, progress: RunProgress | None = None, *, show: bool = True) -> None:
        super().__init__(progress)
        import ipywidgets

        self.state = "running"
        self.widget = ipywidgets.HTML(self._html())
        self.widget.add_class("ppa-progress")
        if show:
            from IPython.display import display

            display(self.widget)

    def _html(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(p)}</td><td>{html.escape(s)}</td><td>{e:.1f} s</td></tr>"
            for p, s, e in self.progress.rows())
        state = self.state
        if state == "running" and self.progress.waiting_at():
            state = f"running, {self.progress.describe(APPROVAL)}"
        return (f"<b>secure run {html.escape(state)}</b> ({self.progress.wall:.1f} s)"
                f"<table><tr><th>party</th><th>stage</th><th>elapsed</th></tr>{rows}</table>")

    def redraw(self) -> None:
        with self._lock:
            self.widget.value = self._html()

    def _started(self) -> None:
        self.state = "running"

    def _closed(self, ok: bool) -> None:
        self.state = self.progress.outcome(ok)
        self.redraw()


def widget_frontend() -> bool:
    """Whether the running cell was sent by a live notebook front-end that renders widgets.

    JupyterLab (and Notebook 7, VS Code) send each cell's id in the execute request's
    metadata; headless executors -- papermill, nbclient, nbconvert -- send none.
    """
    if "ipykernel" not in sys.modules:
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent("shell")
    except TypeError:  # ipykernel before 6.21 has no channel argument
        parent = kernel.get_parent()
    return bool(((parent or {}).get("metadata") or {}).get("cellId"))


def choose_mode(mode: str = "auto") -> str:
    """Resolve ``auto``: $PPA_PROGRESS, else widget in a live front-end, text in other
    kernels (papermill), a bar on a terminal, nothing in logs."""
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    forced = os.environ.get(ENV_MODE, "").strip().lower()
    if forced in MODES and forced != "auto":
        return forced
    if "ipykernel" in sys.modules:
        return "widget" if widget_frontend() else "text"
    return "bar" if sys.stderr.isatty() else "off"


def make_display(mode: str) -> Display | None:
    """A display for ``mode`` (None for ``off``); ``begin`` starts it for a run."""
    chosen = choose_mode(mode)
    if chosen == "widget":
        try:
            return WidgetDisplay()
        except ImportError:
            logger.info("ipywidgets is not installed; showing progress as text")
            chosen = "text"
    if chosen == "text":
        return TextDisplay()
    if chosen == "bar":
        return BarDisplay()
    return None
