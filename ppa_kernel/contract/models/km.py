"""Kaplan-Meier survival curves per group on a public time grid, and the log-rank test.

Plan: the groups are the groupby entries (none: one curve), there are no aggregates
(nothing is released per cell), and::

    {"kind": "km", "name": <duration's display name>, "duration": {"col": ...},
     "event": <condition: the event happened>, "times": [t_1, ..., t_K],
     "edges": [e_0, ..., e_K]}

A row's time is ``t_k`` when ``e_(k-1) <= duration < e_k``: events and censorings within
one interval are tied at its end. The builder uses ``t_k = k * step`` and ``e_k = t_k +
0.5`` (``e_0 = -0.5``), so a duration of d whole days counts as ``max(ceil(d / step), 1)
* step``. Censored rows tied with events are at risk at that time (the usual convention).
The builder also filters the frame to rows whose duration lies on the grid and whose
event is known (True or False); this puts both columns in the plan, so each owner checks
them against its policy (as filter columns).

Inputs (every input column costs a secure shuffle of all parties' rows, so there are
few): the groups' one-hot columns as for any table, the event as one 0/1 column and the
binary digits of each row's interval index k - 1 (ceil(log2 K) 0/1 columns, each a
condition on the duration), all evaluated by their owner.

Under MPC (secure integers, exact): the rows' interval flags H (rows x K) from the
digits (products of digits and their complements, about 2**ceil(log2 K) secure products
per row); with the rows' group membership W (mask applied) and event flags e, the exits
per group and interval ``W'H`` and the events ``d = (W e)'H``; at risk
``n_gk = sum_{j>=k} exits_gj``. Then, finished in fixed point,
``S_g(t_k) = prod_{j<=k} (1 - d_gj / n_gj)`` and, over the groups that pass at t_1, the
log-rank ``chi2 = Z' V^-1 Z`` (all groups but the last) with ``n_k = sum_g n_gk``,
``d_k = sum_g d_gk``, ``Z_g = sum_k (d_gk - d_k n_gk / n_k)``,
``V_gh = sum_k d_k (n_k - d_k) / (n_k - 1) (n_gk / n_k) (delta_gh - n_hk / n_k)``
(times with n_k < 2 add nothing; two secret comparisons per time keep the divisions
safe).

Opened, to every party and the analyst:

* ``model.km.at_risk_pass``: per group and grid time, whether at least min_cell_size
  rows are at risk (n_gk >= min_cell_size). n_gk never grows with k, so this is the same
  as opening, per group, the last grid time with at least min_cell_size at risk (and
  whether the group has that many rows at all);
* ``model.km.survival``: S_g(t_k) at exactly the passing (group, time) pairs: the curve
  stops (NaN) after the group's last passing time; groups below the minimum get nothing;
* ``model.km.chi2``: the log-rank statistic, one number, over the groups with at least
  min_cell_size rows, when there are at least two.

Besides, MPyC's comparisons, bit decompositions and truncations open only statistically
masked values (``protocol.comparison_masked``, ``protocol.truncation_masked``), which
reveal nothing. Never opened: the counts (at risk, events, exits, group sizes), observed
and expected events, V. df = (groups tested - 1) and p = ``scipy.stats.chi2.sf(chi2,
df)`` in the clear. Residual disclosure: as for any published Kaplan-Meier curve, the
steps of S are ratios d/n at passing times, from which small event counts can sometimes
be inferred.

Matches ``statsmodels.duration.survfunc.SurvfuncRight`` (S at the grid times) and
``statsmodels.duration.survfunc.survdiff`` (chi2) on the durations rounded up to the grid.

Result (``collect()``): a DataFrame indexed by time (0, then the grid times; S = 1 at
time 0 for released groups) with one survival column per group (``survival`` when
ungrouped; the group's level, or a tuple of levels for several group columns), NaN where
not released (``attrs["suppressed"]`` marks them), and ``attrs["logrank"] = {"chi2",
"df", "p", "groups"}`` (the groups tested; chi2, df and p are NaN with fewer than two).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import numbers

import numpy as np
import pandas as pd

from ..errors import PlanError
from ..expr import check_expr, is_boolean
from .base import (
    MASKED_TRUNCATION,
    Frame,
    FrameColumn,
    FrameQuery,
    ModelKind,
    output_name,
    require_keys,
)

logger = logging.getLogger(__name__)

KIND = "km"
OUTPUTS = ("at_risk_pass", "survival", "chi2")


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _increasing(values: object) -> bool:
    return isinstance(values, list) and len(values) > 0 and all(map(_number, values)) and \
        all(a < b for a, b in itertools.pairwise(values))


class KaplanMeier(ModelKind):
    kind = KIND

    def validate(self, plan: dict) -> None:
        model = plan["model"]
        require_keys(model, {"name", "duration", "event", "times", "edges"})
        if not _increasing(model["times"]) or not _increasing(model["edges"]) or \
                len(model["edges"]) != len(model["times"]) + 1:
            raise PlanError("km: times and edges must increase, one more edge than times")
        duration, event = model["duration"], model["event"]
        check_expr(duration, plan["columns"])
        check_expr(event, plan["columns"])
        if "col" not in duration or plan["columns"][duration["col"]]["kind"] != "numeric":
            raise PlanError("km: the duration must be a numeric column")
        if not is_boolean(event, plan["columns"]):
            raise PlanError("km: the event must be a condition")
        if plan["aggregates"]:
            raise PlanError("km releases no per-cell table: leave the aggregates empty")

    def condition_inputs(self, plan: dict) -> list[dict]:
        model = plan["model"]
        return [model["event"], *index_digits(model["duration"], model["edges"])]

    def openings(self, plan: dict) -> set[str]:
        return {output_name(KIND, o) for o in OUTPUTS} | {MASKED_TRUNCATION}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        from scipy import stats as sps

        opened, model, groups = stats["model"], plan["model"], plan["groupby"]
        labels = group_labels(plan)
        if not groups:
            columns = pd.Index(["survival"])
        elif len(groups) == 1:
            columns = pd.Index(labels, name=groups[0]["name"])
        else:
            columns = pd.MultiIndex.from_tuples(labels, names=[e["name"] for e in groups])
        times = [0, *model["times"]]
        values = np.full((len(times), len(labels)), np.nan)
        for g, curve in enumerate(opened["survival"]):
            if curve[0] is not None:
                values[0, g] = 1.0
            values[1:, g] = [np.nan if s is None else float(s) for s in curve]
        frame = pd.DataFrame(values, index=pd.Index(times, name=model["name"]),
                             columns=columns)
        frame.attrs["suppressed"] = frame.isna()
        chi2, tested = opened["chi2"], opened["logrank_groups"]
        df = len(tested) - 1
        frame.attrs["logrank"] = {
            "chi2": np.nan if chi2 is None else float(chi2),
            "df": np.nan if chi2 is None else df,
            "p": np.nan if chi2 is None else float(sps.chi2.sf(chi2, df)),
            "groups": [labels[g] for g in tested]}
        return frame


def index_digits(duration: dict, edges: list) -> list[dict]:
    """Conditions giving the binary digits (lowest first) of a row's interval index k.

    Interval k is ``edges[k] <= duration < edges[k + 1]``; digit j is true on the runs of
    intervals whose index has bit j set, so each digit is an "or" of a few ranges.
    """
    count = len(edges) - 1
    digits = []
    for j in range(max(0, (count - 1).bit_length())):
        ranges = [{"op": "and", "args": [
            {"op": "ge", "args": [duration, {"const": edges[start]}]},
            {"op": "lt", "args": [duration, {"const": edges[min(start + (1 << j), count)]}]}]}
            for start in range(1 << j, count, 2 << j)]
        digits.append(functools.reduce(lambda a, b: {"op": "or", "args": [a, b]}, ranges))
    return digits


def group_labels(plan: dict) -> list:
    """The groups in plan order: level tuples (single levels for one group column)."""
    groups = plan["groupby"]
    combos = list(itertools.product(*(e["levels"] for e in groups)))
    return [c[0] for c in combos] if len(groups) == 1 else combos


def time_grid(low: float | None, high: float | None, step: float) -> tuple[list, list]:
    """Grid times step, 2 step, ... up to ``high`` and their interval edges.

    Interval k is ``[t_k - step + 0.5, t_k + 0.5)`` (the first starts at -0.5), so a whole
    duration d falls at ``max(ceil(d / step), 1) * step``.
    """
    if low is None or high is None:
        raise PlanError("the duration has no published range",
                        hint="its party publishes no min and max for it")
    if low < 0:
        raise PlanError("durations must not be negative")
    if not _number(step) or not step > 0:
        raise PlanError(f"step must be a positive number, not {step!r}")
    count = max(1, math.ceil(high / step))
    times = [k * step for k in range(1, count + 1)]
    times = [int(t) if float(t).is_integer() else float(t) for t in times]
    return times, [-0.5, *(t + 0.5 for t in times)]


def _event(frame: Frame, event: str | FrameColumn) -> tuple[FrameColumn, FrameColumn]:
    """The condition "the event happened" and the condition "the event is known"."""
    column = frame.column(event)
    if "col" in column.expr and column.kind == "numeric":  # 0/1
        return column == 1, column.isin([0, 1])
    if column.kind != "bool" or "col" not in column.expr:
        raise PlanError(f"the event must be a boolean (or 0/1) column, not {column.name!r}")
    return column, column.isin([False, True])


def kaplan_meier(frame: Frame, duration: str | FrameColumn, event: str | FrameColumn,
                 by: str | FrameColumn | list[str | FrameColumn] | None = None,
                 step: float = 30) -> FrameQuery:
    """Kaplan-Meier survival curves per group of ``by`` and the log-rank test across them.

    ``duration``: numeric column of whole time units (e.g. days) with a published range;
    the grid is step, 2 step, ... up to its published maximum, and durations are rounded
    up to it (ties at the grid times). ``event``: boolean (or 0/1) column, True = the
    event happened at ``duration``, False = censored then. See
    :mod:`ppa_kernel.contract.models.km` for what is opened and the result's shape.
    """

    time = frame.column(duration)
    if time.kind != "numeric" or "col" not in time.expr:
        raise PlanError(f"the duration must be a numeric column, not {time.name!r}")
    meta = frame.column_meta(time.expr["col"])
    times, edges = time_grid(meta.get("min"), meta.get("max"), step)
    happened, known = _event(frame, event)
    keys = [] if by is None else list(by) if isinstance(by, list | tuple) else [by]
    entries = frame.groupby(keys).entries if keys else []
    rows = frame.filter(known & (time >= edges[0]) & (time < edges[-1]))
    model = {"kind": KIND, "name": time.name, "duration": time.expr,
             "event": happened.expr, "times": times, "edges": edges}
    logger.debug("km plan: %d grid times up to %s", len(times), times[-1])
    return rows.model_query(model, groups=entries)
