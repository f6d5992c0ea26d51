"""Empty cohorts say why: a filter outside a published range is refused before any run,
and a result whose every cell is suppressed carries (and shows) a notice naming k."""

from __future__ import annotations

import pytest
from test_plotting import CATALOG, PARTIES, FakeRunner, K

from ppa_kernel.analyst.cohort import EmptyCohort
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.results import format_html, format_table
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
        "age > 95 is outside the published range 18-90: this cohort is empty"
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
