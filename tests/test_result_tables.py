"""Result tables as an analyst reads them: integer counts, the ungrouped row "all"."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re

import pandas as pd
import pytest
from test_plotting import CATALOG, PARTIES, FakeRunner

from ppa_kernel.analyst.export import export
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.results import format_html, format_table

BIG = 548


def sized(cell: dict) -> list[float]:
    """548 rows in Q1, 2 (suppressed) in Q2, 30 elsewhere; costs with fractions."""
    band = cell.get("income_band", "Q1")
    n = {"Q1": BIG, "Q2": 2}.get(band, 30)
    return [100.0 + 0.25 * i for i in range(n)]


@pytest.fixture
def table() -> pd.DataFrame:
    t = SecureFrame(CATALOG, PARTIES, PARTIES, FakeRunner(sized))
    return t.groupby("income_band").agg(n=("cost_2021", "count"), rows="size",
                                        mean=("cost_2021", "mean")).collect()


def test_counts_are_nullable_integers_and_suppressed_counts_are_na(table):
    assert str(table["n"].dtype) == str(table["rows"].dtype) == "Int64"
    assert table["mean"].dtype == float
    assert table.loc["Q1", "n"] == BIG and table.loc["Q3", "rows"] == 30
    assert table["n"].isna().tolist() == [False, True, False, False]
    assert table.loc["Q2", "n"] is pd.NA and pd.isna(table.loc["Q2", "mean"])
    assert table.loc["Q1", "mean"] == pytest.approx(100.0 + 0.25 * (BIG - 1) / 2)


def test_repr_and_csv_show_counts_without_a_decimal_point(table, tmp_path):
    for text in (repr(table), format_table(table), format_html(table)):
        assert str(BIG) in text and f"{BIG}.0" not in text and "30.0" not in text
    export(tmp_path / "out", {"bands": table})
    csv = (tmp_path / "out" / "bands.csv").read_text()
    q1 = next(line for line in csv.splitlines() if line.startswith("Q1,"))
    assert q1.split(",")[:3] == ["Q1", str(BIG), str(BIG)]
    q2 = next(line for line in csv.splitlines() if line.startswith("Q2,"))
    assert q2.split(",")[1:3] == ["", ""]  # suppressed: empty, not 0 or NaN text
    assert not re.search(r",\d+\.0,", csv.replace(",", ",,"))  # no count reads "548.0"


def test_histogram_and_crosstab_counts_are_integers():
    t = SecureFrame(CATALOG, PARTIES, PARTIES, FakeRunner(sized))
    hist = t.histogram("age", bins=[18, 50, 90]).collect()
    assert str(hist["count"].dtype) == "Int64" and hist["count"].tolist() == [BIG, BIG]
    assert f"{BIG}.0" not in repr(hist)
    cross = t.crosstab("income_band", "sex").collect()
    assert all(str(d) == "Int64" for d in cross.dtypes)
    assert cross.loc["Q1", "F"] == BIG and cross.loc["Q2"].isna().all()
    assert f"{BIG}.0" not in repr(cross) and "<NA>" in repr(cross)


def test_an_ungrouped_result_is_one_row_labelled_all():
    t = SecureFrame(CATALOG, PARTIES, PARTIES, FakeRunner(sized))
    result = t.agg(n=("cost_2021", "count"), mean=("cost_2021", "mean")).collect()
    assert list(result.index) == ["all"]
    assert result.loc["all", "n"] == BIG and str(result["n"].dtype) == "Int64"
    assert result.attrs["suppressed"].index.equals(result.index)
    assert format_table(result).splitlines()[1].startswith("all")
