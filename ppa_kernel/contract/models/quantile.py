"""Quantiles (median, quartiles, ...) of a measure per group, rounded to a public precision.

Plan: groupby = the groups (any, or none), no aggregates, the frame's filter, and::

    {"kind": "quantile", "measure": <expression>, "q": [0.25, 0.5, 0.75],
     "precision": p, "range": [lo, hi]}

``p > 0`` is the step the values are rounded to; ``[lo, hi]`` is a public range of the
measure (the builder derives it from the catalog's published min/max, by interval
arithmetic for expressions). The rows of a cell are those of the (filtered) join in the
cell whose measure is present; n is their number.

Definition (exact, what is released): for 0 < q < 1 let r = ceil(q n) (q is read as the
nearest fraction with denominator at most 10^6, and q n is exact) and x_(r) the r-th
smallest value, i.e. ``np.quantile(x, q, method="inverted_cdf")``. Released is x_(r)
rounded to the nearest multiple of p, halves rounded down: k p with
``k = ceil(x_(r) / p - 1/2)``, the smallest k with count(x <= t_k) >= r for the
thresholds t_k = (k + 1/2) p. p is read as the decimal it prints as (0.1 is 1/10) and
the comparisons x <= t_k are exact in rationals on the values as the parties encode
them (multiples of 2^-16 for a column; products and divisions by non-integers add
their own rounding). Values outside ``[lo, hi]`` count as lo or hi (for the catalog's
range, which the parties round outward, none are).

Under MPC (all parties make the same calls; every decision is on public values):

1. n per cell (integer sums over the rows); whether n >= min_cell_size is opened per
   cell (``disclosure.pass``), nothing else about n. Failing cells stop here.
2. Clamp: x < lo and x > hi are the model's condition inputs -- computed by the owner
   in the clear and input as 0/1 when the measure is one party's (then the clamp is
   two secure multiplications per row), else two secure comparisons per row. This
   bounds the values for step 3 whatever range the plan claims.
3. Grid index per row: i = min{k >= 0: x <= t_(K0 + k)} with K0 the first grid point
   at or above lo, so 0 <= i < 2^S, S = ceil(log2(grid points from lo to hi)). It is
   floor(y / step) for a public linear y(x) and a public step (:class:`Grid`); its S
   bits come from one secure bit decomposition per row (two when p's numerator has an
   odd factor, e.g. p = 20: exact division by the odd part with a magic multiplier).
   Nothing is opened (only the masked values inside MPyC's protocol).
4. Bisection with public thresholds, vectorised over all cells and q: each passing
   (cell, q) keeps a public interval [a, a + 2^m) of grid indices; a step tests the
   midpoint c = a + 2^(m-1) - 1: the rows of the cell with index <= c are counted from
   the index bit m-1 and a secret per-(row, q) "in the interval" flag (two secure
   multiplications per row and q; the flag's update uses the public halves, spread
   over the rows with the secret cell membership: linear), then one secure comparison
   per (cell, q) opens ``count(x <= t_(K0 + c)) * D >= N * n`` for q = N / D, n secret
   (``model.quantile.bisection``). Midpoints at or above the last grid point (bit
   publicly 1) are not tested.

The issue's cost model (one secure comparison per row, quantile and step, ~S Q
comparisons per row) is replaced by steps 2-3 (about one to two comparisons' worth of
work per row, independent of Q, the cells and S), with the same openings.

Opened, to every party and the analyst: the pass bit of every cell, and for passing
cells the bisection bits. Leakage argument: each bit is [k* <= K0 + c] for the released
index k* and a midpoint c fixed by the earlier bits, so the bits of one (cell, q) are
the binary digits of k* - K0, most significant first (digits whose test is skipped are
1 by construction): they determine, and are determined by, the released rounded
quantile. The value is computed from the bits in the clear, not opened again. Never
opened: n, the counts, the rows' values, indices or flags.

Residual disclosure: a quantile is a value of one person of the cell (rounded to p);
extreme q in small cells come close to the minimum or maximum. The precision p and
min_cell_size are the controls; q must lie strictly in (0, 1).

Policy (:mod:`ppa_kernel.party.policy`): every owner sets a *minimum precision* for each of
its numeric columns, ``[policy.quantile_precision]`` (absolute, in the column's units)
or else the published range / ``quantile_resolution`` (default 1000), and publishes it
in its catalog as ``min_precision``. An owner refuses a plan whose p is below the
minimum of any of its columns the measure reads (for an expression such as
``cost_2021 / 1000`` too: the minimum stays in the column's units), and, when the
measure is exactly one of its columns, a plan whose range does not contain the
column's published range (clamping to a narrower range would resolve values more
finely). Without an explicit precision the builder takes the smallest 1-2-5 step at
or above the strictest of these minimums (for an expression, at least 1/1000 of its
range as well), so the default is never refused.

Result (``collect()``): a DataFrame indexed by the groups (as ``groupby(...).agg``), one
column per q named ``f"q{q:g}"`` (``q0.25``, ``q0.5``, ``q0.75``), NaN where the cell has
fewer than min_cell_size values (``attrs["suppressed"]``); ``attrs["precision"]`` is p.
"""

from __future__ import annotations

import decimal
import fractions
import itertools
import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import bounds
from ..errors import PlanError
from ..expr import check_expr, expr_columns
from ..limits import DEFAULT_QUANTILE_RESOLUTION, SCALE_BITS
from .base import UNGROUPED, Frame, FrameColumn, FrameQuery, ModelKind, output_name, require_keys

logger = logging.getLogger(__name__)

KIND = "quantile"
BISECTION = output_name(KIND, "bisection")
PASS = "disclosure.pass"
MAX_STEPS = 24
"""At most 2^24 grid points between lo and hi (finer precisions are refused)."""
MAX_DENOMINATOR = 10**6
"""q is read as the nearest fraction with a denominator up to this; the precision, a
decimal, may have no larger denominator."""
DEFAULT_POINTS = 1000
"""For an expression, the default precision is also at least (hi - lo) / DEFAULT_POINTS."""


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value)


def column_name(q: float) -> str:
    """The result column of quantile q: ``q0.25``, ``q0.5``, ..."""
    return f"q{q:g}"


def fraction(q: float) -> fractions.Fraction:
    """q as the exact fraction the parties use (r = ceil(q n))."""
    return fractions.Fraction(q).limit_denominator(MAX_DENOMINATOR)


def step_fraction(precision: float) -> fractions.Fraction:
    """The precision as the exact decimal it prints as (0.1 -> 1/10)."""
    return fractions.Fraction(repr(float(precision)))


@dataclass(frozen=True)
class Grid:
    """The public search grid of a plan, at a measure's fixed-point scale.

    Values are encoded as x * unit; the thresholds are (k + 1/2) p with p = num / den
    exactly; clamped values lie in [low, high] / unit; the released index lies in
    [first, last]; ``steps`` = ceil(log2(last - first + 1)).

    A value's grid index i = min{k >= 0: x <= (first + k + 1/2) p} is floor(y / step)
    for ``y = shifted(x * unit - low)`` >= 0 and ``step`` = 2 num unit = odd 2^shift:
    the bits of y above ``shift`` when odd = 1, else floor(n m / 2^s) for
    n = floor(y / 2^shift) (:meth:`division`). :meth:`index` computes it in the clear.
    """

    first: int
    last: int
    steps: int
    num: int
    den: int
    unit: int
    low: int
    high: int

    @property
    def step(self) -> int:
        return 2 * self.num * self.unit

    @property
    def top(self) -> int:
        """The largest y of a value in [low, high]."""
        return self.shifted(self.high - self.low)

    def shifted(self, x):
        """y = 2 den x - base + step - 1 for x = value * unit - low (linear: works on shares).

        base = (2 first + 1) num unit - 2 den low lies in [0, step), so y >= 0.
        """
        base = (2 * self.first + 1) * self.num * self.unit - 2 * self.den * self.low
        return 2 * self.den * x - base + self.step - 1

    def division(self) -> tuple[int, int, int, int]:
        """(shift, odd, m, s): step = odd 2^shift, and for odd > 1,
        floor(n / odd) = floor(n m / 2^s) for all 0 <= n <= top >> shift.

        m = ceil(2^s / odd) with s = bits(n) + bits(odd): n m / 2^s exceeds n / odd by
        less than 2^-bits(odd) < 1 / odd, too little to reach the next integer
        (Granlund and Montgomery's division by invariant integers).
        """
        shift = (self.step & -self.step).bit_length() - 1
        odd = self.step >> shift
        s = (self.top >> shift).bit_length() + odd.bit_length()
        return shift, odd, -(-(1 << s) // odd), s

    def index(self, x: int) -> int:
        """The grid index of an encoded value x in [low, high], as the parties compute it."""
        shift, odd, m, s = self.division()
        n = self.shifted(x - self.low) >> shift
        return n if odd == 1 else (n * m) >> s


def _first_at_least(value: fractions.Fraction, p: fractions.Fraction) -> int:
    """The smallest k with (k + 1/2) p >= value."""
    return math.ceil(value / p - fractions.Fraction(1, 2))


def grid(model: dict, scale: int = 1) -> Grid:
    """The grid of a plan's model for a measure at scale exponent ``scale``."""

    unit = 1 << (SCALE_BITS * scale)
    p = step_fraction(model["precision"])
    lo, hi = (fractions.Fraction(b) * unit for b in model["range"])
    low, high = math.floor(lo), math.ceil(hi)
    first = _first_at_least(fractions.Fraction(low, unit), p)
    last = _first_at_least(fractions.Fraction(high, unit), p)
    return Grid(first, last, (last - first).bit_length(), p.numerator, p.denominator,
                unit, low, high)


def range_conditions(model: dict) -> tuple[dict, dict]:
    """``measure < low`` and ``measure > high``: the clamp's conditions (owner-side when
    the measure is, i.e. computed in the clear by its owner and input as 0/1)."""
    low, high = ({"const": b} for b in model["range"])
    return ({"op": "lt", "args": [model["measure"], low]},
            {"op": "gt", "args": [model["measure"], high]})


def grid_value(k: int, precision: float) -> float:
    """k p, without binary noise for decimal precisions (3 * 0.1 -> 0.3)."""
    return float(decimal.Decimal(repr(float(precision))) * k)


class Quantile(ModelKind):
    kind = KIND

    def validate(self, plan: dict) -> None:
        model = plan["model"]
        require_keys(model, {"measure", "q", "precision", "range"})
        if plan["aggregates"]:
            raise PlanError("quantile releases only the quantiles: leave the aggregates empty")
        check_expr(model["measure"], plan["columns"])
        measure = model["measure"]
        if "const" in measure:
            raise PlanError("quantile: the measure is a constant")
        if "col" in measure and plan["columns"][measure["col"]]["kind"] != "numeric":
            raise PlanError("quantile: the measure must be numeric")
        qs = model["q"]
        if not isinstance(qs, list) or not qs or not all(_number(q) and 0 < q < 1 for q in qs):
            raise PlanError("quantile: q must be a non-empty list of numbers strictly "
                            "between 0 and 1")
        if len({column_name(q) for q in qs}) != len(qs):
            raise PlanError("quantile: the q must be distinct")
        precision = model["precision"]
        if not _number(precision) or precision <= 0:
            raise PlanError(f"quantile: precision must be a positive number, not "
                            f"{precision!r}")
        bounds = model["range"]
        if not isinstance(bounds, list) or len(bounds) != 2 or \
                not all(_number(b) for b in bounds) or bounds[0] > bounds[1]:
            raise PlanError("quantile: range must be [low, high] with low <= high")
        if step_fraction(precision).denominator > MAX_DENOMINATOR:
            raise PlanError(f"quantile: precision {precision!r} has too many decimals",
                            hint="use at most 6 digits after the decimal point")
        if grid(model).steps > MAX_STEPS:
            raise PlanError(f"quantile: precision {precision} is too fine for the range "
                            f"{bounds}", hint=f"at most 2^{MAX_STEPS} steps of it")

    def value_inputs(self, plan: dict) -> list[dict]:
        return [plan["model"]["measure"]]

    def condition_inputs(self, plan: dict) -> list[dict]:
        return list(range_conditions(plan["model"]))

    def openings(self, plan: dict) -> set[str]:
        return {BISECTION, PASS}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        model = plan["model"]
        opened = stats["model"]["quantiles"]
        columns = [column_name(q) for q in model["q"]]
        values = np.array([[np.nan if v is None else v for v in row] for row in opened],
                          dtype=float).reshape(len(opened), len(columns))
        frame = pd.DataFrame(values, index=_index(plan), columns=columns)
        frame.attrs["suppressed"] = frame.isna()
        frame.attrs["precision"] = model["precision"]
        return frame


def _index(plan: dict) -> pd.Index:
    """The groups in plan order, as :func:`ppa_kernel.analyst.results.to_frame` indexes them."""
    groups = plan["groupby"]
    if not groups:
        return pd.Index([UNGROUPED])
    combos = list(itertools.product(*(e["levels"] for e in groups)))
    index = pd.MultiIndex.from_tuples(combos, names=[e["name"] for e in groups])
    return index.get_level_values(0) if len(groups) == 1 else index


# --------------------------------------------------------------------- builder
def nice_step(width: float | fractions.Fraction) -> int | float:
    """The smallest 1-2-5 step (..., 0.1, 0.2, 0.5, 1, 2, 5, 10, ...) at least ``width``.

    Exact: a float width is read as the decimal it prints as (0.1 is 1/10), so the step
    is never below it; 1 for a width of 0 or less.
    """
    exact = width if isinstance(width, fractions.Fraction) else step_fraction(width)
    if exact <= 0:
        return 1
    exponent = math.floor(math.log10(exact))
    for power in (exponent - 1, exponent, exponent + 1):  # log10 of a float may be off by one
        for base in (1, 2, 5):
            step = decimal.Decimal(base).scaleb(power)
            if fractions.Fraction(step) >= exact:
                return int(step) if step == step.to_integral_value() else float(step)
    raise AssertionError("unreachable")


def owner_minimum(frame: Frame, expr: dict) -> fractions.Fraction:
    """The strictest (largest) minimum precision the owners publish for the numeric
    columns ``expr`` reads (catalog ``min_precision``), exactly; 0 when there is none.

    A party that publishes no ``min_precision`` counts with the default policy:
    its published range / 1000.
    """
    strictest = fractions.Fraction(0)
    for name in expr_columns(expr):
        meta = frame.column_meta(name)
        if meta.get("kind") != "numeric":
            continue
        minimum = meta.get("min_precision")
        if minimum is not None:
            strictest = max(strictest, step_fraction(minimum))
        elif meta.get("min") is not None and meta.get("max") is not None:
            width = step_fraction(meta["max"]) - step_fraction(meta["min"])
            strictest = max(strictest, width / DEFAULT_QUANTILE_RESOLUTION)
    return strictest


def default_precision(frame: Frame, expr: dict, low: float, high: float) -> int | float:
    """The smallest 1-2-5 step at or above every owner's minimum for the columns the
    measure reads, and for an expression also at least its range / DEFAULT_POINTS."""
    width = owner_minimum(frame, expr)
    if "col" not in expr:
        width = max(width, (step_fraction(high) - step_fraction(low)) / DEFAULT_POINTS)
    return nice_step(width)


def expression_range(frame: Frame, expr: dict) -> tuple[float, float]:
    """Bounds of an expression from the catalog's published min/max (interval arithmetic)."""

    def published(name: str) -> tuple[float, float]:
        meta = frame.column_meta(name)
        if meta.get("kind") == "bool":
            return 0.0, 1.0
        low, high = meta.get("min"), meta.get("max")
        if low is None or high is None:
            raise PlanError(f"{name!r} has no published range",
                            hint="its party publishes no min and max for it")
        return float(low), float(high)

    return bounds.interval(expr, published)


def quantiles(frame: Frame, column: str | FrameColumn, q: float | list[float] = (0.25, 0.5, 0.75),
              by: str | FrameColumn | list[str | FrameColumn] | None = None,
              precision: float | None = None) -> FrameQuery:
    """Quantiles of ``column`` (per group of ``by``), rounded to multiples of ``precision``.

    As ``np.quantile(x, q, method="inverted_cdf")`` rounded to the nearest multiple of
    ``precision`` (halves down), over the rows where the measure is present. The default
    precision is the smallest 1-2-5 step at or above the strictest minimum precision the
    owners' policies set for the columns the measure reads (see :func:`default_precision`),
    so the parties never refuse it; a finer explicit precision is refused by the owner.
    See :mod:`ppa_kernel.contract.models.quantile` for what is opened and the result's shape.
    """
    measure = frame.column(column)
    if measure.kind != "numeric":
        raise PlanError(f"quantile needs a numeric measure, not {measure.kind} "
                        f"{measure.name!r}")
    qs = [q] if _number(q) else list(q)
    qs = [float(v) if isinstance(v, float | np.floating) else v for v in qs]
    low, high = expression_range(frame, measure.expr)
    if precision is None:
        precision = default_precision(frame, measure.expr, low, high)
    elif not _number(precision) or precision <= 0:
        raise PlanError(f"precision must be a positive number, not {precision!r}")
    keys = [] if by is None else list(by) if isinstance(by, list | tuple) else [by]
    entries = frame.groupby(keys).entries if keys else []
    model = {"kind": KIND, "measure": measure.expr, "q": qs, "precision": precision,
             "range": [low, high]}
    logger.debug("quantile plan: q=%s precision=%s range=%s", qs, precision, [low, high])

    return frame.model_query(model, groups=entries, inputs=[measure])


