"""One query over the linked table: cohort mask, cells, aggregates, disclosure, release.

Runs after :func:`.linkage.linked_table` has brought the plan's input columns into the
linked order. Owner-side features arrive ready; only expressions mixing parties cost
secure multiplications or comparisons here. Aggregates are linear algebra: with a secret
cell-membership matrix W (people x cells) and value columns V, the cell sums are W'V.

Leakage, to every party: which (cell, count) pairs pass every disclosure rule
(``disclosure.pass``: minimum cell size, dominance and p-ratio for sums of magnitudes,
differencing against the epoch's earlier releases; :mod:`.disclosure`), the first rule
each suppressed pair fails (``disclosure.reason``), and whether a table's released union
is close to an earlier release (``disclosure.union``); then, for passing pairs only, the
sufficient statistics the plan names: counts (``release.count:*``), sums
(``release.sum:*``, for sum/mean/var/std only) and sums of squares (``release.sumsq:*``,
for var/std only). Mean = sum/count and variance follow from them exactly; a count is
released with every mean, as statistical offices publish it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from ppa_kernel.contract import bounds
from ppa_kernel.contract.errors import PlanError, PolicyRefused
from ppa_kernel.contract.expr import canonical_json, is_boolean
from ppa_kernel.contract.program import SCALE_BITS, Feature, Program, cell_levels

from . import limb_fixed
from .disclosure import REASONS, Kept, Rules, differencing_flags, dominance_fails
from .history import History, RowSet
from .limb_fixed import F, Shares
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
        self.table = table  # this party's shares, (L, people, features) canonical limbs
        self.sectype = sectype
        self._columns: dict[int, object] = {}

    @property
    def rows(self) -> int:
        return self.table.shape[1]

    def shares(self, feature: Feature) -> Shares:
        """This party's shares of a feature's column, as limbs."""
        return Shares(self.table[:, :, self.program.feature_index(feature)].astype(np.uint64))

    def column(self, feature: Feature):
        """A feature's column as a secure array (made once per feature)."""
        index = self.program.feature_index(feature)
        if index not in self._columns:
            values = F.to_ints(self.table[:, :, index].astype(np.uint64))
            self._columns[index] = wrap(self.sectype, np.array(values, dtype=object),
                                        reduced=True)
        return self._columns[index]

    def owned(self, kind: str, expr: dict):
        owner = self.program.owner(expr)
        return self.column(Feature(owner, kind, canonical_json(expr)))

    def owned_shares(self, kind: str, expr: dict) -> Shares:
        return self.shares(Feature(self.program.owner(expr), kind, canonical_json(expr)))

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
    reasons: dict[str, list[str | None]] = field(default_factory=dict)  # why suppressed


@dataclass
class QueryState:
    """What a model runner may build on: secret per-cell totals and the public pass bits."""

    program: Program
    evaluator: Evaluator
    sectype: object
    mask: object | None  # secure 0/1 per linked row (None: every row), cohort filter
    cell_weights: Shares  # rows x cells membership (mask applied)
    size_counts: np.ndarray  # shares of the rows per cell (released only if "size" asked)
    totals: np.ndarray  # shares, cells x value columns (see layout)
    layout: dict[str, dict]  # measure key -> {"scale", "count", "sum", "sumsq"?}
    stats: CellStats
    values: Shares | None = None  # people x value columns (see layout)
    _weights: object = field(default=None, repr=False)

    @property
    def weights(self):
        """:attr:`cell_weights` as a secure array (made once, for models on MPyC arrays)."""
        if self._weights is None:
            self._weights = wrap(self.sectype, self.cell_weights.objects(), reduced=True)
        return self._weights


def joined_rows(program: Program, group_sizes: np.ndarray) -> np.ndarray:
    """The linked people the query can use: those seen at no fewer parties than the join
    needs (the others cannot be in it; group sizes are public)."""
    return np.flatnonzero(group_sizes >= len(program.link))


async def run_query(program: Program, linked: np.ndarray, group_sizes: np.ndarray,
                    sectype, rules: Rules, progress=None,
                    history: History | None = None) -> QueryState:
    """Mask, aggregate, check and release one plan's cells (see module docstring).

    ``linked`` holds this party's shares of the :func:`joined_rows` of the linked table
    (:func:`.linkage.linked_limbs`).
    """
    m, joined = len(program.parties), len(program.link)
    rows = joined_rows(program, group_sizes)
    if linked.shape[1] != len(rows):
        raise ValueError(f"the linked table has {linked.shape[1]} rows, the join {len(rows)}")
    ev = Evaluator(program, linked, sectype)
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
    cells = weights.shape[1]
    size_counts = limb_fixed.column_sums(weights).objects()
    totals = np.zeros((cells, 0), dtype=object)
    values = None
    if value_columns is not None:
        values = value_columns
        totals = (await limb_fixed.dot(weights, values)).objects()
    if progress:
        progress("computation")
    # Check and release row counts only if the plan asks for them ("size").
    wants_size = any(a["stat"] == "size" for a in program.plan["aggregates"])
    keys = (["size"] if wants_size else []) + [entry["key"] for entry in program.measures]
    stats = CellStats({}, {}, {}, {}, {}, cells)
    state = QueryState(program, ev, sectype, mask, weights, size_counts, totals, layout, stats,
                       values)
    if not keys:  # a model alone may release no table (its own checks come later)
        return state
    check = _Disclosure(state, keys, rules, rows, group_sizes, history)
    passed = await check.run()
    if progress:
        progress("disclosure")
    for i, key in enumerate(keys):
        ok = passed[i]
        stats.passed[key] = ok.tolist()
        stats.reasons[key] = check.reasons[i]
        stats.counts[key] = await _release(f"release.count:{key}", sectype,
                                           check.counts[i], ok)
        if key == "size":
            continue
        place = layout[key]
        entry = program.measure_entry(key)
        stats.scales[key] = place["scale"]
        if entry["open_sum"]:
            stats.sums[key] = await _release(f"release.sum:{key}", sectype,
                                             totals[:, place["sum"]], ok)
        if entry["open_square"]:
            stats.sumsqs[key] = await _release(f"release.sumsq:{key}", sectype,
                                               totals[:, place["sumsq"]], ok)
    return state


class _Disclosure:
    """Every disclosure rule for one query's cells, inside MPC (see :mod:`.disclosure`).

    Opens, per key and cell, whether it passes (``disclosure.pass``) and for each
    suppressed cell its reason (``disclosure.reason``); then, per measure whose table
    releases two or more cells, whether the union of its released cells differs from an
    earlier release by fewer than k rows (``disclosure.union``), suppressing further
    cells until it does not. Released row sets join the epoch's history before any value
    is opened.
    """

    MAX_UNION_ROUNDS = 3

    def __init__(self, state: QueryState, keys: list[str], rules: Rules, rows: np.ndarray,
                 group_sizes: np.ndarray, history: History | None):
        self.state, self.keys, self.rules = state, keys, rules
        self.rows, self.group_sizes = rows, group_sizes
        self.history = history if rules.differencing else None
        program = state.program
        totals, layout = state.totals, state.layout
        self.counts = [state.size_counts if k == "size" else totals[:, layout[k]["count"]]
                       for k in keys]
        # Row sets: the cell's members, restricted to rows where the measure is present.
        self.presence = {k: None if k == "size" or program.complete(program.measure_entry(k)
                                                                     ["expr"]) else k
                         for k in keys}
        self.reasons: list[list[str | None]] = []
        stored = self.history.load() if self.history is not None else []
        self.kept = Kept.align(stored, rows, group_sizes)
        self._sets: dict[str | None, Shares] = {}

    async def row_sets(self, presence: str | None) -> Shares:
        """Shares (rows x cells) of each cell's row set for one presence key."""
        if presence not in self._sets:
            state = self.state
            w = state.cell_weights
            if presence is not None:  # the measure's not-missing flags
                column = state.values[:, state.layout[presence]["count"]].reshape(-1, 1)
                [w] = await limb_fixed.multiply([(w, column)])
            self._sets[presence] = w
        return self._sets[presence]

    async def run(self) -> np.ndarray:
        state, rules, sectype = self.state, self.rules, self.state.sectype
        if self.history is not None and len(self.history) >= rules.history_limit:
            raise PolicyRefused(f"this data epoch has released {len(self.history)} row sets, "
                                "the limit of its differencing history",
                                hint="the data owners must start a new epoch")
        count_matrix = np.vstack(self.counts)
        fails = [await shares(await compare(mpc.np_sgn, wrap(sectype, count_matrix)
                                            - rules.min_cell, l=COMPARE_BITS, LT=True))]
        zero = np.zeros_like(count_matrix)
        dom, pratio = zero.copy(), zero.copy()
        for i, key in enumerate(self.keys):
            entry = None if key == "size" else state.program.measure_entry(key)
            if entry is not None and entry["dominance"]:
                place = state.layout[key]
                largest = int(bounds.encoded_magnitude(entry["expr"], state.program.columns)[0]
                              * len(self.rows)) + 1
                dom[i], pratio[i] = await dominance_fails(
                    sectype, state.totals[:, place["sum"]], state.totals[:, place["sumsq"]],
                    rules, largest)
        fails += [dom, pratio, await self._differencing()]
        ok = [(1 - f) % sectype.field.modulus for f in fails]
        pairs = [wrap(sectype, ok[0]) * wrap(sectype, ok[1]),  # two rounds, not three
                 wrap(sectype, ok[2]) * wrap(sectype, ok[3])]
        passing = await shares(pairs[0] * pairs[1])
        passed = np.asarray(await reveal("disclosure.pass", wrap(sectype, passing))
                            ).astype(int) == 1
        await self._reasons(fails, ok, passed)
        await self._unions(passed)
        await self._record(passed)
        return passed

    async def _differencing(self) -> np.ndarray:
        """Shares (keys x cells) of the differencing fail bits."""
        out = np.zeros((len(self.keys), self.state.stats.cells), dtype=object)
        if self.history is None:
            return out
        for presence in dict.fromkeys(self.presence.values()):
            index = [i for i, k in enumerate(self.keys) if self.presence[k] == presence]
            sets = await self.row_sets(presence)
            flags = await differencing_flags(self.state.sectype, sets, self.counts[index[0]],
                                             self.kept, self.rules.min_cell)
            out[index] = flags
        return out

    async def _reasons(self, fails, ok, passed: np.ndarray) -> None:
        """Open the first failing rule of each suppressed cell (codes in REASONS)."""
        if passed.all():  # public: the pass bits are open
            self.reasons = [[None] * passed.shape[1] for _ in range(passed.shape[0])]
            return
        sectype = self.state.sectype
        size, dom, pratio, diff = fails
        _, ok_dom, ok_p, _ = ok
        later = await shares(wrap(sectype, ok_p) * wrap(sectype, diff))
        later = await shares(wrap(sectype, pratio) * 3 + wrap(sectype, later) * 4)
        later = await shares(wrap(sectype, dom) * 2 + wrap(sectype, ok_dom) * wrap(sectype, later))
        code = await shares(wrap(sectype, size) + wrap(sectype, (1 - size)) * wrap(sectype, later))
        flat = code.reshape(-1)[np.flatnonzero(~passed.reshape(-1))]
        opened = [] if not len(flat) else \
            np.asarray(await reveal("disclosure.reason", wrap(sectype, flat))).astype(int)
        reasons = np.full(passed.size, None, dtype=object)
        reasons[np.flatnonzero(~passed.reshape(-1))] = [REASONS.get(int(c), "disclosure")
                                                        for c in opened]
        self.reasons = reasons.reshape(passed.shape).tolist()

    async def _unions(self, passed: np.ndarray) -> None:
        """Suppress more cells while a table's released union is close to an earlier set."""
        if self.kept is None:
            return
        for i, key in enumerate(self.keys):
            sets = await self.row_sets(self.presence[key])
            for round_ in range(self.MAX_UNION_ROUNDS + 1):
                released = np.flatnonzero(passed[i])
                if len(released) < 2:
                    break
                union = _union(sets, released)
                size = self.counts[i][released].sum()
                flag = await differencing_flags(self.state.sectype, union,
                                                np.array([size], dtype=object), self.kept,
                                                self.rules.min_cell)
                near = int(np.asarray(await reveal("disclosure.union",
                                                   wrap(self.state.sectype, flag)))[0])
                if not near:
                    break
                victim = released[-1] if round_ < self.MAX_UNION_ROUNDS else released
                passed[i, victim] = False
                for v in np.atleast_1d(victim):
                    self.reasons[i][v] = "differencing"

    async def _record(self, passed: np.ndarray) -> None:
        """Add the released row sets (cells and table unions) to the epoch's history, then
        wait until every party has recorded them (an input from each is the barrier)."""
        if self.history is None:
            return
        program, known = self.state.program, self.history.definitions
        joined = len(program.link)
        p = self.state.sectype.field.modulus
        cells = cell_definitions(program)
        new: list[RowSet] = []
        for i, key in enumerate(self.keys):
            presence = self.presence[key]
            sets = await self.row_sets(presence)
            released = np.flatnonzero(passed[i])
            for c in released:
                definition = _definition(program, presence, [cells[c]])
                if definition not in known:
                    known.add(definition)
                    new.append(RowSet(definition, joined, int(self.counts[i][c]) % p,
                                      sets[:, c].flat()))
            if len(released) >= 2:
                definition = _definition(program, presence, [cells[c] for c in released])
                if definition not in known:
                    known.add(definition)
                    union = _union(sets, released)
                    new.append(RowSet(definition, joined,
                                      int(self.counts[i][released].sum()) % p,
                                      union.flat()))
        if len(self.history) + len(new) > self.rules.history_limit:
            raise PolicyRefused(f"releasing {len(new)} more row sets would exceed this data "
                                f"epoch's differencing history of "
                                f"{self.rules.history_limit}",
                                hint="ask for fewer cells, or the data owners must start a "
                                     "new epoch")
        self.history.append(new)
        await mpc.gather(mpc.input(self.state.sectype(1)))


def _union(sets: Shares, chosen: np.ndarray) -> Shares:
    """Shares (rows x 1) of the union of the ``chosen`` cells' disjoint row sets."""
    indicator = np.zeros((sets.shape[1], 1), dtype=np.int64)
    indicator[chosen] = 1
    return limb_fixed.public_dot(sets, indicator)


def cell_definitions(program: Program) -> list[list]:
    """Each cell's public definition: per grouping column its expression and level, or
    for a binned column its bin's edges (labels of bins are the analyst's free text)."""
    entries = {e["name"]: e for e in program.plan["groupby"]}

    def part(name: str, level) -> list:
        entry = entries[name]
        if entry.get("bins") is None:
            return [canonical_json(entry["expr"]), level]
        i = entry["levels"].index(level)
        closed = i == len(entry["levels"]) - 1  # the last bin includes its right edge
        return [canonical_json(entry["expr"]), entry["bins"][i], entry["bins"][i + 1], closed]

    return [sorted(part(name, level) for name, level in cell.items())
            for cell in cell_levels(program.plan)]


def _definition(program: Program, presence: str | None, cells: list) -> str:
    """Digest of a row set's public definition (link, cohort, cells, presence)."""
    body = {"link": program.link, "filter": program.plan.get("filter"), "cells": cells,
            "presence": presence}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


async def _release(name: str, sectype, column: np.ndarray, ok: np.ndarray) -> list[int | None]:
    """Open the passing cells of a column of shares; suppressed cells stay closed."""
    idx = np.flatnonzero(ok)
    out: list[int | None] = [None] * len(ok)
    if len(idx):
        values = await reveal(name, wrap(sectype, column[idx]))
        for i, v in zip(idx, np.asarray(values).tolist()):
            out[i] = int(v)
    return out


def _onehot(ev: Evaluator, party: str, everyone_present: bool) -> Shares:
    """Shares of a party's full one-hot group matrix (an implied last level is restored)."""
    program = ev.program
    key = canonical_json([e["name"] for e in program.group_entries[party]])
    idx = [program.feature_index(Feature(party, "onehot", key, k))
           for k in range(program.onehot_count(party))]
    onehot = Shares(ev.table[:, :, idx].astype(np.uint64))
    if not program.implied_last.get(party):
        return onehot
    # Every present row of this party has exactly one level: the last is what remains.
    base = (Shares.zeros((ev.rows,)) + 1 if everyone_present
            else ev.shares(Feature(party, "present")))
    last = base.linear([(1, base)] + [(-1, onehot[:, k]) for k in range(len(idx))])
    return _columns([*(onehot[:, k] for k in range(len(idx))), last])


def _columns(columns: list[Shares]) -> Shares:
    """People x k shares from k columns of people."""
    return Shares(np.stack([c.limbs for c in columns], axis=2))


async def _cell_weights(ev: Evaluator, mask, n: int, everyone_present: bool) -> Shares:
    """Secret people x cells membership matrix (one-hot per grouping party, combined;
    cell ``a * levels + b`` is level a of the earlier parties and level b of the next)."""
    program = ev.program
    weights = None
    for party in program.group_parties:
        onehot = _onehot(ev, party, everyone_present)
        if weights is None:
            weights = onehot
            continue
        left = Shares(weights.limbs[:, :, :, None])
        right = Shares(onehot.limbs[:, :, None, :])
        [product] = await limb_fixed.multiply([(left, right)])
        weights = product.reshape(n, -1)
    cohort = None if mask is None else Shares.of(await shares(mask)).reshape(n, 1)
    if weights is None:
        return cohort if cohort is not None else Shares.of(np.ones((n, 1), dtype=object))
    if cohort is not None:
        [weights] = await limb_fixed.multiply([(weights, cohort)])
    return weights


async def _value_columns(ev: Evaluator, program: Program) -> tuple[Shares | None, dict]:
    """Shares (people x columns) of every measure's not-missing flags, values and, where
    needed, squares, and where each column sits. Owners computed their own measures'
    columns; others cost a secure product each."""
    columns: list[Shares] = []
    layout = {}
    for entry in program.measures:
        expr, key = entry["expr"], entry["key"]
        if program.owner(expr) is not None:
            scale, v = 1, ev.owned_shares("val", expr)
            present = None if program.complete(expr) else ev.owned_shares("nn", expr)
            square = ev.owned_shares("sq", expr) if entry["square"] else None
        else:
            value = await ev.value(expr)
            if value.public:
                raise PlanError("an aggregate needs a column, not a constant")
            scale, v = value.scale, Shares.of(await shares(value.value))
            present = None if value.present is None else Shares.of(await shares(value.present))
            if present is not None:
                [v] = await limb_fixed.multiply([(v, present)])
            square = (await limb_fixed.multiply([(v, v)]))[0] if entry["square"] else None
        if present is None:
            present = Shares.zeros((ev.rows,)) + 1
        place = {"scale": scale, "count": len(columns), "sum": len(columns) + 1}
        columns += [present, v]
        if square is not None:
            place["sumsq"] = len(columns)
            columns.append(square)
        layout[key] = place
    return (_columns(columns) if columns else None), layout
