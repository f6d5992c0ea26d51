"""Least squares under MPC: the exact integer Gram matrix of [1, X, y], normalised into
fixed point and factorised (LDL'); opens pass bits, then n, the coefficients, the squared
standard errors and R² (see :mod:`ppa_kernel.models.ols` for the leakage)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...errors import PlanError
from ...models import output_name
from ...models.ols import KIND, min_residual_df
from ...plan import canonical_json, is_boolean
from ...program import SCALE_BITS, Program
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
from ..openings import compare, reveal
from ..query import Evaluator, QueryState, Secret
from ..runtime import COMPARE_BITS, mpc, shares, wrap

logger = logging.getLogger(__name__)

TOLERANCE = 2.0 ** -32
"""Smallest accepted determinant of X'X scaled to unit diagonal, and of TSS / y'y."""


async def run_ols(state: QueryState) -> dict:
    """The opened fit, or ``{"refused": reason}`` after opening only the failing bit."""
    plan = state.program.plan
    model = plan["model"]
    sectype, ev = state.sectype, state.evaluator
    exprs = [e["expr"] for e in model["design"] if e["expr"] is not None]
    response = model["response"]["expr"]
    leaves = {canonical_json(leaf): leaf for expr in [*exprs, response]
              for leaf in _missing_leaves(expr, state.program)}
    flags = [ev.owned("nn", leaf) for leaf in leaves.values()]
    conditions = [await ev.condition(c) for c in model["complete"]]
    cohort = [state.mask] if state.mask is not None else []
    mask = await _all_of([*flags, *conditions, *cohort], len(ev.table), sectype)
    n = mask.sum()
    p = len(model["design"])
    refused = await _check_size(sectype, n, p, plan)
    if refused:
        return {"refused": refused}
    masked = _MaskedValues(ev, wrap(sectype, mask))
    values = [await masked.value(e) for e in [*exprs, response]]
    intercept = model["design"][0]["expr"] is None
    extra = not intercept and model["centered"]  # a ones column for the centred TSS
    ones = 0 if intercept else p + 1 if extra else None
    order = [None] * intercept + values + [None] * extra
    fit = await _fit(sectype, await _gram(mask, order), model, ones)
    if fit is None:
        logger.info("ols refused: singular design or constant response")
        return {"refused": "singular"}
    opened_n = await reveal(output_name(KIND, "n"), wrap(sectype, np.array([n])))
    count = int(np.asarray(opened_n).reshape(-1)[0])
    coef, se_squared, r_squared = await _release(fit, count - p)
    return {"refused": None, "n": count, "coef": coef, "se_squared": se_squared,
            "r_squared": r_squared}


def _missing_leaves(expr: dict, program: Program) -> list[dict]:
    """The owner-side parts of an expression that may be missing: the expression is
    present exactly where all their not-missing flags are 1 (as the Evaluator's
    ``present``; conditions and constants are never missing)."""
    if "const" in expr or is_boolean(expr, program.columns):
        return []
    if program.owner(expr) is not None:
        return [] if program.complete(expr) else [expr]
    return [leaf for arg in expr["args"] for leaf in _missing_leaves(arg, program)]


class _MaskedValues:
    """Design values times the row mask, one secure product per column: a product of
    different parties' factors is the masked first factor times the second (so the
    interactions of a masked main effect cost no extra product)."""

    def __init__(self, evaluator: Evaluator, mask) -> None:
        self.evaluator = evaluator
        self.mask = mask
        self.cache: dict[str, Secret] = {}

    async def value(self, expr: dict) -> Secret:
        key = canonical_json(expr)
        if key not in self.cache:
            self.cache[key] = await self._value(expr)
        return self.cache[key]

    async def _value(self, expr: dict) -> Secret:
        ev = self.evaluator
        args = expr.get("args", [])
        if expr.get("op") == "mul" and ev.program.owner(expr) is None \
                and not any("const" in a for a in args):
            left, right = await self.value(args[0]), await ev.value(args[1])
            return Secret(left.value * right.value, None, left.scale + right.scale)
        plain = await ev.value(expr)
        if plain.public:
            raise PlanError("ols: every design column and the response must read a column")
        return Secret(plain.value * self.mask, None, plain.scale)


async def _all_of(factors: list, rows: int, sectype) -> np.ndarray:
    """Shares of the elementwise product of secure 0/1 row vectors (ones if none)."""
    if not factors:
        return np.full(rows, 1, dtype=object)  # a public 1 is a valid share of 1
    level = [await shares(f) for f in factors]
    while len(level) > 1:  # one vectorised multiplication per halving
        half = len(level) // 2
        product = await shares(wrap(sectype, np.stack(level[0:2 * half:2]))
                               * wrap(sectype, np.stack(level[1:2 * half:2])))
        level = [*product, *level[2 * half:]]
    return np.asarray(level[0], dtype=object)


async def _check_size(sectype, n, p: int, plan: dict) -> str | None:
    """Open whether n reaches the minimum cell size, then whether n - p reaches the
    minimum residual df; the reason of the first failure, else None."""
    min_cell = plan.get("min_cell_size") or 1
    below = await compare(mpc.np_sgn, wrap(sectype, np.array(
        [n - min_cell, n - p - min_residual_df(plan)], dtype=object)), l=COMPARE_BITS, LT=True)
    passed = 1 - below
    if int(np.asarray(await reveal("disclosure.pass", passed[0:1])).reshape(-1)[0]) != 1:
        logger.info("ols refused: fewer complete rows than the minimum cell size")
        return "min_cell_size"
    if int(np.asarray(await reveal(output_name(KIND, "df_ok"), passed[1:2])).reshape(-1)[0]) \
            != 1:
        logger.info("ols refused: residual df below the minimum")
        return "min_residual_df"
    return None


async def _gram(mask: np.ndarray, values: list[Secret | None]) -> np.ndarray:
    """Shares of the integer Gram matrix of masked columns (None: the mask itself, the
    ones column), all at the largest scale exponent (exact: public powers of two)."""
    top = max(s.scale for s in values if s is not None)
    columns = [mask * (1 << (SCALE_BITS * top)) if s is None else
               (await shares(s.value)) * (1 << (SCALE_BITS * (top - s.scale)))
               for s in values]
    return await gram(np.column_stack(columns))


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
    values = [[float(v) for v in np.asarray(o).reshape(-1).tolist()] for o in opened]
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
