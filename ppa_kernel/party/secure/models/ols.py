"""Least squares under MPC: the exact integer Gram matrix of [1, X, y], normalised into
fixed point and factorised (LDL'); opens pass bits, then n, the coefficients, the squared
standard errors and R² (see :mod:`ppa_kernel.contract.models.ols` for the leakage)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.models.ols import KIND

from ..fixed import compute, from_scaled
from ..linalg import (
    HALF_BITS,
    NORM_BITS,
    Factor,
    factorise,
    fixed,
    gram,
    power_normalisers,
    reciprocal,
    solve,
)
from ..openings import as_floats, compare, reveal
from ..query import QueryState
from ..runtime import mpc, shares, wrap
from .design import checked_rows, common_scale

logger = logging.getLogger(__name__)

TOLERANCE = 2.0 ** -32
"""Smallest accepted determinant of X'X scaled to unit diagonal, and of TSS / y'y."""


async def run_ols(state: QueryState) -> dict:
    """The opened fit, or ``{"refused": reason}`` after opening only the failing bit."""
    plan = state.program.plan
    model = plan["model"]
    sectype = state.sectype
    rows, refused = await checked_rows(state)
    if refused:
        return {"refused": refused}
    p = len(model["design"])
    intercept = model["design"][0]["expr"] is None
    extra = not intercept and model["centered"]  # a ones column for the centred TSS
    ones = 0 if intercept else p + 1 if extra else None
    order = [None] * intercept + rows.values + [None] * extra
    columns, _ = await common_scale(rows.mask, order)
    fit = await _fit(sectype, await gram(columns), model, ones)
    if fit is None:
        logger.info("ols refused: singular design or constant response")
        return {"refused": "singular"}
    opened_n = await reveal(output_name(KIND, "n"), wrap(sectype, np.array([rows.n])))
    count = int(np.asarray(opened_n).reshape(-1)[0])
    coef, se_squared, r_squared = await _release(fit, count - p)
    return {"refused": None, "n": count, "coef": coef, "se_squared": se_squared,
            "r_squared": r_squared}


async def _normalised(sectype, gram: np.ndarray) -> tuple:
    """Raw fixed-point shares of the normalised Gram matrix (upper triangle computed and
    mirrored), the normalisers q and g, and the zero-column flags (fixed point)."""
    m = gram.shape[0]
    q, g, zero = await power_normalisers(np.diagonal(gram).copy())
    rows, cols = np.triu_indices(m)
    outer = await shares(wrap(sectype, q[rows]) * wrap(sectype, q[cols]))
    scaled = await shares(wrap(sectype, gram[rows, cols]) * wrap(sectype, outer))
    upper = await shares(await from_scaled(scaled, NORM_BITS))  # entries in [-1, 1]
    matrix = np.zeros((m, m), dtype=object)
    matrix[rows, cols] = upper
    matrix[cols, rows] = upper
    return matrix, q, g, await shares(await from_scaled(zero, 0))


@dataclass
class _Fit:
    """The secret fit, in normalised units with the factors back to real units."""

    coef: object
    inverse_diagonal: object  # diag((X'X)^-1)
    rss: object
    inverse_tss: object
    ratio: object  # q_j / q_y per design column: normalised to real units


async def _fit(sectype, gram: np.ndarray, model: dict, ones: int | None) -> _Fit | None:
    """Normalise, factorise and check; open ``design_ok``; solve if it passed."""
    p = len(model["design"])
    y = p
    matrix, q, g, zero = await _normalised(sectype, gram)
    factor = await factorise(matrix[:p + 1, :p + 1], zero[:p], TOLERANCE)
    tss = await _total_sum_of_squares(matrix, factor, model, ones, y)
    # det >= tolerance and TSS >= tolerance * y'y, in one comparison (no truncations)
    checks = await compute(lambda: mpc.np_concatenate((
        factor.determinant * int(1 / TOLERANCE) - 1,
        tss * int(1 / TOLERANCE) - fixed(matrix[y:y + 1, y] + zero[y:y + 1]))))
    failed = await compare(mpc.np_sgn, checks, LT=True)
    ok = await compute(lambda: (1 - failed[0:1]) * (1 - failed[1:2]))
    if int(np.asarray(await reveal(output_name(KIND, "design_ok"), ok)).reshape(-1)[0]) != 1:
        return None
    ratio = await from_scaled(await shares(wrap(sectype, q[:p])
                                           * wrap(sectype, np.full(p, g[y]))), HALF_BITS)
    coef, inverse_diagonal = await solve(factor)
    return _Fit(coef, inverse_diagonal, factor.rss, await reciprocal(tss), ratio)


async def _release(fit: _Fit, df: int) -> tuple[list[float], list[float], float]:
    """Open the coefficients, squared standard errors and R² (real units)."""
    def finish():
        spread = fit.inverse_diagonal * (fit.rss * (1 / df))  # sigma² (X'X)^-1, normalised
        return fit.coef * fit.ratio, spread * fit.ratio * fit.ratio, 1 - fit.rss * fit.inverse_tss

    opened = [await reveal(output_name(KIND, name), value) for name, value in
              zip(("coef", "se_squared", "r_squared"), await compute(finish))]
    values = [as_floats(o) for o in opened]
    return values[0], values[1], values[2][0]


async def _total_sum_of_squares(matrix: np.ndarray, factor: Factor, model: dict,
                                ones: int | None, y: int):
    """TSS in normalised units: centred (sum of (y - mean)^2) or y'y, per the plan."""
    yy = fixed(matrix[y:y + 1, y])
    if not model["centered"]:
        return yy
    if ones == 0:  # the intercept was the first pivot: TSS = a_yy - a_y0 L_y0
        return await compute(lambda: yy - fixed(matrix[y:y + 1, 0])
                             * fixed(factor.lower[y:y + 1, 0]))
    inverse = await reciprocal(fixed(matrix[ones:ones + 1, ones]))
    cross = fixed(matrix[y:y + 1, ones])
    return await compute(lambda: yy - cross * cross * inverse)
