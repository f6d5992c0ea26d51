"""Logistic regression under MPC against statsmodels Logit on the same joined data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from oracle import join, run_recorded

from ppa_kernel.analyst.results import to_frame
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models.logit import COLUMNS, logit
from ppa_kernel.contract.plan import validate_plan

PARTIES = ["insurer", "hospital", "bureau"]
MAIN = "readmitted ~ app_user * income_band + age + cost_2020"
OUTPUTS = {"model.logit.df_ok", "model.logit.design_ok", "model.logit.converged",
           "model.logit.n", "model.logit.coef", "model.logit.se_squared"}
PROTOCOL = {"disclosure.pass", "protocol.comparison_masked", "protocol.truncation_masked",
            "linkage.ready", "linkage.party_sizes", "linkage.prf_masked",
            "linkage.equality_masked", "linkage.epoch", "disclosure.reason",
            "protocol.plan_agreement"}


def _plain(demo_data) -> pd.DataFrame:
    plain = join(demo_data, PARTIES)
    plain["readmitted"] = plain.readmitted.astype(int)
    plain["disease_activity"] = plain.disease_activity.astype(float)
    return plain


def _matches(got: pd.DataFrame, fit, rtol: float = 1e-6) -> None:
    """Coefficients within rtol of their standard errors, the rest within rtol."""
    se = fit.bse.to_numpy()
    assert list(got.index) == list(fit.params.index) and list(got.columns) == COLUMNS
    assert (np.abs(got["coef"] - fit.params).to_numpy() <= rtol * se).all()
    np.testing.assert_allclose(got["std err"], se, rtol=rtol)
    np.testing.assert_allclose(got["z"], fit.tvalues, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got["P>|z|"], fit.pvalues, rtol=1e-5, atol=1e-12)
    ci = fit.conf_int()
    assert (np.abs(got["[0.025"] - ci[0]).to_numpy() <= 2 * rtol * se).all()
    assert (np.abs(got["0.975]"] - ci[1]).to_numpy() <= 2 * rtol * se).all()
    assert got.attrs["n"] == fit.nobs and got.attrs["df_resid"] == fit.df_resid
    assert got.attrs["df_model"] == fit.df_model


@pytest.fixture(scope="module")
def main_run(consortium):
    _, frame, opened = run_recorded(consortium, logit(consortium.link(), MAIN))
    return frame, opened


def _opened(raw) -> set[str]:
    return {e["name"] for e in raw.results["insurer"]["openings"]}


def test_main_model_matches_statsmodels(main_run, demo_data):
    frame, _ = main_run
    fit = smf.logit(MAIN, data=_plain(demo_data)).fit(disp=0, tol=1e-12)
    _matches(frame, fit)
    assert 3 <= frame.attrs["iterations"] <= 8


def test_openings_are_only_the_named_outputs(main_run):
    frame, opened = main_run
    assert OUTPUTS <= set(opened) <= OUTPUTS | PROTOCOL
    counts = {name: count for name, (count, _) in opened.items() if name in OUTPUTS}
    p = len(frame)
    steps = frame.attrs["iterations"]
    assert counts == {"model.logit.df_ok": 1, "model.logit.design_ok": 1,
                      "model.logit.converged": steps - 2, "model.logit.n": 1,
                      "model.logit.coef": p, "model.logit.se_squared": p}


def test_derived_response_filter_and_missing_values(consortium, demo_data):
    """A condition as the response, a filter, a party's column with missing values and a
    cross-party interaction: statsmodels drops the same rows."""
    t = consortium.link()
    t = t[t.age >= 30]
    t = t.assign(costly=t.cost_2021 > 4000)
    formula = "costly ~ disease_activity + app_user:age + sex"
    got = logit(t, formula).collect()
    plain = _plain(demo_data)
    plain = plain[plain.age >= 30].assign(costly=lambda d: (d.cost_2021 > 4000).astype(int))
    fit = smf.logit(formula, data=plain).fit(disp=0, tol=1e-12)
    assert fit.nobs < len(plain)  # rows with a missing activity are dropped
    _matches(got, fit)


def test_separation_is_refused(consortium):
    t = consortium.link()
    t = t.assign(costly=t.cost_2020 > 3000)
    frame = logit(t, "costly ~ cost_2020", maxiter=6)
    with pytest.raises(PlanError, match=r"did not converge.*separated"):
        frame.collect()


def test_singular_design_refused(consortium):
    t = consortium.link()
    t = t[t.income_band == "Q1"]  # the other bands' dummies are all zero
    raw = consortium.run_raw(logit(t, "readmitted ~ income_band + age").plan())
    with pytest.raises(PlanError, match="singular"):
        to_frame(raw.plan, raw.results["insurer"]["stats"])
    names = _opened(raw)
    assert "model.logit.design_ok" in names
    assert not names & {"model.logit.n", "model.logit.coef", "model.logit.converged"}


def test_residual_df_and_plan_errors(consortium):
    t = consortium.link()
    plan = logit(t, "readmitted ~ age + income_band").plan()
    plan["min_residual_df"] = 5000
    raw = consortium.run_raw(plan)
    with pytest.raises(PlanError, match=r"residual degrees of freedom.*5000"):
        to_frame(raw.plan, raw.results["insurer"]["stats"])
    assert _opened(raw) & OUTPUTS == {"model.logit.df_ok"}
    with pytest.raises(PlanError, match="must be bool, not numeric"):
        logit(t, "cost_2021 ~ age")
    with pytest.raises(PlanError, match="maxiter"):
        validate_plan({**plan, "model": {**plan["model"], "maxiter": 0}})
    numeric = {**plan["model"], "response": {"name": "age", "expr": {"col": "insurer.age"}}}
    with pytest.raises(PlanError, match="truth value"):
        validate_plan({**plan, "model": numeric})


@pytest.mark.parametrize("form", ["limbs", "objects"])
def test_logistic_function_in_mpc(form):
    """The secure logistic function (one in-process party) against numpy, on limb shares
    and on MPyC's share arrays (the reference path)."""
    from ppa_kernel.party.secure.logistic import LimbOps, ObjectOps, logistic
    from ppa_kernel.party.secure.runtime import mpc, value_type

    ops = {"limbs": LimbOps, "objects": ObjectOps}[form]

    field = value_type().field
    u = np.concatenate([np.linspace(-250, 250, 101), np.linspace(-3, 3, 61)])
    raw = np.array([round(v * 2 ** 56) % field.modulus for v in u], dtype=object)
    def run(u):
        out = mpc.run(logistic(u, ops))
        return [x.objects() if form == "limbs" else x for x in out]

    p, w, spill = run(raw)
    assert int(spill[0]) == 0  # every |u| < 256
    outside = np.array([0, 300 * 2 ** 56, field.modulus - 400 * 2 ** 56], dtype=object)
    assert int(run(outside)[2][0]) != 0
    half = field.modulus // 2

    def real(shares) -> np.ndarray:
        values = [int(v) for v in np.asarray(shares).tolist()]
        return np.array([(v - field.modulus if v > half else v) / 2 ** 56 for v in values])

    want = 1 / (1 + np.exp2(u))
    p, w = real(p), real(w)
    assert np.abs(p - want).max() < 1e-13  # the design target is 2^-40 relative
    assert np.abs(w - want * (1 - want)).max() < 1e-13
    inner = want > 1e-4
    assert (np.abs(p / want - 1)[inner] < 1e-11).all()


@pytest.mark.parametrize("carry", [1, 3, 4, 10])  # 3, 4 and 5 parties: 3, 4 and 10
def test_exponential_and_division_constants(carry):
    """The public constants of the secure exponential and division, replayed in plain
    integers with the worst truncation carries: 2^g on [-carry, 1] and 1/D on
    [2^-carry, 3] to the target accuracy."""
    from ppa_kernel.party.secure.logistic import ACCURACY, ONE, _Constants

    c = _Constants(carry)

    def mul(a: int, b: int, up: int) -> int:
        return (a * b >> 56) + up

    for up in (0, carry):
        for g in np.linspace(-carry, 1, 97):
            t = mul(round(g * ONE) - c.centre, c.step, up)
            y = c.taylor[-1]
            for coefficient in reversed(c.taylor[:-1]):
                y = mul(y, t, up) + coefficient
            for _ in range(c.squarings):
                y = mul(y, y, up)
            y = mul(y, c.power_of_centre, up)
            assert abs(y / ONE / 2 ** g - 1) < 4 * ACCURACY, (g, up)
        for d in np.geomspace(2.0 ** -carry, 2.999, 97):
            raw = round(d * ONE)
            y = c.alpha - mul(raw, c.beta, up)
            error = ONE - mul(raw, y, up)
            for _ in range(c.goldschmidt):
                y = mul(y, ONE + error, up)
                error = mul(error, error, up)
            assert abs(y / ONE * raw / ONE - 1) < 4 * ACCURACY + 2 ** -50 * carry, (d, up)
    assert math.isclose(c.power_of_centre / ONE, 2 ** ((1 - carry) / 2))
