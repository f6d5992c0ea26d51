"""Ordinary least squares with a formula, as ``statsmodels.formula.api.ols(...).fit()``.

Plan: no groupby, no aggregates, the frame's filter, ``min_residual_df`` (filled in by the
client from the parties' policies) and::

    {"kind": "ols", "formula": "cost_change ~ app_user * income_band + age",
     "response": {"name": "cost_change", "expr": <expression>},
     "design": [{"name": "Intercept", "expr": null},
                {"name": "app_user[T.True]", "expr": <0/1 condition>}, ...],
     "complete": [<condition: a categorical factor is not missing>, ...],
     "centered": true}

The design columns (names, order and coding as patsy; see :mod:`.formula`) are plan
expressions: a dummy is an ``eq`` condition, an interaction a ``mul``; ``null`` is the
intercept. Rows used: the (filtered) join's rows where the response, every design column
and every ``complete`` condition are present (listwise, as statsmodels ``missing="drop"``).

Under MPC (:mod:`ppa_kernel.party.secure.models.ols`, :mod:`ppa_kernel.party.secure.linalg`): the
per-row design values as secure integers at one common fixed-point scale, the cohort and
complete-case mask, and one secure integer matrix product for the exact Gram matrix of
``[1, X, y]``; then a secret power-of-two scaling of each column (from a bit
decomposition of the Gram diagonal; only masked values are opened) that brings the Gram
matrix into fixed point with unit-order entries, its LDL' factorisation (whose last
pivot is the residual sum of squares RSS -- the residuals are never formed), the
coefficients and the diagonal of ``(X'X)^-1``, and the total sum of squares TSS from the
same matrix. Checks, each opened as one bit, in this order (a failing check stops the
run: nothing after it is computed or opened):

1. ``disclosure.pass``: n, the number of rows used, reaches the minimum cell size;
2. ``model.ols.df_ok``: the residual degrees of freedom n - p reach ``min_residual_df``
   (p = number of design columns, public);
3. ``model.ols.design_ok``: the design is not (nearly) singular -- the determinant of
   X'X scaled to unit diagonal is at least 2^-32 (an empty dummy or collinear columns
   fail) -- and the response is not (nearly) constant (TSS / y'y at least 2^-32).

Then opened, to every party and the analyst: ``model.ols.n`` (n; the residual df is
n - p, so opening n is opening the df), ``model.ols.coef`` (the coefficients),
``model.ols.se_squared`` (the squared standard errors sigma² (X'X)^-1_jj with
sigma² = RSS / (n - p); a standard error is the non-negative square root, taken in the
clear, so this is exactly the standard errors) and ``model.ols.r_squared`` (1 - RSS/TSS;
TSS centred when the design spans a constant -- an intercept or a purely categorical
term -- as statsmodels, otherwise y'y). Never opened: X'X, X'y, y'y, the residuals, the
mask, the normalisers. t, p-values and 95% confidence intervals follow in the clear
from the coefficients, standard errors and df (Student t with n - p df).

A refused run raises :class:`~ppa_kernel.contract.errors.PlanError` at the analyst naming the
reason (too few rows, too few residual df, singular design or constant response).

Result (``collect()``): one row per design column (index: patsy's term names) with
columns ``coef``, ``std err``, ``t``, ``P>|t|``, ``[0.025``, ``0.975]`` like
``summary().tables[1]``; ``attrs`` holds ``r_squared``, ``r_squared_adj``, ``n``,
``df_resid``, ``df_model`` and ``formula``.

Accuracy assumptions (true of realistic data): every column's values stay below
2^(100 - 16 S) / sqrt(rows) in magnitude, S the largest scale exponent among the columns
(1 for a party's own columns, one more per product of different parties' columns); the
coefficients and squared standard errors below 2^50; the ratio of the response's root
mean square to any column's below 2^25. Inputs are fixed point with 16 fraction bits,
so results agree with statsmodels to about 1e-6 of each coefficient's standard error.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import PlanError
from ..expr import is_boolean
from .base import Frame, FrameQuery
from .formula import build_design
from .regression import Regression, validate_regression

logger = logging.getLogger(__name__)

KIND = "ols"
OUTPUTS = ("df_ok", "design_ok", "n", "coef", "se_squared", "r_squared")

COLUMNS = ["coef", "std err", "t", "P>|t|", "[0.025", "0.975]"]


class OLS(Regression):
    kind = KIND
    outputs = OUTPUTS

    def validate(self, plan: dict) -> None:
        validate_regression(plan, {"formula", "response", "design", "complete", "centered"})
        model, columns = plan["model"], plan["columns"]
        if not isinstance(model["centered"], bool):
            raise PlanError("ols: 'centered' must be true or false")
        expr = model["response"]["expr"]
        if "const" in expr or is_boolean(expr, columns) or \
                ("col" in expr and columns[expr["col"]]["kind"] != "numeric"):
            raise PlanError("ols: the response must be a numeric column or expression")

    def coefficients(self, plan: dict, opened: dict) -> pd.DataFrame:
        return coefficient_table(plan, opened)


def coefficient_table(plan: dict, opened: dict) -> pd.DataFrame:
    """Coefficients, standard errors, t, p and 95% intervals, as statsmodels' summary."""
    from scipy import stats as sps

    model = plan["model"]
    names = [e["name"] for e in model["design"]]
    n, p = int(opened["n"]), len(names)
    df = n - p
    coef = np.asarray(opened["coef"], dtype=float)
    se = np.sqrt(np.maximum(np.asarray(opened["se_squared"], dtype=float), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    pvalue = 2 * sps.t.sf(np.abs(t), df)
    half = sps.t.ppf(0.975, df) * se
    frame = pd.DataFrame({"coef": coef, "std err": se, "t": t, "P>|t|": pvalue,
                          "[0.025": coef - half, "0.975]": coef + half},
                         index=pd.Index(names), columns=COLUMNS)
    r2 = float(opened["r_squared"])
    constant = model["centered"]
    df_model = p - int(constant)
    frame.attrs.update(
        formula=model["formula"], n=n, df_resid=df, df_model=df_model, r_squared=r2,
        r_squared_adj=1 - (n - int(constant)) / df * (1 - r2),
        suppressed=pd.DataFrame(False, index=frame.index, columns=frame.columns))
    return frame


def ols(frame: Frame, formula: str) -> FrameQuery:
    """Least-squares regression ``response ~ terms`` over the frame's complete rows.

    As ``statsmodels.formula.api.ols(formula, data).fit()`` (patsy's formula language:
    ``+ - * :``, parentheses, ``- 1``; categorical and boolean columns become treatment
    dummies; names resolve like ``frame[name]``, including assigned columns and
    ``party.column``). See :mod:`ppa_kernel.contract.models.ols` for what is opened and the
    result's shape.
    """

    design = build_design(frame, formula)
    return frame.model_query(design.model(KIND), inputs=design.inputs)
