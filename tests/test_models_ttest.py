"""Welch's t-test under MPC against scipy on the same joined data."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import join
from scipy import stats

PARTIES = ["insurer", "hospital", "bureau"]


def test_welch_per_stratum_matches_scipy(consortium, demo_data):
    t = consortium.link()
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    got = t.ttest("change", by="app_user", strata="income_band").collect()
    plain = join(demo_data, PARTIES)
    plain["change"] = plain.cost_2021 - plain.cost_2020
    tested = 0
    for band in consortium.catalog["bureau"]["income_band"]["levels"]:
        rows = plain[plain.income_band == band]
        a = rows.loc[rows.app_user == False, "change"].dropna()  # noqa: E712
        b = rows.loc[rows.app_user == True, "change"].dropna()  # noqa: E712
        row = got.loc[band]
        if min(len(a), len(b)) < 10:
            assert np.isnan(row["t"]) and got.attrs["suppressed"].loc[band, "t"]
            continue
        want = stats.ttest_ind(a, b, equal_var=False)
        assert row["n[False]"] == len(a) and row["n[True]"] == len(b)
        np.testing.assert_allclose(row["mean[False]"], a.mean(), rtol=1e-6)
        np.testing.assert_allclose(row["t"], want.statistic, rtol=1e-6)
        np.testing.assert_allclose(row["df"], want.df, rtol=1e-6)
        np.testing.assert_allclose(row["p"], want.pvalue, rtol=1e-5, atol=1e-12)
        tested += 1
    assert tested >= 3


def test_ttest_opens_only_named_outputs(consortium):
    t = consortium.link()
    result = t.ttest("cost_2021", by="app_user").collect()
    assert set(result.columns) >= {"t", "df", "p"}
    assert list(result.index) == ["all"], "an ungrouped result's one row is labelled 'all'"
    assert str(result["n[False]"].dtype) == "Int64" and str(result["n[True]"].dtype) == "Int64"
    raw = consortium.run_raw(t.ttest("cost_2021", by="app_user").plan())
    names = {e["name"] for r in raw.results.values() for e in r["openings"]}
    assert not any("sumsq" in n for n in names)
    assert {"model.ttest.t_squared", "model.ttest.df"} <= names


def test_ttest_needs_two_levels(consortium):
    from ppa_kernel.contract.errors import PlanError

    with pytest.raises(PlanError, match="two groups"):
        consortium.link().ttest("cost_2021", by="income_band")
