"""Logistic regression with a formula, as ``statsmodels.formula.api.logit(...).fit()``.

Plan: as OLS (:mod:`.ols`: no groupby, no aggregates, the frame's filter,
``min_residual_df``) with::

    {"kind": "logit", "formula": "readmitted ~ app_user * income_band + age",
     "response": {"name": "readmitted", "expr": <condition or boolean column>},
     "design": [...], "complete": [...], "maxiter": 8}

The response is a truth value (a boolean column, or a condition such as
``cost_2021 > 5000``); the design columns, the rows used and the formula language are
exactly those of OLS. ``maxiter`` (public, 1..50, default 8) bounds the number of
Newton steps.

Under MPC (:mod:`ppa_kernel.party.secure.models.logit`, :mod:`ppa_kernel.party.secure.logistic`):
Newton's method (iteratively reweighted least squares) from zero, at most ``maxiter``
steps, all on secret values: per row the linear predictor eta from the design (exact integers) and
the secret coefficients, p = 1/(1 + e^-eta) and p(1 - p) by a secure exponential
(bit decomposition of the exponent's integer part, a polynomial for the rest) and a
Goldschmidt division; then the exact integer gradient X'(y - p) and Hessian
X' diag(p(1 - p)) X, normalised by secret powers of two and solved by LDL' (as OLS).
Checks, each opened as one bit, in this order (a failing check stops the run):

1. ``disclosure.pass``: n, the number of rows used, reaches the minimum cell size;
2. ``model.logit.df_ok``: n - p reaches ``min_residual_df``;
3. ``model.logit.design_ok``: X'X scaled to unit diagonal has determinant at least
   2^-32 (checked on the first Hessian, X'X / 4);
4. ``model.logit.converged``, after every step from the third: the step moved every
   coefficient by less than 2^-20 of its standard error, and every row's linear
   predictor was within the secure logistic function's range (|eta| < 177). The first 1 stops the
   iteration; a 0 after ``maxiter`` steps refuses the fit (perfect separation, where
   the coefficients run off, or too few steps). So the number of steps taken is
   revealed (a number from 3 to ``maxiter``, as statsmodels reports it).

Then opened, to every party and the analyst: ``model.logit.n``, ``model.logit.coef``
(the coefficients) and ``model.logit.se_squared`` (the diagonal of the inverse Hessian
at the last step: the squared standard errors, as statsmodels' ``bse``). Never opened:
the linear predictors, probabilities, weights, gradient, Hessian, X'X, the mask or the
normalisers. z, p-values and 95% intervals follow in the clear (standard normal).

Result (``collect()``): one row per design column with ``coef``, ``std err``, ``z``,
``P>|z|``, ``[0.025``, ``0.975]`` like ``summary().tables[1]``; ``attrs`` holds ``n``,
``df_resid``, ``df_model``, ``formula`` and ``iterations`` (Newton steps taken).

Accuracy: the probabilities are computed to about 2^-40 relative error for |eta| < 177
(beyond that the exponent's bits wrap, which the convergence bit includes, so such a fit
is refused); the assumptions of OLS on the columns' magnitudes apply to X' diag(w) X.
Results agree with statsmodels to about 1e-7 of each coefficient's standard error.
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

KIND = "logit"
OUTPUTS = ("df_ok", "design_ok", "converged", "n", "coef", "se_squared")
DEFAULT_ITERATIONS = 8
MAX_ITERATIONS = 50
COLUMNS = ["coef", "std err", "z", "P>|z|", "[0.025", "0.975]"]


class Logit(Regression):
    kind = KIND
    outputs = OUTPUTS

    def validate(self, plan: dict) -> None:
        validate_regression(plan, {"formula", "response", "design", "complete", "maxiter"})
        model, columns = plan["model"], plan["columns"]
        steps = model["maxiter"]
        if not isinstance(steps, int) or isinstance(steps, bool) \
                or not 1 <= steps <= MAX_ITERATIONS:
            raise PlanError(f"logit: 'maxiter' must be a whole number from 1 to "
                            f"{MAX_ITERATIONS}, got {steps!r}")
        expr = model["response"]["expr"]
        if not is_boolean(expr, columns):
            raise PlanError("logit: the response must be a truth value (a boolean column or "
                            "a condition such as cost > 5000)")

    def coefficients(self, plan: dict, opened: dict) -> pd.DataFrame:
        return coefficient_table(plan, opened)


def max_iterations(model: dict) -> int:
    """The model's number of Newton steps."""
    return model.get("maxiter") or DEFAULT_ITERATIONS


def coefficient_table(plan: dict, opened: dict) -> pd.DataFrame:
    """Coefficients, standard errors, z, p and 95% intervals, as statsmodels' summary."""
    from scipy import stats as sps

    model = plan["model"]
    names = [e["name"] for e in model["design"]]
    n, p = int(opened["n"]), len(names)
    coef = np.asarray(opened["coef"], dtype=float)
    se = np.sqrt(np.maximum(np.asarray(opened["se_squared"], dtype=float), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = coef / se
    half = sps.norm.ppf(0.975) * se
    frame = pd.DataFrame({"coef": coef, "std err": se, "z": z,
                          "P>|z|": 2 * sps.norm.sf(np.abs(z)),
                          "[0.025": coef - half, "0.975]": coef + half},
                         index=pd.Index(names), columns=COLUMNS)
    constant = model["design"][0]["expr"] is None
    frame.attrs.update(
        formula=model["formula"], n=n, df_resid=n - p, df_model=p - int(constant),
        iterations=int(opened.get("iterations") or max_iterations(model)),
        suppressed=pd.DataFrame(False, index=frame.index, columns=frame.columns))
    return frame


def logit(frame: Frame, formula: str, maxiter: int = DEFAULT_ITERATIONS) -> FrameQuery:
    """Logistic regression ``response ~ terms`` over the frame's complete rows.

    As ``statsmodels.formula.api.logit(formula, data).fit()``: the response is a truth
    value (a boolean column or an assigned condition); the terms as in
    :meth:`~ppa_kernel.analyst.frame.SecureFrame.ols`. ``maxiter`` Newton steps are taken (a
    fit that has not converged by then is refused). See :mod:`ppa_kernel.contract.models.logit`
    for what is opened and the result's shape.
    """

    design = build_design(frame, formula, response_kind="bool")
    model = design.model(KIND)
    del model["centered"]
    model["maxiter"] = maxiter
    return frame.model_query(model, inputs=design.inputs)
