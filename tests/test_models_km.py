"""Kaplan-Meier curves and the log-rank test under MPC against statsmodels on the same join."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from oracle import join
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from ppa_kernel.analyst.results import to_frame
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models.km import index_digits, kaplan_meier, time_grid
from ppa_kernel.contract.plan import validate_plan

PARTIES = ["insurer", "hospital", "bureau"]
STEP = 30
MIN_CELL = 10


def _run(consortium, query):
    raw = consortium.run_raw(query.plan())
    first = raw.results[PARTIES[0]]
    return to_frame(raw.plan, first["stats"]), raw


@pytest.fixture(scope="module")
def plain(demo_data) -> pd.DataFrame:
    return join(demo_data, PARTIES)


def _binned(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """The durations rounded up to the grid (the same ties as under MPC)."""
    return frame.assign(time=np.maximum(np.ceil(frame.followup_days / step), 1) * step)


@pytest.fixture(scope="module")
def by_app(consortium):
    t = consortium.link()
    return _run(consortium, kaplan_meier(t, "followup_days", "readmitted", by="app_user"))


@pytest.fixture(scope="module")
def by_household(consortium):
    """Thin tails (the 730-day censorings left out), one group below the minimum, and a
    grid of 17 times (the top digit of the interval index is set for one time only)."""
    t = consortium.link()
    t = t[t.readmitted | (t.followup_days < 700)]
    return _run(consortium, kaplan_meier(t, "followup_days", "readmitted", by="household",
                                         step=45))


def _check_curves(got: pd.DataFrame, rows: pd.DataFrame, column: str) -> int:
    """Released S equal statsmodels' where >= MIN_CELL are at risk, NaN elsewhere."""
    released = 0
    for level in got.columns:
        part = rows[rows[column] == level]
        curve = got[level]
        at_risk = np.array([(part.time >= t).sum() for t in curve.index[1:]])
        assert np.isnan(curve.iloc[0]) == (len(part) < MIN_CELL)
        shown = ~np.isnan(curve.to_numpy()[1:])
        np.testing.assert_array_equal(shown, at_risk >= MIN_CELL, err_msg=str(level))
        if not shown.any():
            continue
        fit = SurvfuncRight(part.time.to_numpy(), part.readmitted.astype(int).to_numpy())
        at = np.searchsorted(fit.surv_times, curve.index[1:][shown], side="right") - 1
        want = np.where(at >= 0, fit.surv_prob[np.maximum(at, 0)], 1.0)
        np.testing.assert_allclose(curve.to_numpy()[1:][shown], want, rtol=1e-9)
        assert got.attrs["suppressed"][level].to_numpy()[1:][~shown].all()
        released += int(shown.sum())
    return released


def test_km_and_logrank_match_statsmodels(by_app, plain):
    got, _ = by_app
    plain = _binned(plain, STEP)
    assert list(got.index) == [0, *range(STEP, 750 + 1, STEP)]
    assert got.index.name == "followup_days" and got.columns.name == "app_user"
    assert _check_curves(got, plain, "app_user") == 2 * 25
    chi2, p = survdiff(plain.time, plain.readmitted.astype(int), plain.app_user)
    logrank = got.attrs["logrank"]
    assert logrank["df"] == 1 and logrank["groups"] == [False, True]
    np.testing.assert_allclose(logrank["chi2"], chi2, rtol=1e-9)
    np.testing.assert_allclose(logrank["p"], p, rtol=1e-6)


def test_curves_stop_below_min_cell_and_small_groups_stay_out(by_household, plain):
    got, _ = by_household
    assert list(got.index) == [0, *range(45, 765 + 1, 45)]
    rows = _binned(plain[plain.readmitted | (plain.followup_days < 700)], 45)
    sizes = rows.household.value_counts()
    assert sizes["other"] < MIN_CELL <= sizes.drop("other").min()
    released = _check_curves(got, rows, "household")
    assert 0 < released < 3 * 17  # the tails are cut
    assert got["other"].isna().all()
    tested = rows[rows.household != "other"]
    chi2, p = survdiff(tested.time, tested.readmitted.astype(int), tested.household)
    logrank = got.attrs["logrank"]
    assert logrank["groups"] == ["couple", "family", "single"] and logrank["df"] == 2
    np.testing.assert_allclose(logrank["chi2"], chi2, rtol=1e-9)
    np.testing.assert_allclose(logrank["p"], p, rtol=1e-6)


@pytest.mark.parametrize("case", ["by_app", "by_household"])
def test_opens_only_named_outputs(case, request):
    got, raw = request.getfixturevalue(case)
    curves = got.to_numpy()[1:]
    for party, result in raw.results.items():
        opened: dict[str, list] = {}
        for entry in result["openings"]:
            opened.setdefault(entry["name"], []).extend(entry["values"])
        names = {n for n in opened if not n.startswith("linkage.")}  # a first run links
        assert names <= {"protocol.comparison_masked", "protocol.plan_agreement",
                         "protocol.truncation_masked", "model.km.at_risk_pass",
                         "model.km.survival", "model.km.chi2"}, party
        assert len(opened["model.km.at_risk_pass"]) == curves.size
        assert list(map(int, opened["model.km.at_risk_pass"])) == \
            (~np.isnan(curves)).T.astype(int).ravel().tolist()  # group by group
        assert len(opened["model.km.survival"]) == int((~np.isnan(curves)).sum())
        assert len(opened["model.km.chi2"]) == 1


def test_plan_releases_no_cells(consortium):
    t = consortium.link()
    plan = kaplan_meier(t, "followup_days", "readmitted", by=["app_user"], step=90).plan()
    assert plan["aggregates"] == [] and [g["name"] for g in plan["groupby"]] == ["app_user"]
    model = plan["model"]
    assert model["times"] == list(range(90, 810 + 1, 90))
    assert model["edges"] == [-0.5, *(t + 0.5 for t in model["times"])]
    assert model["event"] == {"col": "hospital.readmitted"}
    assert {"hospital.followup_days", "hospital.readmitted"} <= set(plan["columns"])
    assert plan["filter"] is not None  # rows on the grid with a known event
    numeric = kaplan_meier(t, "followup_days", "admissions_2021").plan()  # 1 = event
    assert numeric["model"]["event"] == {"op": "eq", "args": [
        {"col": "insurer.admissions_2021"}, {"const": 1}]}
    with pytest.raises(PlanError, match="numeric column"):
        kaplan_meier(t, "household", "readmitted")
    with pytest.raises(PlanError, match="boolean"):
        kaplan_meier(t, "followup_days", "household")
    with pytest.raises(PlanError, match="step"):
        kaplan_meier(t, "followup_days", "readmitted", step=0)
    with pytest.raises(PlanError, match="aggregates"):
        validate_plan({**plan, "aggregates": [{"name": "n", "stat": "size", "expr": None}]})


@pytest.mark.parametrize("by", [None, ["app_user", "sex"]])
def test_table_shape(consortium, by):
    from ppa_kernel.contract.models.km import KaplanMeier, group_labels

    plan = kaplan_meier(consortium.link(), "followup_days", "readmitted", by=by,
                        step=365).plan()
    labels = group_labels(plan) if by else ["survival"]
    curves = [[0.9, None], [None, None], [0.8, 0.7], [0.95, 0.5]][:len(labels)]
    tested = [0, 2, 3] if by else []
    stats = {"model": {"survival": curves, "chi2": 4.5 if by else None,
                       "logrank_groups": tested}}
    got = KaplanMeier().table(plan, stats, pd.DataFrame())
    assert list(got.index) == [0, 365, 730] and got.index.name == "followup_days"
    assert list(got.columns) == labels
    if by:
        assert got.columns.names == ["app_user", "sex"]
        np.testing.assert_array_equal(got.to_numpy(), [[1, np.nan, 1, 1],
                                                       [0.9, np.nan, 0.8, 0.95],
                                                       [np.nan, np.nan, 0.7, 0.5]])
        assert got.attrs["logrank"]["df"] == 2
        assert got.attrs["logrank"]["groups"] == [labels[g] for g in tested]
        assert got.attrs["suppressed"].to_numpy().sum() == 4
    else:
        np.testing.assert_array_equal(got["survival"], [1.0, 0.9, np.nan])
        assert np.isnan(got.attrs["logrank"]["chi2"]) and got.attrs["logrank"]["groups"] == []


@pytest.mark.parametrize("high", [30, 60, 90, 150, 730, 1000])
def test_grid_rounds_whole_durations_up(high):
    from ppa_kernel.party.owner import evaluate

    times, edges = time_grid(1.0, float(high), STEP)
    days = pd.DataFrame({"followup_days": np.arange(0, high + 1)})
    digits = index_digits({"col": "hospital.followup_days"}, edges)
    assert len(digits) == (len(times) - 1).bit_length()
    index = sum(evaluate(d, days, "hospital").astype(int).to_numpy() << j
                for j, d in enumerate(digits))
    got = np.asarray(times)[index]
    np.testing.assert_array_equal(got, np.maximum(np.ceil(days.followup_days / STEP), 1) * STEP)


def test_synthetic_survival_columns_and_planted_effect():
    from ppa_kernel.analyst.synthetic import PLANTED_SURVIVAL, generate

    data = generate()
    hospital = data["hospital"]
    assert hospital.followup_days.between(1, 730).all()
    assert hospital.readmitted.dtype == bool
    assert hospital[["followup_days", "readmitted"]].notna().all().all()
    frame = join(data, PARTIES)
    s365 = {}
    for user, part in frame.groupby("app_user"):
        fit = SurvfuncRight(part.followup_days, part.readmitted.astype(int))
        s365[user] = fit.surv_prob[np.searchsorted(fit.surv_times, 365, side="right") - 1]
    chi2, _ = survdiff(frame.followup_days, frame.readmitted.astype(int), frame.app_user)
    assert int(frame.readmitted.sum()) == 1967 and "1967 were" in PLANTED_SURVIVAL
    assert (round(s365[False], 2), round(s365[True], 2)) == (0.62, 0.76)
    assert f"{chi2:.1f}" == "115.8"
