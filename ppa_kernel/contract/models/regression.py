"""What OLS and logistic regression share on the plan side: the model's shape and checks,
its inputs and openings, and the reasons for a refusal (see :mod:`.ols`)."""

from __future__ import annotations

import pandas as pd

from ..errors import PlanError
from ..expr import check_expr, is_boolean
from .base import MASKED_TRUNCATION, ModelKind, output_name, require_keys

DEFAULT_MIN_RESIDUAL_DF = 10
"""Used when a plan carries no ``min_residual_df`` (the client always fills it in)."""


class Regression(ModelKind):
    """A formula regression: its inputs, openings and result table (by subclasses'
    ``outputs`` and :meth:`coefficients`)."""

    outputs: tuple[str, ...] = ()

    def value_inputs(self, plan: dict) -> list[dict]:
        model = plan["model"]
        return [model["response"]["expr"]] + [e["expr"] for e in model["design"]
                                              if e["expr"] is not None]

    def condition_inputs(self, plan: dict) -> list[dict]:
        return list(plan["model"]["complete"])

    def openings(self, plan: dict) -> set[str]:
        return {output_name(self.kind, o) for o in self.outputs} | {MASKED_TRUNCATION}

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        opened = stats["model"]
        if opened.get("refused"):
            raise PlanError(refusal_message(plan, opened["refused"]))
        return self.coefficients(plan, opened)

    def coefficients(self, plan: dict, opened: dict) -> pd.DataFrame:
        """The analyst's coefficient table from the opened values."""
        raise NotImplementedError


def validate_regression(plan: dict, keys: set[str]) -> None:
    """PlanError unless the plan's regression model has exactly ``keys`` and a well formed
    formula, response (checked as an expression only), design and ``complete`` list."""
    model = plan["model"]
    kind = model["kind"]
    require_keys(model, keys)
    if plan["groupby"] or plan["aggregates"]:
        raise PlanError(f"{kind}: the plan takes no groups and no aggregates")
    columns = plan["columns"]
    response, design = model["response"], model["design"]
    if not isinstance(model["formula"], str):
        raise PlanError(f"{kind}: 'formula' must be text")
    if not isinstance(response, dict) or set(response) != {"name", "expr"}:
        raise PlanError(f"{kind}: 'response' must be {{name, expr}}")
    check_expr(response["expr"], columns)
    if not isinstance(design, list) or not design:
        raise PlanError(f"{kind}: the design needs at least one column")
    names = []
    for i, entry in enumerate(design):
        if not isinstance(entry, dict) or set(entry) != {"name", "expr"} \
                or not isinstance(entry["name"], str) or not entry["name"]:
            raise PlanError(f"{kind}: each design column must be {{name, expr}}")
        names.append(entry["name"])
        if entry["expr"] is None:
            if i != 0:
                raise PlanError(f"{kind}: only the first design column may be the intercept")
            continue
        check_expr(entry["expr"], columns)
        if "const" in entry["expr"]:
            raise PlanError(f"{kind}: design column {entry['name']!r} is a constant")
    if len(set(names)) != len(names):
        raise PlanError(f"{kind}: design column names must be distinct")
    if not isinstance(model["complete"], list):
        raise PlanError(f"{kind}: 'complete' must be a list of conditions")
    for condition in model["complete"]:
        check_expr(condition, columns)
        if not is_boolean(condition, columns):
            raise PlanError(f"{kind}: 'complete' holds conditions only")


def refusal_message(plan: dict, reason: str) -> str:
    """The analyst's one-line reason for a refused regression."""
    model = plan["model"]
    kind, formula = model["kind"], model["formula"]
    p = len(model["design"])
    if reason == "min_cell_size":
        return (f"{kind} refused: fewer than {plan.get('min_cell_size')} complete rows "
                f"(the minimum cell size) for {formula!r}")
    if reason == "min_residual_df":
        return (f"{kind} refused: the residual degrees of freedom (complete rows - {p} "
                f"coefficients) are below the minimum of "
                f"{min_residual_df(plan)} for {formula!r}")
    if reason == "not_converged":
        return (f"{kind} refused: Newton's method did not converge for {formula!r} in "
                f"{model.get('maxiter')} iterations (the outcome may be perfectly "
                f"separated by the design, a linear predictor may exceed 177 in size, "
                f"or more iterations are needed: maxiter=...)")
    if kind == "logit":
        return (f"{kind} refused: the design of {formula!r} is singular on the rows used "
                f"(a dummy without rows, or collinear columns)")
    return (f"{kind} refused: the design of {formula!r} is singular on the rows used "
            f"(a dummy without rows, or collinear columns) or the response is constant")


def min_residual_df(plan: dict) -> int:
    """The plan's minimum residual df (a default if the plan does not state it)."""
    return plan.get("min_residual_df") or DEFAULT_MIN_RESIDUAL_DF
