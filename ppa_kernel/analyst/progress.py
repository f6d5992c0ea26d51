"""Progress of a secure run: each party's current stage and elapsed time, on some display.

Party kernels report each phase as it *ends* (``policy check``, ``connect``, ``shuffle``,
``tags``, ``input``, ``computation``, ``disclosure``, ``release``); :class:`RunProgress`
turns that into the stage each party is *in* now. Displays:

* ``bar``    -- one tqdm line (terminals and plain scripts);
* ``text``   -- a printed line per stage change (papermill and other saved outputs);
* ``widget`` -- an ipywidgets table updated in place (JupyterLab and other live front-ends);
* ``off``    -- nothing.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("auto", "widget", "text", "bar", "off")
ENV_MODE = "PPA_PROGRESS"
"""Environment variable that overrides the automatic choice of display."""

APPROVAL = "waiting for approval"
STAGE_AFTER = {"awaiting approval": APPROVAL, "approved": "queued", "queued": "queued",
               "policy check": "connecting", "connect": "linkage",
               "shuffle": "linkage",
               "tags": "linkage", "input": "computation", "computation": "disclosure check",
               "disclosure": "release", "model": "release", "release": "done"}
"""The stage a party is in once the named phase has ended."""

STAGES = ("waiting", "policy check", APPROVAL, "queued", "connecting", "linkage", "computation",
          "disclosure check", "release", "done")

ProgressCallback = Callable[[str, str, float], None]


class RunProgress:
    """Each party's stage and elapsed seconds; safe to update from several threads."""

    def __init__(self, names: list[str]) -> None:
        self.started = time.monotonic()
        self.stages = {name: "policy check" for name in names}
        self.elapsed = {name: 0.0 for name in names}
        self._lock = threading.Lock()

    def update(self, party: str, phase: str, elapsed: float) -> bool:
        """Record a finished phase; True when the party's stage changed."""
        stage = STAGE_AFTER.get(phase, phase)
        with self._lock:
            changed = self.stages.get(party) != stage
            self.stages[party] = stage
            self.elapsed[party] = float(elapsed)
        return changed

    @property
    def wall(self) -> float:
        """Seconds since the run was sent."""
        return time.monotonic() - self.started

    def rows(self) -> list[tuple[str, str, float]]:
        """(party, stage, seconds in the MPC worker) for every party."""
        with self._lock:
            return [(name, self.stages[name], self.elapsed[name]) for name in self.stages]

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


class Display:
    """A progress display: ``update`` on every report, ``close`` once the run ends."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress

    def update(self, party: str, phase: str, elapsed: float) -> None:
        self.progress.update(party, phase, elapsed)

    def close(self, ok: bool = True) -> None:
        """Show the final state (``ok`` False: the run failed)."""


class TextDisplay(Display):
    """A printed line each time the slowest party enters a new stage (saved outputs)."""

    def __init__(self, progress: RunProgress, stream: Any = None) -> None:
        super().__init__(progress)
        self.stream = stream
        self.shown = "policy check"
        self._print(f"secure run at {', '.join(progress.stages)}: policy check")

    def _print(self, text: str) -> None:
        print(f"[{self.progress.wall:6.1f} s] {text}", file=self.stream or sys.stdout,
              flush=True)

    def update(self, party: str, phase: str, elapsed: float) -> None:
        self.progress.update(party, phase, elapsed)
        stage = self.progress.describe(self.progress.slowest())
        if stage != self.shown and stage != "done":
            self.shown = stage
            self._print(stage)

    def close(self, ok: bool = True) -> None:
        self._print("secure run finished" if ok else "secure run failed")


class BarDisplay(Display):
    """One tqdm line naming every party's stage."""

    def __init__(self, progress: RunProgress) -> None:
        super().__init__(progress)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc="secure run", bar_format="{desc} [{elapsed}]",
                        leave=False)

    def update(self, party: str, phase: str, elapsed: float) -> None:
        super().update(party, phase, elapsed)
        waiting = self.progress.describe(APPROVAL) if self.progress.waiting_at() else ""
        self.bar.set_description_str(f"secure run: {self.progress.summary()}" + (
            f" ({waiting})" if waiting else ""))

    def close(self, ok: bool = True) -> None:
        self.bar.close()


class WidgetDisplay(Display):
    """A live table of parties, stages and elapsed time (an ipywidgets HTML widget)."""

    def __init__(self, progress: RunProgress) -> None:
        super().__init__(progress)
        import ipywidgets
        from IPython.display import display

        self.widget = ipywidgets.HTML(self._html("running"))
        self.widget.add_class("ppa-progress")
        display(self.widget)

    def _html(self, state: str) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(p)}</td><td>{html.escape(s)}</td><td>{e:.1f} s</td></tr>"
            for p, s, e in self.progress.rows())
        if state == "running" and self.progress.waiting_at():
            state = f"running, {self.progress.describe(APPROVAL)}"
        return (f"<b>secure run {html.escape(state)}</b> ({self.progress.wall:.1f} s)"
                f"<table><tr><th>party</th><th>stage</th><th>elapsed</th></tr>{rows}</table>")

    def update(self, party: str, phase: str, elapsed: float) -> None:
        super().update(party, phase, elapsed)
        self.widget.value = self._html("running")

    def close(self, ok: bool = True) -> None:
        self.widget.value = self._html("finished" if ok else "failed")


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


def make_display(mode: str, names: list[str]) -> Display | None:
    """A display for a run at ``names`` (None for ``off``)."""
    chosen = choose_mode(mode)
    progress = RunProgress(names)
    if chosen == "widget":
        try:
            return WidgetDisplay(progress)
        except ImportError:
            logger.info("ipywidgets is not installed; showing progress as text")
            chosen = "text"
    if chosen == "text":
        return TextDisplay(progress)
    if chosen == "bar":
        return BarDisplay(progress)
    return None
