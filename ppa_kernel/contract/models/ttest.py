"""Welch's two-sample t-test of a measure between two groups, per stratum.

Plan: the last groupby entry is the two-level comparison group; earlier entries are the
strata. The aggregates are ``n`` (count) and ``mean`` of the measure, released per cell
under the minimum cell size like any table. The model adds, for every stratum whose two
cells both pass::

    {"kind": "ttest", "measure": <expression>, "group": <name of the last groupby entry>}

Opened, to every party: per passing cell its count and sum (hence the mean); per passing
stratum ``model.ttest.t_squared`` (t², whose sign is that of the released mean
difference, so together they are exactly t) and ``model.ttest.df`` (Welch–Satterthwaite
degrees of freedom). Never opened: sums of squares, variances, strata that fail.
p is computed from t and df in the clear. Matches
``scipy.stats.ttest_ind(first_level, second_level, equal_var=False)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..errors import PlanError
from ..expr import canonical_json
from .base import (
    MASKED_TRUNCATION,
    UNGROUPED,
    Frame,
    FrameColumn,
    FrameQuery,
    ModelKind,
    as_counts,
    output_name,
    require_keys,
)


class TTest(ModelKind):
    kind = "ttest"

    def validate(self, plan: dict) -> None:
        model = plan["model"]
        require_keys(model, {"measure", "group"})
        groupby = plan["groupby"]
        if not groupby or groupby[-1]["name"] != model["group"]:
            raise PlanError("ttest: the comparison group must be the last groupby entry")
        if len(groupby[-1]["levels"]) != 2 or groupby[-1].get("bins") is not None:
            raise PlanError(f"ttest: {model['group']!r} must have exactly two levels",
                            hint="filter the frame to two levels first")
        stats = {a["stat"]: canonical_json(a["expr"]) for a in plan["aggregates"]
                 if a["expr"] is not None}
        key = canonical_json(model["measure"])
        if stats.get("count") != key or stats.get("mean") != key or \
                len(plan["aggregates"]) != 2:
            raise PlanError("ttest: the aggregates must be the count and mean of the measure")

    def squared_measures(self, plan: dict) -> list[dict]:
        return [plan["model"]["measure"]]

    def openings(self, plan: dict) -> set[str]:
        return {output_name(self.kind, "t_squared"), output_name(self.kind, "df"),
                MASKED_TRUNCATION}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        from scipy import stats as sps

        names = {a["stat"]: a["name"] for a in plan["aggregates"]}
        group = plan["groupby"][-1]
        first, second = group["levels"]
        strata = plan["groupby"][:-1]
        opened = stats["model"]
        rows, index = [], []
        combos = list(itertools.product(*(e["levels"] for e in strata))) or [()]
        for i, combo in enumerate(combos):
            key = (*combo, first), (*combo, second)
            cells = [released.loc[k if len(k) > 1 else k[0]] for k in key]
            n1, n2 = (c[names["count"]] for c in cells)
            m1, m2 = (c[names["mean"]] for c in cells)
            t2, df = opened["t_squared"][i], opened["df"][i]
            if t2 is None:
                t = p = df = np.nan
            else:
                t = float(np.sign(m1 - m2) * np.sqrt(t2))
                p = float(2 * sps.t.sf(abs(t), df))
            rows.append({f"n[{first}]": n1, f"n[{second}]": n2, f"mean[{first}]": m1,
                         f"mean[{second}]": m2, "difference": m1 - m2, "t": t, "df": df,
                         "p": p})
            index.append(combo)
        frame = pd.DataFrame(rows)
        for name in (f"n[{first}]", f"n[{second}]"):
            frame[name] = as_counts(frame[name])
        if strata:
            frame.index = pd.MultiIndex.from_tuples(index, names=[e["name"] for e in strata])
            if len(strata) == 1:
                frame.index = frame.index.get_level_values(0)
        else:
            frame.index = pd.Index([UNGROUPED])
        frame.attrs["suppressed"] = frame.isna()
        return frame


def ttest(frame: Frame, column: str | FrameColumn, by: str | FrameColumn,
          strata: str | FrameColumn | list[str | FrameColumn] | None = None) -> FrameQuery:
    """Welch's t-test of ``column`` between the two levels of ``by`` (per stratum).

    As ``scipy.stats.ttest_ind(first_level, second_level, equal_var=False)``; opens
    counts, means, t and df per stratum whose two cells pass disclosure control.
    """
    measure = frame.column(column)
    if measure.kind != "numeric":
        raise PlanError(f"ttest needs a numeric measure, not {measure.kind} "
                        f"{measure.name!r}")
    keys = [] if strata is None else strata if isinstance(strata, list | tuple) \
        else [strata]
    entries = frame.groupby([*keys, by]).entries
    group = entries[-1][0]
    if len(group["levels"]) != 2:
        raise PlanError(f"ttest compares two groups; {group['name']!r} has "
                        f"{len(group['levels'])} levels",
                        hint="filter to two levels and group by a boolean, "
                             "e.g. t.assign(...) with a comparison")
    specs = [("n", "count", measure), ("mean", "mean", measure)]
    model = {"kind": "ttest", "measure": measure.expr, "group": group["name"]}
    return frame.model_query(model, groups=entries, aggregates=specs)
