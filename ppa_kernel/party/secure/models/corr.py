"""Pearson correlation matrix under MPC over the complete rows; opens one pass bit, n and
the r matrix (see :mod:`ppa_kernel.contract.models.corr` for the leakage)."""

from __future__ import annotations

import functools
import logging

import numpy as np

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.models.corr import UNDEFINED

from ..fixed import compute, fixed_type, from_scaled
from ..openings import MASKED_COMPARISON, as_floats, masked, reveal
from ..query import QueryState
from ..runtime import mpc, shares, value_type, wrap
from .chi2 import by_column, by_row, total_passes

logger = logging.getLogger(__name__)

NORM_BITS = 200
"""Bound on the bit length of each measure's centred sum of squares C_ii."""

NEWTON_START = (2.13277254, -1.21872717)
"""Minimax linear start a + b y for 1/sqrt(y) on [1/4, 1] (relative error 0.086)."""

NEWTON_STEPS = 5
"""Newton steps for 1/sqrt(y) from that start (relative error then far below 2^-56)."""


@functools.cache
def _wide_type():
    """Secure integers over the value field whose bit decomposition spans NORM_BITS."""
    return mpc.SecInt(NORM_BITS, p=value_type().field.modulus)


async def run_corr(state: QueryState) -> dict:
    """n and the upper triangle of r, or Nones when n is below the minimum cell size."""
    sectype = state.sectype
    model = state.program.plan["model"]
    measures = [await state.evaluator.value(expr) for expr in model["measures"]]
    if any(m.public for m in measures):
        raise PlanError("corr: every measure must read a column")
    rows, k = state.evaluator.rows, len(measures)
    flags = [m.present for m in measures if m.present is not None]
    mask = await _product([*flags, *([state.mask] if state.mask is not None else [])], rows,
                          sectype)
    count = np.sum(mask)  # shares of n
    if not await total_passes(state, wrap(sectype, np.array([count], dtype=object))):
        logger.info("corr refused: fewer complete rows than the minimum cell size")
        return {"n": None, "r": None}
    values = np.column_stack([await shares(m.value) for m in measures])
    masked_values = await shares(wrap(sectype, values) *
                                 wrap(sectype, np.repeat(mask.reshape(-1, 1), k, axis=1)))
    design = wrap(sectype, np.column_stack([mask, masked_values]))  # [1, x1..xk] on the rows
    gram = await shares(design.transpose() @ design)
    n, sums, cross = gram[0, 0], gram[0, 1:], gram[1:, 1:]
    left = np.stack([np.full((k, k), n, dtype=object), by_row(sums, k)])
    right = np.stack([cross, by_column(sums, k)])
    products = await shares(wrap(sectype, left) * wrap(sectype, right))
    centred = products[0] - products[1]  # C_ij = n sum x_i x_j - sum x_i sum x_j, exact
    opened_n = await reveal(output_name("corr", "n"), wrap(sectype, np.array([n])))
    r = await _correlations(sectype, centred)
    opened_r = await reveal(output_name("corr", "r"), r)
    return {"n": int(np.asarray(opened_n).reshape(-1)[0]),
            "r": as_floats(opened_r)}


async def _product(factors: list, rows: int, sectype) -> np.ndarray:
    """Shares of the elementwise product of secure 0/1 row vectors (ones if none)."""
    if not factors:
        return await shares(sectype.array(np.ones(rows, dtype=object)))
    level = [await shares(f) for f in factors]
    while len(level) > 1:  # one vectorised multiplication per halving
        pairs = len(level) // 2
        left = np.stack(level[0:2 * pairs:2])
        right = np.stack(level[1:2 * pairs:2])
        product = await shares(wrap(sectype, left) * wrap(sectype, right))
        level = [*product, *level[2 * pairs:]]
    return np.asarray(level[0], dtype=object)


async def _normalisers(sectype, diagonal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shares of q_i = 4^(leading zero bit pairs of C_ii in NORM_BITS bits), so that
    C_ii q_i^2 / 2^NORM_BITS lies in [1/4, 1), and of z_i = [C_ii == 0].

    A bit decomposition (only masked values opened), OR of bit pairs, then a prefix
    product over the pairs from the top (log2(NORM_BITS / 2) vectorised rounds).
    """
    with masked(MASKED_COMPARISON):
        bits = await shares(mpc.np_to_bits(wrap(_wide_type(), diagonal), NORM_BITS))
    low, high = bits[:, 0::2], bits[:, 1::2]
    pairs = low + high - await shares(wrap(sectype, low) * wrap(sectype, high))  # OR
    zeros = np.flip(1 - pairs, axis=1)  # 1 where a pair is 00, most significant first
    width, step = zeros.shape[1], 1
    while step < width:  # zeros[:, t] becomes: pairs 0..t (from the top) are all 00
        tail = await shares(wrap(sectype, zeros[:, step:]) * wrap(sectype, zeros[:, :-step]))
        zeros = np.concatenate([zeros[:, :step], tail], axis=1)
        step *= 2
    before = np.concatenate([np.ones((len(zeros), 1), dtype=object), zeros[:, :-1]], axis=1)
    first = before - zeros  # 1 at the first nonzero pair from the top
    powers = np.array([1 << t for t in range(width)], dtype=object)
    scale = first @ powers + zeros[:, -1] * (1 << width)
    return scale, zeros[:, -1]


async def _correlations(sectype, centred: np.ndarray):
    """Secure fixed-point r_ij for i <= j (row by row); UNDEFINED where a C_ii is 0."""
    k = centred.shape[0]
    upper_i, upper_j = np.triu_indices(k)
    scale, zero = await _normalisers(sectype, np.diagonal(centred).copy())
    defined = 1 - zero
    left = np.stack([by_row(scale, k), by_row(defined, k)])
    right = np.stack([by_column(scale, k), by_column(defined, k)])
    outer = await shares(wrap(sectype, left) * wrap(sectype, right))
    normalised = await shares(wrap(sectype, centred) * wrap(sectype, outer[0]))
    # c_ij = C_ij q_i q_j / 2^L: |c_ij| <= sqrt(c_ii c_jj) < 1
    c = await from_scaled(normalised[upper_i, upper_j], NORM_BITS)
    undefined = await from_scaled(1 - outer[1][upper_i, upper_j], 0)
    zero_fx = await from_scaled(zero, 0)
    diagonal = [int(np.flatnonzero((upper_i == i) & (upper_j == i))[0]) for i in range(k)]
    fx = fixed_type()

    def correlation():
        y = c[diagonal] + zero_fx  # in [1/4, 1]
        s = fx.array(np.full(k, NEWTON_START[0])) + y * NEWTON_START[1]
        for _ in range(NEWTON_STEPS):
            s = s * (3 - y * s * s) * 0.5
        return c * s[upper_i] * s[upper_j] + undefined * UNDEFINED

    return await compute(correlation)
