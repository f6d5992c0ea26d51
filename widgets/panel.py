"""The query builder panel: standard ipywidgets controls mapped to a :class:`QuerySpec`.

The panel holds no analysis logic: :meth:`QueryBuilder.spec` reads the controls into a
spec, :meth:`QueryBuilder.set_spec` writes one into them, and the buttons call the
functions of :mod:`.spec` (run, code, export). Every control has a visible label and is
reachable by keyboard; CSS classes ``ppa-*`` let browser tests find them.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ppa_kernel.analyst.results import SUPPRESSED, format_html
from ppa_kernel.contract.errors import PlanError, PPAError
from ppa_kernel.widgets.spec import (
    STATISTICS,
    QuerySpec,
    catalog_choices,
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

ROWS = "(rows)"
"""Outcome choice that counts rows only."""
DEFAULT_TIMEOUT = 300.0
DEFAULT_EXPORT = "query.yaml"
STUDY_NOTEBOOK = "02-app-effect-study.ipynb"
_STYLE = {"description_width": "110px"}


def _styled(widget: widgets.Widget, css: str, tooltip: str | None = None) -> Any:
    widget.add_class(css)
    if tooltip is not None and hasattr(widget, "tooltip"):
        widget.tooltip = tooltip
    if hasattr(widget, "style") and "description_width" in widget.style.keys:
        widget.style.description_width = _STYLE["description_width"]
    return widget


class QueryBuilder:
    """A panel to compose, run, show and export one secure query on a consortium."""

    def __init__(self, consortium: Any, *, timeout: float | None = DEFAULT_TIMEOUT,
                 export_path: str = DEFAULT_EXPORT) -> None:
        self.consortium = consortium
        self.timeout = timeout
        self.result: pd.DataFrame | None = None
        self._filters: list[str] = []
        self._choices: dict[str, Any] = {"filter": {}, "group": {}, "measure": []}
        self._phases: dict[str, str] = {}
        self._make_controls(export_path)
        self.widget = self._layout()
        self._wire()
        self._refresh_choices()

    # ------------------------------------------------------------------ controls
    def _make_controls(self, export_path: str) -> None:
        names = list(self.consortium.names)
        floor = int(self.consortium.min_cell_size())
        self.parties = _styled(widgets.SelectMultiple(
            options=names, value=tuple(names), rows=max(2, len(names)), description="Parties"),
            "ppa-parties", "parties whose records are linked; none selected: all")
        self.filter_on = _styled(widgets.Dropdown(description="Filter on"), "ppa-filter-on")
        self.filter_values = _styled(widgets.SelectMultiple(description="Values", rows=4),
                                     "ppa-filter-values")
        self.filter_from = _styled(widgets.FloatText(description="From"), "ppa-filter-from")
        self.filter_to = _styled(widgets.FloatText(description="To"), "ppa-filter-to")
        self.filter_detail = widgets.HBox([], layout=widgets.Layout(align_items="flex-start"))
        self.add_filter = _styled(widgets.Button(description="Add filter", icon="plus"),
                                  "ppa-add-filter", "add this condition to the cohort")
        self.clear_filters = _styled(widgets.Button(description="Clear filters"),
                                     "ppa-clear-filters", "remove all cohort conditions")
        self.filters = _styled(widgets.HTML(description="Cohort"), "ppa-filters")
        self.group_by = _styled(widgets.SelectMultiple(description="Group by", rows=5),
                                "ppa-group-by", "groups of the result (Ctrl/Shift for several)")
        self.outcome = _styled(widgets.Dropdown(description="Outcome"), "ppa-outcome",
                               "the measure, or (rows) to count rows")
        self.outcome_expression = _styled(widgets.Text(
            description="or expression", placeholder="e.g. cost_2021 - cost_2020"),
            "ppa-outcome-expression", "an expression overrides the Outcome choice")
        self.statistic = _styled(widgets.Dropdown(options=STATISTICS, value="mean",
                                                  description="Statistic"), "ppa-statistic")
        self.min_cell_size = _styled(widgets.BoundedIntText(
            value=floor, min=floor, max=10**9, description="Min cell size"),
            "ppa-min-cell-size", f"cells with fewer rows are suppressed (at least {floor})")
        self.run_button = _styled(widgets.Button(description="Run", button_style="primary",
                                                 icon="play"),
                                  "ppa-run", "run the query under MPC at the parties")
        self.code_button = _styled(widgets.Button(description="Show code"), "ppa-show-code",
                                   "show the same query as a %%secure cell")
        self.export_path = _styled(widgets.Text(value=export_path, description="Export to"),
                                   "ppa-export-path", ".yaml, .yml or .json")
        self.export_button = _styled(widgets.Button(description="Export"), "ppa-export",
                                     f"write the spec for papermill runs of {STUDY_NOTEBOOK}")
        self.status = _styled(widgets.HTML(), "ppa-status")
        self.result_html = _styled(widgets.HTML(), "ppa-result")
        self.result_html.add_class("jp-RenderedHTMLCommon")  # JupyterLab's table style
        self.figure = _styled(widgets.Output(), "ppa-figure")
        self.code = _styled(widgets.HTML(), "ppa-code")

    def _layout(self) -> widgets.VBox:
        row = widgets.HBox
        box = widgets.VBox([
            widgets.HTML("<h3>Query builder</h3>"),
            self.parties,
            row([self.filter_on, self.filter_detail, self.add_filter]),
            row([self.filters, self.clear_filters]),
            self.group_by,
            row([self.outcome, self.outcome_expression]),
            row([self.statistic, self.min_cell_size]),
            row([self.run_button, self.code_button, self.export_path, self.export_button]),
            self.status, self.result_html, self.figure, self.code])
        box.add_class("ppa-query-builder")
        return box

    def _wire(self) -> None:
        self.parties.observe(lambda _: self._refresh_choices(), names="value")
        self.filter_on.observe(lambda _: self._refresh_filter_detail(), names="value")
        self.outcome.observe(lambda _: self._refresh_statistic(), names="value")
        self.outcome_expression.observe(lambda _: self._refresh_statistic(), names="value")
        self.add_filter.on_click(self._guarded(self.add_current_filter))
        self.clear_filters.on_click(self._guarded(self.clear_cohort))
        self.run_button.on_click(self._guarded(self.run))
        self.code_button.on_click(self._guarded(self.show_code))
        self.export_button.on_click(self._guarded(self.export))

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
        self._choices = catalog_choices(self.consortium.catalog, self.parties.value)
        _set_options(self.filter_on, list(self._choices["filter"]))
        _set_options(self.group_by, list(self._choices["group"]))
        _set_options(self.outcome, [(ROWS, "")] + [(n, n) for n in self._choices["measure"]])
        self._refresh_filter_detail()
        self._refresh_statistic()

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

    def _show_filters(self) -> None:
        if not self._filters:
            self.filters.value = "<i>everyone (no filters)</i>"
            return
        items = "".join(f"<li><code>{html.escape(c)}</code></li>" for c in self._filters)
        self.filters.value = f'<ul style="margin:0;padding-left:1.2em">{items}</ul>'

    # ------------------------------------------------------------------ spec
    def spec(self) -> QuerySpec:
        """The query spec of the current controls."""
        expression = self.outcome_expression.value.strip()
        return QuerySpec(parties=list(self.parties.value),
                         outcome=expression or self.outcome.value,
                         statistic=self.statistic.value,
                         group_by=list(self.group_by.value),
                         cohort=combine_conditions(self._filters),
                         min_cell_size=int(self.min_cell_size.value))

    def set_spec(self, spec: QuerySpec) -> None:
        """Show ``spec`` in the controls (no parties: all; no min cell size: the policies')."""
        spec = QuerySpec.from_dict(spec.to_dict())
        unknown = [p for p in spec.parties if p not in self.parties.options]
        if unknown:
            raise PlanError(f"unknown parties {', '.join(unknown)}",
                            hint=f"parties are {', '.join(self.parties.options)}")
        self.parties.value = tuple(spec.parties or self.parties.options)
        self._refresh_choices()
        self.group_by.value = tuple(self._group_names(spec.group_by))
        outcome = spec.outcome.strip()
        measures = [value for _, value in self.outcome.options]
        self.outcome.value = outcome if outcome in measures else ""
        self.outcome_expression.value = "" if outcome in measures else outcome
        self.statistic.value = spec.statistic
        self._filters = [spec.cohort.strip()] if spec.cohort.strip() else []
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

    # ------------------------------------------------------------------ actions
    def add_current_filter(self) -> str:
        """Add the condition the filter controls describe to the cohort; return it."""
        name = self.filter_on.value
        choice = self._choices["filter"].get(name)
        try:
            if choice is None:
                raise PlanError("choose a variable to filter on")
            condition = filter_condition(name, choice, values=self.filter_values.value,
                                         low=self.filter_from.value, high=self.filter_to.value)
        except PlanError as exc:
            self._error(exc)
            raise
        self._filters.append(condition)
        self._show_filters()
        self._info(f"Added filter <code>{html.escape(condition)}</code>.")
        return condition

    def clear_cohort(self) -> None:
        """Remove every cohort condition."""
        self._filters = []
        self._show_filters()
        self._info("Filters cleared: the cohort is everyone.")

    def run(self) -> pd.DataFrame:
        """Run the current spec; show and return the released table (errors shown, raised)."""
        self.result = None
        self.result_html.value = ""
        self.figure.outputs = ()
        self._phases = {}
        self.run_button.disabled = True
        self._info("Running under MPC at " + ", ".join(self.parties.value or
                                                       self.parties.options) + " ...")
        started = time.monotonic()
        try:
            result = run_spec(self.spec(), self.consortium, timeout=self.timeout,
                              progress=self._progress)
        except PPAError as exc:
            self._error(exc)
            raise
        finally:
            self.run_button.disabled = False
        self.result = result
        self.result_html.value = format_html(result)
        self._info(_summary(result, time.monotonic() - started))
        self._show_figure(result)
        return result

    def _progress(self, party: str, phase: str, elapsed: float) -> None:
        self._phases[party] = phase
        shown = ", ".join(f"{html.escape(p)}: {html.escape(s)}" for p, s in self._phases.items())
        self._info(f"Running under MPC ({shown}; {elapsed:.0f} s) ...")

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

    def show_code(self) -> str:
        """Show (and return) the current spec as a ``%%secure`` cell."""
        try:
            code = spec_to_code(self.spec())
        except PPAError as exc:
            self._error(exc)
            raise
        self.code.value = (f'<pre aria-label="secure cell code" '
                           f'style="white-space:pre-wrap">{html.escape(code)}</pre>')
        self._info("The code below builds the same plan in a notebook cell.")
        return code

    def export(self, path: str | Path | None = None) -> Path:
        """Check the current spec and write it to ``path`` (default: the Export to field)."""
        target = path if path is not None else self.export_path.value.strip() or DEFAULT_EXPORT
        try:
            spec = self.spec()
            spec_query(spec, self.consortium)  # refuse specs that do not make a plan
            written = save_spec(spec, target)
        except OSError as exc:
            self._error(PPAError(f"cannot write {target}: {exc.strerror or exc}"))
            raise
        except PPAError as exc:
            self._error(exc)
            raise
        self._info(f"Exported to <code>{html.escape(str(written))}</code>; run it with "
                   f"<code>papermill {STUDY_NOTEBOOK} out.ipynb -f "
                   f"{html.escape(str(written))}</code>.")
        return written

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
