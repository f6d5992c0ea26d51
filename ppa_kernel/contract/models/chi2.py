"""Pearson's chi-square test of independence on a two-way crosstab.

Plan: two groupby entries (categorical, boolean or binned columns of any parties), the
single aggregate ``size`` (the crosstab counts) and::

    {"kind": "chi2", "index": <name of groupby[0]>, "columns": <name of groupby[1]>}

Computed under MPC from ALL cells' secret counts O (suppressed ones included): row and
column totals r, c and N as secure integers, then, in fixed point,
``chi2 = sum_ij (N O_ij - r_i c_j)^2 / (N r_i c_j)`` (= sum (O - E)^2 / E).

Opened, to every party and the analyst:

* per cell, whether its count passes the minimum cell size (``disclosure.pass``) and the
  passing counts (``release.count:size``), exactly as ``frame.crosstab``;
* whether the table's total N passes the minimum cell size (``disclosure.pass``, one
  bit); when it fails nothing more is computed or opened and chi2 is suppressed;
* ``model.chi2.chi2``: the statistic, one number.

Besides, only statistically masked protocol values (``protocol.comparison_masked``:
the pass checks and the zero tests of the margins; ``protocol.truncation_masked``:
fixed point). Never opened: suppressed counts, the margins r, c and N, which margins
are empty, the expected counts.
``df = (R - 1)(C - 1)`` is public, from the plan's levels; p = ``scipy.stats.chi2.sf``
in the clear. Matches ``scipy.stats.chi2_contingency(table, correction=False)``.

Empty rows or columns: a zero margin is detected inside MPC and its cells add 0 to chi2,
without revealing which margins are empty; df is always that of the plan's levels.

Differencing defence: chi2 is a function of every cell. With one cell suppressed and the
others released, chi2 could be solved for it; so chi2 is computed and opened only when
every cell of the table passes the minimum cell size (public pass bits). Otherwise it is
refused (NaN, with the reason in ``attrs["refused"]``); the crosstab is still released.
An empty row or column has zero (suppressed) cells, so such a table is refused too; the
zero-margin handling above only keeps the computation well defined.

Result (``collect()``): a one-row DataFrame with columns ``chi2``, ``df``, ``p``, ``n``
(n is the table total when every cell is released, NaN otherwise); the crosstab of
released counts (rows = index levels, columns = column levels, NaN where suppressed,
with its own ``attrs["suppressed"]``) is in ``attrs["table"]``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import PlanError
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

logger = logging.getLogger(__name__)

KIND = "chi2"


class Chi2(ModelKind):
    kind = KIND

    def validate(self, plan: dict) -> None:
        model = plan["model"]
        require_keys(model, {"index", "columns"})
        groupby = plan["groupby"]
        if [e["name"] for e in groupby] != [model["index"], model["columns"]]:
            raise PlanError("chi2: the groupby entries must be exactly the index and the "
                            "columns of the table")
        for entry in groupby:
            if len(entry["levels"]) < 2:
                raise PlanError(f"chi2: {entry['name']!r} needs at least two levels")
        aggregates = plan["aggregates"]
        if len(aggregates) != 1 or aggregates[0]["stat"] != "size":
            raise PlanError("chi2: the only aggregate must be the cell counts ('size')")

    def openings(self, plan: dict) -> set[str]:
        return {output_name(KIND, "chi2"), MASKED_TRUNCATION}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        from scipy import stats as sps

        counts = crosstab_table(plan, released)
        counts = counts.apply(as_counts).__finalize__(counts)
        rows, cols = plan["groupby"]
        df = (len(rows["levels"]) - 1) * (len(cols["levels"]) - 1)
        chi2 = stats["model"].get("chi2")
        complete = not counts.attrs["suppressed"].to_numpy().any()
        n = float(counts.to_numpy(dtype=float, na_value=np.nan).sum()) if complete else np.nan
        p = float(sps.chi2.sf(chi2, df)) if chi2 is not None else np.nan
        index = pd.Index([UNGROUPED])
        summary = pd.DataFrame({"chi2": [np.nan if chi2 is None else float(chi2)],
                                "df": as_counts([df]).array, "p": [p],
                                "n": as_counts([n]).array}, index=index)
        summary.attrs["suppressed"] = pd.DataFrame(
            {"chi2": [chi2 is None], "df": [False], "p": [chi2 is None], "n": [not complete]},
            index=index)
        summary.attrs["table"] = counts
        if chi2 is None and stats["model"].get("refused") == "suppressed cell":
            summary.attrs["refused"] = ("chi2 refused: a cell of the table is suppressed, "
                                        "and chi2 with the other cells would reveal it")
        elif chi2 is None:
            summary.attrs["refused"] = (f"chi2 refused: the table has fewer than "
                                        f"{plan.get('min_cell_size')} rows")
        return summary


def crosstab_table(plan: dict, released: pd.DataFrame) -> pd.DataFrame:
    """The released counts as rows = index levels x columns = column levels (NaN: suppressed)."""
    rows, cols = plan["groupby"]
    name = plan["aggregates"][0]["name"]
    index = pd.Index(rows["levels"], name=rows["name"])
    columns = pd.Index(cols["levels"], name=cols["name"])
    values = released[name].unstack(level=1).reindex(index=index, columns=columns)
    mask = released.attrs["suppressed"][name].unstack(level=1)
    mask = mask.reindex(index=index, columns=columns).astype(bool)
    table = values.astype(float)
    table.index.name, table.columns.name = index.name, columns.name
    mask.index.name, mask.columns.name = index.name, columns.name
    table.attrs["suppressed"] = mask
    return table


def chi2(frame: Frame, index: str | FrameColumn, columns: str | FrameColumn) -> FrameQuery:
    """Pearson's chi-square test of independence of two grouping columns.

    As ``scipy.stats.chi2_contingency(pandas.crosstab(index, columns), correction=False)``
    on the frame's rows; see :mod:`ppa_kernel.contract.models.chi2` for what is opened and the
    result's shape.
    """

    entries = frame.groupby([index, columns]).entries
    names = [entry["name"] for entry, _ in entries]
    model = {"kind": KIND, "index": names[0], "columns": names[1]}
    return frame.model_query(model, groups=entries, aggregates=[("count", "size", None)])
