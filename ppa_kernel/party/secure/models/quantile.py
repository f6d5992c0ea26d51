"""Quantiles per group under MPC by bisection on public thresholds; opens the cells' pass
bits and the bisection bits, i.e. exactly the rounded quantiles (see
:mod:`ppa_kernel.contract.models.quantile` for the algorithm and the leakage argument)."""

from __future__ import annotations

import itertools
import logging
from fractions import Fraction

import numpy as np

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.models.quantile import (
    BISECTION,
    PASS,
    Grid,
    fraction,
    grid,
    grid_value,
    range_conditions,
)
from ppa_kernel.contract.program import Program, cell_levels

from .. import limb_fixed
from ..limb_fixed import Shares
from ..openings import compare, reveal
from ..query import QueryState, Secret
from ..runtime import COMPARE_BITS, mpc, shares, wrap

logger = logging.getLogger(__name__)

CHUNK_ROWS = 20_000
"""Rows per bit decomposition call (its temporaries hold rows x bits field elements)."""


def _plan_order(program: Program) -> list[int]:
    """Worker cell index of every cell in plan order (product of the groupby levels)."""
    entries = program.plan["groupby"]
    where = {canonical_json([c[e["name"]] for e in entries]): i
             for i, c in enumerate(cell_levels(program.plan))}
    return [where[canonical_json(list(c))]
            for c in itertools.product(*(e["levels"] for e in entries))]


async def _pass_bits(sectype, n: np.ndarray, min_cell: int, rows: int) -> np.ndarray:
    """Open, per cell, whether it has at least ``min_cell`` rows with the measure."""
    bits = max(rows, min_cell).bit_length() + 2
    too_small = await compare(mpc.np_sgn, wrap(sectype, n - min_cell), l=bits, LT=True)
    return np.asarray(await reveal(PASS, 1 - too_small)).astype(int).reshape(-1) == 1


async def _measure_weights(state: QueryState, present) -> Shares:
    """Shares of the rows x cells membership, restricted to rows where the measure exists."""
    if present is None:
        return state.cell_weights
    flags = Shares.of(await shares(present)).reshape(-1, 1)
    [restricted] = await limb_fixed.multiply([(state.cell_weights, flags)])
    return restricted


async def _clamped(state: QueryState, value: Secret, model: dict, g: Grid) -> np.ndarray:
    """Shares of x - low with x clamped to [low, high], and 0 where x is missing.

    The conditions x < lo and x > hi are owner-side inputs when the measure is (then
    this costs two secure multiplications per row), else two secure comparisons.
    """
    sectype = state.sectype
    below, above = [await shares(await state.evaluator.condition(c))
                    for c in range_conditions(model)]
    shifted = await shares(value.value) - g.low
    rows = len(shifted)
    # x + [x < low] (low - x) + [x > high] (high - x), shifted by -low
    fix = await shares(wrap(sectype, np.concatenate([below, above])) *
                       wrap(sectype, np.concatenate([-shifted, g.high - g.low - shifted])))
    clamped = shifted + fix[:rows] + fix[rows:]
    if value.present is None:
        return clamped
    return await shares(wrap(sectype, clamped) * value.present)


async def _bits(values: Shares, length: int) -> Shares:
    """Shares of the ``length`` low bits (least significant first) of integers in
    [0, 2^length), in blocks of rows (bounded memory); only masked values are opened."""
    bound = max(COMPARE_BITS - 1, length)  # the mask margin of MPyC's comparisons
    blocks = [await limb_fixed.bits(values[start:start + CHUNK_ROWS], length, bound)
              for start in range(0, len(values), CHUNK_ROWS)]
    return Shares(np.concatenate([b.limbs for b in blocks], axis=1)) if blocks \
        else Shares.zeros((0, length))


def _column(bits: Shares, i: int) -> Shares:
    """Bit ``i`` of every row (0 beyond the decomposed length)."""
    return bits[:, i] if i < bits.shape[1] else Shares.zeros((len(bits),))


async def _grid_index_bits(x: np.ndarray, g: Grid) -> list[Shares]:
    """Shares of the bits (most significant first) of every row's grid index, exactly as
    :meth:`Grid.index`: one or two bit decompositions per row, nothing opened."""
    shift, odd, factor, s = g.division()
    y = Shares.of(g.shifted(x))
    y_bits = await _bits(y, g.top.bit_length())
    if odd == 1:
        index = [_column(y_bits, shift + i) for i in range(g.steps)]
    else:
        n = y.linear([(1 << (i - shift), y_bits[:, i]) for i in range(shift, y_bits.shape[1])])
        nm_bits = await _bits(n * factor, ((g.top >> shift) * factor).bit_length())
        index = [_column(nm_bits, s + i) for i in range(g.steps)]
    return index[::-1]


class _Bisection:
    """Public state of the bisection: the interval start of every (cell, q) pair."""

    def __init__(self, cells: np.ndarray, quantiles: int, g: Grid) -> None:
        self.pairs = [(int(c), j) for c in cells for j in range(quantiles)]
        self.start = dict.fromkeys(self.pairs, 0)  # relative to g.first
        self.last = g.last - g.first

    def tested(self, m: int) -> list[tuple[int, int]]:
        """Pairs whose midpoint a + 2^(m-1) - 1 lies below the last index (others: bit 1)."""
        return [p for p in self.pairs if self.start[p] + (1 << (m - 1)) - 1 < self.last]

    def update(self, m: int, pairs: list[tuple[int, int]], bits: list[int]) -> None:
        for pair, bit in zip(pairs, bits):
            if not bit:  # count(x <= t_mid) < q n: the quantile lies in the upper half
                self.start[pair] += 1 << (m - 1)


async def _test(sectype, counts: np.ndarray, n: np.ndarray, pairs: list[tuple[int, int]],
                qs: list[Fraction], rows: int) -> list[int]:
    """Open, per (cell, q), whether count >= q n (as den count - num n >= 0, n secret)."""
    cells = [c for c, _ in pairs]
    chosen = counts[cells, [j for _, j in pairs]]
    num = np.array([qs[j].numerator for _, j in pairs], dtype=object)
    den = np.array([qs[j].denominator for _, j in pairs], dtype=object)
    bits = (max(int(d) for d in den) * rows).bit_length() + 2
    short = await compare(mpc.np_sgn, wrap(sectype, den * chosen - num * n[cells]), l=bits,
                          LT=True)
    opened = await reveal(BISECTION, 1 - short)
    return np.asarray(opened).astype(int).reshape(-1).tolist()


async def _bisect(state: QueryState, index_bits: list[Shares], wp: Shares,
                  n: np.ndarray, search: _Bisection, qs: list[Fraction]) -> None:
    """Per (cell, q), halve the interval once per index bit, opening one bit per test.

    ``inside[row, q]`` is whether the row's index lies in the current interval of its
    cell's q, ``below[cell, q]`` counts the cell's rows under that interval (both
    secret); the rows in the lower half are inside * (1 - bit): two secure
    multiplications per row and q per step, no comparisons (on limb shares).
    """
    sectype = state.sectype
    rows, width = len(wp), len(qs)
    w = state.cell_weights
    inside = Shares.zeros((rows, width)) + 1  # shares of the public 1
    below = np.zeros((wp.shape[1], width), dtype=object)
    cell_pairs = list(itertools.product(range(wp.shape[1]), range(width)))
    for step, bit in enumerate(index_bits):
        m = len(index_bits) - step
        upper = Shares(np.repeat(bit.limbs[:, :, None], width, axis=2))
        lower_rows = inside - upper if step == 0 else \
            (await limb_fixed.multiply([(inside, 1 - upper)]))[0]
        lower = (await limb_fixed.column_products(wp, lower_rows, cell_pairs)).objects() \
            .reshape(wp.shape[1], width)
        pairs = search.tested(m)
        keep = np.ones(below.shape, dtype=int)  # 1: the quantile is in the lower half
        if pairs:
            opened = await _test(sectype, below + lower, n, pairs, qs, rows)
            for (cell, j), b in zip(pairs, opened):
                keep[cell, j] = b
            search.update(m, pairs, opened)
        below = below + (1 - keep) * lower
        if m > 1:  # inside <- lower half if kept, else upper half (per the row's cell)
            chosen = limb_fixed.public_dot(w, keep)
            (moved,) = await limb_fixed.multiply([(chosen, 2 * lower_rows - inside)])
            inside = inside - lower_rows + moved


async def run_quantile(state: QueryState) -> dict:
    """The rounded quantiles of every cell with at least min_cell_size values, else None."""
    limb_fixed.require("quantiles")
    program, sectype = state.program, state.sectype
    plan, model = program.plan, program.plan["model"]
    value = await state.evaluator.value(model["measure"])
    if value.public:
        raise PlanError("quantile: the measure must read a column")
    rows = state.evaluator.rows
    qs = [fraction(q) for q in model["q"]]
    wp = await _measure_weights(state, value.present)
    n = limb_fixed.column_sums(wp).objects()
    passed = await _pass_bits(sectype, n, plan["min_cell_size"] or 1, rows)
    order = _plan_order(program)
    result: list[list] = [[None] * len(qs) for _ in order]
    if not passed.any():
        logger.info("quantile: no cell has min_cell_size values")
        return {"quantiles": result}
    g = grid(model, value.scale)
    search = _Bisection(np.flatnonzero(passed), len(qs), g)
    if g.steps:
        x = await _clamped(state, value, model, g)
        await _bisect(state, await _grid_index_bits(x, g), wp, n, search, qs)
        logger.debug("quantile: %d steps over %d rows", g.steps, rows)
    precision = model["precision"]
    for plan_cell, cell in enumerate(order):
        if passed[cell]:
            result[plan_cell] = [grid_value(g.first + search.start[(cell, j)], precision)
                                 for j in range(len(qs))]
    return {"quantiles": result}
