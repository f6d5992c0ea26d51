"""Load one party's table (DataFrame, CSV, Parquet, SQLite or any SQLAlchemy URL) and describe it.

Every problem a data owner can fix is reported as :class:`DataSourceError` with a message that
names the source and says what to do.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from ppa_kernel.contract.errors import DataError
from ppa_kernel.contract.limits import MAX_CATEGORICAL_INT_LEVELS, VALUE_LIMIT

logger = logging.getLogger(__name__)

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
SQLITE_SUFFIXES = frozenset({".sqlite", ".db", ".sqlite3"})
SUPPORTED_SUFFIXES = CSV_SUFFIXES | PARQUET_SUFFIXES | SQLITE_SUFFIXES
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_MAX_EXAMPLES = 3
NUMERIC_TEXT_SHARE = 0.9
"""A text column whose values are at least this share numbers gets a note (stray text)."""

Source = pd.DataFrame | str | os.PathLike


class DataSourceError(DataError, ValueError):
    """A party's data source cannot be loaded or fails validation (the kernel adds which
    party it is)."""


# --------------------------------------------------------------------------- loading


def load_table(
    source: Source,
    *,
    table: str | None = None,
    query: str | None = None,
    link: str | None = None,
) -> pd.DataFrame:
    """Load one party's table from a DataFrame, file path or SQLAlchemy URL and validate it.

    SQL sources (SQLite files and URLs) need exactly one of ``table`` or ``query``. When ``link``
    is given, that column must exist, be complete and hold unique keys.
    """
    label = _label(source)
    if isinstance(source, pd.DataFrame):
        _reject_sql_args(label, table, query)
        df = source.copy()
    elif isinstance(source, str) and "://" in source:
        df = _read_url(source, label, table, query)
    elif isinstance(source, (str, os.PathLike)):
        df = _read_path(Path(source).expanduser(), label, table, query, link)
    else:
        raise DataSourceError(
            f"unsupported data source of type {type(source).__name__}; pass a pandas DataFrame, "
            "a file path (.csv, .parquet, .sqlite) or a SQLAlchemy URL such as 'sqlite:///x.db'"
        )
    _validate(df, label, link)
    logger.info("loaded %d rows x %d columns from %s", df.shape[0], df.shape[1], label)
    return df


def _label(source: object) -> str:
    """Human-readable name of a source, never exposing a URL password."""
    if isinstance(source, pd.DataFrame):
        return "DataFrame source"
    if isinstance(source, str) and "://" in source:
        try:
            return f"database {sa.engine.make_url(source).render_as_string(hide_password=True)}"
        except ArgumentError:
            return f"database URL starting {source.split('://', 1)[0]}://..."
    return f"file {os.fspath(source)!r}" if isinstance(source, (str, os.PathLike)) else "source"


def _reject_sql_args(label: str, table: str | None, query: str | None) -> None:
    if table is not None or query is not None:
        raise DataSourceError(
            f"{label}: table= and query= only apply to SQL sources (.sqlite/.db files or "
            "SQLAlchemy URLs); drop them for this source"
        )


def _read_path(
    path: Path, label: str, table: str | None, query: str | None, link: str | None
) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataSourceError(
            f"{label}: unknown file extension {suffix or '(none)'!r}; supported are "
            f"{', '.join(sorted(SUPPORTED_SUFFIXES))} (or pass a SQLAlchemy URL)"
        )
    if not path.exists():
        raise DataSourceError(
            f"{label}: file not found; check the path (resolved to {path.resolve()})"
        )
    if not path.is_file():
        raise DataSourceError(f"{label}: not a regular file; point to the data file itself")
    if suffix in SQLITE_SUFFIXES:
        return _read_sql(sa.create_engine(f"sqlite:///{path}"), label, table, query)
    _reject_sql_args(label, table, query)
    return _read_flat_file(path, suffix, label, link)


def _read_flat_file(path: Path, suffix: str, label: str, link: str | None) -> pd.DataFrame:
    """Read CSV or Parquet; a CSV link column is kept as text so keys like '00123' survive."""
    try:
        if suffix in CSV_SUFFIXES:
            return pd.read_csv(path, dtype={link: str} if link else None)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise _empty_error(label) from exc
    except (OSError, ValueError, ImportError) as exc:
        raise DataSourceError(
            f"{label}: could not read the file ({exc}); check that it is a valid "
            f"{suffix.lstrip('.').upper()} file and readable"
        ) from exc


def _read_url(url: str, label: str, table: str | None, query: str | None) -> pd.DataFrame:
    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError as exc:
        raise DataSourceError(
            f"{label}: not a valid SQLAlchemy URL; use the form dialect+driver://user@host/db"
        ) from exc
    _check_sqlite_file(parsed, label)
    try:
        engine = sa.create_engine(parsed)
    except (NoSuchModuleError, ImportError) as exc:
        raise DataSourceError(
            f"{label}: database driver for {parsed.drivername!r} is not available ({exc}); "
            "install the matching driver package (e.g. psycopg for postgresql://)"
        ) from exc
    return _read_sql(engine, label, table, query)


def _check_sqlite_file(url: sa.engine.URL, label: str) -> None:
    """SQLite silently creates missing files; report them as missing instead."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return
    if not database.startswith("file:") and not Path(database).is_file():
        raise DataSourceError(f"{label}: SQLite file {database!r} not found; check the URL path")


def _read_sql(
    engine: sa.engine.Engine, label: str, table: str | None, query: str | None
) -> pd.DataFrame:
    if (table is None) == (query is None):
        engine.dispose()
        raise DataSourceError(
            f"{label}: SQL sources need exactly one of table='name' or query='SELECT ...'"
        )
    try:
        statement = _select_table(table, label) if table is not None else sa.text(query)
        with engine.connect() as connection:
            return pd.read_sql(statement, connection)
    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
        reason = _sql_reason(exc)
        what = f"table {table!r}" if table is not None else "the query"
        raise DataSourceError(
            f"{label}: could not read {what} ({reason}); check the table name / SQL and that "
            "the database is reachable"
        ) from exc
    finally:
        engine.dispose()


def _sql_reason(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's statement dump and help links."""
    cause = exc.__cause__ if isinstance(exc.__cause__, SQLAlchemyError) else exc
    return str(getattr(cause, "orig", None) or cause).splitlines()[0]


def _select_table(table: str, label: str) -> sa.Select:
    """``SELECT * FROM [schema.]table`` with the identifier quoted by SQLAlchemy."""
    parts = table.rsplit(".", 1)
    if not _IDENTIFIER.match(table) or not all(parts):
        raise DataSourceError(
            f"{label}: table name {table!r} is not a plain identifier; use letters, digits, "
            "'_' and an optional 'schema.' prefix, or pass query= instead"
        )
    schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return sa.select(sa.text("*")).select_from(sa.table(name, schema=schema))


# --------------------------------------------------------------------------- validation


def _validate(df: pd.DataFrame, label: str, link: str | None) -> None:
    if df.shape[1] == 0:
        raise _empty_error(label)
    if df.shape[0] == 0:
        logger.warning("%s has columns but no rows", label)
    duplicated = df.columns[df.columns.duplicated()].unique().tolist()
    if duplicated:
        raise DataSourceError(f"{label}: duplicate column names {duplicated}; rename them")
    _check_mixed_types(df, label)
    if link is not None:
        _check_link(df, label, link)
    _check_values(df, label, link)


def _empty_error(label: str) -> DataSourceError:
    return DataSourceError(
        f"{label}: the table is empty (no columns); export the data with a header row"
    )


def _check_mixed_types(df: pd.DataFrame, label: str) -> None:
    for column in df.columns[[pd.api.types.is_object_dtype(t) for t in df.dtypes]]:
        kinds = {_value_kind(value) for value in df[column].dropna()}
        if {"number", "string"} <= kinds:
            raise DataSourceError(
                f"{label}: column {column!r} has mixed types (numbers and text); make it all "
                "numeric or all text before loading"
            )


def _value_kind(value: object) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, (numbers.Number, np.number)):
        return "number"
    return "other"


def _check_values(df: pd.DataFrame, label: str, link: str | None) -> None:
    """Refuse infinite numbers and numbers too large to encode for MPC (the link is exempt)."""
    for column in df.columns:
        values = None if column == link else _numbers(df[column])
        if values is None or not len(values):
            continue
        magnitude = np.abs(values)
        for bad, problem, fix in (
            (magnitude == np.inf, "infinite value(s)", "secure computation needs finite "
             "numbers: replace them, or leave them empty to mean missing"),
            (magnitude >= VALUE_LIMIT, "value(s) too large for secure computation",
             f"values must be below 2**46 (about {VALUE_LIMIT:.3g}) in absolute value: "
             "rescale the column (e.g. thousands of euros instead of euros) or drop it"),
        ):
            if bad.any():
                raise DataSourceError(
                    f"{label}: column {column!r} has {int(bad.sum())} {problem} "
                    f"(e.g. {_number_text(values[bad][0])}); {fix}"
                )


def _numbers(series: pd.Series) -> np.ndarray | None:
    """The non-missing numbers of a numeric (or all-number object) column; None for others."""
    dtype = series.dtype
    if _is_bool(series) or pd.api.types.is_complex_dtype(dtype):
        return None
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return values[~np.isnan(values)]
    if pd.api.types.is_object_dtype(dtype):
        return np.array([v for v in series.dropna() if _value_kind(v) == "number"
                         and not isinstance(v, (bool, np.bool_))], dtype=object)
    return None


def _number_text(value: object) -> str:
    try:
        return f"{float(value):.15g}"  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):  # e.g. an integer of 400 digits
        text = str(value)
        return text if len(text) <= 20 else f"{text[:6]}... ({len(text)} digits)"


def _check_link(df: pd.DataFrame, label: str, link: str) -> None:
    if link not in df.columns:
        raise DataSourceError(
            f"{label}: link column {link!r} not found; available columns are "
            f"{[str(c) for c in df.columns]}. Pass link= naming the pseudonymised person key"
        )
    keys = df[link]
    n_missing = int(keys.isna().sum())
    if n_missing:
        raise DataSourceError(
            f"{label}: link column {link!r} has {n_missing} missing value(s); drop those rows "
            "or fill in their keys"
        )
    repeated = keys[keys.duplicated(keep=False)]
    if len(repeated):
        unique_repeated = pd.unique(repeated)
        examples = ", ".join(repr(_to_scalar(k)) for k in unique_repeated[:_MAX_EXAMPLES])
        raise DataSourceError(
            f"{label}: link column {link!r} has {len(unique_repeated)} duplicate key(s) in "
            f"{len(repeated)} rows (e.g. {examples}); keep one row per person, e.g. by "
            "aggregating first"
        )


# --------------------------------------------------------------------------- describing


def describe_columns(
    df: pd.DataFrame,
    link: str,
    max_levels: int = 50,
    *,
    categorical: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Describe every non-link column as numeric, categorical or bool (JSON-friendly).

    A numeric column says whether all its values are whole numbers (``"whole"``; the
    catalog turns a small whole-number range into levels, never publishing the flag).
    Integer columns named in ``categorical`` with at most 12 distinct values are categorical;
    text columns with more than ``max_levels`` distinct values get ``"levels": None``, and
    text columns of mostly numbers get a ``"note"`` (also logged as a warning).
    """
    if link not in df.columns:
        raise DataSourceError(f"link column {link!r} not in the table; pass the key column name")
    wanted = set(categorical or ())
    return {
        column: _describe(df[column], max_levels, column in wanted)
        for column in df.columns
        if column != link
    }


def _describe(series: pd.Series, max_levels: int, as_categorical: bool) -> dict[str, Any]:
    missing = int(series.isna().sum())
    if _is_bool(series):
        return {"kind": "bool", "levels": [False, True], "missing": missing}
    if pd.api.types.is_numeric_dtype(series.dtype):
        if as_categorical and _is_small_integer(series):
            return _categorical(series, max_levels, missing)
        if as_categorical:
            logger.warning(
                "column %r requested as categorical but is not an integer column with at most "
                "%d levels; treating it as numeric",
                series.name,
                MAX_CATEGORICAL_INT_LEVELS,
            )
        return _numeric(series, missing)
    entry = _categorical(series, max_levels, missing)
    note = _numeric_text_note(series)
    if note is not None:
        logger.warning("%s", note)
        entry["note"] = note
    return entry


def _numeric_text_note(series: pd.Series) -> str | None:
    """A note when a text column is mostly numbers, i.e. a few stray text values made it
    categorical (e.g. 'unknown' or '12,5' among numbers)."""
    values = series.dropna()
    if not len(values) or not all(isinstance(v, str) for v in values):
        return None
    values = values.astype(object)
    uniques = pd.Series(pd.unique(values), dtype=object)
    is_number = pd.to_numeric(uniques, errors="coerce").notna().to_numpy()
    n_numbers = int(values.isin(set(uniques[is_number])).sum())
    n_text = len(values) - n_numbers
    if n_text == 0 or n_numbers < 2 or n_numbers < NUMERIC_TEXT_SHARE * len(values):
        return None
    examples = ", ".join(repr(v) for v in uniques[~is_number][:_MAX_EXAMPLES])
    return (f"column {series.name!r} looks numeric but {n_text} of {len(values)} values are "
            f"text (e.g. {examples}), so it is treated as categorical; fix those values, or "
            "leave them empty to mean missing")


def _is_bool(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series.dtype):
        return True
    values = series.dropna()
    return pd.api.types.is_object_dtype(series.dtype) and len(values) > 0 and all(
        isinstance(v, (bool, np.bool_)) for v in values
    )


def _is_whole(series: pd.Series) -> bool:
    """Integer dtype, or floats that are all whole numbers (integers with NaN)."""
    if pd.api.types.is_float_dtype(series.dtype):
        return bool(np.all(np.asarray(series.dropna(), dtype=float) % 1 == 0))
    return pd.api.types.is_integer_dtype(series.dtype)


def _is_small_integer(series: pd.Series) -> bool:
    """Whole numbers (:func:`_is_whole`) with at most 12 distinct values."""
    return _is_whole(series) and series.dropna().nunique() <= MAX_CATEGORICAL_INT_LEVELS


def _numeric(series: pd.Series, missing: int) -> dict[str, Any]:
    values = series.dropna()
    low, high = (float(values.min()), float(values.max())) if len(values) else (None, None)
    return {"kind": "numeric", "min": low, "max": high, "missing": missing,
            "whole": bool(len(values)) and _is_whole(series)}


def _categorical(series: pd.Series, max_levels: int, missing: int) -> dict[str, Any]:
    uniques = pd.unique(series.dropna().astype(object))
    levels = None
    if len(uniques) <= max_levels:
        levels = sorted((_to_scalar(v) for v in uniques), key=lambda v: (isinstance(v, str), v))
    return {"kind": "categorical", "levels": levels, "missing": missing}


def _to_scalar(value: object) -> Any:
    """Convert a value to a JSON-friendly Python scalar (bool, int, float or str)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return str(value)
