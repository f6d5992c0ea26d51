"""Figures of released results: bar heights, gaps for suppressed cells, labels, refusals."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.plotting import SUPPRESSED_GID, SUPPRESSED_LABEL_GID, plot
from ppa_kernel.analyst.results import released_table
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.program import SCALE_BITS, cell_levels

CATALOG = {
    "insurer": {
        "age": {"kind": "numeric", "levels": None, "min": 18.0, "max": 90.0, "missing": 0},
        "cost_2020": {"kind": "numeric", "levels": None, "min": 0.0, "max": 9e4, "missing": 0},
        "cost_2021": {"kind": "numeric", "levels": None, "min": 0.0, "max": 9e4, "missing": 0},
        "sex": {"kind": "categorical", "levels": ["F", "M"], "missing": 0},
    },
    "hospital": {
        "app_user": {"kind": "bool", "levels": [False, True], "missing": 0},
    },
    "bureau": {
        "income_band": {"kind": "categorical", "levels": ["Q1", "Q2", "Q3", "Q4"],
                        "missing": 0},
    },
}
PARTIES = ["bureau", "hospital", "insurer"]
K = 3
BANDS = ["Q1", "Q2", "Q3", "Q4"]


def rows(cell: dict) -> list[float]:
    """Made-up values of one cell: Q2 non-users and Q4 users have too few rows."""
    band = BANDS.index(cell.get("income_band", "Q1"))
    user = bool(cell.get("app_user", False))
    small = (band, user) in ((1, False), (3, True))
    n = 2 if small else 4 + 3 * band + (2 if user else 0)
    base = 100.0 * (band + 1) - (40.0 if user else 0.0)
    return [base + 7.5 * i - 3.25 * (i % 3) for i in range(n)]


class FakeRunner:
    """Releases made-up statistics as a consortium would: suppressed below ``K`` rows."""

    def __init__(self, data: Callable[[dict], list[float]] = rows) -> None:
        self.data = data

    def run(self, plan: dict, *, timeout: float | None = None,
            layout: str = "table") -> pd.DataFrame:
        plan = {**plan, "min_cell_size": max(plan.get("min_cell_size") or 0, K)}
        return released_table(plan, self.stats(plan), "run1", layout=layout)

    def stats(self, plan: dict) -> dict:
        """Integer counts, sums and sums of squares per cell, as parties return them."""
        cells = cell_levels(plan)
        out: dict = {"counts": {}, "sums": {}, "sumsqs": {}, "scales": {}}
        for agg in plan["aggregates"]:
            key = "size" if agg["stat"] == "size" else canonical_json(agg["expr"])
            values = [self.data(cell) for cell in cells]
            kept = [len(v) >= K for v in values]
            fixed = [[round(x * 2**SCALE_BITS) for x in v] for v in values]
            out["counts"][key] = [len(v) if ok else None for v, ok in zip(values, kept)]
            if key != "size":
                out["sums"][key] = [sum(f) if ok else None for f, ok in zip(fixed, kept)]
                out["sumsqs"][key] = [sum(x * x for x in f) if ok else None
                                      for f, ok in zip(fixed, kept)]
                out["scales"][key] = 1
        return out


def frame() -> SecureFrame:
    return SecureFrame(CATALOG, PARTIES, PARTIES, FakeRunner())


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def grouped() -> pd.DataFrame:
    t = frame()
    return t.groupby(["income_band", "app_user"]).agg(
        n=("cost_2021", "count"), mean=("cost_2021", "mean")).collect()


def value_bars(ax) -> dict[str, list]:
    """Released-value bars per legend label (suppressed outlines excluded)."""
    return {c.get_label(): list(c.patches) for c in ax.containers
            if not c.get_label().startswith("_suppressed")}


def gaps(ax) -> list:
    """The markers of suppressed cells (one per cell)."""
    return [a for a in [*ax.patches, *ax.lines] if a.get_gid() == SUPPRESSED_GID]


def gap_xs(ax) -> list[float]:
    return sorted(float(x) for m in gaps(ax) for x in m.get_xdata())


def gap_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == SUPPRESSED_LABEL_GID]


def all_bar_heights(ax) -> list[float]:
    return [p.get_height() for c in ax.containers for p in c.patches]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# ------------------------------------------------------------------------- bar figures
def test_grouped_bar_heights_are_the_released_means(grouped):
    ax = plot(grouped)
    bars = value_bars(ax)
    assert sorted(bars) == ["False", "True"]
    mask = grouped.attrs["suppressed"]["mean"]
    for user in (False, True):
        patches = bars[str(user)]
        assert len(patches) == len(BANDS)
        for i, (band, patch) in enumerate(zip(BANDS, patches)):
            want = grouped.loc[(band, user), "mean"]
            center = patch.get_x() + patch.get_width() / 2
            assert center == pytest.approx(i + (0.2 if user else -0.2))
            if mask[(band, user)]:
                assert patch.get_height() == 0 and np.isnan(want)
            else:
                assert patch.get_height() == pytest.approx(want)
                assert want == pytest.approx(np.mean(rows({"income_band": band,
                                                           "app_user": user})))


def test_suppressed_cells_are_zero_line_markers_with_a_label_and_a_legend_entry(grouped):
    ax = plot(grouped)
    marks = gaps(ax)
    mask = grouped.attrs["suppressed"]["mean"]
    assert mask.sum() == 2 and len(marks) == 2
    assert gap_xs(ax) == pytest.approx([1 - 0.2, 3 + 0.2])  # Q2 non-users, Q4 users
    assert all(m.get_marker() == "x" and list(m.get_ydata()) == [0.0] for m in marks)
    assert not [p for p in ax.patches if p.get_gid() == SUPPRESSED_GID]  # no outline bars
    bars = value_bars(ax)
    for user, x in ((False, 1), (True, 3)):  # the suppressed bins' own bars: height 0
        assert bars[str(user)][x].get_height() == 0
    assert gap_labels(ax) == [f"suppressed (<{K})"] * 2
    assert f"suppressed (fewer than {K} rows)" in legend_texts(ax)


def test_the_legend_is_outside_the_axes(grouped):
    ax = plot(grouped)
    ax.figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    frame = ax.get_window_extent()
    assert legend.x0 >= frame.x1  # right of the axes: covers no bar
    assert not legend.overlaps(frame)


def test_labels_title_and_group_sizes_come_from_the_plan(grouped):
    ax = plot(grouped)
    assert ax.get_xlabel() == "income_band"
    assert ax.get_ylabel() == "mean of cost_2021"
    assert ax.get_title() == "mean of cost_2021 by income_band and app_user"
    assert ax.get_legend().get_title().get_text() == "app_user"
    notes = [t.get_text() for t in ax.texts]
    assert f"cells with fewer than {K} rows suppressed" in notes
    sizes = sorted(t.get_text() for t in ax.texts if t.get_text().startswith("n="))
    released = grouped["n"][~grouped.attrs["suppressed"]["n"]]
    assert sizes == sorted(f"n={int(n)}" for n in released)
    assert [t.get_text() for t in ax.get_xticklabels()] == BANDS


def test_one_group_variable_and_choice_of_column():
    t = frame()
    result = t.groupby("income_band").agg(n="size", total=("cost_2021", "sum")).collect()
    ax = plot(result, "n", title="Rows per band")
    heights = [p.get_height() for p in value_bars(ax)["_released"]]
    assert heights == [4, 0, 10, 13]  # Q2 (2 rows) suppressed
    assert result["n"].tolist()[::2] == [4, 10] and pd.isna(result["n"].iloc[1])
    assert gap_xs(ax) == pytest.approx([1.0]) and gap_labels(ax) == [f"suppressed (<{K})"]
    assert ax.get_ylabel() == "rows" and ax.get_title() == "Rows per band"
    assert not [t for t in ax.texts if t.get_text().startswith("n=")]
    default = plot(result)
    assert default.get_ylabel() == "sum of cost_2021"
    assert [p.get_height() for p in value_bars(default)["_released"]] == \
        pytest.approx(result["total"].fillna(0).tolist())


def test_expression_measures_are_spelled_out():
    t = frame()
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    result = t.groupby("sex").agg(m=("change", "mean")).collect()
    ax = plot(result)
    assert ax.get_ylabel() == "mean of cost_2021 - cost_2020"
    assert ax.get_title() == "mean of cost_2021 - cost_2020 by sex"


def test_ungrouped_aggregates_are_one_bar_each():
    t = frame()
    result = t.agg(n=("cost_2021", "count"), mean=("cost_2021", "mean")).collect()
    ax = plot(result)
    assert [t.get_text() for t in ax.get_xticklabels()] == \
        ["n\n(count of cost_2021)", "mean\n(mean of cost_2021)"]
    assert ax.get_title() == "released aggregates" and ax.get_ylabel() == "value"
    heights = [p.get_height() for p in value_bars(ax)["_released"]]
    assert heights == pytest.approx([result["n"].iloc[0], result["mean"].iloc[0]])
    one = plot(result, "mean")
    assert [p.get_height() for p in value_bars(one)["_released"]] == \
        pytest.approx([result["mean"].iloc[0]])
    assert one.get_title() == one.get_ylabel() == "mean of cost_2021"


# ------------------------------------------------------------------- histogram and line
def test_histogram_bars_sit_on_the_bin_edges():
    edges = [18.0, 30.0, 45.0, 90.0]
    counts = {"[18, 30)": 5, "[30, 45)": 1, "[45, 90]": 12}

    def ages(cell: dict) -> list[float]:
        return [40.0] * counts[cell["age"]]

    t = SecureFrame(CATALOG, PARTIES, ["insurer"], FakeRunner(ages))
    result = t.histogram("age", bins=edges).collect()
    ax = result.ppa.plot()
    bars = value_bars(ax)["_released"]
    assert [p.get_x() for p in bars] == edges[:-1]
    assert [p.get_width() for p in bars] == pytest.approx(np.diff(edges))
    assert [p.get_height() for p in bars] == [5, 0, 12]
    (gap,) = gaps(ax)  # the [30, 45) bin: an x at its middle on the zero line, no bar
    assert (list(gap.get_xdata()), list(gap.get_ydata())) == ([37.5], [0.0])
    assert gap.get_marker() == "x" and gap_labels(ax) == [f"suppressed (<{K})"]
    assert max(all_bar_heights(ax)) == 12 and sorted(all_bar_heights(ax))[0] == 0
    assert ax.get_xlabel() == "age" and ax.get_ylabel() == "rows"
    assert any("suppressed" in text for text in legend_texts(ax))


def test_line_plot_leaves_gaps_with_markers(grouped):
    ax = plot(grouped, kind="line")
    lines = {line.get_label(): line for line in ax.lines if line.get_gid() != SUPPRESSED_GID}
    assert sorted(lines) == ["False", "True"]
    non_users = lines["False"].get_ydata()
    assert np.isnan(non_users[1])  # Q2 non-users suppressed: a gap in the line
    assert non_users[[0, 2, 3]] == pytest.approx(
        [grouped.loc[(b, False), "mean"] for b in ("Q1", "Q3", "Q4")])
    marks = gaps(ax)
    assert gap_xs(ax) == [1.0, 3.0] and len(gap_labels(ax)) == 2
    assert all(m.get_marker() == "x" for m in marks)
    assert f"suppressed (fewer than {K} rows)" in legend_texts(ax)


# ------------------------------------------------------------------------- accessor
def test_crosstab_through_the_accessor():
    t = frame()
    table = t.crosstab("income_band", "app_user").collect()
    assert list(table.columns) == [False, True]
    ax = table.ppa.plot()
    bars = value_bars(ax)
    for user in (False, True):
        heights = [p.get_height() for p in bars[str(user)]]
        want = table[user].fillna(0).tolist()
        assert heights == want
    assert len(gaps(ax)) == int(table.attrs["suppressed"].to_numpy().sum()) == 2
    assert ax.get_ylabel() == "rows" and ax.get_xlabel() == "income_band"
    assert table.ppa.plan["groupby"][1]["name"] == "app_user"
    assert table.ppa.suppressed.equals(table.attrs["suppressed"])


def test_accessor_plan_is_a_copy(grouped):
    grouped.ppa.plan["aggregates"].clear()
    assert grouped.ppa.plan["aggregates"]
    assert grouped.ppa.suppressed["mean"].sum() == 2


# ------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("make", [
    lambda r: pd.DataFrame({"mean": [1.0, 2.0]}),
    lambda r: r["mean"],
    lambda r: r * 2,
    lambda r: r.assign(mean=r["mean"].where(r["mean"].isna(), r["mean"] + 1)),
], ids=["raw", "series", "scaled", "edited"])
def test_only_released_results_are_plotted(grouped, make):
    other = make(grouped)
    with pytest.raises(PlanError, match="released"):
        plot(other)
    if isinstance(other, pd.DataFrame):
        with pytest.raises(PlanError, match="released"):
            other.ppa.plot()
        with pytest.raises(PlanError, match="released"):
            _ = other.ppa.plan


def test_one_edited_cell_is_refused(grouped):
    edited = grouped.copy()
    edited.iloc[0, 1] = edited.iloc[0, 1] + 0.5
    with pytest.raises(PlanError, match="released"):
        plot(edited)
    assert plot(grouped) is not None  # the original is untouched and still plots


def test_unknown_column_lists_the_columns(grouped):
    with pytest.raises(PlanError) as info:
        plot(grouped, "median")
    assert "median" in str(info.value) and "n, mean" in str(info.value)


def test_unsuitable_kinds_are_refused(grouped):
    with pytest.raises(PlanError, match="histogram"):
        plot(grouped, kind="hist")
    with pytest.raises(PlanError, match="unknown plot kind"):
        plot(grouped, kind="pie")
    t = frame()
    three = t.groupby(["income_band", "app_user", "sex"]).agg(n="size").collect()
    with pytest.raises(PlanError, match="3 group variables"):
        plot(three)


def test_given_axes_are_drawn_on(grouped):
    _fig, (left, right) = plt.subplots(1, 2)
    assert plot(grouped, ax=right) is right
    assert not left.patches and right.patches


# -------------------------------------------------------------------- real consortium
def test_real_run_bars_match_the_released_table(consortium):
    t = consortium.link()
    result = t.groupby(["income_band", "app_user"]).agg(
        n=("cost_2021", "count"), mean=("cost_2021", "mean")).collect()
    ax = plot(result)
    mask = result.attrs["suppressed"]["mean"]
    bands = result.attrs["plan"]["groupby"][0]["levels"]
    bars = value_bars(ax)
    for user in (False, True):
        heights = [p.get_height() for p in bars[str(user)]]
        want = [result.loc[(b, user), "mean"] for b in bands]
        gone = [bool(mask[(b, user)]) for b in bands]
        assert [h for h, g in zip(heights, gone) if not g] == \
            pytest.approx([w for w, g in zip(want, gone) if not g])
        assert all(np.isnan(w) for w, g in zip(want, gone) if g)
    assert len(gaps(ax)) == int(mask.sum())
    k = result.attrs["plan"]["min_cell_size"]
    if mask.any():
        assert f"suppressed (fewer than {k} rows)" in legend_texts(ax)


def test_real_crosstab_and_histogram_through_the_accessor(consortium):
    t = consortium.link()
    table = t.crosstab("income_band", "app_user").collect()
    ax = table.ppa.plot()
    bars = value_bars(ax)
    for user in table.columns:
        assert [p.get_height() for p in bars[str(user)]] == table[user].fillna(0).tolist()
    assert len(gaps(ax)) == int(table.ppa.suppressed.to_numpy().sum())

    edges = [18, 35, 50, 65, 80, 91]
    hist = t.histogram("age", bins=edges).collect()
    ax = hist.ppa.plot()
    released = value_bars(ax)["_released"]
    assert [p.get_x() for p in released] == edges[:-1]
    assert [p.get_width() for p in released] == pytest.approx(np.diff(edges))
    assert [p.get_height() for p in released] == hist["count"].fillna(0).tolist()
    assert len(gaps(ax)) == int(hist.ppa.suppressed["count"].sum())


def test_a_fresh_session_gets_the_ppa_accessor_with_the_consortium():
    """``result.ppa.plot()`` works after ``from ppa_kernel import Consortium`` alone."""
    import subprocess
    import sys

    code = ("import pandas as pd; from ppa_kernel import Consortium; "
            "print(hasattr(pd.DataFrame(), 'ppa'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "True", out.stderr
