"""Say why a cohort is empty before any run: a filter against a published range.

A plan's filter that requires a comparison of a column with a constant outside the
column's published range (``age > 95`` where age is published as 18 .. 90) selects no
row; a run would only return a table of suppressed cells. The published range is
rounded outward, so such a filter is empty on the real data too. :func:`check_cohort`
raises :class:`EmptyCohort` (a :class:`~ppa_kernel.contract.errors.PlanError`) with a
one-line reason; only conjuncts (``&``) are read, so it never refuses a cohort that may
hold rows.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.limits import SCALE_BITS

logger = logging.getLogger(__name__)

_SYMBOLS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=="}
_FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq"}


class EmptyCohort(PlanError):
    """A filter no published value can meet: the cohort is empty."""


def check_cohort(plan: dict, catalog: Mapping[str, Mapping[str, dict]] | None = None) -> None:
    """Raise :class:`EmptyCohort` if a required comparison of the plan's filter lies
    outside its column's published range, or reads a column that the ``catalog`` (party
    -> column -> entry) shows has no values at all."""
    reason = empty_reason(plan, catalog)
    if reason is not None:
        logger.debug("empty cohort: %s", reason)
        raise EmptyCohort(reason, hint="widen the filter; the catalog shows each range")


def empty_reason(plan: dict, catalog: Mapping[str, Mapping[str, dict]] | None = None
                 ) -> str | None:
    """Why the plan's filter selects no row (one line), or None if it may select some."""
    columns = plan.get("columns") or {}
    for term in _conjuncts(plan.get("filter")):
        reason = _outside(term, columns, catalog or {})
        if reason is not None:
            return reason
    return None


def _conjuncts(expr: dict | None) -> list[dict]:
    if not isinstance(expr, dict):
        return []
    if expr.get("op") == "and":
        return [t for arg in expr.get("args", []) for t in _conjuncts(arg)]
    return [expr]


def _outside(term: dict, columns: dict, catalog: Mapping[str, Mapping[str, dict]]
             ) -> str | None:
    op, args = term.get("op"), term.get("args") or []
    if op not in _SYMBOLS or len(args) != 2:
        return None
    left, right = args
    if "const" in left and "col" in right:  # 95 < age reads as age > 95
        left, right, op = right, left, _FLIPPED[op]
    if "col" not in left or "const" not in right:
        return None
    value, meta = right["const"], columns.get(left["col"]) or {}
    bounds = meta.get("range")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not bounds:
        return None
    name = meta.get("column") or left["col"].split(".", 1)[-1]
    entry = (catalog.get(meta.get("party")) or {}).get(meta.get("column")) or {}
    if entry and (entry.get("min") is None or entry.get("max") is None):
        return f"{name} has no values (all missing): this cohort is empty"
    low, high = float(bounds[0]), float(bounds[1])
    # Inside MPC a constant is compared in fixed point: one just beyond a bound may
    # encode as the bound itself, so only strict comparisons may touch the bound.
    below, above = low - _margin(low), high + _margin(high)
    empty = {"gt": value >= high, "ge": value > above, "lt": value <= low,
             "le": value < below, "eq": not below <= value <= above}[op]
    if not empty:
        return None
    return (f"{name} {_SYMBOLS[op]} {value:g} is outside the published range "
            f"{low:g} .. {high:g}: this cohort is empty")


def _margin(bound: float) -> float:
    """How far beyond a published bound a constant may still compare as the bound."""
    return max(2.0 ** -SCALE_BITS, 1e-9 * abs(bound))


__all__ = ["EmptyCohort", "check_cohort", "empty_reason"]
