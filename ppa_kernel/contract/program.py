"""From a plan to the work each party does: owner-side inputs and secure steps.

Every party derives the same :class:`Program` from the same plan, so all make the same
sequence of MPC calls. A sub-expression whose columns all belong to one party is
evaluated by that party on its own rows before sharing ("owner-side"); it then inputs
only the encoded result (``val``), a not-missing flag (``nn``), a square (``sq``) or a
truth value (``ind``). Grouping columns of one party become that party's one-hot columns.
Only expressions that mix parties are computed under MPC.

Columns the plan marks ``"missing": false`` (each owner checks the claim on its data)
need fewer inputs: a measure then needs no not-missing flag, and the last one-hot column
of a party's groups is implied (present minus the other levels).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from . import bounds
from .errors import PlanError
from .expr import COMPARISONS, canonical_json, expr_columns, expr_parties, is_boolean
from .limits import SCALE_BITS
from .models import model_kind
from .plan import SQUARE_STATISTICS, SUM_STATISTICS, validate_plan

__all__ = ["SCALE_BITS", "Feature", "Program", "cell_levels", "compile_plan", "group_layout"]

OPENING_NAMES = ("linkage.ready", "linkage.epoch", "linkage.party_sizes", "linkage.prf_masked",
                 "linkage.equality_masked", "disclosure.pass", "disclosure.reason",
                 "disclosure.union", "protocol.comparison_masked", "protocol.plan_agreement")


@dataclass(frozen=True)
class Feature:
    """One column a party inputs for each of its rows."""

    party: str
    kind: str  # val | nn | sq | ind | onehot | present
    key: str = ""  # canonical expression (or group spec) it encodes
    level: int = 0  # one-hot column index


@dataclass
class Program:
    """The parties' shared reading of one plan."""

    plan: dict
    features: dict[str, list[Feature]] = field(default_factory=dict)
    group_entries: dict[str, list[dict]] = field(default_factory=dict)
    measures: list[dict] = field(default_factory=list)  # unique measure expressions
    implied_last: dict[str, bool] = field(default_factory=dict)  # last one-hot not input
    uses: dict[str, set[str]] = field(default_factory=dict)  # column -> filter|group|measure
    _known: set[Feature] = field(default_factory=set, repr=False)

    @property
    def group_parties(self) -> list[str]:
        """Parties with grouping columns, in the order of their first groupby entry."""
        return list(self.group_entries)

    @property
    def parties(self) -> list[str]:
        return self.plan["parties"]

    @property
    def link(self) -> list[str]:
        return self.plan["link"]

    @property
    def columns(self) -> dict:
        return self.plan["columns"]

    def complete(self, expr: dict) -> bool:
        """Whether every column the expression reads is declared free of missing values."""
        return all(self.columns[c].get("missing", True) is False for c in expr_columns(expr))

    def onehot_count(self, party: str) -> int:
        """How many one-hot columns the party inputs for its groups."""
        return len(self.group_levels(party)) - int(self.implied_last.get(party, False))

    def owner(self, expr: dict) -> str | None:
        """The single party owning an expression, or None when it mixes parties."""
        parties = expr_parties(expr, self.columns)
        return next(iter(parties)) if len(parties) == 1 else None

    def feature_index(self, feature: Feature) -> int:
        """Column of ``feature`` in the linked table (features ordered party by party)."""
        offset = 0
        for party in self.parties:
            own = self.features.get(party, [])
            if feature.party == party:
                return offset + own.index(feature)
            offset += len(own)
        raise KeyError(feature)

    @property
    def width(self) -> int:
        return sum(len(v) for v in self.features.values())

    def add(self, feature: Feature) -> Feature:
        if feature not in self._known:  # a set: linear in the number of features
            self._known.add(feature)
            self.features.setdefault(feature.party, []).append(feature)
        return feature

    def group_levels(self, party: str) -> list[tuple]:
        """Level combinations of one party's grouping columns, in one-hot column order."""
        return list(itertools.product(*(e["levels"] for e in self.group_entries[party])))

    def openings(self) -> set[str]:
        """Names of everything a run of this plan may open."""
        names = set(OPENING_NAMES)
        for m in self.measures:
            names.add(f"release.count:{m['key']}")
            if m["open_sum"]:
                names.add(f"release.sum:{m['key']}")
            if m["open_square"]:
                names.add(f"release.sumsq:{m['key']}")
        if any(a["stat"] == "size" for a in self.plan["aggregates"]):
            names.add("release.count:size")
        if self.plan.get("model") is not None:
            names |= model_kind(self.plan).openings(self.plan)
        return names

    def statistics(self) -> set[str]:
        """The statistics the plan computes, by their policy names (``size`` counts).

        A rule about the plan's shape, so that no rewording escapes it: every grouped
        plan releases per-cell counts, so a plan grouped by bins of a numeric column is
        also a ``histogram`` and one grouped by two or more variables also a
        ``crosstab`` (a chi-square test is one by definition), whatever the aggregates
        or model and whether ``t.histogram`` / ``t.crosstab`` or a groupby built it."""
        names = {"count" if a["stat"] == "size" else a["stat"]
                 for a in self.plan["aggregates"]}
        groups = self.plan["groupby"]
        model = self.plan.get("model")
        if model is not None:
            names.add(model["kind"])
        if any(e.get("bins") is not None for e in groups):
            names.add("histogram")
        if len(groups) >= 2 or (model is not None and model["kind"] == "chi2"):
            names.add("crosstab")
        return names

    def column_uses(self, party: str) -> dict[str, set[str]]:
        """How the plan uses each of ``party``'s columns (its policy decides if it may)."""
        return {meta["column"]: self.uses[name] for name, meta in self.columns.items()
                if meta["party"] == party}

    def measure_entry(self, key: str) -> dict:
        """The measure entry of a canonical expression (registered by the aggregates)."""
        for entry in self.measures:
            if entry["key"] == key:
                return entry
        raise KeyError(key)


def group_layout(plan: dict) -> dict[str, list[dict]]:
    """Each grouping party's groupby entries, parties in the order of their first entry:
    a party's groups vary together in its one-hot columns."""
    layout: dict[str, list[dict]] = {}
    for entry in plan["groupby"]:
        layout.setdefault(plan["columns"][entry["expr"]["col"]]["party"], []).append(entry)
    return layout


def cell_levels(plan: dict) -> list[dict]:
    """Each cell's level per groupby name, in the workers' cell order ([{}] if ungrouped).

    A function of the plan alone, so the analyst's client shapes results without
    compiling the plan, in exactly the order the parties computed them."""
    per_party = [
        [dict(zip([e["name"] for e in entries], combo))
         for combo in itertools.product(*(e["levels"] for e in entries))]
        for entries in group_layout(plan).values()
    ]
    cells = []
    for parts in itertools.product(*per_party):
        merged: dict = {}
        for part in parts:
            merged.update(part)
        cells.append(merged)
    return cells or [{}]


def compile_plan(plan: dict) -> Program:
    """Validate a plan and derive every party's inputs from it."""
    validate_plan(plan)
    program = Program(plan=plan)
    for party in program.link:
        if len(program.link) < len(program.parties):
            program.add(Feature(party, "present"))
    if plan.get("filter") is not None:
        _mark_use(program, plan["filter"], "filter")
        _add_condition(program, plan["filter"])
    program.group_entries = group_layout(plan)
    for entry in plan["groupby"]:
        _mark_use(program, entry["expr"], "group")
    for agg in plan["aggregates"]:
        _mark_use(program, agg.get("expr"), "measure")
    for party in program.group_parties:
        entries = program.group_entries[party]
        program.implied_last[party] = all(e.get("bins") is None and program.complete(e["expr"])
                                          for e in entries)
        key = canonical_json([e["name"] for e in entries])
        for level in range(program.onehot_count(party)):
            program.add(Feature(party, "onehot", key, level))
    _add_measures(program)
    if plan.get("model") is not None:
        kind = model_kind(plan)
        for expr in kind.value_inputs(plan) + kind.squared_measures(plan):
            _mark_use(program, expr, "measure")
        for expr in kind.value_inputs(plan):
            bounds.check_sum(expr, program.columns, squared=True)  # models form products
            _add_value(program, expr)
        for expr in kind.condition_inputs(plan):  # splits rows by a column's values
            for column in expr_columns(expr):
                numeric = program.columns[column]["kind"] == "numeric"
                _mark_use(program, {"col": column}, "filter" if numeric else "group")
            _add_condition(program, expr)
    for name in program.columns:  # no column escapes the policy
        program.uses.setdefault(name, {"measure"})
    return program


def _mark_use(program: Program, expr: dict | None, use: str) -> None:
    """Record that the plan uses every column ``expr`` reads for ``use``."""
    for column in expr_columns(expr):
        program.uses.setdefault(column, set()).add(use)


def _add_measures(program: Program) -> None:
    by_key: dict[str, dict] = {}
    for agg in program.plan["aggregates"]:
        if agg["stat"] == "size":
            continue
        key = canonical_json(agg["expr"])
        entry = by_key.setdefault(key, {"key": key, "expr": agg["expr"], "square": False,
                                        "open_square": False, "open_sum": False,
                                        "dominance": False})
        entry["open_square"] |= agg["stat"] in SQUARE_STATISTICS
        entry["open_sum"] |= agg["stat"] in SUM_STATISTICS
        # Released sums of non-negative magnitudes fall under the dominance and p-ratio
        # rules, which need the (never opened) sum of squares per cell.
        entry["dominance"] = entry["open_sum"] and not is_boolean(agg["expr"], program.columns) \
            and bounds.is_magnitude(agg["expr"], program.columns)
        entry["square"] |= entry["open_square"] or entry["dominance"]
    if program.plan.get("model") is not None:
        for expr in model_kind(program.plan).squared_measures(program.plan):
            by_key[canonical_json(expr)]["square"] = True  # computed, never opened
    program.measures = list(by_key.values())
    for entry in program.measures:
        bounds.check_sum(entry["expr"], program.columns, squared=entry["square"])
        _add_value(program, entry["expr"], square=entry["square"])


def _add_value(program: Program, expr: dict, *, square: bool = False) -> None:
    """Register the inputs a numeric expression needs."""
    if "const" in expr:
        return
    owner = program.owner(expr)
    if owner is not None:
        key = canonical_json(expr)
        kinds = ["val"] + ([] if program.complete(expr) else ["nn"]) + (["sq"] if square else [])
        for kind in kinds:
            program.add(Feature(owner, kind, key))
        return
    if is_boolean(expr, program.columns):
        _add_condition(program, expr)
        return
    if expr["op"] == "div" and "const" not in expr["args"][1]:
        raise PlanError("division is only by a constant")
    for arg in expr["args"]:
        _add_value(program, arg)


def _add_condition(program: Program, expr: dict) -> None:
    """Register the inputs a truth-valued expression needs."""
    if "const" in expr:
        raise PlanError("a condition must refer to a column")
    owner = program.owner(expr)
    if owner is not None:
        program.add(Feature(owner, "ind", canonical_json(expr)))
        return
    op = expr["op"]
    if op in ("and", "or", "not"):
        for arg in expr["args"]:
            _add_condition(program, arg)
    elif op in COMPARISONS:
        for arg in expr["args"]:
            if "col" in arg and program.columns[arg["col"]]["kind"] == "categorical":
                raise PlanError("categories of different parties cannot be compared",
                                hint="compare numbers, or filter each party's column alone")
        bounds.check_comparison(expr["args"][0], expr["args"][1], program.columns)
        for arg in expr["args"]:
            _add_value(program, arg)
    else:
        raise PlanError(f"operator {op!r} cannot combine columns of different parties")
