"""Worst-case magnitudes of plan expressions, so that nothing wraps inside MPC.

Every numeric column in a plan carries its owner's published range, which the owner
checks against its catalog (and its catalog against its data). From those ranges,
interval arithmetic bounds every expression; from the scale exponents the secure
evaluator uses (:class:`ppa_kernel.party.secure.query.Evaluator`) follows the largest encoded
integer. A plan is refused when a cross-party comparison could exceed the comparison's
bit length or a sum over all rows (of values or their squares) could exceed the field.
All parties compute the same bounds from the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from . import limits
from .errors import PlanError
from .expr import COMPARISONS, LOGICAL, canonical_json, expr_parties


def coarse(value: float | None, up: bool) -> float | None:
    """Round a bound outward to two significant digits, as a party publishes its columns'
    ranges (exact extremes are disclosive).

    Rounded in decimal from the float's shortest repr, so the result never lands inside
    the value by a float step (``coarse(0.83, up=False)`` is 0.83, not 0.8300000000000001):
    float conversion is monotone, so a decimal at or below ``repr(value)`` converts to a
    float at or below ``value``."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    exact = Decimal(repr(float(value)))
    step = Decimal(1).scaleb(exact.adjusted() - 1)
    rounding = ROUND_CEILING if up else ROUND_FLOOR
    return float((exact / step).to_integral_value(rounding=rounding) * step)


def column_range(meta: dict) -> tuple[float, float]:
    """A numeric column's published range, or the encoding limit when none is given."""
    bounds = meta.get("range")
    if bounds is None or meta.get("kind") != "numeric":
        return (0.0, 1.0) if meta.get("kind") == "bool" else \
            (-limits.VALUE_LIMIT, limits.VALUE_LIMIT)
    return float(bounds[0]), float(bounds[1])


def _interval(expr: dict, columns: dict) -> tuple[float, float]:
    return interval(expr, lambda name: column_range(columns[name]))


def interval(expr: dict, published: Callable[[str], tuple[float, float]]
             ) -> tuple[float, float]:
    """Interval of an expression's values (truth values are [0, 1]), from ``published``,
    the range of each qualified column it reads."""
    if "col" in expr:
        return published(expr["col"])
    if "const" in expr:
        value = expr["const"]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise PlanError(f"{value!r} is not a number")
        return float(value), float(value)
    op = expr["op"]
    if op in COMPARISONS or op in LOGICAL or op == "isin":
        return 0.0, 1.0
    parts = [interval(a, published) for a in expr["args"]]
    if op == "neg":
        return -parts[0][1], -parts[0][0]
    (a, b), (c, d) = parts
    if op == "add":
        return a + c, b + d
    if op == "sub":
        return a - d, b - c
    if op == "div":  # by a nonzero numeric constant (validated)
        c = d = 1.0 / c
    products = [a * c, a * d, b * c, b * d]
    return min(products), max(products)


def is_magnitude(expr: dict, columns: dict) -> bool:
    """Whether an expression's values are never negative (its published bound says so)."""
    return _interval(expr, columns)[0] >= 0


def encoded_magnitude(expr: dict, columns: dict) -> tuple[float, int]:
    """The largest |integer| the secure evaluator can hold for ``expr``, and its scale.

    Mirrors :meth:`ppa_kernel.party.secure.query.Evaluator.value` step by step, with the
    rounding of every encoding: an owner-side value is round(x * 2^16) (so at most
    |x| * 2^16 + 1/2), a non-integer constant factor round(c * 2^32). Constants appear
    only as operands (validation refuses operators on constants alone).
    """
    if "const" in expr:
        return abs(float(expr["const"])), 0
    if "col" in expr or len(expr_parties(expr, columns)) == 1:
        low, high = _interval(expr, columns)
        return max(abs(low), abs(high)) * 2.0 ** limits.SCALE_BITS + 1, 1
    op, args = expr["op"], expr["args"]
    if op in COMPARISONS or op in LOGICAL or op == "isin":
        return 1.0, 0
    if op == "neg":
        return encoded_magnitude(args[0], columns)
    if op in ("add", "sub"):
        parts = [encoded_magnitude(a, columns) for a in args]
        scale = max(s for _, s in parts)
        total = 0.0
        for arg, (m, s) in zip(args, parts):
            total += (m * 2.0 ** (limits.SCALE_BITS * scale) + 1 if "const" in arg
                      else m * 2.0 ** (limits.SCALE_BITS * (scale - s)))
        return total, scale
    if op == "div":
        m, s = encoded_magnitude(args[0], columns)
        factor, extra = _factor(1 / args[1]["const"])
        return m * factor, s + extra
    consts = [a for a in args if "const" in a]
    if consts:
        other = next(a for a in args if "const" not in a)
        m, s = encoded_magnitude(other, columns)
        factor, extra = _factor(consts[0]["const"])
        return m * factor, s + extra
    (ma, sa), (mb, sb) = (encoded_magnitude(a, columns) for a in args)
    return ma * mb, sa + sb


def _factor(c: float) -> tuple[float, int]:
    """|integer multiplier| for constant c (as ``_constant_factor``) and its scale."""
    if float(c).is_integer():
        return abs(float(c)), 0
    return abs(c) * 2.0 ** (2 * limits.SCALE_BITS) + 1, 2


def check_comparison(left: dict, right: dict, columns: dict) -> None:
    """Refuse a cross-party comparison whose difference could exceed the comparison's range."""
    (ma, sa), (mb, sb) = encoded_magnitude(left, columns), encoded_magnitude(right, columns)
    scale = max(sa, sb)
    worst = 0.0
    for expr, m, s in ((left, ma, sa), (right, mb, sb)):
        worst += (m * 2.0 ** (limits.SCALE_BITS * scale) + 1 if "const" in expr
                  else m * 2.0 ** (limits.SCALE_BITS * (scale - s)))
    if not worst < 2.0 ** (limits.COMPARE_BITS - 1):  # also refuses NaN and infinity
        raise PlanError(
            f"the comparison of {_show(left)} with {_show(right)} could exceed the range "
            f"of secure comparisons (|difference| < 2^{limits.COMPARE_BITS - 1} at scale "
            f"2^{limits.SCALE_BITS * scale})",
            hint="compare smaller quantities, e.g. rescale a column by a constant")


def check_sum(expr: dict, columns: dict, *, squared: bool) -> None:
    """Refuse a measure whose sum (or sum of squares) over all rows could wrap the field."""
    worst = encoded_magnitude(expr, columns)[0]
    if squared:
        worst *= worst
    if not worst * limits.MAX_ROWS < 2.0 ** (limits.FIELD_BITS - 2):
        what = "sum of squares" if squared else "sum"
        raise PlanError(f"the {what} of {_show(expr)} over all rows could exceed the number "
                        f"field (values up to {max(map(abs, _interval(expr, columns))):.3g})",
                        hint="rescale the measure, e.g. divide it by a constant")


def _show(expr: dict) -> str:
    text = canonical_json(expr)
    return text if len(text) <= 80 else text[:77] + "..."
