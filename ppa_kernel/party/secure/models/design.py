"""The rows and design columns of a regression under MPC (shared by OLS and logit).

A regression plan's model has a ``design`` (expressions, ``null`` = intercept), a
``response`` and ``complete`` conditions (see :mod:`ppa_kernel.contract.models.ols`). The rows
used are the linked rows in the cohort where every design column, the response and the
``complete`` conditions are present: a secret 0/1 mask. Nothing here opens a value
except :func:`check_size`, which opens two pass bits (see its docstring).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json, is_boolean
from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.models.regression import min_residual_df
from ppa_kernel.contract.program import SCALE_BITS, Program

from ..openings import compare, reveal
from ..query import Evaluator, QueryState, Secret
from ..runtime import COMPARE_BITS, mpc, shares, wrap

logger = logging.getLogger(__name__)


@dataclass
class DesignRows:
    """The secret rows of a regression: the mask, its count and the masked values."""

    mask: np.ndarray  # shares of the 0/1 row mask
    n: object  # shares of the number of rows used (sum of the mask)
    values: list[Secret]  # design columns without the intercept, then the response


async def design_rows(state: QueryState) -> DesignRows:
    """The mask of used rows and the masked design and response values (no openings)."""
    model = state.program.plan["model"]
    sectype, ev = state.sectype, state.evaluator
    exprs = [e["expr"] for e in model["design"] if e["expr"] is not None]
    response = model["response"]["expr"]
    leaves = {canonical_json(leaf): leaf for expr in [*exprs, response]
              for leaf in _missing_leaves(expr, state.program)}
    flags = [ev.owned("nn", leaf) for leaf in leaves.values()]
    conditions = [await ev.condition(c) for c in model["complete"]]
    cohort = [state.mask] if state.mask is not None else []
    mask = await all_of([*flags, *conditions, *cohort], ev.rows, sectype)
    masked = _MaskedValues(ev, wrap(sectype, mask), model["kind"])
    values = [await masked.value(e) for e in [*exprs, response]]
    return DesignRows(mask, mask.sum(), values)


async def checked_rows(state: QueryState) -> tuple[DesignRows, str | None]:
    """The regression's rows, and the reason they were refused (after opening the
    failing size bit, see :func:`check_size`) or None."""
    plan = state.program.plan
    model = plan["model"]
    rows = await design_rows(state)
    refused = await check_size(model["kind"], state.sectype, rows.n, len(model["design"]),
                               plan)
    if refused:
        logger.info("%s refused: %s", model["kind"], refused)
    return rows, refused


async def common_scale(mask: np.ndarray, values: list[Secret | None]) -> tuple[np.ndarray, int]:
    """Shares of the masked columns (None: the mask itself, the ones column) side by
    side, all at the largest scale exponent S (exact: public powers of two), and S."""
    top = max(s.scale for s in values if s is not None)
    columns = [mask * (1 << (SCALE_BITS * top)) if s is None else
               (await shares(s.value)) * (1 << (SCALE_BITS * (top - s.scale)))
               for s in values]
    return np.column_stack(columns), top


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

    def __init__(self, evaluator: Evaluator, mask, kind: str) -> None:
        self.evaluator = evaluator
        self.mask = mask
        self.kind = kind
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
            raise PlanError(f"{self.kind}: every design column and the response must "
                            f"read a column")
        return Secret(plain.value * self.mask, None, plain.scale)


async def all_of(factors: list, rows: int, sectype) -> np.ndarray:
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


async def check_size(kind: str, sectype, n, p: int, plan: dict) -> str | None:
    """Open whether n reaches the minimum cell size (``disclosure.pass``), then whether
    n - p reaches the minimum residual df (``model.KIND.df_ok``); the reason of the
    first failure (nothing after it is opened), else None."""
    min_cell = plan.get("min_cell_size") or 1
    below = await compare(mpc.np_sgn, wrap(sectype, np.array(
        [n - min_cell, n - p - min_residual_df(plan)], dtype=object)), l=COMPARE_BITS, LT=True)
    passed = 1 - below
    if int(np.asarray(await reveal("disclosure.pass", passed[0:1])).reshape(-1)[0]) != 1:
        return "min_cell_size"
    if int(np.asarray(await reveal(output_name(kind, "df_ok"), passed[1:2])).reshape(-1)[0]) \
            != 1:
        return "min_residual_df"
    return None
