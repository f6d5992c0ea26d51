"""The expression language of plans: operators, canonical text, and typed checks.

Expressions are JSON trees: ``{"col": "party.column"}``, ``{"const": 3.5}`` and
``{"op": OP, "args": [...]}`` with OP one of ``add sub mul div neg lt le gt ge eq ne and
or not isin`` (``isin`` carries ``"values"``). Nothing in an expression is ever executed:
the parties and the analyst's client read these trees with their own code.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import limits
from .errors import PlanError

ARITHMETIC = ("add", "sub", "mul", "div", "neg")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
LOGICAL = ("and", "or", "not")
OPERATORS = (*ARITHMETIC, *COMPARISONS, *LOGICAL, "isin")
KINDS = ("numeric", "categorical", "bool")
_ARITY = {**{op: 2 for op in ("add", "sub", "mul", "div", *COMPARISONS, "and", "or")},
          "neg": 1, "not": 1, "isin": 1}


def canonical_json(obj: Any) -> str:
    """The canonical text of a JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def expr_columns(expr: dict | None) -> set[str]:
    """Qualified column names an expression reads."""
    if expr is None:
        return set()
    if "col" in expr:
        return {expr["col"]}
    if "const" in expr:
        return set()
    out: set[str] = set()
    for arg in expr.get("args", []):
        out |= expr_columns(arg)
    return out


def expr_parties(expr: dict | None, columns: dict) -> set[str]:
    """Parties owning the columns an expression reads."""
    return {columns[c]["party"] for c in expr_columns(expr)}


def is_boolean(expr: dict, columns: dict) -> bool:
    """Whether an expression yields a truth value."""
    if "col" in expr:
        return columns[expr["col"]]["kind"] == "bool"
    return expr.get("op") in COMPARISONS + LOGICAL + ("isin",)


def check_expr(expr: Any, columns: dict) -> None:
    """Raise PlanError unless ``expr`` is a well-formed expression over ``columns``."""
    expression_kind(expr, columns)


SCALAR = str | int | float | bool


def expression_kind(expr: Any, columns: dict) -> str:
    """Check an expression and return what it yields: ``number``, ``truth``, ``category``
    (a categorical column) or ``text`` (a text constant); operands must fit their operator."""
    if not isinstance(expr, dict):
        raise PlanError(f"malformed expression {str(expr)[:60]!r}")
    if "col" in expr:
        if set(expr) != {"col"} or not isinstance(expr["col"], str) or \
                expr["col"] not in columns:
            raise PlanError(f"unknown column {str(expr.get('col'))[:60]!r}")
        return {"numeric": "number", "bool": "truth"}.get(columns[expr["col"]]["kind"],
                                                           "category")
    if "const" in expr:
        value = expr["const"]
        if set(expr) != {"const"} or not isinstance(value, SCALAR) or \
                (isinstance(value, float) and not math.isfinite(value)) or \
                (isinstance(value, str) and len(value) > limits.MAX_NAME):
            raise PlanError(f"malformed constant {str(expr)[:60]}")
        return "constant truth" if isinstance(value, bool) else \
            "text" if isinstance(value, str) else "number"
    op, args = expr.get("op"), expr.get("args")
    if op not in OPERATORS or not isinstance(args, list) or len(args) != _ARITY[op]:
        raise PlanError(f"malformed expression with operator {str(op)[:40]!r}")
    if op == "div" and not (isinstance(args[1], dict) and "const" in args[1]
                            and isinstance(args[1]["const"], int | float)
                            and not isinstance(args[1]["const"], bool) and args[1]["const"]):
        raise PlanError("division is only by a nonzero numeric constant")
    allowed = {"op", "args", "values"} if op == "isin" else {"op", "args"}
    if set(expr) - allowed:
        raise PlanError(f"unexpected keys in expression {op!r}")
    kinds = [expression_kind(arg, columns) for arg in args]
    if not expr_columns(expr):  # its scale would differ from the evaluator's: wrap risk
        raise PlanError(f"'{op}' of constants only: write the resulting number instead")
    if op == "isin":
        values = expr.get("values")
        if not isinstance(values, list) or not all(
                isinstance(v, SCALAR) and not (isinstance(v, str) and len(v) > limits.MAX_NAME)
                for v in values):
            raise PlanError("isin needs a list of plain values (text, numbers, true/false)")
        if kinds[0] not in ("number", "truth", "category"):
            raise PlanError("isin applies to a column or a number")
        return "truth"
    if op in LOGICAL:
        if any(k != "truth" for k in kinds):
            raise PlanError(f"'{op}' combines conditions, not {' and '.join(sorted(set(kinds)))}")
        return "truth"
    if op in ("eq", "ne"):
        numeric = {"number", "truth", "constant truth"}
        categorical = {"category", "text", "number"}
        if not (set(kinds) <= numeric or (set(kinds) <= categorical and "category" in kinds)):
            raise PlanError(f"cannot compare {kinds[0]} with {kinds[1]} ('{op}')")
        return "truth"
    if any(k not in ("number", "truth") for k in kinds):
        raise PlanError(f"'{op}' needs numbers, not {' and '.join(sorted(set(kinds)))}",
                        hint="compare categories with == or isin")
    return "truth" if op in COMPARISONS else "number"


def weights_by_condition(expr: dict, columns: dict) -> bool:
    """Whether a numeric expression does arithmetic with a truth value (a boolean column,
    comparison or condition): sum(x * [one person]) minus sum(x) would single that
    person out on one row set, which the differencing rule cannot see."""
    stack = [expr]
    while stack:
        item = stack.pop()
        if item.get("op") in ARITHMETIC:
            for arg in item["args"]:
                if is_boolean(arg, columns):
                    return True
                stack.append(arg)
    return False


def is_categorical(expr: dict, columns: dict) -> bool:
    return "col" in expr and columns[expr["col"]]["kind"] == "categorical"
