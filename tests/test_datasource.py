"""Tests for ppa_kernel.party.datasource: every source kind, validation errors, describing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from ppa_kernel.party.datasource import DataSourceError, describe_columns, load_table


@pytest.fixture
def people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pseudonym": ["00123", "P2", "P3", "P4"],
            "age": [34, 51, 70, 28],
            "sex": ["F", "M", "F", None],
            "cost": [1200.5, np.nan, 310.0, 4000.25],
            "smoker": [True, False, False, True],
        }
    )


def _to_sqlite(df: pd.DataFrame, path: Path, table: str = "people") -> Path:
    engine = sa.create_engine(f"sqlite:///{path}")
    df.to_sql(table, engine, index=False)
    engine.dispose()
    return path


# --------------------------------------------------------------------------- source kinds


def test_dataframe_is_returned_as_copy(people: pd.DataFrame) -> None:
    loaded = load_table(people, link="pseudonym")
    pd.testing.assert_frame_equal(loaded, people)
    loaded.loc[0, "age"] = -1
    assert people.loc[0, "age"] == 34


def test_csv_keeps_link_keys_as_text(people: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    people.to_csv(path, index=False)
    loaded = load_table(path, link="pseudonym")
    assert loaded["pseudonym"].tolist() == ["00123", "P2", "P3", "P4"]
    assert loaded["age"].tolist() == [34, 51, 70, 28]
    assert np.isnan(loaded.loc[1, "cost"])


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet(people: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"people{suffix}"
    people.to_parquet(path, index=False)
    loaded = load_table(str(path), link="pseudonym")
    pd.testing.assert_frame_equal(loaded, people, check_dtype=False)
    assert loaded["smoker"].dtype == bool


@pytest.mark.parametrize("suffix", [".sqlite", ".db", ".sqlite3"])
def test_sqlite_file_with_table(people: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = _to_sqlite(people, tmp_path / f"people{suffix}")
    loaded = load_table(path, table="people", link="pseudonym")
    assert loaded.shape == people.shape
    assert loaded["pseudonym"].tolist() == people["pseudonym"].tolist()


def test_sqlite_file_with_query(people: pd.DataFrame, tmp_path: Path) -> None:
    path = _to_sqlite(people, tmp_path / "people.db")
    loaded = load_table(path, query="SELECT pseudonym, age FROM people WHERE age > 30")
    assert list(loaded.columns) == ["pseudonym", "age"]
    assert sorted(loaded["age"]) == [34, 51, 70]


def test_sqlite_schema_qualified_and_keyword_table(people: pd.DataFrame, tmp_path: Path) -> None:
    path = _to_sqlite(people, tmp_path / "people.db", table="order")
    assert len(load_table(path, table="order")) == 4
    assert len(load_table(path, table="main.order")) == 4


def test_sqlalchemy_url(people: pd.DataFrame, tmp_path: Path) -> None:
    path = _to_sqlite(people, tmp_path / "people.db")
    loaded = load_table(f"sqlite:///{path}", table="people", link="pseudonym")
    assert loaded["age"].sum() == people["age"].sum()
    by_query = load_table(f"sqlite:///{path}", query="SELECT COUNT(*) AS n FROM people")
    assert by_query.loc[0, "n"] == 4


# --------------------------------------------------------------------------- error cases


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="not found") as info:
        load_table(tmp_path / "absent.csv")
    assert "absent.csv" in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "people.xlsx"
    path.write_text("x")
    with pytest.raises(DataSourceError, match=r"unknown file extension '\.xlsx'.*\.csv"):
        load_table(path)


def test_unsupported_source_type() -> None:
    with pytest.raises(DataSourceError, match="unsupported data source"):
        load_table(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "query"), [(None, None), ("people", "SELECT * FROM people")]
)
def test_sql_needs_exactly_one_of_table_or_query(
    people: pd.DataFrame, tmp_path: Path, table: str | None, query: str | None
) -> None:
    path = _to_sqlite(people, tmp_path / "people.db")
    with pytest.raises(DataSourceError, match="exactly one of table=") as info:
        load_table(path, table=table, query=query)
    assert "people.db" in str(info.value)


def test_table_argument_rejected_for_csv(people: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    people.to_csv(path, index=False)
    with pytest.raises(DataSourceError, match="only apply to SQL sources"):
        load_table(path, table="people")


@pytest.mark.parametrize("name", ["people; DROP TABLE people", "1people", "a.", "x y"])
def test_table_name_must_be_identifier(people: pd.DataFrame, tmp_path: Path, name: str) -> None:
    path = _to_sqlite(people, tmp_path / "people.db")
    with pytest.raises(DataSourceError, match="not a plain identifier"):
        load_table(path, table=name)
    assert len(load_table(path, table="people")) == 4


def test_missing_table(people: pd.DataFrame, tmp_path: Path) -> None:
    path = _to_sqlite(people, tmp_path / "people.db")
    with pytest.raises(DataSourceError, match="no such table"):
        load_table(path, table="patients")


def test_sqlite_url_to_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(DataSourceError, match="not found"):
        load_table(f"sqlite:///{path}", table="people")
    assert not path.exists()


def test_url_without_driver_hides_password() -> None:
    with pytest.raises(DataSourceError, match="driver") as info:  # pg8000 is not installed
        load_table("postgresql+pg8000://alice:s3cret@localhost:1/db", table="people")
    assert "s3cret" not in str(info.value)


def test_unreachable_database_hides_password() -> None:
    with pytest.raises(DataSourceError, match="reachable") as info:  # nothing on port 1
        load_table("postgresql+psycopg://alice:s3cret@127.0.0.1:1/db", table="people")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.parquet", b"this is not parquet"),
        ("bad.csv", b"a,b\n\xff\xfe\xfa,1\n"),
        ("bad.db", b"this is not a database file" * 10),
    ],
)
def test_unreadable_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match="could not read") as info:
        load_table(path, table="people" if name.endswith(".db") else None)
    assert name in str(info.value)


def test_empty_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataSourceError, match="empty"):
        load_table(path)


def test_empty_dataframe() -> None:
    with pytest.raises(DataSourceError, match="empty"):
        load_table(pd.DataFrame(index=range(3)))


def test_header_only_csv_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("pseudonym,age\n")
    loaded = load_table(path, link="pseudonym")
    assert list(loaded.columns) == ["pseudonym", "age"]
    assert loaded.empty


def test_link_column_missing(people: pd.DataFrame) -> None:
    with pytest.raises(DataSourceError, match=r"link column 'person_id' not found.*pseudonym"):
        load_table(people, link="person_id")


def test_link_column_with_missing_values(people: pd.DataFrame) -> None:
    people.loc[[1, 2], "pseudonym"] = None
    with pytest.raises(DataSourceError, match="2 missing value"):
        load_table(people, link="pseudonym")


def test_duplicate_link_keys(people: pd.DataFrame) -> None:
    keys = ["A", "B", "C", "D", "E"]
    frame = pd.DataFrame({"pseudonym": keys[:4] * 2 + ["E"], "x": range(9)})
    with pytest.raises(DataSourceError, match="duplicate") as info:
        load_table(frame, link="pseudonym")
    message = str(info.value)
    assert "4 duplicate" in message
    assert "8 rows" in message
    assert all(repr(k) in message for k in "ABC")
    assert "'D'" not in message
    assert "'E'" not in message


def test_duplicates_allowed_without_link() -> None:
    frame = pd.DataFrame({"pseudonym": ["A", "A"], "x": [1, 2]})
    assert len(load_table(frame)) == 2


def test_mixed_types_in_dataframe() -> None:
    frame = pd.DataFrame({"pseudonym": ["A", "B", "C"], "score": [1, "high", None]})
    with pytest.raises(DataSourceError, match="'score' has mixed types"):
        load_table(frame)


def test_mixed_types_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (pseudonym TEXT, value)")
        connection.executemany("INSERT INTO t VALUES (?, ?)", [("A", 3), ("B", "three")])
    with pytest.raises(DataSourceError, match="'value' has mixed types"):
        load_table(path, table="t")


def test_object_column_of_only_numbers_is_fine() -> None:
    frame = pd.DataFrame({"pseudonym": ["A", "B"], "v": pd.Series([1, 2.5], dtype=object)})
    assert load_table(frame, link="pseudonym")["v"].tolist() == [1, 2.5]


# --------------------------------------------------------------------------- describe_columns


def test_describe_kinds_levels_and_missing(people: pd.DataFrame) -> None:
    info = describe_columns(people, link="pseudonym")
    assert set(info) == {"age", "sex", "cost", "smoker"}
    assert info["age"] == {"kind": "numeric", "min": 28.0, "max": 70.0, "missing": 0,
                           "whole": True}
    assert info["cost"] == {"kind": "numeric", "min": 310.0, "max": 4000.25, "missing": 1,
                            "whole": False}
    assert info["sex"] == {"kind": "categorical", "levels": ["F", "M"], "missing": 1}
    assert info["smoker"] == {"kind": "bool", "levels": [False, True], "missing": 0}
    json.dumps(info)


def test_describe_nullable_boolean_and_object_bool() -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "nullable": pd.array([True, None, False], dtype="boolean"),
            "objects": pd.Series([True, None, True], dtype=object),
        }
    )
    info = describe_columns(frame, "id")
    assert info["nullable"] == {"kind": "bool", "levels": [False, True], "missing": 1}
    assert info["objects"]["kind"] == "bool"
    assert info["objects"]["missing"] == 1


def test_describe_integer_categorical_only_when_requested() -> None:
    frame = pd.DataFrame(
        {
            "id": range(20),
            "score": [3, 1, 2, 1] * 5,
            "many": range(20),
            "with_nan": [float(i % 4) for i in range(19)] + [np.nan],
            "nullable": pd.array([5, None] * 10, dtype="Int64"),
        }
    )
    plain = describe_columns(frame, "id")
    assert plain["score"]["kind"] == "numeric"
    info = describe_columns(frame, "id", categorical={"score", "many", "with_nan", "nullable"})
    assert info["score"] == {"kind": "categorical", "levels": [1, 2, 3], "missing": 0}
    assert all(type(level) is int for level in info["score"]["levels"])
    assert info["many"]["kind"] == "numeric"
    assert info["with_nan"] == {"kind": "categorical", "levels": [0, 1, 2, 3], "missing": 1}
    assert info["nullable"] == {"kind": "categorical", "levels": [5], "missing": 10}


def test_describe_too_many_levels_and_pandas_categorical() -> None:
    frame = pd.DataFrame(
        {
            "id": range(60),
            "city": [f"city{i:02d}" for i in range(60)],
            "band": pd.Categorical(["Q2", "Q1", None] * 20, categories=["Q1", "Q2", "Q3"]),
        }
    )
    info = describe_columns(frame, "id", max_levels=50)
    assert info["city"] == {"kind": "categorical", "levels": None, "missing": 0}
    assert info["band"] == {"kind": "categorical", "levels": ["Q1", "Q2"], "missing": 20}
    assert describe_columns(frame, "id", max_levels=60)["city"]["levels"][:2] == [
        "city00",
        "city01",
    ]


def test_describe_unknown_link() -> None:
    with pytest.raises(DataSourceError, match="link column 'nope'"):
        describe_columns(pd.DataFrame({"a": [1]}), "nope")
