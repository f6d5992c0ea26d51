"""Pearson correlation matrix of k numeric measures over the complete rows (listwise).

Plan: no groupby, no aggregates, the frame's filter, and::

    {"kind": "corr", "measures": [<expression>, ...], "names": [<label>, ...]}

The rows used are those of the (filtered) join where every measure is present, as
``frame.dropna().corr()``. Under MPC: a secure 0/1 complete-row mask, the secure integer
Gram matrix of [1, x1..xk] over those rows, the centred cross products
``C_ij = n sum x_i x_j - sum x_i sum x_j`` (exact integers), then in fixed point
``r_ij = C_ij / sqrt(C_ii C_jj)`` after a secret power-of-two normalisation of each
measure (a bit decomposition of C_ii; only masked values are opened) and a secure
inverse square root (Newton's method).

Opened, to every party and the analyst:

* whether n, the number of complete rows, reaches the minimum cell size
  (``disclosure.pass``, one bit); if not, nothing more is computed or opened;
* ``model.corr.n``: n;
* ``model.corr.r``: the upper triangle of the r matrix, diagonal included, row by row.
  r_ij is undefined (pandas: NaN) when measure i or j is constant over the complete
  rows; such an r_ij is opened as the impossible value 2 -- so "undefined" is one of r's
  values, not an extra opening. The diagonal is 1 or undefined.

Besides, only statistically masked protocol values: ``protocol.comparison_masked`` (the
pass check and the bit decomposition) and ``protocol.truncation_masked`` (fixed point).
Never opened: sums, sums of squares or cross products, variances, the mask, the
normaliser bits. p for each pair follows in the clear from r and n (two-sided t test
with n - 2 df, as ``scipy.stats.pearsonr``).

Assumption: each measure's C_ii = n^2 var (at its fixed-point scale) stays below 2^200,
i.e. |x| below 2^(100 - 16 s) / n for a measure at scale exponent s (owner-side
measures have s = 1, cross-party products s = 2): any realistic data. Beyond it the
result is wrong and the bit decomposition's mask no longer hides C_ii.

Result (``collect()``): long format, one row per pair i < j with columns ``x``, ``y``,
``r``, ``n``, ``p``; ``attrs["matrix"]`` holds the square r matrix like
``DataFrame.corr()``.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from ..errors import PlanError
from ..expr import check_expr
from .base import (
    MASKED_TRUNCATION,
    Frame,
    FrameColumn,
    FrameQuery,
    ModelKind,
    as_counts,
    output_name,
    require_keys,
)

logger = logging.getLogger(__name__)

KIND = "corr"
UNDEFINED = 2.0
"""The opened value of an undefined r (never a correlation)."""


class Corr(ModelKind):
    kind = KIND

    def validate(self, plan: dict) -> None:
        model = plan["model"]
        require_keys(model, {"measures", "names"})
        measures, names = model["measures"], model["names"]
        if not isinstance(measures, list) or not isinstance(names, list) \
                or len(measures) != len(names) or len(measures) < 2:
            raise PlanError("corr: give at least two measures, each with a name")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise PlanError("corr: the measures' names must be distinct strings")
        if plan["groupby"] or plan["aggregates"]:
            raise PlanError("corr: the plan takes no groups and no aggregates")
        columns = plan["columns"]
        for name, expr in zip(names, measures):
            check_expr(expr, columns)
            if "const" in expr:
                raise PlanError(f"corr: {name!r} is a constant")
            if "col" in expr and columns[expr["col"]]["kind"] == "categorical":
                raise PlanError(f"corr: {name!r} is categorical",
                                hint="correlate numbers or booleans")

    def value_inputs(self, plan: dict) -> list[dict]:
        return list(plan["model"]["measures"])

    def openings(self, plan: dict) -> set[str]:
        return {output_name(KIND, "r"), output_name(KIND, "n"), MASKED_TRUNCATION}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        names = plan["model"]["names"]
        opened = stats["model"]
        n, upper = opened.get("n"), opened.get("r")
        matrix = pd.DataFrame(np.nan, index=pd.Index(names), columns=pd.Index(names))
        if upper is not None:
            for (i, j), value in zip(_upper_pairs(len(names)), upper):
                r = np.nan if value > 1.5 else 1.0 if i == j else float(np.clip(value, -1, 1))
                matrix.iloc[i, j] = matrix.iloc[j, i] = r
        rows = []
        for i, j in itertools.combinations(range(len(names)), 2):
            r = matrix.iloc[i, j]
            rows.append({"x": names[i], "y": names[j], "r": r,
                         "n": np.nan if n is None else float(n), "p": _p_value(r, n)})
        frame = pd.DataFrame(rows, columns=["x", "y", "r", "n", "p"])
        frame["n"] = as_counts(frame["n"])
        mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
        mask[["r", "n", "p"]] = n is None
        frame.attrs["suppressed"] = mask
        frame.attrs["matrix"] = matrix
        if n is None:
            frame.attrs["refused"] = (f"corr refused: fewer than {plan.get('min_cell_size')} "
                                      f"complete rows")
        return frame


def _upper_pairs(k: int) -> list[tuple[int, int]]:
    """(i, j) with i <= j, row by row: the order in which r is opened."""
    return [(i, j) for i in range(k) for j in range(i, k)]


def _p_value(r: float, n: int | None) -> float:
    """Two-sided p of H0: rho = 0 (t = r sqrt((n-2)/(1-r^2)), n - 2 df), as scipy.pearsonr."""
    from scipy import stats as sps

    if n is None or np.isnan(r) or n < 3:
        return np.nan
    if abs(r) >= 1:
        return 0.0
    df = n - 2
    t = r * np.sqrt(df / ((1 - r) * (1 + r)))
    return float(2 * sps.t.sf(abs(t), df))


def corr(frame: Frame, columns: list[str | FrameColumn]) -> FrameQuery:
    """Pearson correlations of numeric (or boolean) columns over the frame's complete rows.

    As ``DataFrame.dropna().corr()`` with p-values as ``scipy.stats.pearsonr``; see
    :mod:`ppa_kernel.contract.models.corr` for what is opened and the result's shape.
    """
    measures = [frame.column(c) for c in columns]
    for m in measures:
        if m.kind == "categorical":
            raise PlanError(f"corr needs numeric columns, not categorical {m.name!r}")
    names = [m.name for m in measures]
    if len(measures) < 2 or len(set(names)) != len(names):
        raise PlanError("corr needs at least two different columns")
    model = {"kind": KIND, "measures": [m.expr for m in measures], "names": names}

    return frame.model_query(model, inputs=measures)


