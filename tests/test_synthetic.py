"""Tests for ppa_kernel.analyst.synthetic: sizes, overlap, types, planted effect, file output."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppa_kernel.analyst.synthetic import (
    INCOME_BANDS,
    PLANTED_EFFECT,
    REGIONS,
    generate,
    party_rows,
    write_demo_data,
)
from ppa_kernel.party.datasource import describe_columns, load_table

LINK = "pseudonym"


@pytest.fixture(scope="module")
def demo() -> dict[str, pd.DataFrame]:
    return generate()


@pytest.fixture(scope="module")
def joined(demo: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frame = demo["insurer"].merge(demo["hospital"], on=LINK).merge(demo["bureau"], on=LINK)
    frame["change"] = frame["cost_2021"] - frame["cost_2020"]
    return frame


def _keys(frame: pd.DataFrame) -> set[str]:
    return set(frame[LINK])


def _effect_by_band(joined: pd.DataFrame) -> pd.Series:
    means = joined.groupby(["income_band", "app_user"])["change"].mean().unstack()
    return means[True] - means[False]


def test_deterministic_for_seed() -> None:
    first, again, other = generate(300, seed=3), generate(300, seed=3), generate(300, seed=4)
    for name in ("insurer", "hospital", "bureau"):
        pd.testing.assert_frame_equal(first[name], again[name])
        assert not first[name][LINK].equals(other[name][LINK])


def test_default_sizes_and_overlap(demo: dict[str, pd.DataFrame]) -> None:
    insurer, hospital, bureau = (_keys(demo[k]) for k in ("insurer", "hospital", "bureau"))
    assert (len(insurer), len(hospital), len(bureau)) == (10500, 4830, 14700)
    assert len(insurer & hospital & bureau) == 4200
    assert len(insurer & hospital) == len(hospital & bureau) == 4200
    assert len(insurer & bureau) == 10500
    assert len(hospital - insurer - bureau) == 630


def test_custom_sizes_with_partial_insurer_bureau_overlap() -> None:
    frames = generate(200, seed=1, insurer_extra=0.5, bureau_extra=0.2, hospital_extra=0.0)
    insurer, hospital, bureau = (_keys(frames[k]) for k in ("insurer", "hospital", "bureau"))
    assert (len(insurer), len(hospital), len(bureau)) == (300, 200, 240)
    assert len(insurer & bureau) == 240
    assert len(insurer - bureau) == 60
    assert hospital <= insurer & bureau


def test_keys_unique_formatted_and_rows_shuffled(demo: dict[str, pd.DataFrame]) -> None:
    core = _keys(demo["hospital"]) & _keys(demo["insurer"])
    for frame in demo.values():
        assert frame[LINK].is_unique
        assert frame[LINK].str.fullmatch(r"P\d{7}").all()
        assert pd.api.types.is_string_dtype(frame[LINK])
    assert set(demo["insurer"][LINK].iloc[:4200]) != core
    assert not demo["bureau"][LINK].is_monotonic_increasing


def test_insurer_columns(demo: dict[str, pd.DataFrame]) -> None:
    insurer = demo["insurer"]
    assert list(insurer.columns) == [
        LINK, "age", "sex", "region", "diagnosis",
        "cost_2020", "cost_2021", "admissions_2020", "admissions_2021",
    ]
    assert pd.api.types.is_integer_dtype(insurer["age"])
    assert insurer["age"].between(18, 90).all()
    assert set(insurer["sex"]) == {"F", "M"}
    assert set(insurer["region"]) == set(REGIONS)
    core = insurer[LINK].isin(demo["hospital"][LINK])
    assert set(insurer.loc[core, "diagnosis"]) == {"Crohn", "UC"}
    assert set(insurer.loc[~core, "diagnosis"]) == {"Other"}
    for year in ("2020", "2021"):
        cost = insurer[f"cost_{year}"].dropna()
        assert (cost > 0).all()
        assert np.allclose(cost * 100, np.round(cost * 100))
        assert pd.api.types.is_integer_dtype(insurer[f"admissions_{year}"])
        assert (insurer[f"admissions_{year}"] >= 0).all()
    assert insurer["cost_2020"].notna().all()
    assert 0.01 < insurer["cost_2021"].isna().mean() < 0.03
    core_cost = insurer.loc[core, "cost_2020"]
    assert 2000 < core_cost.median() < 5000 < core_cost.quantile(0.9)
    assert core_cost.mean() > core_cost.median()


def test_hospital_columns(demo: dict[str, pd.DataFrame]) -> None:
    hospital = demo["hospital"]
    assert list(hospital.columns) == [
        LINK, "app_user", "app_use_intensity", "outpatient_visits", "disease_activity",
        "followup_days", "readmitted",
    ]
    assert hospital["app_user"].dtype == bool
    assert 0.25 < hospital["app_user"].mean() < 0.5
    users = hospital[hospital["app_user"]]
    assert (hospital.loc[~hospital["app_user"], "app_use_intensity"] == 0).all()
    assert 0.01 < users["app_use_intensity"].isna().mean() < 0.05
    assert (users["app_use_intensity"].dropna() >= 0).all()
    assert pd.api.types.is_integer_dtype(hospital["outpatient_visits"])
    activity = hospital["disease_activity"]
    assert activity.dtype == "Int64"
    assert 0 < activity.isna().sum() < 0.05 * len(hospital)
    assert activity.dropna().between(0, 10).all()


def test_bureau_columns(demo: dict[str, pd.DataFrame]) -> None:
    bureau = demo["bureau"]
    assert list(bureau.columns) == [LINK, "education", "income_band", "household"]
    assert set(bureau["education"]) == {"low", "medium", "high"}
    assert set(bureau["income_band"]) == set(INCOME_BANDS)
    assert set(bureau["household"]) == {"single", "couple", "family", "other"}
    shares = bureau["income_band"].value_counts(normalize=True)
    assert shares.between(0.17, 0.23).all()


def test_planted_effect_visible(joined: pd.DataFrame) -> None:
    effect = _effect_by_band(joined)
    assert effect["Q5"] < -500
    assert -150 < effect["Q1"] < 0
    assert effect["Q1"] > effect["Q3"] > effect["Q4"] > effect["Q5"]
    non_users = joined[~joined["app_user"]].groupby("income_band")["change"].mean()
    assert non_users.between(50, 250).all()


def test_planted_effect_numbers_match_documentation(joined: pd.DataFrame) -> None:
    realised = PLANTED_EFFECT.split("realised")[1]
    pairs = re.findall(r"(-\d+)(?: euro)? \((Q\d)\)", realised)
    documented = {band: float(value) for value, band in pairs}
    assert set(documented) == set(INCOME_BANDS)
    effect = _effect_by_band(joined)
    for band, value in documented.items():
        assert effect[band] == pytest.approx(value, abs=1)
    assert f"({int(joined['app_user'].sum())} app users)" in PLANTED_EFFECT


def test_small_cells_exist(joined: pd.DataFrame) -> None:
    users = joined[joined["app_user"]]
    other = int((users["household"] == "other").sum())
    assert 0 < other < 10
    assert f"Only {other} app users" in PLANTED_EFFECT
    cells = users.groupby(["household", "income_band"]).size()
    assert (cells < 10).sum() >= 3
    assert (cells >= 10).sum() >= 12


def test_enrolment_depends_on_education_and_age(joined: pd.DataFrame) -> None:
    by_education = joined.groupby("education")["app_user"].mean()
    assert by_education["low"] < by_education["medium"] < by_education["high"]
    young = joined.loc[joined["age"] < 40, "app_user"].mean()
    assert young > joined.loc[joined["age"] >= 60, "app_user"].mean()


@pytest.mark.parametrize("fmt", ["csv", "mixed"])
def test_write_demo_data_round_trip(tmp_path: Path, fmt: str) -> None:
    paths = write_demo_data(tmp_path / "demo", n_core=250, seed=11, fmt=fmt)
    expected = generate(250, seed=11)
    suffix = ".parquet" if fmt == "mixed" else ".csv"
    assert paths["hospital"] == tmp_path / "demo" / f"hospital{suffix}"
    assert paths["insurer"].name == "insurer.csv"
    assert paths["bureau"].name == "bureau.csv"
    for name, path in paths.items():
        assert path.is_file()
        loaded = load_table(path, link=LINK)
        exact = fmt == "mixed" and name == "hospital"
        pd.testing.assert_frame_equal(loaded, expected[name], check_dtype=exact)


def test_write_demo_data_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        write_demo_data(tmp_path, n_core=10, fmt="xlsx")
    assert not list(tmp_path.iterdir())


def test_describe_synthetic_hospital(demo: dict[str, pd.DataFrame]) -> None:
    info = describe_columns(demo["hospital"], LINK, categorical={"disease_activity"})
    assert info["app_user"]["kind"] == "bool"
    assert info["app_use_intensity"]["kind"] == "numeric"
    assert info["disease_activity"]["kind"] == "categorical"
    assert set(info["disease_activity"]["levels"]) <= set(range(11))
    assert info["disease_activity"]["missing"] > 0


@pytest.mark.parametrize("params", [{}, {"n_core": 300, "insurer_extra": 0.67,
                                         "bureau_extra": 0.67, "hospital_extra": 0.67},
                                    {"n_core": 45, "hospital_extra": 5 / 45,
                                     "insurer_extra": 955 / 45, "bureau_extra": 2955 / 45}])
def test_party_rows_are_the_sizes_generate_makes(params):
    made = generate(seed=5, **params)
    assert party_rows(**params) == {name: len(frame) for name, frame in made.items()}
