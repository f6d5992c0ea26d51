"""Quantiles under MPC against numpy (inverted_cdf, then the same rounding) on the join."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from oracle import join, run_recorded

from ppa_kernel.contract.errors import ConsortiumError, PlanError
from ppa_kernel.contract.models.quantile import (
    expression_range,
    grid,
    nice_step,
    quantiles,
    step_fraction,
)

PARTIES = ["insurer", "hospital", "bureau"]
ALLOWED = {"linkage.ready", "linkage.party_sizes", "linkage.prf_masked",
           "linkage.equality_masked", "linkage.epoch", "disclosure.reason",
            "protocol.plan_agreement",
               "disclosure.pass", "protocol.comparison_masked",
           "model.quantile.bisection"}
QUARTILES = [0.25, 0.5, 0.75]


def rounded(values: np.ndarray, q: list[float], precision: float) -> np.ndarray:
    """numpy's inverted_cdf quantiles, rounded to the nearest multiple (halves down)."""
    v = np.quantile(values, q, method="inverted_cdf")
    p = Fraction(repr(float(precision)))
    return np.array([float(math.ceil(Fraction(float(x)) / p - Fraction(1, 2)) * p) for x in v])


def run(consortium, query):
    """The plan, the released table and the names (with total counts) every party opened."""
    plan, table, opened = run_recorded(consortium, query)
    return plan, table, {name: count for name, (count, _) in opened.items()}


@pytest.fixture(scope="module")
def plain(demo_data):
    frame = join(demo_data, PARTIES)
    frame["app_user"] = frame.app_user.astype(bool)
    return frame


@pytest.fixture(scope="module")
def runs(consortium):
    t = consortium.link()
    cohort = t[(t.age >= 40) | t.app_user]  # a filter mixing parties
    return {
        "cost": run(consortium, quantiles(t, "cost_2021", by="income_band")),
        "age": run(consortium, quantiles(t, "age")),
        "halves": run(consortium, quantiles(t[t.age >= 60], t.cost_2021 / 2,
                                            q=[0.5], by="income_band", precision=25)),
        "product": run(consortium, quantiles(cohort, t.cost_2021 * t.outpatient_visits,
                                             q=[0.1, 0.5, 0.9], by="region")),
    }


def check(plan: dict, table: pd.DataFrame, groups: list[tuple], exact: bool) -> int:
    """Compare every released cell with numpy; return how many cells were released."""
    model = plan["model"]
    p, qs = model["precision"], model["q"]
    assert list(table.columns) == [f"q{q:g}" for q in qs]
    released = 0
    for label, values in groups:
        row = table.loc[label]
        hidden = table.attrs["suppressed"].loc[label]
        if len(values) < plan["min_cell_size"]:
            assert hidden.all() and row.isna().all(), label
            continue
        want = rounded(values, qs, p)
        got = row.to_numpy(dtype=float)
        assert not hidden.any()
        if exact:
            np.testing.assert_array_equal(got, want, err_msg=str(label))
        else:  # encodings of derived values may round a threshold tie the other way
            assert np.all(np.abs(got - want) <= p * (1 + 1e-9)), (label, got, want)
        released += 1
    return released


def by(frame: pd.DataFrame, column: str, measure: pd.Series, levels: list) -> list[tuple]:
    return [(level, measure[frame[column] == level].dropna().to_numpy()) for level in levels]


def test_cost_by_income_band_matches_numpy(runs, plain, consortium):
    plan, table, _ = runs["cost"]
    assert plan["model"]["precision"] == 20  # 1-2-5 step of the published range / 1000
    levels = consortium.catalog["bureau"]["income_band"]["levels"]
    assert check(plan, table, by(plain, "income_band", plain.cost_2021, levels), True) == 5
    assert list(table.index) == levels and table.index.name == "income_band"


def test_age_quartiles_overall(runs, plain):
    plan, table, _ = runs["age"]
    assert plan["model"]["precision"] == 0.1 and list(table.index) == ["all"]
    assert check(plan, table, [("all", plain.age.to_numpy())], True) == 1


def test_filtered_frame_and_suppressed_small_cells(runs, plain, consortium):
    plan, table, opened = runs["halves"]
    old = plain[plain.age >= 60]
    levels = consortium.catalog["bureau"]["income_band"]["levels"]
    groups = by(old, "income_band", old.cost_2021 / 2, levels)
    assert check(plan, table, groups, False) == 1  # Q3 has exactly 10 values, others fewer
    assert table.attrs["suppressed"].sum().sum() == 4
    assert opened["disclosure.pass"] == 5
    # one cell and q; grid 1..380 of steps 25 (odd factor: magic division) -> 9 steps
    assert opened["model.quantile.bisection"] <= 1 * 9


def test_cross_party_measure_and_filter(runs, plain):
    plan, table, _ = runs["product"]
    cohort = plain[(plain.age >= 40) | plain.app_user]
    product = cohort.cost_2021 * cohort.outpatient_visits
    levels = sorted(plain.region.unique())
    assert check(plan, table, by(cohort, "region", product, levels), False) == 5


def test_only_named_openings(runs):
    for _, _, opened in runs.values():
        assert set(opened) <= ALLOWED
        assert not any(name.startswith("release.") for name in opened)
    _, _, opened = runs["cost"]
    steps = math.ceil(math.log2((19000 - 38) / 20 + 1))
    assert opened["disclosure.pass"] == 5
    assert 0 < opened["model.quantile.bisection"] <= 5 * 3 * steps


def test_default_policy_minimum_is_published_and_enforced(consortium):
    """Default policy: the minimum is the published range / 1000, in the column's units."""
    t = consortium.link()
    assert consortium.catalog["insurer"]["cost_2021"]["min_precision"] == 18.962
    assert consortium.catalog["insurer"]["age"]["min_precision"] == 0.072
    consortium.check(quantiles(t, "cost_2021", precision=18.962).plan())  # exactly allowed
    with pytest.raises(ConsortiumError) as info:
        consortium.check(quantiles(t, "cost_2021", precision=10).plan())
    text = str(info.value)
    assert "[insurer] quantile precision 10 is finer than insurer's minimum of 18.962 " \
        "for 'cost_2021' (published range 38 .. 19000 / quantile_resolution 1000)" in text
    assert "ask for precision=18.962 or coarser" in text
    assert [e.party for e in info.value.errors] == ["insurer"]
    # an expression: the column's minimum applies in its own units, whatever the scale
    with pytest.raises(ConsortiumError, match=r"precision 0\.05 is finer .* 'cost_2021'"):
        consortium.check(quantiles(t, t.cost_2021 / 1000, precision=0.05).plan())
    # a measure over two owners' columns: each owner checks its own (only insurer refuses)
    with pytest.raises(ConsortiumError) as info:
        consortium.check(quantiles(t, t.cost_2021 * t.outpatient_visits, precision=1).plan())
    assert [e.party for e in info.value.errors] == ["insurer"]


def test_narrower_range_than_published_is_refused(consortium):
    t = consortium.link()
    plan = quantiles(t, "cost_2021").plan()
    assert plan["model"]["range"] == [38.0, 19000.0]
    consortium.check(dict(plan, model=dict(plan["model"], range=[0, 20000])))  # wider: fine
    narrow = dict(plan, model=dict(plan["model"], range=[38.0, 5000.0]))
    with pytest.raises(ConsortiumError, match=r"\[insurer\] quantile range \[38, 5000\] does "
                       r"not contain insurer's published range 38 \.\. 19000 of 'cost_2021'"):
        consortium.check(narrow)
    # for an expression only the precision rule applies
    half = quantiles(t, t.cost_2021 / 2, precision=20).plan()
    consortium.check(dict(half, model=dict(half["model"], range=[100, 200])))


def test_builder_checks(consortium):
    t = consortium.link()
    assert nice_step(18.962) == 20 and nice_step(0.072) == 0.1 and nice_step(3) == 5
    assert expression_range(t, (t.cost_2021 - t.cost_2020).expr)[1] > 18000
    assert expression_range(t, (-t.age).expr) == (-90.0, -18.0)
    with pytest.raises(PlanError, match="positive"):
        quantiles(t, "age", precision=0)
    with pytest.raises(PlanError, match="strictly between"):
        quantiles(t, "age", q=[0.5, 1.0])
    with pytest.raises(PlanError, match="too fine"):
        quantiles(t, "cost_2021", precision=1e-6)
    with pytest.raises(PlanError, match="categorical"):
        quantiles(t, "region")
    plan = quantiles(t, "age", q=0.5).with_min_cell_size(20).plan()
    assert plan["min_cell_size"] == 20 and "insurer.age" in plan["columns"]
    assert plan["aggregates"] == [] and plan["model"]["q"] == [0.5]


@pytest.mark.parametrize(("precision", "bounds", "scale"), [
    (20, [38.0, 19000.0], 1), (50, [0, 45000], 1), (0.1, [18, 90], 1), (0.05, [0.038, 19], 3),
    (5, [-3.5, 120.25], 1), (0.3, [-1, 1], 2), (7, [0, 1000], 1), (500, [0, 209000], 2)])
def test_grid_index_is_exact(precision, bounds, scale):
    """The parties' grid index (bit arithmetic, magic division) is the rounding's k."""
    g = grid({"precision": precision, "range": bounds}, scale)
    p = step_fraction(precision)
    rng = np.random.default_rng(5)
    xs = [g.low, g.high, *rng.integers(g.low, g.high, 5000, endpoint=True).tolist()]
    for k in range(g.first, g.last + 1, max(1, (g.last - g.first) // 40)):  # at thresholds
        t = (k + Fraction(1, 2)) * p * g.unit
        xs += [v for v in (math.floor(t) - 1, math.floor(t), math.ceil(t), math.ceil(t) + 1)
               if g.low <= v <= g.high]
    for x in map(int, xs):
        want = max(math.ceil(Fraction(x, g.unit) / p - Fraction(1, 2)) - g.first, 0)
        assert g.index(x) == want < 1 << g.steps, (x, g.index(x), want)
