"""Empty cohorts say why: a filter outside a published range is refused before any run,
and a result whose every cell is suppressed carries (and shows) a notice naming k."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_plotting import CATALOG, PARTIES, FakeRunner, K

from ppa_kernel.analyst.cohort import EmptyCohort
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.results import format_html, format_table
from ppa_kernel.contract.bounds import coarse
from ppa_kernel.contract.errors import PlanError, PPAError


class CountingRunner(FakeRunner):
    def __init__(self, data=None) -> None:
        super().__init__(data) if data else super().__init__()
        self.runs = 0

    def run(self, plan, **options):
        self.runs += 1
        return super().run(plan, **options)


def test_a_filter_outside_the_published_range_is_refused_before_any_run():
    runner = CountingRunner()
    t = SecureFrame(CATALOG, PARTIES, PARTIES, runner)
    with pytest.raises(EmptyCohort) as caught:
        t[t.age > 95].agg(n="size").collect()
    assert isinstance(caught.value, PlanError) and isinstance(caught.value, PPAError)
    assert caught.value.message == \
        "age > 95 is outside the published range 18 .. 90: this cohort is empty"
    assert "\n" not in str(caught.value) and runner.runs == 0
    for query, text in ((t[(t.sex == "F") & (10 < t.age)], None),  # in range
                        (t[(t.sex == "F") & (t.age < 18)], "age < 18 is outside"),
                        (t[95 <= t.age], "age >= 95 is outside"),
                        (t[t.cost_2021 == -1], "cost_2021 == -1 is outside")):
        if text is None:
            query.agg(n="size").collect()
            continue
        with pytest.raises(EmptyCohort, match=text):
            query.groupby("sex").agg(n="size").collect()
    assert runner.runs == 1


@pytest.mark.parametrize("build", [
    lambda t: t[t.age >= 90],           # the edge itself may hold rows
    lambda t: t[(t.age > 95) | (t.sex == "F")],  # only conjuncts are read
    lambda t: t[~(t.age < 18)],
], ids=["edge", "or", "not"])
def test_filters_that_may_select_rows_are_sent(build):
    runner = CountingRunner()
    t = SecureFrame(CATALOG, PARTIES, PARTIES, runner)
    build(t).agg(n="size").collect()
    assert runner.runs == 1


def test_every_cell_suppressed_carries_a_notice_naming_k():
    t = SecureFrame(CATALOG, PARTIES, PARTIES, CountingRunner(lambda cell: [1.0]))
    result = t.groupby("sex").agg(n="size", m=("cost_2021", "mean")).collect()
    assert result.attrs["suppressed"].to_numpy().all()
    notice = result.attrs["notice"]
    assert notice == (f"Every cell is suppressed: this cohort is empty or has fewer than "
                      f"k={K} rows (the minimum cell size).")
    assert format_table(result).splitlines()[0] == notice
    assert '<div class="ppa-notice"' in format_html(result) and notice in format_html(result)


def test_a_partly_released_result_has_no_notice():
    t = SecureFrame(CATALOG, PARTIES, PARTIES, CountingRunner())
    result = t.groupby(["income_band", "app_user"]).agg(n="size").collect()
    assert result.attrs["suppressed"].to_numpy().any()
    assert "notice" not in result.attrs
    assert "ppa-notice" not in format_html(result)


def test_published_bounds_never_land_inside_a_value():
    """Rounded outward in decimal: no float step inside (0.83 stays 0.83)."""
    assert coarse(0.83, False) == 0.83 and coarse(0.7, False) == 0.7
    assert coarse(-0.83, True) == -0.83 and coarse(0.831, True) == 0.84
    assert (coarse(123456, False), coarse(123456, True)) == (120000, 130000)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_coarse_bounds_contain_the_value_at_two_digits(value):
    low, high = coarse(value, False), coarse(value, True)
    assert low <= value <= high
    for bound in (low, high):
        if bound:
            assert len(Decimal(repr(bound)).normalize().as_tuple().digits) <= 2, bound


def fractional_frame(low: float, high: float) -> SecureFrame:
    catalog = {**CATALOG, "insurer": {**CATALOG["insurer"], "score": {
        "kind": "numeric", "levels": None, "min": low, "max": high, "missing": 0}}}
    return SecureFrame(catalog, PARTIES, PARTIES, CountingRunner())


def test_a_cohort_at_a_fractional_bound_is_sent():
    t = fractional_frame(coarse(0.83, False), coarse(0.97, True))
    for query in (t[t.score <= 0.83], t[t.score >= 0.97], t[t.score == 0.83],
                  t[t.score >= 0.97 + 1e-7], t[t.score == 0.83 - 1e-7]):  # fixed point
        query.agg(n="size").collect()
    assert t._runner.runs == 5
    for query, text in ((t[t.score < 0.83], "score < 0.83 is outside the published "
                                            "range 0.83 .. 0.97"),
                        (t[t.score >= 0.98], "score >= 0.98 is outside"),
                        (t[t.score == 0.5], "score == 0.5 is outside")):
        with pytest.raises(EmptyCohort, match=re.escape(text)):
            query.agg(n="size").collect()
    assert t._runner.runs == 5


def test_a_filter_on_an_all_missing_column_says_so():
    catalog = {**CATALOG, "insurer": {**CATALOG["insurer"], "dose": {
        "kind": "numeric", "levels": None, "min": None, "max": None, "missing": 1.0}}}
    t = SecureFrame(catalog, PARTIES, PARTIES, CountingRunner())
    with pytest.raises(EmptyCohort) as caught:
        t[t.dose > 0].agg(n="size").collect()
    assert caught.value.message == "dose has no values (all missing): this cohort is empty"
    assert t._runner.runs == 0


def test_every_path_to_the_parties_checks_the_cohort(consortium):
    """check (and so --dry-run) and run(plan) refuse it too, before anything is sent."""
    t = consortium.link()
    plan = t[t.age > 500].agg(n="size").plan()
    for call in (consortium.check, consortium.run, consortium.run_raw):
        with pytest.raises(EmptyCohort, match="age > 500 is outside the published range"):
            call(plan)
