"""Worst-case magnitudes of plan expressions, so that nothing wraps inside MPC.

Every numeric column in a plan carries its owner's published range, which the owner
checks against its catalog (and its catalog against its data). From those ranges,
interval arithmetic bounds every expression; from the scale exponents the secure
evaluator uses (:class:`ppa_kernel.secure.query.Evaluator`) follows the largest encoded
integer. A plan is refused when a cross-party comparison could exceed the comparison's
bit length or a sum over all rows (of values or their squares) could exceed the field.
All parties compute the same bounds from the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import limits
from .errors import PlanError
from .plan import COMPARISONS, LOGICAL, canonical_json, expr_parties


@dataclass(frozen=True)
class Bound:
    """Interval [low, high] of an expression's values and the scale exponent it is held at."""

    low: float
    high: float
    scale: int

    @property
    def magnitude(self) -> float:
        return max(abs(self.low), abs(self.high))

    def encoded(self, scale: int | None = None) -> float:
        """Largest encoded integer at ``scale`` (default: its own)."""
        return self.magnitude * 2.0 ** (limits.SCALE_BITS * (self.scale if scale is None
                                                              else scale))


def column_range(meta: dict) -> tuple[float, float]:
    """A numeric column's published range, or the encoding limit when none is given."""
    bounds = meta.get("range")
    if bounds is None or meta.get("kind") != "numeric":
        return (0.0, 1.0) if meta.get("kind") == "bool" else \
            (-limits.VALUE_LIMIT, limits.VALUE_LIMIT)
    return float(bounds[0]), float(bounds[1])


def _interval(expr: dict, columns: dict) -> tuple[float, float]:
    """Interval of an expression's values (truth values are [0, 1])."""
    if "col" in expr:
        return column_range(columns[expr["col"]])
    if "const" in expr:
        value = expr["const"]
        return (float(value), float(value)) if isinstance(value, int | float) else (0.0, 0.0)
    op = expr["op"]
    if op in COMPARISONS or op in LOGICAL or op == "isin":
        return 0.0, 1.0
    parts = [_interval(a, columns) for a in expr["args"]]
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


def bound(expr: dict, columns: dict) -> Bound:
    """The bound of an expression as the secure evaluator holds it."""
    low, high = _interval(expr, columns)
    return Bound(low, high, _scale(expr, columns))


def _scale(expr: dict, columns: dict) -> int:
    """Scale exponent of the secure value of ``expr`` (mirrors ``Evaluator.value``)."""
    if "const" in expr:
        return 0
    if "col" in expr or len(expr_parties(expr, columns)) == 1:
        return 1
    op = expr["op"]
    if op in COMPARISONS or op in LOGICAL or op == "isin":
        return 0
    args = expr["args"]
    if op == "neg":
        return _scale(args[0], columns)
    if op in ("add", "sub"):
        return max(_scale(a, columns) for a in args)
    if op == "div":
        return _scale(args[0], columns) + _constant_scale(1 / args[1]["const"])
    consts = [a for a in args if "const" in a]
    if consts:
        other = next(a for a in args if "const" not in a)
        return _scale(other, columns) + _constant_scale(consts[0]["const"])
    return sum(_scale(a, columns) for a in args)


def _constant_scale(c: float) -> int:
    return 0 if float(c).is_integer() else 2


def is_magnitude(expr: dict, columns: dict) -> bool:
    """Whether an expression's values are never negative (its published bound says so)."""
    return _interval(expr, columns)[0] >= 0


def check_comparison(left: dict, right: dict, columns: dict) -> None:
    """Refuse a cross-party comparison whose difference could exceed the comparison's range."""
    a, b = bound(left, columns), bound(right, columns)
    scale = max(a.scale, b.scale)
    worst = a.encoded(scale) + b.encoded(scale)
    if not worst < 2.0 ** (limits.COMPARE_BITS - 1):
        raise PlanError(
            f"the comparison of {_show(left)} with {_show(right)} could exceed the range "
            f"of secure comparisons (|difference| < 2^{limits.COMPARE_BITS - 1} at scale "
            f"2^{limits.SCALE_BITS * scale})",
            hint="compare smaller quantities, e.g. rescale a column by a constant")


def check_sum(expr: dict, columns: dict, *, squared: bool) -> None:
    """Refuse a measure whose sum (or sum of squares) over all rows could wrap the field."""
    worst = bound(expr, columns).encoded()
    if squared:
        worst *= worst
    if not worst * limits.MAX_ROWS < 2.0 ** (limits.FIELD_BITS - 2):
        what = "sum of squares" if squared else "sum"
        raise PlanError(f"the {what} of {_show(expr)} over all rows could exceed the number "
                        f"field (values up to {bound(expr, columns).magnitude:.3g})",
                        hint="rescale the measure, e.g. divide it by a constant")


def _show(expr: dict) -> str:
    text = canonical_json(expr)
    return text if len(text) <= 80 else text[:77] + "..."
