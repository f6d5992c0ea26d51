"""One query over the linked table: cohort mask, cells, aggregates, disclosure, release.

Runs after :func:`.linkage.linked_table` has brought the plan's input columns into the
linked order. Owner-side features arrive ready; only expressions mixing parties cost
secure multiplications or comparisons here. Aggregates are linear algebra: with a secret
cell-membership matrix W (people x cells) and value columns V, the cell sums are W'V.

Leakage, to every party: which (cell, count) pairs pass the minimum cell size
(``disclosure.pass``); then, for passing pairs only, the sufficient statistics the plan
names: counts (``release.count:*``), sums (``release.sum:*``) and sums of squares
(``release.sumsq:*``, only for var/std). Mean = sum/count and variance follow from them
exactly; a count is released with every mean, as statistical offices publish it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import PlanError
from ..plan import canonical_json, is_boolean
from ..program import SCALE_BITS, Feature, Program
from .openings import compare, reveal
from .runtime import COMPARE_BITS, mpc, shares, wrap

logger = logging.getLogger(__name__)


@dataclass
class Secret:
    """A secure value column with its scale exponent and not-missing flags (None: never)."""

    value: object  # secure array, or a public number for constants
    present: object | None
    scale: int

    @property
    def public(self) -> bool:
        return not hasattr(self.value, "share")


class Evaluator:
    """Computes plan expressions over the linked table (rows = people in the join)."""

    def __init__(self, program: Program, table: np.ndarray, sectype):
        self.program = program
        self.table = table  # this party's shares, people x features
        self.sectype = sectype

    def column(self, feature: Feature):
        return wrap(self.sectype, self.table[:, self.program.feature_index(feature)])

    def owned(self, kind: str, expr: dict):
        owner = self.program.owner(expr)
        return self.column(Feature(owner, kind, canonical_json(expr)))

    async def value(self, expr: dict) -> Secret:
        """Numeric expression as a Secret (scale 2^(SCALE_BITS*scale))."""
        if "const" in expr:
            return Secret(expr["const"], None, 0)
        if self.program.owner(expr) is not None:
            present = None if self.program.complete(expr) else self.owned("nn", expr)
            return Secret(self.owned("val", expr), present, 1)
        op, args = expr["op"], expr["args"]
        if is_boolean(expr, self.program.columns):
            return Secret(await self.condition(expr), None, 0)
        parts = [await self.value(a) for a in args]
        if op == "neg":
            a = parts[0]
            return Secret(-a.value, a.present, a.scale)
        a, b = parts
        present = _and_present(a.present, b.present)
        if op in ("add", "sub"):
            scale = max(a.scale, b.scale)
            va, vb = _aligned(a, scale), _aligned(b, scale)
            return Secret(va + vb if op == "add" else va - vb, present, scale)
        if op == "div":
            if not b.public or b.value == 0:
                raise PlanError("division is only by a nonzero constant")
            b = Secret(1 / b.value, None, 0)
        if b.public and not a.public:
            a, b = b, a
        if a.public:
            factor, extra = _constant_factor(a.value)
            return Secret(b.value * factor, b.present, b.scale + extra)
        return Secret(a.value * b.value, present, a.scale + b.scale)

    async def condition(self, expr: dict):
        """Truth-valued expression as a secure 0/1 array (missing counts as False)."""
        if self.program.owner(expr) is not None:
            return self.owned("ind", expr)
        op, args = expr["op"], expr["args"]
        if op == "not":
            return 1 - await self.condition(args[0])
        if op in ("and", "or"):
            a, b = await self.condition(args[0]), await self.condition(args[1])
            both = a * b
            return both if op == "and" else a + b - both
        a, b = await self.value(args[0]), await self.value(args[1])
        scale = max(a.scale, b.scale)
        diff = _aligned(a, scale) - _aligned(b, scale)
        if op in ("eq", "ne"):
            bit = await compare(mpc.np_sgn, diff, l=COMPARE_BITS, EQ=True)
        elif op in ("lt", "ge"):
            bit = await compare(mpc.np_sgn, diff, l=COMPARE_BITS, LT=True)
        else:
            bit = await compare(mpc.np_sgn, -diff, l=COMPARE_BITS, LT=True)
        present = _and_present(a.present, b.present)
        if op in ("le", "ge"):
            bit = 1 - bit
        if present is not None:
            bit = bit * present
        return 1 - bit if op == "ne" else bit


def _and_present(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a * b


def _aligned(x: Secret, scale: int):
    """x's value at a higher scale exponent (exact for secure values and integers)."""
    if x.public:
        return round(x.value * (1 << (SCALE_BITS * scale)))
    return x.value * (1 << (SCALE_BITS * (scale - x.scale))) if scale > x.scale else x.value


def _constant_factor(c: float) -> tuple[int, int]:
    """An integer multiplier for constant c and the scale exponent it adds."""
    if float(c).is_integer():
        return int(c), 0
    return round(c * (1 << (2 * SCALE_BITS))), 2


@dataclass
class CellStats:
    """Released integer statistics per cell, None where suppressed."""

    counts: dict[str, list[int | None]]
    sums: dict[str, list[int | None]]
    sumsqs: dict[str, list[int | None]]
    scales: dict[str, int]
    passed: dict[str, list[bool]]
    cells: int
    model: dict | None = None


@dataclass
class QueryState:
    """What a model runner may build on: secret per-cell totals and the public pass bits."""

    program: Program
    evaluator: Evaluator
    sectype: object
    mask: object | None  # secure 0/1 per linked row (None: every row), cohort filter
    weights: object  # secure rows x cells membership (mask applied)
    size_counts: np.ndarray  # shares of the rows per cell (released only if "size" asked)
    totals: np.ndarray  # shares, cells x value columns (see layout)
    layout: dict[str, dict]  # measure key -> {"scale", "count", "sum", "sumsq"?}
    stats: CellStats


async def run_query(program: Program, linked: np.ndarray, group_sizes: np.ndarray,
                    sectype, min_cell: int, progress=None) -> QueryState:
    """Mask, aggregate, check and release one plan's cells (see module docstring)."""
    m, joined = len(program.parties), len(program.link)
    # People seen at fewer parties than the join needs cannot be in it (public pattern).
    rows = np.flatnonzero(group_sizes >= joined)
    ev = Evaluator(program, linked[rows], sectype)
    mask = None
    if joined < m:
        for party in program.link:
            present = ev.column(Feature(party, "present"))
            mask = present if mask is None else mask * present
    if program.plan.get("filter") is not None:
        condition = await ev.condition(program.plan["filter"])
        mask = condition if mask is None else mask * condition
    weights = await _cell_weights(ev, mask, len(rows), joined == m)
    value_columns, layout = await _value_columns(ev, program)
    w_shares = await shares(weights)
    size_counts = w_shares.sum(axis=0)
    totals = np.zeros((w_shares.shape[1], 0), dtype=object)
    if value_columns is not None:
        totals = await shares(weights.transpose() @ value_columns)
    if progress:
        progress("computation")
    # Check and release row counts only if the plan asks for them ("size").
    wants_size = any(a["stat"] == "size" for a in program.plan["aggregates"])
    keys = (["size"] if wants_size else []) + [entry["key"] for entry in program.measures]
    passed = np.zeros((0, w_shares.shape[1]), dtype=bool)
    if keys:  # a model alone may release no table (its own checks come later)
        count_matrix = np.vstack([size_counts if k == "size" else totals[:, layout[k]["count"]]
                                  for k in keys])
        too_small = await compare(mpc.np_sgn, wrap(sectype, count_matrix) - min_cell,
                                  l=COMPARE_BITS, LT=True)
        passed = np.asarray(await reveal("disclosure.pass", 1 - too_small)).astype(int) == 1
    if progress:
        progress("disclosure")
    stats = CellStats({}, {}, {}, {}, {}, w_shares.shape[1])
    for i, key in enumerate(keys):
        ok = passed[i]
        stats.passed[key] = ok.tolist()
        stats.counts[key] = await _release(f"release.count:{key}", sectype, count_matrix[i], ok)
        if key == "size":
            continue
        place = layout[key]
        stats.scales[key] = place["scale"]
        stats.sums[key] = await _release(f"release.sum:{key}", sectype,
                                         totals[:, place["sum"]], ok)
        if "sumsq" in place and program.measure_entry(key)["open_square"]:
            stats.sumsqs[key] = await _release(f"release.sumsq:{key}", sectype,
                                               totals[:, place["sumsq"]], ok)
    return QueryState(program, ev, sectype, mask, weights, size_counts, totals, layout, stats)


async def _release(name: str, sectype, column: np.ndarray, ok: np.ndarray) -> list[int | None]:
    """Open the passing cells of a column of shares; suppressed cells stay closed."""
    idx = np.flatnonzero(ok)
    out: list[int | None] = [None] * len(ok)
    if len(idx):
        values = await reveal(name, wrap(sectype, column[idx]))
        for i, v in zip(idx, np.asarray(values).tolist()):
            out[i] = int(v)
    return out


def _onehot(ev: Evaluator, party: str, everyone_present: bool) -> np.ndarray:
    """Shares of a party's full one-hot group matrix (an implied last level is restored)."""
    program = ev.program
    key = canonical_json([e["name"] for e in program.group_entries[party]])
    idx = [program.feature_index(Feature(party, "onehot", key, k))
           for k in range(program.onehot_count(party))]
    onehot = ev.table[:, idx]
    if not program.implied_last.get(party):
        return onehot
    # Every present row of this party has exactly one level: the last is what remains.
    base = (np.ones(len(onehot), dtype=object) if everyone_present
            else ev.table[:, program.feature_index(Feature(party, "present"))])
    last = base - onehot.sum(axis=1)
    return np.column_stack([onehot, last]) if onehot.shape[1] else last.reshape(-1, 1)


async def _cell_weights(ev: Evaluator, mask, n: int, everyone_present: bool):
    """Secret people x cells membership matrix (one-hot per grouping party, combined)."""
    program, sectype = ev.program, ev.sectype
    weights = None
    for party in program.group_parties:
        count = len(program.group_levels(party))
        onehot = _onehot(ev, party, everyone_present)
        if weights is None:
            weights = wrap(sectype, onehot)
            continue
        left = np.repeat(await shares(weights), count, axis=1)
        right = np.tile(onehot, (1, weights.shape[1]))
        weights = wrap(sectype, left) * wrap(sectype, right)
    if weights is None:
        if mask is None:
            return sectype.array(np.ones((n, 1), dtype=object))
        return wrap(sectype, (await shares(mask)).reshape(n, 1))
    if mask is not None:
        spread = np.repeat((await shares(mask)).reshape(n, 1), weights.shape[1], axis=1)
        weights = weights * wrap(sectype, spread)
    return weights


async def _value_columns(ev: Evaluator, program: Program):
    """Secure matrix of per-person values for every measure, and where each column sits."""
    sectype = ev.sectype
    columns, layout = [], {}
    for entry in program.measures:
        expr, key = entry["expr"], entry["key"]
        value = await ev.value(expr)
        if value.public:
            raise PlanError("an aggregate needs a column, not a constant")
        present, v = value.present, value.value
        owned = program.owner(expr) is not None
        if not owned and present is not None:
            v = v * present
        if present is None:
            present = sectype.array(np.ones(v.shape, dtype=object))
        place = {"scale": value.scale, "count": len(columns), "sum": len(columns) + 1}
        columns += [present, v]
        if entry["square"]:
            place["sumsq"] = len(columns)
            columns.append(ev.owned("sq", expr) if owned else v * v)
        layout[key] = place
    if not columns:
        return None, layout
    stacked = np.column_stack([await shares(c) for c in columns])
    return wrap(sectype, stacked), layout
