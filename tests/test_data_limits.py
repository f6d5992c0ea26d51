"""Values MPC cannot encode are refused at load; stray text in a numeric column is flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppa_kernel import Consortium, ConsortiumError
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.limits import VALUE_LIMIT
from ppa_kernel.party.datasource import DataSourceError, describe_columns, load_table

LIMIT_TEXT = "2**46"


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return generate(n_core=200, seed=3)


def frame(values) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"P{i}" for i in range(len(values))], "v": values})


# --------------------------------------------------------------------------- load_table


@pytest.mark.parametrize("values, example", [
    ([1.0, 1e300, 2.0], "1e+300"),
    ([1, 10**15, 3], "1e+15"),
    ([0.0, -VALUE_LIMIT, 1.0], "-70368744177664"),
    (pd.Series([1, 2**47, None], dtype="Int64"), "140737488355328"),
    (pd.Series([1, 10**400], dtype=object), "100000... (401 digits)"),
])
def test_values_at_or_beyond_the_limit_are_refused(values, example) -> None:
    with pytest.raises(DataSourceError) as info:
        load_table(frame(values), link="id")
    text = str(info.value)
    assert text.startswith("DataFrame source: column 'v'") and example in text
    assert LIMIT_TEXT in text and f"{VALUE_LIMIT:.3g}" in text
    assert "rescale" in text and "thousands of euros" in text and "drop" in text


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_values_in_a_csv_are_refused(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "t.csv"
    frame([1.5, bad, np.nan]).to_csv(path, index=False)
    with pytest.raises(DataSourceError, match=r"column 'v' has 1 infinite value\(s\)") as info:
        load_table(path, link="id")
    assert str(path) in str(info.value) and "empty to mean missing" in str(info.value)


def test_values_below_the_limit_bools_missing_and_the_link_are_fine() -> None:
    below = np.nextafter(VALUE_LIMIT, 0)
    table = pd.DataFrame({"id": [10**18, 2 * 10**18, 3 * 10**18],  # link keys are hashed
                          "v": [below, -below, np.nan], "flag": [True, False, True],
                          "n": pd.Series([1, None, -(2**45)], dtype="Int64")})
    assert load_table(table, link="id")["v"].iloc[0] == below


# --------------------------------------------------------------------------- stray text


def test_mostly_numeric_text_column_gets_a_note_and_a_warning(caplog) -> None:
    values = [str(v) for v in range(20)] + ["12,5", "unknown", None]
    table = pd.DataFrame({"id": [f"P{i}" for i in range(len(values))], "v": values,
                          "mixed": ["a", "1", "2"] + ["b"] * (len(values) - 3)})
    with caplog.at_level(logging.WARNING, logger="ppa_kernel.party.datasource"):
        info = describe_columns(load_table(table, link="id"), "id")
    note = info["v"]["note"]
    assert info["v"]["kind"] == "categorical"
    assert "'v'" in note and "2 of 22 values are text" in note
    assert "'12,5'" in note and "'unknown'" in note and "leave them empty" in note
    assert "note" not in info["mixed"]  # mostly text: a real categorical column
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [note]


@pytest.mark.parametrize("values", [
    ["1", "x"],  # a single number is not evidence of a numeric column
    ["1", "2", "3", "4", "5", "6", "7", "8", "x", "y"],  # 80% numbers
    ["1", "2", "3"],  # no text at all
])
def test_no_note_without_a_clear_majority_of_numbers(values) -> None:
    assert "note" not in describe_columns(frame(values), "id")["v"]


# --------------------------------------------------------------------------- kernels


def start_fails(sources, tmp_path: Path, party: str) -> str:
    with pytest.raises(ConsortiumError) as info:
        Consortium.local(sources, link="pseudonym", workdir=tmp_path)
    text = str(info.value)
    assert f"[{party}]" in text
    for bad in ("Traceback", "OverflowError"):
        assert bad not in text
        assert bad not in (tmp_path / f"{party}.stderr.log").read_text()
    return text


@pytest.mark.parametrize("column, value", [("cost_2020", 1e300), ("admissions_2020", 10**15)])
def test_kernel_refuses_to_start_on_values_beyond_the_limit(data, tmp_path, column, value):
    insurer = data["insurer"].copy()
    insurer.loc[3, column] = value
    text = start_fails({**data, "insurer": insurer}, tmp_path, "insurer")
    assert f"column {column!r}" in text and LIMIT_TEXT in text and "rescale" in text


def test_kernel_refuses_to_start_on_inf_in_a_csv(data, tmp_path):
    insurer = data["insurer"].copy()
    insurer.loc[5, "cost_2021"] = np.inf
    path = tmp_path / "insurer.csv"
    insurer.to_csv(path, index=False)
    text = start_fails({**data, "insurer": path}, tmp_path / "w", "insurer")
    assert "column 'cost_2021' has 1 infinite value(s)" in text


def test_stray_text_in_a_numeric_csv_column_is_noted_in_the_catalog(data, tmp_path):
    insurer = data["insurer"].astype({"age": object})
    insurer.loc[7, "age"] = "12,5"
    path = tmp_path / "insurer.csv"
    insurer.to_csv(path, index=False)
    with Consortium.local({**data, "insurer": path}, link="pseudonym",
                          workdir=tmp_path / "w") as c:
        note = c.catalog["insurer"]["age"]["note"]
        assert c.catalog["insurer"]["age"]["kind"] == "categorical"
        assert "'age'" in note and "1 of 500 values are text" in note and "'12,5'" in note
        assert "note" not in c.catalog["insurer"]["sex"]
    log = (tmp_path / "w" / "insurer.stderr.log").read_text()
    assert "WARNING" in log and note in log
