"""Analysis plans: the only thing that crosses from the analyst to the parties.

A plan is a small JSON document (version ``PLAN_VERSION``)::

    {"ppa_plan": 1,
     "parties": ["bureau", "hospital", "insurer"],      # the consortium, in MPC order
     "link": ["bureau", "hospital", "insurer"],         # parties whose inner join is analysed
     "columns": {"insurer.age": {"party": "insurer", "column": "age", "kind": "numeric",
                                 "missing": false,      # optional, default true
                                 "range": [18, 90]}},   # numeric: the published range
     "filter": <expression> | null,
     "groupby": [{"name": "age", "expr": <expression>, "levels": [...],
                  "bins": [edges] | absent}],        # numeric: bins, or whole-number levels
     "aggregates": [{"name": "n", "stat": "count", "expr": <expression> | null}],
     "model": null | {"kind": "ttest" | ..., ...},      # optional; see ppa_kernel.contract.models
     "min_cell_size": null | int,
     "min_residual_df": null | int,                     # optional; regressions only
     "disclosure": {"dominance_n": 2, "dominance_k": 90, "p_ratio": 10,
                    "history_limit": 1000, "differencing": true}}  # set by the client

Expressions are JSON trees (:mod:`.expr`). Parties interpret plans with their own code;
nothing in a plan is ever executed.

Every size and number a plan carries is bounded (:mod:`ppa_kernel.contract.limits`), checked in
linear time before anything else, so a hostile plan costs its receiver little.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

from . import limits
from .errors import PlanError
from .expr import (
    KINDS,
    SCALAR,
    canonical_json,
    expression_kind,
    is_boolean,
    is_categorical,
    weights_by_condition,
)
from .models import validate_model

PLAN_VERSION = 1
AGGREGATES = ("count", "sum", "mean", "var", "std", "size")
"""The statistics of a plan's aggregates (``size`` counts rows and reads no expression)."""
SUM_STATISTICS = ("sum", "mean", "var", "std")
"""Aggregates that release a measure's sum (and so fall under the dominance rules)."""
SQUARE_STATISTICS = ("var", "std")
"""Aggregates that release a measure's sum of squares."""
_COLUMN_KEYS = {"party", "column", "kind", "levels", "missing", "range"}
_TOP_KEYS = {"ppa_plan", "parties", "link", "columns", "filter", "groupby", "aggregates",
             "model", "min_cell_size", "min_residual_df", "disclosure"}
DISCLOSURE_RULES = {"dominance_n": (1, 10), "dominance_k": (1, 100), "p_ratio": (0, 100),
                    "history_limit": (1, 100_000), "differencing": (False, True)}
"""Keys of a plan's ``disclosure`` rules and their allowed ranges (whole numbers, or
true/false for ``differencing``)."""
DISCLOSURE_POLICY_KEYS = {"dominance_n": "dominance_n", "dominance_k": "dominance_k",
                          "p_ratio": "p_ratio", "history_limit": "differencing_history",
                          "differencing": "differencing"}
"""Plan ``disclosure`` key -> the owners' ``[policy]`` key that sets its strictest value."""


def plan_hash(plan: dict) -> str:
    """SHA-256 (hex) of the plan's canonical JSON."""
    return hashlib.sha256(canonical_json(plan).encode()).hexdigest()


def validate_plan(plan: Any) -> dict:
    """Check a plan's structure; return it unchanged or raise :class:`PlanError`."""
    if not isinstance(plan, dict):
        raise PlanError("a plan must be a JSON object")
    check_json_bounds(plan)
    if type(plan.get("ppa_plan")) is not int or plan["ppa_plan"] != PLAN_VERSION:
        raise PlanError(f"unsupported plan version {plan.get('ppa_plan')!r}",
                        hint=f"this party understands version {PLAN_VERSION}")
    unknown = set(plan) - _TOP_KEYS
    if unknown:
        raise PlanError(f"unknown plan keys: {', '.join(sorted(unknown))}")
    parties, link = plan.get("parties"), plan.get("link")
    if not _str_list(parties) or len(set(parties)) != len(parties) or len(parties) < 2:
        raise PlanError("'parties' must list at least two distinct party names")
    if not _str_list(link) or not link or not set(link) <= set(parties):
        raise PlanError("'link' must name one or more of the consortium's parties")
    columns = plan.get("columns")
    if not isinstance(columns, dict):
        raise PlanError("'columns' must be an object")
    _at_most(len(columns), limits.MAX_COLUMNS, "'columns'", "columns")
    for name, meta in columns.items():
        _check_column(name, meta, link)
    if plan.get("filter") is not None:
        expression_kind(plan["filter"], columns)
        if not is_boolean(plan["filter"], columns):
            raise PlanError("the filter must be a condition (comparison, isin, & | ~)")
    _check_groupby(plan.get("groupby"), columns)
    _check_aggregates(plan.get("aggregates"), columns, required=plan.get("model") is None)
    if plan.get("model") is not None:
        validate_model(plan)
    for key in ("min_cell_size", "min_residual_df"):
        value = plan.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 1 <= value <= limits.MAX_THRESHOLD):
            raise PlanError(f"'{key}' must be a whole number from 1 to "
                            f"{limits.MAX_THRESHOLD:,} or null, got {value!r}")
    _check_disclosure(plan.get("disclosure"))
    _check_expression_sizes(plan)
    return plan


def _check_disclosure(rules: Any) -> None:
    if rules is None:
        return
    if not isinstance(rules, dict) or set(rules) != set(DISCLOSURE_RULES):
        raise PlanError("'disclosure' must give " + ", ".join(sorted(DISCLOSURE_RULES)))
    for key, (low, high) in DISCLOSURE_RULES.items():
        value = rules[key]
        if isinstance(low, bool):
            if not isinstance(value, bool):
                raise PlanError(f"'disclosure.{key}' must be true or false, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise PlanError(f"'disclosure.{key}' must be a whole number from {low} to {high}, "
                            f"got {value!r}")


def _at_most(count: int, limit: int, field: str, what: str) -> None:
    if count > limit:
        raise PlanError(f"{field} has {count:,} {what}; at most {limit:,} are allowed")


def max_json_depth() -> int:
    """Deepest JSON nesting a plan may have (its expressions' bound plus its own levels)."""
    return 2 * limits.MAX_EXPR_DEPTH + 8


def check_depth(value: Any) -> None:
    """PlanError if ``value`` nests deeper than a plan may (iteratively, before anything
    walks it recursively, such as hashing or copying)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_json_depth():
            raise PlanError(f"the plan is nested more than {max_json_depth()} levels deep")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def check_json_bounds(value: Any) -> None:
    """Refuse JSON that is too deep, too long or holds unbounded numbers (iteratively).

    Runs before any other check, in time linear in the size of ``value``; errors name
    the offending field (e.g. ``groupby[0].levels``).
    """
    max_depth = max_json_depth()
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    nodes = size = 0
    while stack:
        item, depth, path = stack.pop()
        where = f"'{path}'" if path else "the plan"
        nodes += 1
        if depth > max_depth:
            raise PlanError(f"{where} is nested more than {max_depth} levels deep")
        if nodes > 50 * limits.MAX_EXPR_NODES:
            raise PlanError("the plan has too many elements")
        if isinstance(item, dict):
            _at_most(len(item), limits.MAX_LIST, where, "keys")
            for key, child in item.items():
                if not isinstance(key, str) or len(key) > limits.MAX_NAME:
                    raise PlanError(f"{where} has a key that is too long or not text")
                size += len(key)
                stack.append((child, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            _at_most(len(item), limits.MAX_LIST, where, "items")
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            size += len(item)
            if len(item) > 20 * limits.MAX_NAME:
                raise PlanError(f"{where} holds a text of {len(item):,} characters")
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int | float):
            if isinstance(item, float) and not math.isfinite(item):
                raise PlanError(f"{where} holds the non-finite number {item!r}")
            if abs(item) > limits.MAX_CONSTANT:
                raise PlanError(f"{where} is out of range ({str(item)[:24]})",
                                hint=f"numbers in plans are at most {limits.MAX_CONSTANT:g} "
                                     "in magnitude")
        else:
            raise PlanError(f"{where} holds a {type(item).__name__}, which is not JSON")
        if size > limits.MAX_PLAN_BYTES:
            raise PlanError(f"the plan is larger than {limits.MAX_PLAN_BYTES:,} bytes")


def _expr_nodes(expr: Any) -> tuple[int, int]:
    """Number of nodes and depth of an expression tree (iteratively; no recursion)."""
    nodes, deepest = 0, 0
    stack = [(expr, 1)]
    while stack:
        item, depth = stack.pop()
        nodes, deepest = nodes + 1, max(deepest, depth)
        if isinstance(item, dict) and isinstance(item.get("args"), list):
            stack.extend((arg, depth + 1) for arg in item["args"])
    return nodes, deepest


def plan_expressions(plan: dict) -> list[dict]:
    """Every expression a plan carries: filter, groups, aggregates and the model's."""
    found: list[dict] = []
    stack: list[Any] = [plan.get("filter"), plan.get("groupby"), plan.get("aggregates"),
                        plan.get("model")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "op" in item or "col" in item or "const" in item:
                found.append(item)
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _check_expression_sizes(plan: dict) -> None:
    total = 0
    for expr in plan_expressions(plan):
        nodes, depth = _expr_nodes(expr)
        if depth > limits.MAX_EXPR_DEPTH:
            raise PlanError(f"an expression is nested {depth} levels deep; at most "
                            f"{limits.MAX_EXPR_DEPTH} are allowed")
        total += nodes
    _at_most(total, limits.MAX_EXPR_NODES, "the plan's expressions", "nodes")


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _check_column(name: str, meta: Any, link: list[str]) -> None:
    if not isinstance(meta, dict) or set(meta) - _COLUMN_KEYS:
        raise PlanError(f"column {name!r} has a malformed description")
    bounds = meta.get("range")
    if bounds is not None and not (
            meta.get("kind") == "numeric" and isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and bounds[0] <= bounds[1]):
        raise PlanError(f"column {name!r}: 'range' must be [low, high] of a numeric column")
    if not isinstance(meta.get("missing", True), bool):
        raise PlanError(f"column {name!r}: 'missing' must be true or false")
    if meta.get("levels") is not None:
        _at_most(len(meta["levels"]) if isinstance(meta["levels"], list) else 0,
                 limits.MAX_LEVELS, f"column {name!r}", "levels")
        _check_levels(meta["levels"], f"column {name!r}")
    elif "levels" in meta and meta.get("kind") != "categorical":
        raise PlanError(f"column {name!r}: only a categorical column may have no levels")
    if meta.get("party") not in link:
        raise PlanError(f"column {name!r} belongs to {meta.get('party')!r}, which is not linked",
                        hint="add its party to link(...)")
    if name != f"{meta['party']}.{meta.get('column')}":
        raise PlanError(f"column {name!r} must be named 'party.column'")
    if meta.get("kind") not in KINDS:
        raise PlanError(f"column {name!r} has unknown kind {meta.get('kind')!r}")


_GROUP_KEYS = {"name", "expr", "levels", "bins"}
_AGGREGATE_KEYS = {"name", "stat", "expr"}


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name or len(name) > limits.MAX_NAME:
        raise PlanError(f"{what} names must be text of 1 to {limits.MAX_NAME} characters: "
                        f"{str(name)[:40]!r}")


def _check_groupby(groupby: Any, columns: dict) -> None:
    if not isinstance(groupby, list):
        raise PlanError("'groupby' must be a list")
    _at_most(len(groupby), limits.MAX_GROUPBY, "'groupby'", "entries")
    cells = 1
    seen_names, seen_columns = set(), set()
    for entry in groupby:
        if not isinstance(entry, dict):
            raise PlanError("each groupby entry must be an object")
        _check_name(entry.get("name"), "group")
        if set(entry) - _GROUP_KEYS:
            raise PlanError(f"group {entry['name']!r} has unknown keys: "
                            f"{', '.join(sorted(set(entry) - _GROUP_KEYS))}")
        expr = entry.get("expr")
        if not isinstance(expr, dict) or "col" not in expr:
            raise PlanError(f"group {entry['name']!r} must be a column")
        expression_kind(expr, columns)
        if entry["name"] in seen_names or expr["col"] in seen_columns:
            raise PlanError(f"group {entry['name']!r}: the same group or column appears twice")
        seen_names.add(entry["name"])
        seen_columns.add(expr["col"])
        levels = entry.get("levels")
        if not isinstance(levels, list) or not levels:
            raise PlanError(f"group {entry['name']!r} needs its list of levels",
                            hint="group by categorical or boolean columns, binned numbers "
                                 "or whole numbers with published levels")
        _at_most(len(levels), limits.MAX_LEVELS, f"group {entry['name']!r}", "levels")
        cells *= len(levels)
        _at_most(cells, limits.MAX_CELLS, "the grouping", "cells")
        _check_levels(levels, f"group {entry['name']!r}")
        bins = entry.get("bins")
        if bins is not None:
            if not (isinstance(bins, list) and len(bins) == len(levels) + 1
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                            for b in bins)
                    and all(a < b for a, b in itertools.pairwise(bins))):
                raise PlanError(f"group {entry['name']!r} has malformed bin edges")
        elif columns[expr["col"]]["kind"] == "numeric" and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in levels):
            raise PlanError(f"group {entry['name']!r}: a numeric column is grouped by bins "
                            "or by the whole-number levels its owner publishes",
                            hint="use histogram(...), or ask its owner to publish levels "
                                 "([policy] integer_levels)")


def _check_levels(levels: Any, where: str) -> None:
    """Levels are distinct plain values (text of at most MAX_NAME characters)."""
    if not isinstance(levels, list) or not all(
            isinstance(v, SCALAR) and not (isinstance(v, str) and len(v) > limits.MAX_NAME)
            for v in levels) or len({canonical_json(v) for v in levels}) != len(levels):
        raise PlanError(f"{where}: levels must be a list of distinct plain values")


def _check_aggregates(aggregates: Any, columns: dict, *, required: bool = True) -> None:
    if not isinstance(aggregates, list) or (required and not aggregates):
        raise PlanError("a plan needs at least one aggregate or a model")
    _at_most(len(aggregates), limits.MAX_AGGREGATES, "'aggregates'", "entries")
    names: set[str] = set()
    for agg in aggregates:
        if not isinstance(agg, dict) or agg.get("stat") not in AGGREGATES:
            raise PlanError(f"unknown statistic in {str(agg)[:80]}",
                            hint=f"use one of {', '.join(AGGREGATES)}")
        _check_name(agg.get("name"), "aggregate")
        if agg["name"] in names:
            raise PlanError(f"aggregate names must be unique: {agg['name']!r}")
        if set(agg) - _AGGREGATE_KEYS:
            raise PlanError(f"aggregate {agg['name']!r} has unknown keys: "
                            f"{', '.join(sorted(set(agg) - _AGGREGATE_KEYS))}")
        names.add(agg["name"])
        if agg["stat"] == "size":
            if agg.get("expr") is not None:
                raise PlanError("'size' counts rows and takes no column")
            continue
        kind = expression_kind(agg.get("expr"), columns)
        if kind in ("text", "constant truth"):
            raise PlanError(f"aggregate {agg['name']!r} needs a column, not a constant")
        if kind == "number" and weights_by_condition(agg["expr"], columns):
            raise PlanError(f"aggregate {agg['name']!r} weights rows by a condition",
                            hint="select rows with a filter or a group: their row sets are "
                                 "checked for differencing, weights are not")
        if is_categorical(agg["expr"], columns) and agg["stat"] != "count":
            raise PlanError(f"cannot take the {agg['stat']} of categorical {agg['name']!r}",
                            hint="group by it, or count it")
