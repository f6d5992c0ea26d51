"""The query builder panel: standard ipywidgets controls mapped to a :class:`QuerySpec`.

The panel holds no analysis logic: :meth:`QueryBuilder.spec` reads the controls into a
spec, :meth:`QueryBuilder.set_spec` writes one into them, and the buttons call the
functions of :mod:`.spec` (run, code, export). Every control has a visible label and a
short visible hint, and is reachable by keyboard; CSS classes ``ppa-*`` let browser tests
find them. **Run** runs in a background thread, so the kernel stays responsive and
**Cancel** can stop it.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ppa_kernel.analyst.expressions import parse_expression
from ppa_kernel.analyst.progress import APPROVAL, RunProgress
from ppa_kernel.analyst.results import SUPPRESSED, format_html
from ppa_kernel.contract.errors import ConsortiumError, ExportError, PlanError, PPAError
from ppa_kernel.widgets.spec import (
    STATISTICS,
    QuerySpec,
    catalog_choices,
    column_names,
    combine_conditions,
    figure_column,
    filter_condition,
    run_spec,
    save_spec,
    spec_figure,
    spec_query,
    spec_to_code,
)

logger = logging.getLogger(__name__)

ROWS = "rows"
"""Outcome choice that counts the rows of each group."""
EVERYONE = "everyone"
"""What an empty cohort is shown as."""
DEFAULT_TIMEOUT = 300.0
EXPORT_FOLDER = "ppa-exports"
DEFAULT_EXPORT = f"{EXPORT_FOLDER}/query.yaml"
"""Default export path, relative to the kernel's working folder (a subfolder, so specs do
not pile up beside the notebooks)."""
STUDY_NOTEBOOK = "02-app-effect-study.ipynb"
_DESCRIPTION_WIDTH = "110px"

Source = tuple[str, str]
"""A column of one party: (party, column)."""

# Copies the shown code with the browser's clipboard (or selects it where there is none).
# An HTML widget's value is not sanitised, so its inline handler runs in JupyterLab.
_COPY_SCRIPT = (
    "const box=this.closest('.ppa-code-box'),pre=box.querySelector('pre'),"
    "note=box.querySelector('.ppa-copy-note');"
    "const select=()=>{const r=document.createRange();r.selectNodeContents(pre);"
    "const s=window.getSelection();s.removeAllRanges();s.addRange(r);"
    "note.textContent='Selected: press Ctrl+C (Cmd+C) to copy.';};"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText("
    "pre.innerText).then(()=>{note.textContent='Copied: paste it into a new cell.';},"
    "select);}else{select();}")


class RunCancelled(PPAError):
    """The analyst cancelled the run (raised in the client's progress callback)."""


@dataclass
class CohortFilter:
    """One cohort condition: made in the panel from a party's column, or given as text."""

    text: str
    source: Source | None = None  # None: free text (e.g. from set_spec)
    choice: dict[str, Any] = field(default_factory=dict)
    values: tuple = ()
    low: float | None = None
    high: float | None = None

    def renamed(self, name: str) -> CohortFilter:
        """The same condition on the column's name under another set of parties."""
        text = filter_condition(name, self.choice, values=self.values, low=self.low,
                                high=self.high)
        return CohortFilter(text, self.source, self.choice, self.values, self.low, self.high)


@dataclass
class RunJob:
    """One run of the panel: its spec, progress, and how it ended."""

    spec: QuerySpec
    progress: RunProgress
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    result: pd.DataFrame | None = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)


def _styled(widget: widgets.Widget, css: str) -> Any:
    widget.add_class(css)
    if hasattr(widget, "style") and "description_width" in widget.style.keys:
        widget.style.description_width = _DESCRIPTION_WIDTH
    return widget


def _help(text_html: str, css: str = "ppa-help") -> widgets.HTML:
    """A short hint shown under a control (not only as a tooltip)."""
    hint = widgets.HTML(f'<div style="font-size:var(--jp-ui-font-size0,11px);'
                        f'color:var(--jp-ui-font-color2,#555);line-height:1.3">'
                        f"{text_html}</div>",
                        layout=widgets.Layout(margin=f"-2px 0 6px {_DESCRIPTION_WIDTH}"))
    hint.add_class(css)
    return hint


def _no_null_titles(root: widgets.Widget) -> None:
    """Give every widget a text tooltip: ipywidgets writes ``title="null"`` for None."""
    todo = [root]
    while todo:
        widget = todo.pop()
        if "tooltip" in widget.traits() and widget.tooltip is None:
            widget.tooltip = ""
        todo.extend(getattr(widget, "children", ()))


class QueryBuilder:
    """A panel to compose, run, show and export one secure query on a consortium."""

    def __init__(self, consortium: Any, *, timeout: float | None = DEFAULT_TIMEOUT,
                 export_path: str = DEFAULT_EXPORT) -> None:
        self.consortium = consortium
        self.timeout = timeout
        self.result: pd.DataFrame | None = None
        self.last_job: RunJob | None = None
        self._job: RunJob | None = None
        self._lock = threading.RLock()
        self._filters: list[CohortFilter] = []
        self._group_order: list[str] = []
        self._names: dict[str, Source] = {}
        self._choices: dict[str, Any] = {"filter": {}, "group": {}, "measure": []}
        self._make_controls(export_path)
        self.widget = self._layout()
        self._wire()
        self._refresh_choices()
        self._show_filters()
        self._show_group_order()
        for root in (self.widget, self.filter_values, self.filter_from, self.filter_to):
            _no_null_titles(root)  # the filter details are children only when shown

    # ------------------------------------------------------------------ controls
    def _make_controls(self, export_path: str) -> None:
        names = list(self.consortium.names)
        floor = int(self.consortium.min_cell_size())
        self.parties = _styled(widgets.SelectMultiple(
            options=names, value=tuple(names), rows=max(2, len(names)), description="Parties"),
            "ppa-parties")
        self.filter_on = _styled(widgets.Dropdown(description="Filter on"), "ppa-filter-on")
        self.filter_values = _styled(widgets.SelectMultiple(description="Values", rows=4),
                                     "ppa-filter-values")
        self.filter_from = _styled(widgets.FloatText(description="From"), "ppa-filter-from")
        self.filter_to = _styled(widgets.FloatText(description="To"), "ppa-filter-to")
        self.filter_detail = widgets.HBox([], layout=widgets.Layout(align_items="flex-start"))
        self.add_filter = _styled(widgets.Button(description="Add filter", icon="plus"),
                                  "ppa-add-filter")
        self.clear_filters = _styled(widgets.Button(description="Clear filters"),
                                     "ppa-clear-filters")
        self.filters = _styled(widgets.HTML(description="Cohort"), "ppa-filters")
        self.group_by = _styled(widgets.SelectMultiple(description="Group by", rows=5),
                                "ppa-group-by")
        self.group_order = _help("", "ppa-group-order")
        self.outcome = _styled(widgets.Dropdown(description="Outcome"), "ppa-outcome")
        self.outcome_expression = _styled(widgets.Text(
            description="or expression", placeholder="e.g. cost_2021 - cost_2020"),
            "ppa-outcome-expression")
        self.statistic = _styled(widgets.Dropdown(options=STATISTICS, value="mean",
                                                  description="Statistic"), "ppa-statistic")
        self.min_cell_size = _styled(widgets.BoundedIntText(
            value=floor, min=floor, max=10**9, description="Min cell size"),
            "ppa-min-cell-size")
        self.run_button = _styled(widgets.Button(description="Run", button_style="primary",
                                                 icon="play"), "ppa-run")
        self.cancel_button = _styled(widgets.Button(description="Cancel", icon="stop",
                                                    disabled=True), "ppa-cancel")
        self.code_button = _styled(widgets.Button(description="Show code"), "ppa-show-code")
        self.export_path = _styled(widgets.Text(value=export_path, description="Export to"),
                                   "ppa-export-path")
        self.export_button = _styled(widgets.Button(description="Export"), "ppa-export")
        self.create_button = _styled(widgets.Button(
            description="Create folder and export", layout=widgets.Layout(
                display="none", width="auto")), "ppa-export-create")
        self.status = _styled(widgets.HTML(), "ppa-status")
        self.code = _styled(widgets.HTML(), "ppa-code")
        self.result_html = _styled(widgets.HTML(), "ppa-result")
        self.result_html.add_class("jp-RenderedHTMLCommon")  # JupyterLab's table style
        self.figure = _styled(widgets.Output(), "ppa-figure")
        self._hints = {
            "parties": _help("Whose records are linked (people found at all of them). "
                             "Ctrl/Cmd-click for several; none selected: all."),
            "filter": _help("Pick a variable and its values or range, then <b>Add filter</b>; "
                            "filters combine with <i>and</i>."),
            "group": _help("Ctrl/Cmd-click for several: the table's groups follow the order "
                           "you pick them in."),
            "outcome": _help(f"<b>{ROWS}</b> counts the rows of each group; an expression "
                             "(of approved measures) overrides the choice."),
            "statistic": _help(f"Of the outcome. Cells with fewer rows than the minimum "
                               f"(at least {floor}) are suppressed."),
            "run": _help("<b>Run</b> computes under MPC in the background; <b>Show code</b> "
                         "gives the same query as a <code>%%secure</code> cell."),
            "export": _help(f"A .yaml or .json spec for papermill runs of {STUDY_NOTEBOOK}; "
                            f"relative paths are in {html.escape(str(Path.cwd()))}."),
        }

    def _layout(self) -> widgets.VBox:
        row, hints = widgets.HBox, self._hints
        box = widgets.VBox([
            widgets.HTML("<h3>Query builder</h3>"),
            self.parties, hints["parties"],
            row([self.filter_on, self.filter_detail, self.add_filter]), hints["filter"],
            row([self.filters, self.clear_filters]),
            self.group_by, hints["group"], self.group_order,
            row([self.outcome, self.outcome_expression]), hints["outcome"],
            row([self.statistic, self.min_cell_size]), hints["statistic"],
            row([self.run_button, self.cancel_button, self.code_button]), hints["run"],
            row([self.export_path, self.export_button, self.create_button]), hints["export"],
            self.status, self.code, self.result_html, self.figure])
        box.add_class("ppa-query-builder")
        return box

    def _wire(self) -> None:
        self.parties.observe(lambda _: self._parties_changed(), names="value")
        self.filter_on.observe(lambda _: self._refresh_filter_detail(), names="value")
        self.group_by.observe(lambda change: self._groups_picked(change["new"]), names="value")
        self.outcome.observe(lambda _: self._refresh_statistic(), names="value")
        self.outcome_expression.observe(lambda _: self._refresh_statistic(), names="value")
        self.export_path.observe(lambda _: self._show_create(False), names="value")
        self.add_filter.on_click(self._guarded(self.add_current_filter))
        self.clear_filters.on_click(self._guarded(self.clear_cohort))
        self.run_button.on_click(self._guarded(self.start))
        self.cancel_button.on_click(self._guarded(self.cancel))
        self.code_button.on_click(self._guarded(self.show_code))
        self.export_button.on_click(self._guarded(self.export))
        self.create_button.on_click(self._guarded(lambda: self.export(create_folder=True)))

    def _guarded(self, action: Callable[[], Any]) -> Callable[[Any], None]:
        """A button handler: errors are shown in the panel (by ``action``), never raised."""

        def handler(_button: Any) -> None:
            try:
                action()
            except PPAError:
                pass  # already shown in the status line
            except Exception as exc:  # a bug: show it briefly, log the traceback
                logger.exception("query builder action failed")
                self._error(exc)

        return handler

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ choices
    def _refresh_choices(self) -> None:
        parties = self.parties.value
        self._names = column_names(self.consortium.catalog, parties)
        self._choices = catalog_choices(self.consortium.catalog, parties)
        _set_options(self.filter_on, list(self._choices["filter"]))
        _set_options(self.group_by, list(self._choices["group"]))
        _set_options(self.outcome, [(ROWS, "")] + [(n, n) for n in self._choices["measure"]])
        if self.outcome.value is None:
            self.outcome.value = ""
        self._refresh_filter_detail()
        self._refresh_statistic()

    def _parties_changed(self) -> None:
        """New parties: rename what stays (``age`` may become ``insurer.age``), drop and
        name what belonged to a party no longer linked or no longer resolves."""
        old_names, old_groups, old_outcome = self._names, list(self._group_order), \
            self.outcome.value
        self._refresh_choices()  # may drop groups from the control (and so the order)
        renamed = {source: name for name, source in self._names.items()}
        removed: list[str] = []
        groups = [renamed.get(old_names.get(g)) for g in old_groups]
        removed += [f"group by {old}" for old, new in zip(old_groups, groups, strict=True)
                    if new not in self._choices["group"]]
        self._group_order = [g for g in groups if g in self._choices["group"]]
        self.group_by.value = tuple(self._group_order)
        if old_outcome:
            new_outcome = renamed.get(old_names.get(old_outcome))
            if new_outcome in self._choices["measure"]:
                self.outcome.value = new_outcome
            else:
                removed.append(f"outcome {old_outcome}")
                self.outcome.value = ""
        removed += self._keep_filters(renamed)
        expression = self.outcome_expression.value.strip()
        if expression and not self._resolves(expression):
            removed.append(f"outcome expression {expression}")
            self.outcome_expression.value = ""
        self._show_filters()
        self._show_group_order()
        if removed:
            self._info("Removed what the chosen parties do not provide: "
                       + "; ".join(f"<code>{html.escape(r)}</code>" for r in removed) + ".")

    def _keep_filters(self, renamed: dict[Source, str]) -> list[str]:
        """Rename the cohort's filters for the new parties; return the removed ones."""
        kept, removed = [], []
        for item in self._filters:
            if item.source is not None:
                name = renamed.get(item.source)
                new = item.renamed(name) if name in self._choices["filter"] else None
            else:
                new = item if self._resolves(item.text) else None
            if new is None:
                removed.append(f"filter {item.text}")
            else:
                kept.append(new)
        self._filters = kept
        return removed

    def _resolves(self, text: str) -> bool:
        """Whether an expression text still makes a column on the chosen parties."""
        try:
            parse_expression(text, self.consortium.link(*self.parties.value))
        except PPAError:
            return False
        return True

    def _refresh_filter_detail(self) -> None:
        choice = self._choices["filter"].get(self.filter_on.value)
        if choice is None:
            self.filter_detail.children = ()
        elif choice["kind"] == "numeric":
            self.filter_from.value = float(choice["min"]) if choice["min"] is not None else 0.0
            self.filter_to.value = float(choice["max"]) if choice["max"] is not None else 0.0
            self.filter_detail.children = (self.filter_from, self.filter_to)
        else:
            self.filter_values.options = [(str(level), level) for level in choice["levels"]]
            self.filter_values.value = ()
            self.filter_detail.children = (self.filter_values,)
        self.add_filter.disabled = choice is None

    def _refresh_statistic(self) -> None:
        self.statistic.disabled = not (self.outcome.value or self.outcome_expression.value.strip())

    def _groups_picked(self, value: tuple) -> None:
        """Keep the order the groups were picked in (the control reports its options' order)."""
        chosen = list(value)
        self._group_order = [g for g in self._group_order if g in chosen] + \
            [g for g in chosen if g not in self._group_order]
        self._show_group_order()

    def _show_group_order(self) -> None:
        order = " → ".join(f"<code>{html.escape(g)}</code>" for g in self._group_order)
        self.group_order.value = (f'<div style="font-size:var(--jp-ui-font-size0,11px)">'
                                  f"Groups, in this order: {order or 'none (one cell)'}</div>")

    def _show_filters(self) -> None:
        if not self._filters:
            self.filters.value = f"<i>{EVERYONE}</i> (no filters)"
            return
        items = "".join(f"<li><code>{html.escape(f.text)}</code></li>" for f in self._filters)
        self.filters.value = f'<ul style="margin:0;padding-left:1.2em">{items}</ul>'

    # ------------------------------------------------------------------ spec
    def spec(self) -> QuerySpec:
        """The query spec of the current controls."""
        expression = self.outcome_expression.value.strip()
        return QuerySpec(parties=list(self.parties.value),
                         outcome=expression or self.outcome.value or "",
                         statistic=self.statistic.value,
                         group_by=list(self._group_order),
                         cohort=combine_conditions(f.text for f in self._filters),
                         min_cell_size=int(self.min_cell_size.value))

    def set_spec(self, spec: QuerySpec) -> None:
        """Show ``spec`` in the controls (no parties: all; no min cell size: the policies')."""
        spec = QuerySpec.from_dict(spec.to_dict())
        unknown = [p for p in spec.parties if p not in self.parties.options]
        if unknown:
            raise PlanError(f"unknown parties {', '.join(unknown)}",
                            hint=f"parties are {', '.join(self.parties.options)}")
        self._filters, self._group_order = [], []
        self.parties.value = tuple(spec.parties or self.parties.options)
        self._refresh_choices()
        groups = self._group_names(spec.group_by)
        self._group_order = groups
        self.group_by.value = tuple(groups)
        self._show_group_order()
        outcome = spec.outcome.strip()
        measures = [value for _, value in self.outcome.options]
        self.outcome.value = outcome if outcome in measures else ""
        self.outcome_expression.value = "" if outcome in measures else outcome
        self.statistic.value = spec.statistic
        self._filters = [CohortFilter(spec.cohort.strip())] if spec.cohort.strip() else []
        self._show_filters()
        floor = self.min_cell_size.min
        self.min_cell_size.value = max(floor, spec.min_cell_size or floor)

    def _group_names(self, names: list[str]) -> list[str]:
        """Group names as the panel offers them (``party.column`` or the bare column)."""
        options = list(self.group_by.options)
        shown = []
        for name in names:
            bare = name.split(".", 1)[-1]
            if name in options:
                shown.append(name)
            elif bare in options:
                shown.append(bare)
            else:
                raise PlanError(f"cannot group by {name!r} here",
                                hint=f"the approved groups are {', '.join(options) or 'none'}")
        return shown

    # ------------------------------------------------------------------ cohort
    def add_current_filter(self) -> str:
        """Add the condition the filter controls describe to the cohort; return it."""
        name = self.filter_on.value
        choice = self._choices["filter"].get(name)
        values, low, high = self.filter_values.value, self.filter_from.value, self.filter_to.value
        try:
            if choice is None:
                raise PlanError("choose a variable to filter on")
            if choice["kind"] == "numeric":
                values = ()
            else:
                low = high = None
            condition = filter_condition(name, choice, values=values, low=low, high=high)
        except PlanError as exc:
            self._error(exc)
            raise
        self._filters.append(CohortFilter(condition, self._names.get(name), dict(choice),
                                          tuple(values), low, high))
        self._show_filters()
        self._info(f"Added filter <code>{html.escape(condition)}</code>.")
        return condition

    def clear_cohort(self) -> None:
        """Remove every cohort condition."""
        self._filters = []
        self._show_filters()
        self._info(f"Filters cleared: the cohort is {EVERYONE}.")

    # ------------------------------------------------------------------ running
    def run(self) -> pd.DataFrame:
        """Run the current spec here and wait; show and return the released table (errors
        shown, raised). The Run button runs it in the background instead (:meth:`start`)."""
        job = self._begin()
        self._execute(job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def start(self) -> RunJob:
        """Start the current spec in a background thread; the kernel stays responsive."""
        job = self._begin()
        job.thread = threading.Thread(target=self._execute, args=(job,), daemon=True,
                                      name="ppa-query-builder-run")
        job.thread.start()
        return job

    def wait(self, timeout: float | None = None) -> pd.DataFrame | None:
        """Wait for the background run (at most ``timeout`` s); return its table, if any."""
        job = self.last_job
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
            if job.thread.is_alive():
                raise TimeoutError(f"the run did not end within {timeout} s")
        return self.result

    def cancel(self) -> bool:
        """Cancel the running query: its result is discarded, and the parties are told to
        stop at their next progress report. False if nothing was running."""
        with self._lock:
            job, self._job = self._job, None
            if job is None:
                return False
            job.cancelled.set()
            self._idle()
        self._info("Run cancelled: its result will not be shown. The parties stop the run "
                   "when they next report progress.")
        logger.info("query builder run cancelled by the analyst")
        return True

    @property
    def running(self) -> bool:
        """Whether a run is in progress (and not cancelled)."""
        return self._job is not None

    def _begin(self) -> RunJob:
        """Check the spec (errors shown and raised here, not in the thread); set up a run."""
        with self._lock:
            if self._job is not None:
                error = PPAError("a run is in progress", hint="wait for it, or Cancel it")
                self._error(error)
                raise error
            try:
                spec = self.spec()
                spec_query(spec, self.consortium)  # errors in the spec: now, not in a thread
            except PPAError as exc:
                self._error(exc)
                raise
            job = RunJob(spec, RunProgress(list(self.consortium.names)))
            self._job = self.last_job = job
            self.result = None
            self.result_html.value = ""
            self.figure.outputs = ()
            self.run_button.disabled = True
            self.cancel_button.disabled = False
        self._info("Running under MPC at " + ", ".join(spec.parties or self.parties.options)
                   + " ...")
        return job

    def _execute(self, job: RunJob) -> None:
        try:
            job.result = run_spec(job.spec, self.consortium, timeout=self.timeout,
                                  progress=lambda *report: self._progress(job, *report))
        except Exception as exc:  # shown in the panel by _finish
            job.error = exc
            if not isinstance(exc, PPAError):
                logger.error("query builder run failed", exc_info=exc)
        self._finish(job)

    def _progress(self, job: RunJob, party: str, phase: str, elapsed: float) -> None:
        """The client's progress callback: unified stage names; a cancel stops the run."""
        if job.cancelled.is_set():
            raise RunCancelled("the analyst cancelled the run")
        job.progress.update(party, phase, elapsed)
        with self._lock:
            if self._job is job:
                self._info(_progress_line(job.progress))

    def _finish(self, job: RunJob) -> None:
        with self._lock:
            if job.cancelled.is_set():
                if self._job is None:  # no newer run owns the status line
                    self._info(_cancelled_line(job))
                return
            self._job = None
            self._idle()
        if job.error is not None:
            self._error(job.error)
            return
        result = job.result
        assert result is not None
        self.result = result
        self.result_html.value = format_html(result)
        self._info(_summary(result, time.monotonic() - job.started))
        self._show_figure(result)

    def _idle(self) -> None:
        self.run_button.disabled = False
        self.cancel_button.disabled = True

    def _show_figure(self, result: pd.DataFrame) -> None:
        try:
            figure = spec_figure(result)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
        except Exception as exc:  # no figure must not hide the table
            logger.info("no figure for the result: %s", exc)
            note = html.escape(str(exc) if isinstance(exc, PPAError) else
                               f"{type(exc).__name__}: {exc}")
            self.figure.outputs = (_display_data(f"<p><i>No figure: {note}</i></p>",
                                                 "No figure"),)
            return
        alt = f"Chart of {figure_column(result)}"
        names = [n for n in result.index.names if n is not None]
        if names:
            alt += " by " + " and ".join(map(str, names))
        alt += "; the numbers are in the table above."
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        image = f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"/>'
        self.figure.outputs = (_display_data(image, alt),)

    # ------------------------------------------------------------------ code
    def code_text(self) -> str:
        """The current spec as a ``%%secure`` cell."""
        return spec_to_code(self.spec())

    def show_code(self) -> str:
        """Show (and return) the current spec as a ``%%secure`` cell, with a Copy button."""
        try:
            code = spec_to_code(self.spec())
        except PPAError as exc:
            self._error(exc)
            raise
        self.code.value = (
            '<div class="ppa-code-box"><div>The same plan as a notebook cell: <b>Copy code</b> '
            "and paste it into a new cell, or call <code>insert_code()</code> on this builder "
            "in a cell to insert it as the next cell.</div>"
            f'<pre aria-label="secure cell code" style="white-space:pre-wrap;margin:4px 0">'
            f"{html.escape(code)}</pre>"
            f'<button type="button" class="jupyter-button ppa-copy-code" '
            f'onclick="{html.escape(_COPY_SCRIPT, quote=True)}">Copy code</button> '
            '<span class="ppa-copy-note" role="status"></span></div>')
        return code  # the status line keeps the run's summary

    def insert_code(self) -> str:
        """Insert the current spec's ``%%secure`` cell below the running cell; return it.

        Call it from a notebook cell: Jupyter front-ends insert the code when that cell
        finishes (a button cannot do this; its clicks are not cell executions).
        """
        from IPython import get_ipython

        code = self.code_text()
        shell = get_ipython()
        if shell is None:
            raise PPAError("insert_code() works in a notebook kernel only",
                           hint="use code_text() to get the code")
        shell.set_next_input(code, replace=False)
        return code

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path | None = None, *, create_folder: bool = False) -> Path:
        """Check the current spec and write it to ``path`` (default: the Export to field).

        A missing folder is refused (the panel offers to create it) unless
        ``create_folder``; relative paths are in the kernel's working folder.
        """
        target = Path(path if path is not None else
                      self.export_path.value.strip() or DEFAULT_EXPORT).expanduser()
        try:
            spec = self.spec()
            spec_query(spec, self.consortium)  # refuse specs that do not make a plan
            if create_folder and not target.parent.is_dir():
                target.parent.mkdir(parents=True)
                logger.info("created export folder %s", target.parent.absolute())
            written = save_spec(spec, target)
        except ExportError as exc:
            self._error(exc)
            self._show_create(not target.parent.exists())
            raise
        except OSError as exc:
            self._error(PPAError(f"cannot write {target}: {exc.strerror or exc}"))
            raise
        except PPAError as exc:
            self._error(exc)
            raise
        self._show_create(False)
        self._info(f"Exported to <code>{html.escape(str(written))}</code>; run it with "
                   f"<code>papermill {STUDY_NOTEBOOK} out.ipynb -f "
                   f"{html.escape(str(written))}</code>.")
        return written

    def _show_create(self, shown: bool) -> None:
        self.create_button.layout.display = "" if shown else "none"
        self.create_button.description = "Create folder and export"

    # ------------------------------------------------------------------ status
    def _info(self, text_html: str) -> None:
        self.status.value = f'<div role="status" class="ppa-info">{text_html}</div>'

    def _error(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, PPAError) else \
            f"unexpected error ({type(exc).__name__}: {exc}); see the log"
        self.status.value = (f'<div role="alert" class="ppa-error" style="color:#a00000">'
                             f'<b>Error:</b> <span style="white-space:pre-wrap">'
                             f"{html.escape(message)}</span></div>")


def _set_options(control: widgets.Widget, options: list) -> None:
    """New options for a Dropdown/SelectMultiple, keeping what stays selectable."""
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    if isinstance(control, widgets.SelectMultiple):
        kept = tuple(v for v in control.value if v in values)
        control.options = options
        control.value = kept
    else:
        previous = control.value
        control.options = options
        if previous in values:
            control.value = previous


def _display_data(text_html: str, text: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": text_html, "text/plain": text}}


def _progress_line(progress: RunProgress) -> str:
    """The status line of a running query: every party's stage, by the shared names."""
    line = html.escape(progress.summary())
    if progress.waiting_at():
        line += f"; {html.escape(progress.describe(APPROVAL))}"
    return f"Running under MPC ({progress.wall:.0f} s): {line} ..."


def _cancelled_line(job: RunJob) -> str:
    """What a cancelled run came to, once the client returned."""
    if job.result is not None:
        return ("Run cancelled; it had finished at the parties before they heard, and its "
                "result was discarded.")
    errors = job.error.errors if isinstance(job.error, ConsortiumError) else [job.error]
    if any(isinstance(e, RunCancelled) for e in errors):
        return "Run cancelled; the parties stopped it."
    return f"Run cancelled; it ended at the parties with: {html.escape(str(job.error))}"


def _summary(result: pd.DataFrame, seconds: float) -> str:
    """One status line: cells released and suppressed, run time."""
    mask = result.attrs.get("suppressed")
    cells = len(result)
    hidden = int(mask.any(axis=1).sum()) if isinstance(mask, pd.DataFrame) else 0
    k = (result.attrs.get("plan") or {}).get("min_cell_size")
    text = f"Released {cells - hidden} of {cells} cells in {seconds:.1f} s"
    if hidden:
        text += f"; {hidden} {SUPPRESSED}" + (f" (fewer than {k} rows)" if k else "")
    return text + "."
