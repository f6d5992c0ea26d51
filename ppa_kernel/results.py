"""Released statistics to pandas: the table an analyst sees.

Parties return integer sufficient statistics per cell (counts, sums, sums of squares at
a known fixed-point scale). Means and variances are computed here exactly from them.
Suppressed cells are NaN in the table and True in ``df.attrs["suppressed"]``.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pandas as pd

from .plan import canonical_json, plan_hash
from .program import SCALE_BITS, compile_plan

SUPPRESSED = "suppressed"


def _cell_levels(plan: dict) -> list[dict]:
    """Each cell's level per groupby name, in the workers' cell order."""
    program = compile_plan(plan)
    per_party = [
        [dict(zip([e["name"] for e in program.group_entries[p]], combo))
         for combo in program.group_levels(p)]
        for p in program.group_parties
    ]
    cells = []
    for parts in itertools.product(*per_party):
        merged: dict = {}
        for part in parts:
            merged.update(part)
        cells.append(merged)
    return cells or [{}]


def _statistic(stat: str, count: int | None, total: int | None, sumsq: int | None,
               scale: int) -> float:
    if count is None:
        return float("nan")
    if stat in ("count", "size"):
        return float(count)
    unit = Fraction(1, 1 << (SCALE_BITS * scale))
    if stat == "sum":
        return float(total * unit)
    if count == 0:
        return float("nan")
    if stat == "mean":
        return float(Fraction(total, count) * unit)
    if count < 2:
        return float("nan")
    var = Fraction(count * sumsq - total * total, count * (count - 1)) * unit * unit
    return float(var) if stat == "var" else float(np.sqrt(float(var)))


def to_frame(plan: dict, stats: dict) -> pd.DataFrame:
    """The released table for one plan, indexed by its groups."""
    cells = _cell_levels(plan)
    names = [e["name"] for e in plan["groupby"]]
    data, mask = {}, {}
    for agg in plan["aggregates"]:
        key = "size" if agg["stat"] == "size" else canonical_json(agg["expr"])
        counts = stats["counts"][key]
        sums = stats["sums"].get(key, [None] * len(counts))
        sumsqs = stats["sumsqs"].get(key, [None] * len(counts))
        scale = stats["scales"].get(key, 0)
        data[agg["name"]] = [_statistic(agg["stat"], c, s, q, scale)
                             for c, s, q in zip(counts, sums, sumsqs)]
        mask[agg["name"]] = [c is None for c in counts]
    if names:
        index = pd.MultiIndex.from_tuples([tuple(c[n] for n in names) for c in cells],
                                          names=names)
        if len(names) == 1:
            index = index.get_level_values(0)
    else:
        index = pd.RangeIndex(1)
    frame = pd.DataFrame(data, index=index)
    frame.attrs["suppressed"] = pd.DataFrame(mask, index=index)
    frame.attrs["statistics"] = {agg["name"]: agg["stat"] for agg in plan["aggregates"]}
    frame.attrs["plan_hash"] = plan_hash(plan)
    return frame


def format_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """Text rendering with suppressed cells marked."""
    shown = frame.round(digits).astype(object)
    for name, stat in frame.attrs.get("statistics", {}).items():
        if stat in ("count", "size") and name in shown:
            shown[name] = pd.Series([v if pd.isna(v) else int(v) for v in frame[name]],
                                    index=frame.index, dtype=object)
    mask = frame.attrs.get("suppressed")
    if mask is not None:
        shown = shown.mask(mask.reindex_like(frame).fillna(False).astype(bool), SUPPRESSED)
    return shown.to_string()
