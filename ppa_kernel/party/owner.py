"""Owner-side evaluation: a party computes its features in the clear on its own rows.

Pandas semantics throughout: arithmetic propagates missing values, comparisons and
``isin`` with a missing value are False, ``~`` flips them. The results are encoded as
integers for input into MPC (:data:`ppa_kernel.contract.program.SCALE_BITS`).
"""

from __future__ import annotations

import json
import operator

import numpy as np
import pandas as pd

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import expr_columns
from ppa_kernel.contract.program import SCALE_BITS, Feature, Program

_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
           "div": operator.truediv, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
           "ge": operator.ge, "eq": operator.eq, "ne": operator.ne}


def evaluate(expr: dict, frame: pd.DataFrame, party: str):
    """Value of an expression over this party's rows (a Series, or a scalar constant)."""
    if "col" in expr:
        owner, column = expr["col"].split(".", 1)
        if owner != party:
            raise PlanError(f"column {expr['col']!r} is not {party}'s")
        return frame[column]
    if "const" in expr:
        return expr["const"]
    op, args = expr["op"], [evaluate(a, frame, party) for a in expr["args"]]
    if op == "neg":
        return -args[0]
    if op == "not":
        return ~_truth(args[0])
    if op == "and":
        return _truth(args[0]) & _truth(args[1])
    if op == "or":
        return _truth(args[0]) | _truth(args[1])
    if op == "isin":
        return args[0].isin(expr["values"]) & args[0].notna()
    result = _BINARY[op](args[0], args[1])
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
        result = _truth(result)
        if op == "ne":  # pandas: NaN != x is True
            return result
    return result


def _truth(value) -> pd.Series:
    """A Series as truth values, missing counting as False."""
    if isinstance(value, pd.Series):
        return value.fillna(False).astype(bool) if value.dtype != bool else value
    return value


def _inputs_present(expr: dict, frame: pd.DataFrame) -> np.ndarray:
    """Rows where every column an expression reads is present."""
    present = np.ones(len(frame), dtype=bool)
    for name in expr_columns(expr):
        present &= frame[name.split(".", 1)[1]].notna().to_numpy()
    return present


def encode(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point integers (0 where missing) and not-missing flags, as object arrays.

    Infinite values count as not present (the caller refuses them where the inputs are).
    """
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    numbers = numbers.where(np.isfinite(numbers))
    present = numbers.notna().to_numpy()
    scaled = np.rint(numbers.fillna(0.0).to_numpy() * (1 << SCALE_BITS))
    ints = np.array([int(v) for v in scaled], dtype=object)
    return ints, present.astype(np.int64).astype(object)


def feature_matrix(program: Program, party: str, frame: pd.DataFrame) -> np.ndarray:
    """This party's input rows: one column per feature, as an object array of ints."""
    check_declarations(program, party, frame)
    features = program.features.get(party, [])
    codes = group_codes(program, party, frame) if party in program.group_entries else None
    columns = [_feature_column(f, party, frame, codes) for f in features]
    if not columns:
        return np.zeros((len(frame), 0), dtype=object)
    return np.column_stack(columns).astype(object)


def check_declarations(program: Program, party: str, frame: pd.DataFrame) -> None:
    """Refuse a plan that declares one of this party's columns free of missing values wrongly."""
    for name, meta in program.columns.items():
        if meta["party"] == party and meta.get("missing") is False \
                and frame[meta["column"]].isna().any():
            raise PlanError(f"the plan says {name} has no missing values, but it has",
                            party=party, hint="refresh the catalog and rebuild the plan")


def _feature_column(feature: Feature, party: str, frame: pd.DataFrame,
                    codes: np.ndarray | None):
    n = len(frame)
    if feature.kind == "present":
        return np.ones(n, dtype=object)
    if feature.kind == "onehot":
        return (codes == feature.level).astype(np.int64).astype(object)
    expr = json.loads(feature.key)
    value = evaluate(expr, frame, party)
    if not isinstance(value, pd.Series):
        value = pd.Series(value, index=frame.index)
    if feature.kind == "ind":
        return _truth(value).to_numpy().astype(np.int64).astype(object)
    ints, present = encode(value)
    numeric = pd.api.types.is_numeric_dtype(value) or pd.api.types.is_bool_dtype(value)
    undefined = _inputs_present(expr, frame) & ~present.astype(bool)
    if numeric and undefined.any():  # e.g. inf * 0: a row would drop out of the measure's row set
        raise PlanError(f"{feature.key[:80]} is not a finite number for "
                        f"{int(undefined.sum())} row(s) whose columns are present",
                        party=party, hint="rescale the expression")
    if feature.kind == "val":
        return ints
    if feature.kind == "nn":
        return present
    return ints * ints  # sq


def group_codes(program: Program, party: str, frame: pd.DataFrame) -> np.ndarray:
    """Index of each row's level combination among the party's groups (-1: missing)."""
    codes = np.zeros(len(frame), dtype=np.int64)
    missing = np.zeros(len(frame), dtype=bool)
    for entry in program.group_entries[party]:
        column = frame[entry["expr"]["col"].split(".", 1)[1]]
        levels = entry["levels"]
        if entry.get("bins") is not None:
            idx = _bin_index(column, entry["bins"])
        else:
            idx = _level_index(column, levels, entry["name"], party)
        missing |= idx < 0
        codes = codes * len(levels) + np.maximum(idx, 0)
    codes[missing] = -1
    return codes


def _bin_index(column: pd.Series, edges: list[float]) -> np.ndarray:
    """Histogram bin of each value as numpy.histogram does (last bin closed); -1 outside."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    idx = np.searchsorted(np.asarray(edges, dtype=float), values, side="right") - 1
    idx[values == edges[-1]] = len(edges) - 2
    idx[(idx < 0) | (idx >= len(edges) - 1) | np.isnan(values)] = -1
    return idx


def _level_index(column: pd.Series, levels: list, name: str, party: str) -> np.ndarray:
    lookup = {_level_key(level): i for i, level in enumerate(levels)}
    out = np.full(len(column), -1, dtype=np.int64)
    for i, value in enumerate(column.tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            continue
        key = _level_key(value)
        if key not in lookup:
            raise PlanError(f"value {value!r} of {name!r} is not among the plan's levels",
                            party=party, hint="refresh the catalog and rebuild the plan")
        out[i] = lookup[key]
    return out


def _level_key(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"b:{bool(value)}"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        return f"n:{int(value)}"
    return f"s:{value}"
