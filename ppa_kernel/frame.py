"""Secure frames: the lazy, pandas-like API analysts write against.

Nothing here computes on data. Expressions build JSON trees; ``collect()`` turns the
frame into an analysis plan (:mod:`.plan`) and hands it to a runner (the
:class:`~ppa_kernel.client.Consortium`), which returns the released table.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import numbers
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .errors import PlanError
from .plan import plan_hash, validate_plan

logger = logging.getLogger(__name__)

Catalog = dict[str, dict[str, dict]]
STATS = ("count", "sum", "mean", "var", "std", "size")


class Runner(Protocol):
    def run(self, plan: dict, *, timeout: float | None = None) -> pd.DataFrame: ...


def _constant(value: Any) -> dict:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str) or isinstance(value, numbers.Real):
        return {"const": value}
    raise PlanError(f"unsupported constant {value!r}", hint="use numbers, strings or booleans")


def expression(node: Any) -> dict:
    """JSON of a Column or a constant."""
    return node.expr if isinstance(node, Column) else _constant(node)


class Column:
    """A lazy column expression over a secure frame."""

    __array_priority__ = 1000  # numpy scalars defer to our operators

    def __init__(self, expr: dict, kind: str, columns: dict[str, dict], name: str = ""):
        self.expr, self.kind, self.columns, self.name = expr, kind, columns, name

    def _derive(self, expr: dict, kind: str, *others: Any) -> Column:
        columns = dict(self.columns)
        for other in others:
            if isinstance(other, Column):
                columns.update(other.columns)
        return Column(expr, kind, columns)

    def _numeric(self, op: str) -> None:
        if self.kind == "categorical":
            raise PlanError(f"cannot apply {op!r} to categorical {self.name or 'column'}",
                            hint="compare it with == or isin, or group by it")

    def _arith(self, op: str, other: Any, reverse: bool = False) -> Column:
        self._numeric(op)
        if isinstance(other, Column):
            other._numeric(op)
        args = [expression(other), self.expr] if reverse else [self.expr, expression(other)]
        return self._derive({"op": op, "args": args}, "numeric", other)

    def __add__(self, other): return self._arith("add", other)
    def __radd__(self, other): return self._arith("add", other, True)
    def __sub__(self, other): return self._arith("sub", other)
    def __rsub__(self, other): return self._arith("sub", other, True)
    def __mul__(self, other): return self._arith("mul", other)
    def __rmul__(self, other): return self._arith("mul", other, True)

    def __truediv__(self, other: Any) -> Column:
        if isinstance(other, Column) or not isinstance(other, numbers.Real) or other == 0:
            raise PlanError("division is only by a nonzero number",
                            hint="divide by a constant, e.g. t.cost / 12")
        return self._arith("div", other)

    def __rtruediv__(self, other: Any) -> Column:
        raise PlanError("division is only by a nonzero number, not by a column")

    def __neg__(self) -> Column:
        self._numeric("neg")
        return self._derive({"op": "neg", "args": [self.expr]}, "numeric")

    def _compare(self, op: str, other: Any) -> Column:
        if op not in ("eq", "ne"):
            self._numeric(op)
        return self._derive({"op": op, "args": [self.expr, expression(other)]}, "bool", other)

    def __lt__(self, other): return self._compare("lt", other)
    def __le__(self, other): return self._compare("le", other)
    def __gt__(self, other): return self._compare("gt", other)
    def __ge__(self, other): return self._compare("ge", other)
    def __eq__(self, other): return self._compare("eq", other)  # type: ignore[override]
    def __ne__(self, other): return self._compare("ne", other)  # type: ignore[override]

    __hash__ = None  # type: ignore[assignment]

    def isin(self, values) -> Column:
        """True where the value is one of ``values``."""
        items = [_constant(v)["const"] for v in values]
        return self._derive({"op": "isin", "args": [self.expr], "values": items}, "bool")

    def _logic(self, op: str, other: Any) -> Column:
        for side in (self, other):
            if not isinstance(side, Column) or side.kind != "bool":
                raise PlanError(f"'{'&' if op == 'and' else '|'}' combines conditions only",
                                hint="write (t.a > 1) & (t.b == 'x')")
        return self._derive({"op": op, "args": [self.expr, other.expr]}, "bool", other)

    def __and__(self, other): return self._logic("and", other)
    def __or__(self, other): return self._logic("or", other)

    def __invert__(self) -> Column:
        if self.kind != "bool":
            raise PlanError("'~' negates conditions only")
        return self._derive({"op": "not", "args": [self.expr]}, "bool")

    def __bool__(self) -> bool:
        raise TypeError("a secure column has no truth value here: use & | ~ instead of "
                        "and/or/not, and filter with t[condition]")

    def __repr__(self) -> str:
        return f"Column({self.name or self.expr})"


class SecureFrame:
    """A lazy view of the secure inner join of some parties, plus filters and new columns."""

    def __init__(self, catalog: Catalog, parties: list[str], link: list[str],
                 runner: Runner | None = None, *, _filter: Column | None = None,
                 _derived: dict[str, Column] | None = None):
        self._catalog, self._parties = catalog, list(parties)
        self._link = [p for p in parties if p in link]
        self._runner, self._filter = runner, _filter
        self._derived = dict(_derived or {})

    def _replace(self, **changes: Any) -> SecureFrame:
        state = {"_filter": self._filter, "_derived": self._derived, **changes}
        return SecureFrame(self._catalog, self._parties, self._link, self._runner, **state)

    @property
    def columns(self) -> list[str]:
        """Qualified names of the linked parties' columns."""
        return [f"{p}.{c}" for p in self._link for c in self._catalog.get(p, {})]

    def _resolve(self, name: str) -> Column:
        if name in self._derived:
            return self._derived[name]
        if "." in name and name.split(".", 1)[0] in self._catalog:
            party, column = name.split(".", 1)
            if column not in self._catalog[party]:
                raise PlanError(f"unknown column {name!r}", hint=self._suggest(column))
            return self._column(party, column, name)
        owners = [p for p in self._parties if name in self._catalog.get(p, {})]
        linked = [p for p in owners if p in self._link]
        if len(linked) > 1:
            options = " or ".join(f"t['{p}.{name}']" for p in linked)
            raise PlanError(f"{name} is at {' and '.join(linked)}; write {options}")
        if linked:
            return self._column(linked[0], name, name)
        if owners:
            raise PlanError(f"{name!r} belongs to {owners[0]}, which this frame does not link",
                            hint=f"use link({', '.join(self._link + owners[:1])!s})")
        raise PlanError(f"unknown column {name!r}", hint=self._suggest(name))

    def _suggest(self, name: str) -> str:
        known = sorted({c for p in self._link for c in self._catalog.get(p, {})}
                       | set(self._derived))
        close = difflib.get_close_matches(name, known, n=3)
        return f"did you mean {', '.join(close)}?" if close else \
            f"available: {', '.join(known)}"

    def _column(self, party: str, column: str, name: str) -> Column:
        meta = self._catalog[party][column]
        qualified = f"{party}.{column}"
        desc = {"party": party, "column": column, "kind": meta["kind"]}
        if meta["kind"] != "numeric":
            desc["levels"] = meta.get("levels")
        return Column({"col": qualified}, meta["kind"], {qualified: desc}, name)

    def __getitem__(self, key: Any):
        if isinstance(key, str):
            return self._resolve(key)
        if isinstance(key, Column):
            return self.filter(key)
        raise PlanError("select columns inside agg(...); index a frame with a name or a "
                        "condition")

    def __getattr__(self, name: str) -> Column:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._resolve(name)
        except PlanError as exc:
            raise AttributeError(str(exc)) from None

    def filter(self, condition: Column) -> SecureFrame:
        """Keep rows where ``condition`` holds (conditions combine with &)."""
        if not isinstance(condition, Column) or condition.kind != "bool":
            raise PlanError("filter with a condition, e.g. t[t.age >= 40]")
        combined = condition if self._filter is None else self._filter & condition
        return self._replace(_filter=combined)

    def assign(self, **columns: Column) -> SecureFrame:
        """Add derived columns, usable by name in later filters and aggregates."""
        derived = dict(self._derived)
        for name, column in columns.items():
            if not isinstance(column, Column):
                raise PlanError(f"{name}: assign a column expression")
            derived[name] = Column(column.expr, column.kind, column.columns, name)
        return self._replace(_derived=derived)

    def groupby(self, by: str | Column | list) -> GroupBy:
        """Group by categorical or boolean columns (of any linked parties)."""
        keys = by if isinstance(by, list) else [by]
        return GroupBy(self, [self._group_entry(k) for k in keys])

    def _group_entry(self, key: str | Column) -> tuple[dict, dict]:
        column = self._resolve(key) if isinstance(key, str) else key
        if "col" not in column.expr:
            raise PlanError("group by columns, not expressions")
        meta = column.columns[column.expr["col"]]
        if meta["kind"] == "numeric":
            raise PlanError(f"cannot group by numeric {column.name!r}",
                            hint="use histogram(...) or a categorical column")
        if not meta.get("levels"):
            raise PlanError(f"{column.name!r} has too many levels to group by")
        name = column.name if isinstance(key, str) else column.expr["col"]
        return ({"name": name, "expr": column.expr, "levels": meta["levels"]}, column.columns)

    def agg(self, **named: tuple) -> Query:
        """Whole-frame aggregates, e.g. ``agg(n=("cost", "count"))``."""
        return GroupBy(self, []).agg(**named)

    def count(self) -> Query:
        """Number of linked people (after filters)."""
        return GroupBy(self, []).size()

    def histogram(self, column: str | Column, bins: int | list[float]) -> Query:
        """Counts of a numeric column in bins (numpy.histogram semantics)."""
        col = self._resolve(column) if isinstance(column, str) else column
        if col.kind != "numeric" or "col" not in col.expr:
            raise PlanError("histogram needs a numeric column")
        meta = col.columns[col.expr["col"]]
        if isinstance(bins, int):
            party, name = col.expr["col"].split(".", 1)
            info = self._catalog[party][name]
            if info.get("min") is None or info.get("max") is None:
                raise PlanError(f"{col.name!r} has no published range; give the bin edges")
            edges = np.linspace(info["min"], info["max"], bins + 1).tolist()
        else:
            edges = [float(b) for b in bins]
        labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]
        labels[-1] = labels[-1][:-1] + "]"
        entry = {"name": col.name or col.expr["col"], "expr": col.expr, "bins": edges,
                 "levels": labels}
        query = GroupBy(self, [(entry, {col.expr["col"]: meta})]).size(name="count")
        query.kind = "histogram"
        return query

    def crosstab(self, index: str | Column, columns: str | Column) -> Query:
        """Counts by two categorical columns, shaped like pandas.crosstab."""
        query = self.groupby([index, columns]).size(name="count")
        query.kind = "crosstab"
        return query

    def _plan_parts(self) -> tuple[dict, dict | None]:
        cols = dict(self._filter.columns) if self._filter is not None else {}
        return cols, (self._filter.expr if self._filter is not None else None)


class GroupBy:
    """Grouped secure frame; aggregate with ``agg`` like pandas named aggregation."""

    def __init__(self, frame: SecureFrame, entries: list[tuple[dict, dict]]):
        self.frame, self.entries = frame, entries

    def agg(self, **named: Any) -> Query:
        specs = []
        for out, spec in named.items():
            if isinstance(spec, str) and spec == "size":
                specs.append((out, None, "size"))
                continue
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise PlanError(f"{out}: give (column, statistic), e.g. ('cost', 'mean')")
            source, stat = spec
            if stat not in STATS:
                raise PlanError(f"{out}: unknown statistic {stat!r}",
                                hint=f"use one of {', '.join(STATS)}")
            if stat == "size":
                specs.append((out, None, "size"))
                continue
            column = self.frame._resolve(source) if isinstance(source, str) else source
            if not isinstance(column, Column):
                raise PlanError(f"{out}: aggregate a column or expression")
            specs.append((out, column, stat))
        if not specs:
            raise PlanError("agg needs at least one aggregate")
        return Query(self.frame, self.entries, specs)

    def size(self, name: str = "size") -> Query:
        return Query(self.frame, self.entries, [(name, None, "size")])

    def _one(self, stat: str, column: str | Column) -> Query:
        label = column if isinstance(column, str) else (column.name or stat)
        return self.agg(**{label: (column, stat)})

    def count(self, column): return self._one("count", column)
    def sum(self, column): return self._one("sum", column)
    def mean(self, column): return self._one("mean", column)
    def var(self, column): return self._one("var", column)
    def std(self, column): return self._one("std", column)


class Query:
    """A complete analysis: ``plan()`` to inspect it, ``collect()`` to run it."""

    def __init__(self, frame: SecureFrame, entries: list[tuple[dict, dict]],
                 specs: list[tuple[str, Column | None, str]], min_cell_size: int | None = None):
        self.frame, self.entries, self.specs = frame, entries, specs
        self.min_cell_size = min_cell_size
        self.kind = "groupby" if entries else "agg"

    @property
    def index_names(self) -> list[str]:
        return [e["name"] for e, _ in self.entries]

    def with_min_cell_size(self, size: int) -> Query:
        """The same query with a stricter minimum released cell size."""
        query = Query(self.frame, self.entries, self.specs, size)
        query.kind = self.kind
        return query

    def plan(self) -> dict:
        """The analysis plan (validated JSON) this query sends to the parties."""
        columns, filter_expr = self.frame._plan_parts()
        for _, cols in self.entries:
            columns.update(cols)
        aggregates = []
        for out, column, stat in self.specs:
            if column is not None:
                columns.update(column.columns)
            aggregates.append({"name": out, "stat": stat,
                               "expr": column.expr if column is not None else None})
        plan = {"ppa_plan": 1, "parties": self.frame._parties, "link": self.frame._link,
                "columns": dict(sorted(columns.items())), "filter": filter_expr,
                "groupby": [e for e, _ in self.entries], "aggregates": aggregates,
                "min_cell_size": self.min_cell_size}
        return validate_plan(plan)

    def plan_hash(self) -> str:
        return plan_hash(self.plan())

    def collect(self, *, timeout: float | None = None, **options: Any) -> pd.DataFrame:
        """Run the plan at every party; return the released table."""
        runner = self.frame._runner
        if runner is None:
            raise PlanError("this frame is not connected to a consortium")
        result = runner.run(self.plan(), timeout=timeout, **options)
        if self.kind == "crosstab":
            attrs = dict(result.attrs)
            table = result.iloc[:, 0].unstack(self.index_names[1])
            mask = attrs["suppressed"].iloc[:, 0].unstack(self.index_names[1])
            table.attrs.update(attrs, suppressed=mask)
            return table
        return result

    def __repr__(self) -> str:
        return f"Query({self.kind}, plan {self.plan_hash()[:12]})"
