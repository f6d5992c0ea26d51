"""Logistic regression under MPC: Newton's method (IRLS) on the secret linked rows; opens
pass bits, then n, the coefficients and the squared standard errors (see
:mod:`ppa_kernel.contract.models.logit` for the leakage)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np

from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.models.logit import KIND, max_iterations
from ppa_kernel.contract.program import SCALE_BITS

from .. import limb_fixed
from ..fixed import FRAC_BITS, TRUNC_BITS, compute, from_scaled
from ..limb_fixed import Shares
from ..linalg import HALF_BITS, NORM_BITS, factorise, fixed, power_normalisers, solve
from ..logistic import LimbOps, logistic
from ..openings import as_floats, compare, reveal
from ..query import QueryState
from ..runtime import mpc, shares, value_type, wrap
from .design import checked_rows, common_scale

logger = logging.getLogger(__name__)

TOLERANCE = 2.0 ** -32
"""Smallest accepted determinant of X'X scaled to unit diagonal (as OLS)."""

CONVERGENCE_BITS = 20
"""Converged: the last Newton step is below 2^-20 standard errors in every coefficient."""

FIRST_CHECK = 3
"""Convergence is checked (one opened bit) after every Newton step from the third on
(and after the last)."""

COMPARE_LENGTH = 200
"""Bit bound of the convergence comparison (steps below 2^43 normalised units; the
out-of-range sum below 2^199)."""

LOG2E = "1.442695040888963407359924681001892137426645954152985934135449407"
MINUS_LOG2E = -round(Fraction(Decimal(LOG2E)) * (1 << FRAC_BITS))


@dataclass
class _Step:
    """One Newton step: in real units (raw fixed point shares) and its checks."""

    step: np.ndarray  # delta, real units
    se_squared: np.ndarray  # diag(H^-1) at the current coefficients, real units
    normalised_step: np.ndarray  # raw fixed point: delta in the normalised system
    normalised_inverse: np.ndarray  # raw fixed point: diag(H~^-1)
    determinant: object  # secure fixed point: det of H scaled to unit diagonal
    spill: np.ndarray  # shares of a sum that is 0 iff every row's exponent was in range


async def run_logit(state: QueryState) -> dict:
    """The opened fit, or ``{"refused": reason}`` after opening only the failing bit."""
    limb_fixed.require("logistic regression")
    plan = state.program.plan
    model = plan["model"]
    sectype = state.sectype
    rows, refused = await checked_rows(state)
    if refused:
        return {"refused": refused}
    p = len(model["design"])
    intercept = model["design"][0]["expr"] is None
    x, top = await common_scale(rows.mask, [None] * intercept + rows.values[:-1])
    response = rows.values[-1]
    y = (await shares(response.value)) * (1 << (FRAC_BITS - SCALE_BITS * response.scale))
    x, y = Shares.of(x), Shares.of(y)  # the rows' arithmetic on limb shares
    scale = SCALE_BITS * top
    beta = np.zeros(p, dtype=object)
    limit = max_iterations(model)
    for iteration in range(limit):
        step = await _newton_step(x, y, beta, scale)
        if iteration == 0 and not await _design_ok(step):
            logger.info("logit refused: singular design")
            return {"refused": "singular"}
        beta = beta + step.step
        steps = iteration + 1
        if (steps >= FIRST_CHECK or steps == limit) and await _converged(step):
            break
    else:
        logger.info("logit refused: no convergence in %d steps", steps)
        return {"refused": "not_converged"}
    logger.info("logit converged in %d Newton steps", steps)
    opened_n = await reveal(output_name(KIND, "n"), wrap(sectype, np.array([rows.n])))
    coef = await reveal(output_name(KIND, "coef"), fixed(beta))
    se_squared = await reveal(output_name(KIND, "se_squared"), fixed(step.se_squared))
    return {"refused": None, "n": int(np.asarray(opened_n).reshape(-1)[0]),
            "coef": as_floats(coef), "se_squared": as_floats(se_squared), "iterations": steps}


async def _newton_step(x: Shares, y: Shares, beta: np.ndarray, scale: int) -> _Step:
    """delta = H^-1 X'(y - p) and diag(H^-1) at ``beta``, H = X' diag(p (1 - p)) X.

    ``x``: shares of the design at 2^scale (integers), ``y``: raw fixed-point 0/1 (both
    limb shares, n x p and n), ``beta``: raw fixed point (real units). Integer sums are
    exact. With secret powers of two q_j (H_jj q_j^2 / 2^200 in [1/4, 1)) and rho_j =
    q_j / 2^(72 - scale) (about 1 / sqrt(H_jj) in real units), the solved system is
    H~ = Q H Q / 2^200 (unit-order entries) with right-hand side rho_j g_j (real gradient
    g); then delta_j = rho_j delta~_j and (H^-1)_jj = rho_j^2 (H~^-1)_jj.
    """
    sectype = value_type()
    p = x.shape[1]
    with_slope = Shares.of(await shares(await compute(lambda: mpc.np_trunc(
        wrap(sectype, beta) * MINUS_LOG2E, f=FRAC_BITS, l=TRUNC_BITS))))
    local = x[:, 0] * with_slope[0:1]  # -eta log2(e) * 2^(56 + scale), degree 2t
    for j in range(1, p):
        local = local + x[:, j] * with_slope[j:j + 1]
    if scale:
        u = await limb_fixed.truncate(local, scale, FRAC_BITS + scale + 64)
    else:
        u = await limb_fixed.reshare(local)
    probability, weight, spill = await logistic(u, LimbOps)
    gradient = (await limb_fixed.column_products(
        x, (y - probability).reshape(-1, 1), [(j, 0) for j in range(p)])).objects()
    (weighted,) = await limb_fixed.multiply([(x, weight.reshape(-1, 1))])
    rows, cols = np.triu_indices(p)
    upper = (await limb_fixed.column_products(x, weighted, list(zip(rows, cols)))).objects()
    hessian = np.zeros((p, p), dtype=object)  # H * 2^(56 + 2 scale)
    hessian[rows, cols] = upper
    hessian[cols, rows] = upper
    spill = spill.objects()
    q, _, zero = await power_normalisers(np.diagonal(hessian).copy())
    matrix = np.zeros((p + 1, p + 1), dtype=object)
    rows, cols = np.triu_indices(p)
    outer = await shares(wrap(sectype, q[rows]) * wrap(sectype, q[cols]))
    scaled = await shares(wrap(sectype, hessian[rows, cols]) * wrap(sectype, outer))
    upper = await shares(await from_scaled(scaled, NORM_BITS))  # entries in [-1, 1]
    matrix[rows, cols] = upper
    matrix[cols, rows] = upper
    # the gradient in the same units: about g_j / sqrt(H_jj) (scale cancels)
    normal = await shares(wrap(sectype, q) * wrap(sectype, gradient))
    matrix[p, :p] = matrix[:p, p] = await shares(
        await from_scaled(normal, HALF_BITS + FRAC_BITS // 2))
    matrix[p, p] = 1 << FRAC_BITS
    factor = await factorise(matrix, await shares(await from_scaled(zero, 0)), TOLERANCE)
    delta, inverse = await solve(factor)
    # back to real units: rho_j = q_j / 2^(72 - scale), about 1 / sqrt(H_jj) (fixed point)
    rho = await from_scaled(q, HALF_BITS - FRAC_BITS // 2 - scale)
    step, se_squared = await compute(lambda: (rho * delta, rho * rho * inverse))
    return _Step(await shares(step), await shares(se_squared), await shares(delta),
                 await shares(inverse), factor.determinant, spill)


async def _design_ok(step: _Step) -> bool:
    """Open whether X'X (H at the start, up to 1/4) is not (nearly) singular."""
    failed = await compare(mpc.np_sgn, await compute(
        lambda: step.determinant * int(1 / TOLERANCE) - 1), LT=True)
    ok = await compute(lambda: 1 - failed)
    return int(np.asarray(await reveal(output_name(KIND, "design_ok"), ok)).reshape(-1)[0]) == 1


async def _converged(step: _Step) -> bool:
    """Open whether the last step was below 2^-20 standard errors in every coefficient
    (in the normalised system, delta~_j^2 < 2^-40 (H~^-1)_jj: the same ratio) and every
    row's linear predictor was within the logistic function's range (spill == 0)."""
    sectype = value_type()
    delta = wrap(sectype, step.normalised_step)
    excess = await shares(delta * delta)  # raw at 2^112
    gap = excess - step.normalised_inverse * (1 << (FRAC_BITS - 2 * CONVERGENCE_BITS))
    tests = np.concatenate([gap, step.spill - 1])  # spill is a sum of squares: < 1 iff 0
    below = await compare(mpc.np_sgn, wrap(sectype, tests), l=COMPARE_LENGTH, LT=True)
    every = below[0:1]
    for j in range(1, len(tests)):
        every = every * below[j:j + 1]
    opened = await reveal(output_name(KIND, "converged"), every)
    return int(np.asarray(opened).reshape(-1)[0]) == 1
