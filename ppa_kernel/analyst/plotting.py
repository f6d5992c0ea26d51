"""Figures of released results: bars, grouped bars, histograms and lines with matplotlib.

Only tables a secure run released can be plotted (:func:`~ppa_kernel.analyst.results.released_plan`
refuses raw or edited tables). Labels come from the plan; a suppressed cell is drawn as
an ``x`` on the zero line (at the foot of line plots) labelled ``suppressed (<k)``, never
as a bar whose height could be read as a value. The legend sits outside the axes. A mock
result (design mode) is drawn with a ``MOCK`` watermark and title suffix::

    result.ppa.plot()                 # the same, through the accessor (.accessor)
    plot(result, "mean", kind="line")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ppa_kernel.contract.errors import PlanError

from .results import is_mock, reason_text, released_plan, suppression_reasons

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

KINDS = ("auto", "bar", "grouped", "hist", "line")
COUNT_STATS = ("count", "size")
SUPPRESSED_GID = "ppa-suppressed"
"""gid of the ``x`` markers of suppressed cells (one per cell)."""
SUPPRESSED_LABEL_GID = "ppa-suppressed-label"
"""gid of the ``suppressed (<k)`` texts beside them."""
MOCK_GID = "ppa-mock"
"""gid of the watermark on a mock result's figure."""
MOCK_TITLE = " [MOCK: synthetic data]"
FIGSIZE = (7.0, 4.0)
MAX_MEASURE_CHARS = 40
MAX_LABELLED_BARS = 40

_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
            "ge": ">=", "eq": "==", "ne": "!=", "and": "&", "or": "|"}


@dataclass
class _Grid:
    """A released result as a grid: x levels by series levels (one series: ``[None]``)."""

    x: list
    series: list
    values: np.ndarray  # shape (len(x), len(series)); NaN where suppressed
    suppressed: np.ndarray  # same shape, bool
    counts: np.ndarray | None  # group sizes to annotate, or None
    x_name: str
    series_name: str | None
    edges: list[float] | None = None
    ticks: list[str] | None = None  # tick texts, when not the levels themselves
    reasons: set[str] = field(default_factory=set)  # why cells were suppressed
    k: int | None = None  # the minimum cell size


# ------------------------------------------------------------------------------ public API
def plot(result: pd.DataFrame, y: str | None = None, *, kind: str = "auto",
         ax: Axes | None = None, title: str | None = None) -> Axes:
    """Draw a released result; return the matplotlib Axes.

    ``kind``: ``"bar"`` (one bar per group, or per aggregate without groups),
    ``"grouped"`` (first group variable on x, one series per level of the second;
    crosstabs), ``"hist"`` (histogram plans, bars at the bin edges), ``"line"``, or
    ``"auto"``. ``y`` picks the released column (default: the first non-count statistic).
    """
    plan = released_plan(result, allow_mock=True)
    kind = _choose_kind(plan, kind)
    crosstab = _is_crosstab(result, plan)
    column = _choose_column(result, plan, y, crosstab=crosstab)
    grid = _grid(result, plan, column, crosstab=crosstab, every_column=y is None)
    grid.reasons = suppression_reasons(result)
    grid.k = plan.get("min_cell_size")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    logger.debug("plotting %s of %s (%d x %d cells)", kind, column, *grid.values.shape)
    if kind == "hist":
        _draw_hist(ax, grid)
    elif kind == "line":
        _draw_lines(ax, grid)
    else:
        _draw_bars(ax, grid)
    _label(ax, plan, grid, column, title, count_axis=crosstab or kind == "hist")
    if is_mock(result):
        _watermark(ax)
    return ax


def _watermark(ax: Axes) -> None:
    """Mark a mock result's figure: a title suffix and a large diagonal ``MOCK``."""
    ax.set_title(ax.get_title() + MOCK_TITLE, pad=18)
    ax.text(0.5, 0.5, "MOCK", transform=ax.transAxes, fontsize=64, color="#a40000",
            alpha=0.18, rotation=30, ha="center", va="center", zorder=10, gid=MOCK_GID)


# ----------------------------------------------------------------------------- choosing
def _choose_kind(plan: dict, kind: str) -> str:
    groups = plan["groupby"]
    binned = len(groups) == 1 and groups[0].get("bins") is not None
    if kind not in KINDS:
        raise PlanError(f"unknown plot kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if len(groups) > 2:
        names = ", ".join(e["name"] for e in groups)
        raise PlanError(f"cannot plot {len(groups)} group variables ({names})",
                        hint="group by at most two variables for a figure")
    if kind == "auto":
        return "hist" if binned else "grouped" if len(groups) == 2 else "bar"
    if kind == "hist" and not binned:
        raise PlanError("kind='hist' needs a histogram result",
                        hint="make one with t.histogram(column, bins); use kind='bar' here")
    if kind == "line" and not groups:
        raise PlanError("kind='line' needs a group variable for its x axis",
                        hint="use kind='bar' for ungrouped aggregates")
    return kind


def _is_crosstab(result: pd.DataFrame, plan: dict) -> bool:
    """A crosstab: two group variables unstacked to rows x columns."""
    return len(plan["groupby"]) == 2 and not isinstance(result.index, pd.MultiIndex)


def _choose_column(result: pd.DataFrame, plan: dict, y: str | None, *, crosstab: bool) -> str:
    names = [agg["name"] for agg in plan["aggregates"]]
    if crosstab:
        if y not in (None, *names):
            raise PlanError(f"a crosstab has one released statistic, not {y!r}",
                            hint="leave y out")
        return names[0]
    if y is None:
        stats = {agg["name"]: agg["stat"] for agg in plan["aggregates"]}
        return next((n for n in names if stats[n] not in COUNT_STATS), names[0])
    if y not in result.columns:
        raise PlanError(f"{y!r} is not a column of this result",
                        hint=f"choose y from {', '.join(map(str, result.columns))}")
    return y


# ------------------------------------------------------------------------------ the grid
def _mask(result: pd.DataFrame) -> pd.DataFrame:
    mask = result.attrs.get("suppressed")
    if not isinstance(mask, pd.DataFrame):
        return pd.DataFrame(False, index=result.index, columns=result.columns)
    return mask.reindex_like(result).fillna(False).astype(bool)


def _grid(result: pd.DataFrame, plan: dict, column: str, *, crosstab: bool,
          every_column: bool) -> _Grid:
    groups = plan["groupby"]
    mask = _mask(result)
    if crosstab:
        rows, cols = groups
        return _Grid(rows["levels"], cols["levels"], _table(result, rows, cols),
                     _table(mask, rows, cols, fill=True).astype(bool), None,
                     rows["name"], cols["name"])
    if not groups:
        chosen = list(result.columns) if every_column else [column]
        aggs = {agg["name"]: agg for agg in plan["aggregates"]}
        ticks = [f"{name}\n({_measure(aggs[name], plan)})" for name in chosen]
        return _Grid(chosen, [None], result[chosen].to_numpy(float).reshape(-1, 1),
                     mask[chosen].to_numpy(bool).reshape(-1, 1), None, "", None,
                     ticks=ticks)
    counts = _count_column(plan, column)
    if len(groups) == 1:
        entry = groups[0]
        return _Grid(entry["levels"], [None], _column(result[column], entry),
                     _column(mask[column], entry, fill=True).astype(bool),
                     _column(result[counts], entry) if counts else None,
                     entry["name"], None, entry.get("bins"))
    rows, cols = groups
    return _Grid(rows["levels"], cols["levels"], _unstack(result[column], rows, cols),
                 _unstack(mask[column], rows, cols, fill=True).astype(bool),
                 _unstack(result[counts], rows, cols) if counts else None,
                 rows["name"], cols["name"])


def _count_column(plan: dict, column: str) -> str | None:
    """The count column to annotate ``column`` with: its own count first, else row counts."""
    aggs = {agg["name"]: agg for agg in plan["aggregates"]}
    if aggs[column]["stat"] in COUNT_STATS:
        return None
    counts = [a for a in aggs.values() if a["stat"] in COUNT_STATS]
    same = [a for a in counts if a["expr"] == aggs[column]["expr"]]
    chosen = same or [a for a in counts if a["stat"] == "size"] or counts
    return chosen[0]["name"] if chosen else None


def _column(series: pd.Series, entry: dict, fill: Any = np.nan) -> np.ndarray:
    index = pd.Index(entry["levels"], dtype=object)
    values = pd.Series(series.to_numpy(float), index=pd.Index(series.index, dtype=object))
    return values.reindex(index).fillna(fill).to_numpy(float).reshape(-1, 1)


def _unstack(series: pd.Series, rows: dict, cols: dict, fill: Any = np.nan) -> np.ndarray:
    lookup = dict(zip(series.index, series.to_numpy(float), strict=True))
    return np.array([[lookup.get((r, c), fill) for c in cols["levels"]]
                     for r in rows["levels"]], dtype=float)


def _table(frame: pd.DataFrame, rows: dict, cols: dict, fill: Any = np.nan) -> np.ndarray:
    frame = frame.astype(float)  # counts are Int64 with <NA> where suppressed
    stacked = {(r, c): frame.iat[i, j] for i, r in enumerate(frame.index)
               for j, c in enumerate(frame.columns)}
    return np.array([[stacked.get((r, c), fill) for c in cols["levels"]]
                     for r in rows["levels"]], dtype=float)


# ------------------------------------------------------------------------------ drawing
def _colors(n: int) -> list:
    import matplotlib as mpl

    cycle = mpl.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


def _draw_bars(ax: Axes, grid: _Grid) -> None:
    n_series = len(grid.series)
    width = 0.8 / n_series
    base = np.arange(len(grid.x), dtype=float)
    many = grid.values.size > 12
    for j, (level, color) in enumerate(zip(grid.series, _colors(n_series), strict=True)):
        xs = base + (j - (n_series - 1) / 2) * width
        heights = np.where(grid.suppressed[:, j], 0.0, np.nan_to_num(grid.values[:, j]))
        label = str(level) if level is not None else "_released"
        bars = ax.bar(xs, heights, width * 0.95, color=color, label=label)
        gone = grid.suppressed[:, j]
        _mark_suppressed(ax, xs[gone], color, grid)
        if grid.counts is not None and grid.values.size <= MAX_LABELLED_BARS:
            texts = [_count_text(n, s) for n, s in zip(grid.counts[:, j], gone, strict=True)]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2, color="0.3",
                         rotation=90 if many else 0)
    ax.set_xticks(base, grid.ticks or [_level_text(v) for v in grid.x])
    _rotate_ticks(ax, grid.x)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.margins(y=0.15 if grid.counts is not None else 0.05)


def _count_text(count: float, gone: bool) -> str:
    return "" if gone or not np.isfinite(count) else f"n={int(count)}"


def _suppressed_text(grid: _Grid) -> str:
    """The label at a suppressed cell: ``suppressed (<k)`` for the minimum size."""
    if grid.k and grid.reasons <= {"minimum size"}:
        return f"suppressed (<{grid.k})"
    return "suppressed"


def _mark_suppressed(ax: Axes, xs: np.ndarray, color: Any, grid: _Grid, *,
                     on_zero: bool = True) -> None:
    """An ``x`` on the zero line (``on_zero``; else at the foot of the axes) and a label
    per suppressed cell: no bar, so nothing reads as a value."""
    transform = ax.transData if on_zero else ax.get_xaxis_transform()
    y = 0.0 if on_zero else 0.03
    for x in xs:
        ax.plot([x], [y], linestyle="none", marker="x", markersize=8, markeredgewidth=1.5,
                color=color, transform=transform, clip_on=False, zorder=3,
                label="_suppressed", gid=SUPPRESSED_GID)
        ax.annotate(_suppressed_text(grid), (x, y), xycoords=transform, xytext=(0, 7),
                    textcoords="offset points", rotation=90, ha="center", va="bottom",
                    fontsize=7, color="0.35", gid=SUPPRESSED_LABEL_GID)


def _draw_hist(ax: Axes, grid: _Grid) -> None:
    edges = np.asarray(grid.edges, dtype=float)
    widths = np.diff(edges)
    values, gone = grid.values[:, 0], grid.suppressed[:, 0]
    color = _colors(1)[0]
    heights = np.where(gone, 0.0, np.nan_to_num(values))
    ax.bar(edges[:-1], heights, widths, align="edge", color=color, edgecolor="white",
           linewidth=0.8, label="_released")
    _mark_suppressed(ax, edges[:-1][gone] + widths[gone] / 2, color, grid)
    if len(edges) <= 13:
        ax.set_xticks(edges, [f"{e:g}" for e in edges])
    ax.set_xlim(edges[0], edges[-1])
    ax.margins(y=0.05)


def _draw_lines(ax: Axes, grid: _Grid) -> None:
    xs = np.arange(len(grid.x), dtype=float)
    for j, (level, color) in enumerate(zip(grid.series, _colors(len(grid.series)),
                                           strict=True)):
        ys = np.where(grid.suppressed[:, j], np.nan, grid.values[:, j])
        label = str(level) if level is not None else "_released"
        ax.plot(xs, ys, marker="o", markersize=4, color=color, label=label)
        _mark_suppressed(ax, xs[grid.suppressed[:, j]], color, grid, on_zero=False)
    ax.set_xticks(xs, [_level_text(v) for v in grid.x])
    _rotate_ticks(ax, grid.x)


def _level_text(level: Any) -> str:
    return str(level)


def _rotate_ticks(ax: Axes, levels: list) -> None:
    texts = [_level_text(v) for v in levels]
    if sum(map(len, texts)) > 60 or (len(texts) > 6 and max(map(len, texts)) > 6):
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


# ----------------------------------------------------------------------------- labelling
def _label(ax: Axes, plan: dict, grid: _Grid, column: str, title: str | None, *,
           count_axis: bool) -> None:
    aggs = {agg["name"]: agg for agg in plan["aggregates"]}
    shown = grid.x if not plan["groupby"] else [column]
    stats = {aggs[name]["stat"] for name in shown if name in aggs}
    if count_axis or stats <= set(COUNT_STATS):
        what = "rows"
    elif len(shown) == 1:
        what = _measure(aggs[column], plan)
    else:
        what = stats.pop() if len(stats) == 1 else "value"
    ax.set_xlabel(grid.x_name)
    ax.set_ylabel(what)
    names = [e["name"] for e in plan["groupby"]]
    default = (f"{what} by {' and '.join(names)}" if names else
               what if len(shown) == 1 else "released aggregates")
    ax.set_title(default if title is None else title, pad=18)
    k = plan.get("min_cell_size")
    if k:
        ax.annotate(f"cells with fewer than {k} rows suppressed", (0.5, 1.0),
                    xycoords="axes fraction", xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8, color="0.35")
    _legend(ax, grid, k)


def _legend(ax: Axes, grid: _Grid, k: int | None) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if grid.suppressed.any():
        shown = [reason_text(r, k) for r in sorted(grid.reasons)]
        why = f"suppressed ({', '.join(shown)})" if shown else "suppressed"
        proxy = Line2D([], [], linestyle="none", marker="x", markeredgewidth=1.5, color="0.3")
        handles, labels = [*handles, proxy], [*labels, why]
    if handles:  # outside the axes, so it never covers a bar
        ax.legend(handles, labels, title=grid.series_name, fontsize=8, title_fontsize=8,
                  bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0)


def _measure(agg: dict, plan: dict) -> str:
    """``<stat> of <what>``: the expression as text, or the column name if that is long."""
    if agg["stat"] == "size":
        return "rows"
    text = _describe(agg["expr"], plan["columns"])
    return f"{agg['stat']} of {text if len(text) <= MAX_MEASURE_CHARS else agg['name']}"


def _describe(expr: dict, columns: dict) -> str:
    """Plan expression JSON as short text (bare column names where unambiguous)."""
    if "col" in expr:
        name = expr["col"].split(".", 1)[1]
        bare = [c for c in columns if c.split(".", 1)[1] == name]
        return name if len(bare) == 1 else expr["col"]
    if "const" in expr:
        return repr(expr["const"])
    op, args = expr["op"], [_describe(a, columns) for a in expr["args"]]
    parts = [f"({text})" if "op" in arg else text
             for arg, text in zip(expr["args"], args, strict=True)]
    if op == "neg":
        return f"-{parts[0]}"
    if op == "not":
        return f"~{parts[0]}"
    if op == "isin":
        return f"{parts[0]}.isin({expr['values']!r})"
    return f" {_SYMBOLS[op]} ".join(parts)


__all__ = ["KINDS", "MOCK_GID", "SUPPRESSED_GID", "SUPPRESSED_LABEL_GID", "plot"]
