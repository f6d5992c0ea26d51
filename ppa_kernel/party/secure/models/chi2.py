"""Pearson's chi-square under MPC from all cells' secret counts; opens one pass bit and
chi2 (see :mod:`ppa_kernel.contract.models.chi2` for the leakage)."""

from __future__ import annotations

import logging

import numpy as np

from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.program import cell_levels

from ..fixed import compute, from_scaled
from ..openings import compare, reveal
from ..query import QueryState
from ..runtime import COMPARE_BITS, mpc, shares, wrap

logger = logging.getLogger(__name__)


def cell_grid(state: QueryState) -> np.ndarray:
    """Worker cell index of every (index level, column level), as an R x C array."""
    rows, cols = state.program.plan["groupby"]
    where = {(c[rows["name"]], c[cols["name"]]): i
             for i, c in enumerate(cell_levels(state.program.plan))}
    return np.array([[where[(a, b)] for b in cols["levels"]] for a in rows["levels"]])


async def total_passes(state: QueryState, total) -> bool:
    """Whether a secure total reaches the minimum cell size (opens only that bit)."""
    min_cell = state.program.plan["min_cell_size"] or 1
    too_small = await compare(mpc.np_sgn, total - min_cell, l=COMPARE_BITS, LT=True)
    passed = await reveal("disclosure.pass", 1 - too_small)
    return bool(int(np.asarray(passed).reshape(-1)[0]) == 1)


async def run_chi2(state: QueryState) -> dict:
    """chi2 of the whole crosstab, or None when its total is below the minimum cell size."""
    sectype = state.sectype
    counts = np.asarray(state.size_counts, dtype=object)[cell_grid(state)]  # shares, R x C
    n_rows, n_cols = counts.shape
    row_tot, col_tot, total = counts.sum(axis=1), counts.sum(axis=0), counts.sum()
    if not await total_passes(state, wrap(sectype, np.array([total]))):
        logger.info("chi2 refused: table total below the minimum cell size")
        return {"chi2": None}
    if not all(state.stats.passed.get("size", [True])):
        # With a cell suppressed, chi2 and the released cells could be solved for it.
        logger.info("chi2 refused: a cell of the table is suppressed")
        return {"chi2": None, "refused": "suppressed cell"}
    # Zero margins: divide by 1 instead (their D below is 0), without revealing which.
    margins = wrap(sectype, np.concatenate([row_tot, col_tot]))
    empty = await compare(mpc.np_sgn, margins, l=COMPARE_BITS, EQ=True)
    safe = await shares(margins + empty)
    rows_safe, cols_safe = safe[:n_rows], safe[n_rows:]
    left = np.stack([np.full((n_rows, n_cols), total, dtype=object),
                     by_row(row_tot, n_cols), by_row(rows_safe, n_cols)])
    right = np.stack([counts, by_column(col_tot, n_rows), by_column(cols_safe, n_rows)])
    products = await shares(wrap(sectype, left) * wrap(sectype, right))
    deviation = products[0] - products[1]  # D = N O - r c, exact; 0 in empty margins
    divisor = products[2]  # r c, with an empty margin counted as 1
    # Normalise by K = 2^k > N (public): D/K^2, r c/K^2 and N/K lie in [-1, 1], exactly.
    k = max(1, state.evaluator.rows.bit_length())
    d = await from_scaled(deviation.reshape(-1), 2 * k)
    e = await from_scaled(divisor.reshape(-1), 2 * k)
    n = await from_scaled(np.array([total], dtype=object), k)

    def statistic():
        ratio = d / e  # D / (r c)
        scaled = d * (1 / n)  # D / (N K)
        return mpc.np_sum(ratio * scaled, keepdims=True) * (1 << k)  # sum D^2 / (N r c)

    chi2 = await compute(statistic)
    opened = await reveal(output_name("chi2", "chi2"), chi2)
    return {"chi2": float(np.asarray(opened).reshape(-1)[0])}


def by_row(values: np.ndarray, width: int) -> np.ndarray:
    """values[i] in every column of row i."""
    return np.repeat(np.asarray(values, dtype=object).reshape(-1, 1), width, axis=1)


def by_column(values: np.ndarray, height: int) -> np.ndarray:
    """values[j] in every row of column j."""
    return np.tile(np.asarray(values, dtype=object).reshape(1, -1), (height, 1))
