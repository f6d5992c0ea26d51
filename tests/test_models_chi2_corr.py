"""Chi-square test and Pearson correlations under MPC against scipy and pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from oracle import join, run_recorded
from scipy import stats

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models.chi2 import chi2
from ppa_kernel.contract.models.corr import corr

PARTIES = ["insurer", "hospital", "bureau"]
ALWAYS = {"linkage.ready", "linkage.party_sizes", "linkage.prf_masked",
          "linkage.equality_masked", "linkage.epoch", "disclosure.reason",
            "protocol.plan_agreement",
               "disclosure.pass", "protocol.comparison_masked",
          "protocol.truncation_masked"}


def run(consortium, query):
    """The released table and the opened names -> (total count, values)."""
    _, table, opened = run_recorded(consortium, query)
    return table, opened


@pytest.fixture(scope="module")
def plain(demo_data):
    return join(demo_data, PARTIES)


@pytest.fixture(scope="module")
def chi2_runs(consortium):
    t = consortium.link()
    cohort = t[(t.age >= 40) | t.app_user]  # cross-party filter
    return {"full": run(consortium, chi2(t, "education", "app_user")),
            "small_cells": run(consortium, chi2(cohort, "region", "income_band")),
            "empty_row": run(consortium, chi2(t[t.region != "North"], "region", "app_user")),
            "tiny": run(consortium, chi2(t[t.age >= 75], "sex", "app_user"))}


def scipy_chi2(rows: pd.Series, columns: pd.Series):
    table = pd.crosstab(rows, columns)
    return table, stats.chi2_contingency(table, correction=False)


def test_chi2_matches_scipy_when_every_cell_is_released(chi2_runs, plain):
    (got, _), (table, want) = chi2_runs["full"], scipy_chi2(plain.education, plain.app_user)
    counts = got.attrs["table"]
    assert not counts.attrs["suppressed"].to_numpy().any()
    expected = table.reindex(index=counts.index, columns=counts.columns).fillna(0)
    np.testing.assert_array_equal(counts.to_numpy(), expected.to_numpy())
    np.testing.assert_allclose(got.loc["all", "chi2"], want.statistic, rtol=1e-9)
    assert got.loc["all", "df"] == want.dof
    np.testing.assert_allclose(got.loc["all", "p"], want.pvalue, rtol=1e-7)
    assert got.loc["all", "n"] == len(plain)
    assert list(got.index) == ["all"]
    assert {str(counts[c].dtype) for c in counts.columns} == {"Int64"}
    assert str(got["n"].dtype) == "Int64" and str(got["df"].dtype) == "Int64"


@pytest.mark.parametrize("case", ["small_cells", "empty_row"])
def test_chi2_is_refused_when_a_cell_is_suppressed(chi2_runs, plain, case):
    got, opened = chi2_runs[case]
    counts = got.attrs["table"]
    assert counts.attrs["suppressed"].to_numpy().any()
    assert np.isnan(got.loc["all", "chi2"]) and "suppressed" in got.attrs["refused"]
    assert "model.chi2.chi2" not in opened
    if case == "small_cells":  # the released cells are still the oracle's
        cohort = plain[(plain.age >= 40) | plain.app_user.astype(bool)]
        table, _ = scipy_chi2(cohort.region, cohort.income_band)
        expected = table.reindex(index=counts.index, columns=counts.columns).fillna(0)
        hidden = counts.attrs["suppressed"].to_numpy()
        assert (hidden == (expected.to_numpy() < 10)).all()
        np.testing.assert_array_equal(counts.to_numpy()[~hidden], expected.to_numpy()[~hidden])


def test_chi2_opens_only_the_table_and_the_statistic(chi2_runs):
    for case, (got, opened) in chi2_runs.items():
        assert set(opened) <= ALWAYS | {"release.count:size", "model.chi2.chi2"}, case
        cells = got.attrs["table"].size
        passing = int((~got.attrs["table"].attrs["suppressed"]).to_numpy().sum())
        assert opened["disclosure.pass"][0] == cells + 1  # the cells, then the total
        assert opened.get("release.count:size", (0,))[0] == passing
        if case != "full":
            assert "model.chi2.chi2" not in opened
        else:
            count, values = opened["model.chi2.chi2"]
            assert count == 1 and float(values[0][0]) == pytest.approx(got.loc["all", "chi2"])


def test_chi2_refuses_a_table_below_the_minimum_cell_size(chi2_runs, plain):
    got, opened = chi2_runs["tiny"]
    assert 0 < (plain.age >= 75).sum() < 10
    assert opened["disclosure.pass"][1][-1] == [0]
    assert np.isnan(got.loc["all", "chi2"]) and np.isnan(got.loc["all", "p"])
    assert got.attrs["suppressed"].loc["all", "chi2"] and "refused" in got.attrs["refused"]
    assert got.loc["all", "df"] == 1


MEASURES = ["cost_2021", "age", "app_user", "outpatient_visits", "intensity_load"]


@pytest.fixture(scope="module")
def corr_runs(consortium):
    t = consortium.link()
    t = t.assign(intensity_load=t.app_use_intensity * t.admissions_2021)  # cross-party
    cohort = t[(t.age >= 40) & (t.education != "low")]
    users = t[t.app_user]
    return {"cohort": run(consortium, corr(cohort, MEASURES)),
            "constant": run(consortium, corr(users, ["app_user", "age", "cost_2021"])),
            "tiny": run(consortium, corr(t[t.age >= 75], ["age", "cost_2021"]))}


def encoded(values: pd.Series) -> pd.Series:
    """Values as the parties input them: round(x * 2^16) / 2^16."""
    return np.rint(values.astype(float) * 65536) / 65536


def test_corr_matches_pandas_and_pearsonr(corr_runs, plain):
    frame = plain[(plain.age >= 40) & (plain.education != "low")]
    frame = frame.assign(intensity_load=frame.app_use_intensity * frame.admissions_2021)
    complete = frame[MEASURES].astype(float).dropna()
    assert len(complete) < len(frame), "some rows must drop out (listwise)"
    got, _ = corr_runs["cohort"]
    matrix = got.attrs["matrix"].loc[MEASURES, MEASURES]
    np.testing.assert_allclose(matrix, complete.corr(), rtol=1e-6, atol=1e-9)
    # Against the encoded inputs the secure arithmetic is exact to rounding.
    inputs = complete.apply(encoded).assign(intensity_load=encoded(
        frame.app_use_intensity).mul(encoded(frame.admissions_2021)).loc[complete.index])
    np.testing.assert_allclose(matrix, inputs.corr(), rtol=1e-12, atol=1e-14)
    assert len(got) == len(MEASURES) * (len(MEASURES) - 1) // 2
    assert str(got["n"].dtype) == "Int64"
    for row in got.itertuples():
        ref = stats.pearsonr(complete[row.x], complete[row.y])
        assert row.n == len(complete)
        np.testing.assert_allclose(row.r, ref.statistic, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(row.p, ref.pvalue, rtol=1e-5, atol=1e-12)


def test_corr_of_a_constant_measure_is_nan_like_pandas(corr_runs, plain):
    got, _ = corr_runs["constant"]
    users = plain[plain.app_user.astype(bool)][["app_user", "age", "cost_2021"]]
    want = users.astype(float).dropna().corr()
    matrix = got.attrs["matrix"]
    assert matrix.isna().equals(want.isna())
    np.testing.assert_allclose(matrix.loc["age", "cost_2021"], want.loc["age", "cost_2021"],
                               rtol=1e-6)
    assert np.isnan(got.set_index(["x", "y"]).loc[("app_user", "age"), "p"])


def test_corr_opens_only_n_and_r(corr_runs):
    for case, (got, opened) in corr_runs.items():
        assert set(opened) <= ALWAYS | {"model.corr.n", "model.corr.r"}, case
        assert opened["disclosure.pass"][0] == 1  # the complete-row count, nothing else
        k = len(got.attrs["matrix"])
        if case == "tiny":
            assert opened["disclosure.pass"][1] == [[0]]
            assert not {"model.corr.n", "model.corr.r"} & set(opened)
            assert got[["r", "n", "p"]].isna().all().all() and "refused" in got.attrs
        else:
            assert opened["model.corr.n"][0] == 1
            assert opened["model.corr.r"][0] == k * (k + 1) // 2


def test_plans_are_checked(consortium):
    from ppa_kernel.contract.plan import validate_plan

    t = consortium.link()
    with pytest.raises(PlanError, match="at least two"):
        corr(t, ["age"])
    with pytest.raises(PlanError, match="categorical"):
        corr(t, ["age", "region"])
    plan = chi2(t, "sex", "app_user").plan()
    assert plan["aggregates"] == [{"name": "count", "stat": "size", "expr": None}]
    plan["groupby"][1]["levels"] = [True]
    with pytest.raises(PlanError, match="at least two levels"):
        validate_plan(plan)
    query = corr(t[t.age >= 40], ["age", t.cost_2021 - t.cost_2020]).with_min_cell_size(20)
    plan = query.plan()
    assert plan["min_cell_size"] == 20 and plan["model"]["kind"] == "corr"
    assert set(plan["columns"]) == {"insurer.age", "insurer.cost_2020", "insurer.cost_2021"}
