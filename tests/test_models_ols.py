"""OLS with a formula under MPC against statsmodels on the same joined data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.formula.api as smf
from oracle import join

from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.results import to_frame
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models.formula import design_columns, parse_formula
from ppa_kernel.contract.models.ols import COLUMNS, ols

PARTIES = ["insurer", "hospital", "bureau"]
MAIN = "cost_change ~ app_user * income_band + age"
OUTPUTS = {"model.ols.df_ok", "model.ols.design_ok", "model.ols.n", "model.ols.coef",
           "model.ols.se_squared", "model.ols.r_squared"}


def _names(raw) -> list[dict]:
    return [e for r in raw.results.values() for e in r["openings"]]


def _plain(demo_data) -> pd.DataFrame:
    plain = join(demo_data, PARTIES)
    plain["cost_change"] = plain.cost_2021 - plain.cost_2020
    plain["disease_activity"] = plain.disease_activity.astype(float)
    return plain


def _close(got, want, scale, rtol: float = 1e-6) -> None:
    """Within rtol of the value or rtol of its scale (the standard error): the inputs are
    fixed point (2^-16), so a coefficient near 0 is exact to a fraction of its error."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    bound = rtol * (np.abs(want) + np.asarray(scale, dtype=float))
    assert (np.abs(got - want) <= bound).all(), (got - want) / bound


def _matches(got: pd.DataFrame, fit) -> None:
    """Coefficient table and fit statistics as statsmodels."""
    se = fit.bse.to_numpy()
    _close(got["coef"], fit.params, se)
    _close(got["std err"], se, 0)
    _close(got["t"], fit.tvalues, 1)
    np.testing.assert_allclose(got["P>|t|"], fit.pvalues, rtol=1e-5, atol=1e-12)
    ci = fit.conf_int()
    _close(got["[0.025"], ci[0], se)
    _close(got["0.975]"], ci[1], se)
    assert got.attrs["n"] == fit.nobs and got.attrs["df_resid"] == fit.df_resid
    np.testing.assert_allclose(got.attrs["r_squared"], fit.rsquared, rtol=1e-8)
    np.testing.assert_allclose(got.attrs["r_squared_adj"], fit.rsquared_adj, rtol=1e-8)


@pytest.fixture(scope="module")
def main_run(consortium):
    t = consortium.link()
    t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
    plan = ols(t, MAIN).plan()
    start = time.perf_counter()
    raw = consortium.run_raw(plan)
    elapsed = time.perf_counter() - start
    phases = raw.results["insurer"]["phases"]
    print(f"\nols {MAIN!r} at demo scale: {elapsed:.1f} s for the run, "
          f"{phases.get('model', 0):.1f} s in the model phase")
    return raw, to_frame(raw.plan, raw.results["insurer"]["stats"])


def test_formula_columns_match_patsy():
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.normal(size=40), "x": rng.normal(size=40),
                         "z": rng.normal(size=40), "a": rng.choice(["p", "q", "r"], 40),
                         "b": rng.choice([False, True], 40), "c": rng.choice(["u", "v"], 40)})
    levels = {"a": ["p", "q", "r"], "b": [False, True], "c": ["u", "v"]}
    for formula in ["y ~ b * a + x", "y ~ x:a", "y ~ a:b", "y ~ x + a:x - 1", "y ~ 0 + a:x",
                    "y ~ (a + x) * b", "y ~ x:z + a:b + x", "y ~ a*b*c - a:b", "y ~ 1",
                    "y ~ (a + b + c) * (x + z)", "y ~ c:a + a:c:b + b"]:
        want = patsy.dmatrices(formula, data)[1].design_info.column_names
        got = [c.name for c in design_columns(parse_formula(formula), {"x", "z"}, levels)]
        assert got == want, formula


def test_formula_errors(consortium):
    t = consortium.link()
    with pytest.raises(PlanError, match=r"unknown column 'incme_band'.*income_band"):
        ols(t, "cost_2021 ~ incme_band")
    with pytest.raises(PlanError, match="must be numeric"):
        ols(t, "app_user ~ age")
    with pytest.raises(PlanError, match="do not support"):
        ols(t, "cost_2021 ~ log(age)")
    with pytest.raises(PlanError, match="response ~ terms"):
        ols(t, "cost_2021 + age")


def test_missing_categories_drop_rows():
    catalog = {"a": {"y": {"kind": "numeric", "min": 0, "max": 1, "missing": 0},
                     "g": {"kind": "categorical", "levels": ["u", "v"], "missing": 3}},
               "b": {"x": {"kind": "bool", "levels": [False, True], "missing": 0}}}
    model = ols(SecureFrame(catalog, ["a", "b"], ["a", "b"]), "y ~ g * x").plan()["model"]
    assert [d["name"] for d in model["design"]] == \
        ["Intercept", "g[T.v]", "x[T.True]", "g[T.v]:x[T.True]"]
    assert model["complete"] == [{"op": "isin", "args": [{"col": "a.g"}], "values": ["u", "v"]}]
    assert model["design"][3]["expr"]["op"] == "mul" and model["centered"]


def test_main_model_matches_statsmodels(main_run, demo_data):
    _, got = main_run
    fit = smf.ols(MAIN, data=_plain(demo_data)).fit()
    assert list(got.index) == list(fit.params.index)
    assert list(got.columns) == COLUMNS
    _matches(got, fit)


def test_openings_are_only_the_named_outputs(main_run):
    raw, got = main_run
    entries = _names(raw)
    names = {e["name"] for e in entries}
    assert names <= OUTPUTS | {"disclosure.pass", "protocol.comparison_masked",
                               "protocol.truncation_masked", "linkage.ready",
                               "linkage.party_sizes", "linkage.prf_masked",
                               "linkage.equality_masked", "linkage.epoch", "disclosure.reason",
            "protocol.plan_agreement"}
    assert OUTPUTS <= names and not any(n.startswith("release.") for n in names)
    p = len(got)
    counts = {e["name"]: e["count"] for e in entries if e["name"] in OUTPUTS}
    assert counts == {"model.ols.df_ok": 1, "model.ols.design_ok": 1, "model.ols.n": 1,
                      "model.ols.coef": p, "model.ols.se_squared": p,
                      "model.ols.r_squared": 1}


def test_party_columns_filter_missing_values_no_intercept(consortium, demo_data):
    t = consortium.link()
    t = t[t.age >= 30]
    formula = ("insurer.cost_2021 ~ 0 + bureau.education + hospital.disease_activity"
               " + hospital.disease_activity:insurer.age + insurer.age")
    got = ols(t, formula).collect()
    assert list(got.index) == ["bureau.education[high]", "bureau.education[low]",
                               "bureau.education[medium]", "hospital.disease_activity",
                               "hospital.disease_activity:insurer.age", "insurer.age"]
    plain = _plain(demo_data)
    plain = plain[plain.age >= 30]
    fit = smf.ols("cost_2021 ~ 0 + education + disease_activity + disease_activity:age + age",
                  data=plain).fit()
    assert fit.nobs < len(plain)  # rows with a missing cost or activity are dropped
    _matches(got, fit)


def test_singular_design_refused(consortium):
    t = consortium.link()
    t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
    t = t[t.income_band == "Q1"]  # the other bands' dummies are all zero
    raw = consortium.run_raw(ols(t, "cost_change ~ income_band + age").plan())
    with pytest.raises(PlanError, match="singular"):
        to_frame(raw.plan, raw.results["insurer"]["stats"])
    names = {e["name"] for e in _names(raw)}
    assert "model.ols.design_ok" in names
    assert not names & {"model.ols.n", "model.ols.coef", "model.ols.se_squared"}


def test_too_few_rows_or_residual_df_refused(consortium):
    t = consortium.link()
    plan = ols(t, "cost_2021 ~ age + income_band").plan()
    plan["min_residual_df"] = 5000
    raw = consortium.run_raw(plan)
    with pytest.raises(PlanError, match=r"residual degrees of freedom.*5000"):
        to_frame(raw.plan, raw.results["insurer"]["stats"])
    names = {e["name"] for e in _names(raw)}
    assert "model.ols.df_ok" in names and not names & (OUTPUTS - {"model.ols.df_ok"})
    with pytest.raises(PlanError, match="fewer than 100000 complete rows"):
        ols(t, "cost_2021 ~ age").with_min_cell_size(100000).collect()
