"""Plaintext pandas oracle for MPC results: the same analysis on the joined plain data."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pandas as pd

from ppa_kernel.contract.limits import SCALE_BITS
from ppa_kernel.contract.models.base import UNGROUPED

LINK = "pseudonym"


def join(data: Mapping[str, pd.DataFrame], parties: list[str]) -> pd.DataFrame:
    """Inner join of the named parties' tables on the link column."""
    frames = [data[p] for p in parties]
    out = frames[0]
    for frame in frames[1:]:
        out = out.merge(frame, on=LINK, how="inner")
    return out


def dominance_reason(values: pd.Series, n: int = 2, k: int = 90, p: int = 10) -> str | None:
    """The parties' sound dominance / p-ratio bound on one cell's non-missing values, on
    the integers they encode (x * 2**16): 'dominance', 'p-ratio' or None (passes)."""
    v = np.rint(values.to_numpy(float) * (1 << SCALE_BITS)).astype(np.int64).astype(object)
    t, s2 = int(v.sum()), int((v * v).sum())
    if k * k * t * t < 10_000 * n * s2:
        return "dominance"
    if 10_000 * t * t < ((100 + p) ** 2 + 10_000) * s2:
        return "p-ratio"
    return None


def expected(frame: pd.DataFrame, by: list[str], levels: list[list],
             aggs: Mapping[str, tuple[Callable[[pd.DataFrame], pd.Series] | str | None, str]],
             min_cell: int = 10, magnitudes: Collection[str] = ()
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Expected released table and suppression mask over the full grid of levels.

    ``magnitudes`` names the aggregates whose measure is a non-negative column with a
    released sum: their cells also fall under the dominance and p-ratio bound.
    """
    cells = list(itertools.product(*levels)) if by else [()]
    values: dict[str, list] = {name: [] for name in aggs}
    mask: dict[str, list] = {name: [] for name in aggs}
    for cell in cells:
        rows = frame
        for column, level in zip(by, cell, strict=True):
            rows = rows[rows[column] == level]
        for name, (measure, stat) in aggs.items():
            if stat == "size":
                count, value = len(rows), float(len(rows))
            else:
                series = measure(rows) if callable(measure) else rows[measure]
                series = pd.to_numeric(series, errors="coerce").astype(float)
                count = int(series.notna().sum())
                value = float(getattr(series, stat)()) if stat != "count" else float(count)
            gone = count < min_cell
            if not gone and name in magnitudes:
                gone = dominance_reason(series.dropna()) is not None
            values[name].append(np.nan if gone else value)
            mask[name].append(gone)
    if by:
        index = pd.MultiIndex.from_tuples(cells, names=by)
        if len(by) == 1:
            index = index.get_level_values(0)
    else:
        index = pd.Index([UNGROUPED])
    return pd.DataFrame(values, index=index), pd.DataFrame(mask, index=index)


def assert_matches(result: pd.DataFrame, want: pd.DataFrame, want_mask: pd.DataFrame,
                   rtol: float = 1e-4) -> None:
    """Same cells released, same suppressions, values within rtol (counts exact)."""
    got_mask = result.attrs["suppressed"]
    assert list(result.columns) == list(want.columns)
    assert len(result) == len(want)
    for column in want.columns:
        gm = got_mask[column].to_numpy(dtype=bool)
        wm = want_mask[column].to_numpy(dtype=bool)
        assert (gm == wm).all(), f"{column}: suppressed {gm} != expected {wm}"
        got = result[column].to_numpy(dtype=float)[~wm]
        exp = want[column].to_numpy(dtype=float)[~wm]
        np.testing.assert_allclose(got, exp, rtol=rtol, atol=1e-6, err_msg=column)
    assert [tuple(np.atleast_1d(i)) for i in result.index] == \
        [tuple(np.atleast_1d(i)) for i in want.index]


def run_recorded(consortium, query) -> tuple[dict, pd.DataFrame, dict[str, tuple[int, list]]]:
    """Run a query; return its plan, the released table and what was opened, by name.

    ``opened`` maps each opening name to (total count of values, the recorded values);
    every party must have opened the same.
    """
    from ppa_kernel.analyst.results import to_frame

    raw = consortium.run_raw(query.plan())
    parties = list(raw.results)
    table = to_frame(raw.plan, raw.results[parties[0]]["stats"])
    opened = {}
    for party, outcome in raw.results.items():
        counts: dict = collections.defaultdict(int)
        values: dict = collections.defaultdict(list)
        for entry in outcome["openings"]:
            counts[entry["name"]] += entry["count"]
            values[entry["name"]].append(entry["values"])
        opened[party] = {name: (counts[name], values[name]) for name in counts}
    assert all(o.keys() == opened[parties[0]].keys() for o in opened.values())
    assert all({k: c for k, (c, _) in o.items()} == {k: c for k, (c, _) in
                                                      opened[parties[0]].items()}
               for o in opened.values())
    return raw.plan, table, opened[parties[0]]
