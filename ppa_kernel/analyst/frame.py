"""Secure frames: the lazy, pandas-like API analysts write against.

Nothing here computes on data. Column expressions build JSON trees; a finished query
turns into an analysis plan (:mod:`ppa_kernel.contract.plan`), and ``collect()`` hands
that plan to a runner (normally the :class:`~ppa_kernel.analyst.client.Consortium`),
which returns the released table::

    t = consortium.link()
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    t[t.age >= 40].groupby("income_band").agg(n=("change", "count"),
                                              mean=("change", "mean")).collect()
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ppa_kernel.contract import limits
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.models import MODELS
from ppa_kernel.contract.plan import AGGREGATES, PLAN_VERSION, validate_plan
from ppa_kernel.contract.plan import plan_hash as _plan_hash

from .cohort import check_cohort

logger = logging.getLogger(__name__)

Catalog = dict[str, dict[str, dict]]
"""party -> column -> {"kind", "levels", "min", "max", "missing"} as the parties publish it."""

QUERY_KINDS = ("groupby", "agg", "histogram", "crosstab", "model")

# Display precedence, as in Python: comparisons bind loosest, then | & + - * / unary.
_PREC_CMP, _PREC_OR, _PREC_AND, _PREC_ADD, _PREC_MUL, _PREC_UNARY, _PREC_ATOM = range(1, 8)
_SYMBOLS = {"add": ("+", _PREC_ADD), "sub": ("-", _PREC_ADD), "mul": ("*", _PREC_MUL),
            "div": ("/", _PREC_MUL), "lt": ("<", _PREC_CMP), "le": ("<=", _PREC_CMP),
            "gt": (">", _PREC_CMP), "ge": (">=", _PREC_CMP), "eq": ("==", _PREC_CMP),
            "ne": ("!=", _PREC_CMP), "and": ("&", _PREC_AND), "or": ("|", _PREC_OR)}
_ORDERING = ("lt", "le", "gt", "ge")


class Runner(Protocol):
    """Runs a plan at the parties and returns the released table."""

    def run(self, plan: dict, *, timeout: float | None = None, **options: Any) -> pd.DataFrame:
        """Release the plan's table (``layout="crosstab"``: as :func:`pandas.crosstab`)."""


def _constant(value: Any) -> dict:
    """JSON constant for a Python or numpy scalar (numbers, strings, booleans)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str):
        return {"const": value}
    if isinstance(value, numbers.Real):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanError(f"constants must be finite numbers, not {value!r}")
        return {"const": value}
    raise PlanError(f"unsupported constant {value!r}",
                    hint="use numbers, strings, booleans or columns of the frame")


def expression(node: Any) -> dict:
    """The plan JSON of a :class:`Column` or a constant."""
    return node.expr if isinstance(node, Column) else _constant(node)


def _wrap(text: str, parenthesize: bool) -> str:
    return f"({text})" if parenthesize else text


class Column:
    """A lazy column expression: its plan JSON, its kind and the catalog columns it reads."""

    __array_ufunc__ = None  # numpy scalars defer to our reflected operators
    __hash__ = None  # type: ignore[assignment]  # == builds an expression, as in pandas

    def __init__(self, expr: dict, kind: str, columns: dict[str, dict], name: str,
                 precedence: int = _PREC_ATOM) -> None:
        self.expr = expr
        self.kind = kind
        self.columns = columns  # qualified name -> plan column description
        self._name = name
        self._prec = precedence

    @property
    def name(self) -> str:
        """Display name: the column's name, an assigned name, or the rendered expression."""
        return self._name

    def __repr__(self) -> str:
        return f"Column({self._name!r}, {self.kind})"

    # ----------------------------------------------------------------- helpers
    def _part(self, min_prec: int) -> str:
        return _wrap(self._name, self._prec < min_prec)

    @staticmethod
    def _operand(other: Any) -> tuple[dict, str, int, dict]:
        if isinstance(other, Column):
            return other.expr, other._name, other._prec, other.columns
        const = _constant(other)
        return const, repr(const["const"]), _PREC_ATOM, {}

    def _binary(self, op: str, other: Any, kind: str, *, reverse: bool = False) -> Column:
        expr, text, prec, columns = self._operand(other)
        symbol, level = _SYMBOLS[op]
        mine, theirs = (self.expr, self._name, self._prec), (expr, text, prec)
        left, right = (theirs, mine) if reverse else (mine, theirs)
        strict = op in ("sub", "div") or level == _PREC_CMP  # a - (b - c), (a < b) == c
        left_text = _wrap(left[1], left[2] <= level if level == _PREC_CMP else left[2] < level)
        right_text = _wrap(right[1], right[2] <= level if strict else right[2] < level)
        return Column({"op": op, "args": [left[0], right[0]]}, kind,
                      {**self.columns, **columns}, f"{left_text} {symbol} {right_text}", level)

    def _require_number(self, symbol: str) -> None:
        if self.kind == "categorical":
            raise PlanError(f"cannot use {symbol} on categorical {self._name!r}",
                            hint="compare it with == or isin(...), or group by it")

    def _check_level(self, value: Any) -> None:
        """A constant compared with a plain categorical/bool column must be one of its levels."""
        if self.kind == "numeric" or "col" not in self.expr:
            return
        levels = self.columns[self.expr["col"]].get("levels")
        if levels is not None and value not in levels:
            raise PlanError(f"{value!r} is not a level of {self._name!r}",
                            hint=f"its levels are {', '.join(map(repr, levels))}")

    # --------------------------------------------------------------- arithmetic
    def _arith(self, op: str, other: Any, *, reverse: bool = False) -> Column:
        symbol = _SYMBOLS[op][0]
        self._require_number(symbol)
        if isinstance(other, Column):
            other._require_number(symbol)
        elif isinstance(_constant(other)["const"], str):
            raise PlanError(f"cannot use {symbol} with text {other!r}")
        return self._binary(op, other, "numeric", reverse=reverse)

    def __add__(self, other: Any) -> Column:
        return self._arith("add", other)

    def __radd__(self, other: Any) -> Column:
        return self._arith("add", other, reverse=True)

    def __sub__(self, other: Any) -> Column:
        return self._arith("sub", other)

    def __rsub__(self, other: Any) -> Column:
        return self._arith("sub", other, reverse=True)

    def __mul__(self, other: Any) -> Column:
        return self._arith("mul", other)

    def __rmul__(self, other: Any) -> Column:
        return self._arith("mul", other, reverse=True)

    def __truediv__(self, other: Any) -> Column:
        if isinstance(other, np.generic):
            other = other.item()
        if (isinstance(other, Column) or isinstance(other, bool)
                or not isinstance(other, numbers.Real) or other == 0):
            raise PlanError("division is only by a nonzero number constant",
                            hint="divide by a constant, e.g. t.cost / 12; secure division "
                                 "by a column is not supported")
        return self._arith("div", other)

    def __rtruediv__(self, other: Any) -> Column:
        raise PlanError("division is only by a nonzero number constant, not by a column")

    def __neg__(self) -> Column:
        self._require_number("-")
        return Column({"op": "neg", "args": [self.expr]}, "numeric", self.columns,
                      f"-{self._part(_PREC_UNARY)}", _PREC_UNARY)

    def __pos__(self) -> Column:
        self._require_number("+")
        return self

    # -------------------------------------------------------------- comparisons
    def _compare(self, op: str, other: Any) -> Column:
        symbol = _SYMBOLS[op][0]
        if isinstance(other, Column):
            if op in _ORDERING:
                self._require_number(symbol)
                other._require_number(symbol)
            elif (self.kind == "categorical") != (other.kind == "categorical"):
                raise PlanError(f"cannot compare categorical and numeric columns "
                                f"({self._name!r} {symbol} {other._name!r})")
        else:
            value = _constant(other)["const"]
            if op in _ORDERING:
                self._require_number(symbol)
                if isinstance(value, str):
                    raise PlanError(f"cannot order {self._name!r} against text {value!r}")
            elif self.kind == "numeric" and isinstance(value, str):
                raise PlanError(f"numeric {self._name!r} is never equal to text {value!r}")
            else:
                self._check_level(value)
        return self._binary(op, other, "bool")

    def __lt__(self, other: Any) -> Column:
        return self._compare("lt", other)

    def __le__(self, other: Any) -> Column:
        return self._compare("le", other)

    def __gt__(self, other: Any) -> Column:
        return self._compare("gt", other)

    def __ge__(self, other: Any) -> Column:
        return self._compare("ge", other)

    def __eq__(self, other: Any) -> Column:  # type: ignore[override]
        return self._compare("eq", other)

    def __ne__(self, other: Any) -> Column:  # type: ignore[override]
        return self._compare("ne", other)

    def isin(self, values: Iterable[Any]) -> Column:
        """True where the value is one of ``values`` (missing values are never in)."""
        if isinstance(values, str | bytes | Column) or not isinstance(values, Iterable):
            raise PlanError("isin takes a list of values, e.g. t.region.isin(['North'])")
        items = [_constant(v)["const"] for v in values]
        if isinstance(values, set | frozenset):  # no inherent order: make plans deterministic
            items.sort(key=canonical_json)
        for value in items:
            if self.kind == "numeric" and isinstance(value, str):
                raise PlanError(f"numeric {self._name!r} is never equal to text {value!r}")
            self._check_level(value)
        shown = ", ".join(map(repr, items))
        return Column({"op": "isin", "args": [self.expr], "values": items}, "bool",
                      self.columns, f"{self._part(_PREC_ATOM)}.isin([{shown}])", _PREC_ATOM)

    # ------------------------------------------------------------------ logic
    def _logic(self, op: str, other: Any, *, reverse: bool = False) -> Column:
        symbol = _SYMBOLS[op][0]
        for side in (self, other):
            if not isinstance(side, Column) or side.kind != "bool":
                raise PlanError(f"{symbol!r} combines conditions only",
                                hint="write (t.a > 1) & (t.b == 'x')")
        return self._binary(op, other, "bool", reverse=reverse)

    def __and__(self, other: Any) -> Column:
        return self._logic("and", other)

    def __rand__(self, other: Any) -> Column:
        return self._logic("and", other, reverse=True)

    def __or__(self, other: Any) -> Column:
        return self._logic("or", other)

    def __ror__(self, other: Any) -> Column:
        return self._logic("or", other, reverse=True)

    def __invert__(self) -> Column:
        if self.kind != "bool":
            raise PlanError(f"'~' negates conditions only, not {self.kind} {self._name!r}")
        return Column({"op": "not", "args": [self.expr]}, "bool", self.columns,
                      f"~{self._part(_PREC_UNARY)}", _PREC_UNARY)

    def __bool__(self) -> bool:
        raise TypeError("a secure column has no truth value: use & | ~ instead of "
                        "and/or/not, and filter with t[condition]")

    def _renamed(self, name: str) -> Column:
        return Column(self.expr, self.kind, self.columns, name)


ColumnLike = str | Column
AggSpec = str | tuple


class SecureFrame:
    """A lazy view of the secure inner join of some parties, with filters and new columns."""

    def __init__(self, catalog: Catalog, parties: list[str], link: list[str],
                 runner: Runner | None = None) -> None:
        parties = list(parties)
        unknown = [p for p in link if p not in parties]
        if unknown:
            raise PlanError(f"cannot link {', '.join(unknown)}: not in the consortium",
                            hint=f"parties are {', '.join(parties)}")
        if not link:
            raise PlanError("link at least one party")
        self._catalog = catalog
        self._parties = parties
        self._link = [p for p in parties if p in link]
        self._runner = runner
        self._filter: Column | None = None
        self._derived: dict[str, Column] = {}

    def _replace(self, *, condition: Column | None = None,
                 derived: dict[str, Column] | None = None) -> SecureFrame:
        frame = SecureFrame(self._catalog, self._parties, self._link, self._runner)
        frame._filter = condition if condition is not None else self._filter
        frame._derived = derived if derived is not None else dict(self._derived)
        return frame

    def __repr__(self) -> str:
        where = f", filter={self._filter.name!r}" if self._filter is not None else ""
        return f"SecureFrame(link={self._link}{where})"

    # ------------------------------------------------------------- resolution
    @property
    def parties(self) -> list[str]:
        """All parties of the consortium, in MPC order."""
        return list(self._parties)

    @property
    def linked(self) -> list[str]:
        """The parties this frame links."""
        return list(self._link)

    @property
    def columns(self) -> list[str]:
        """Qualified names (``party.column``) of all columns of the linked parties."""
        return [f"{p}.{c}" for p in self._link for c in self._catalog.get(p, {})]

    def __dir__(self) -> list[str]:
        names = [c for c in self._unique_columns() if c.isidentifier()]
        return sorted(set(super().__dir__()) | set(names) | set(self._derived))

    def _unique_columns(self) -> list[str]:
        """Bare names of the linked parties' columns that only one of them has."""
        bare = [c for p in self._link for c in self._catalog.get(p, {})]
        return [c for c in bare if bare.count(c) == 1]

    def _ipython_key_completions_(self) -> list[str]:
        """What ``t["`` completes to: assigned names, unique bare names, then every
        column qualified as ``party.column``."""
        names = [*self._derived, *self._unique_columns(), *self.columns]
        return list(dict.fromkeys(names))

    def _owners(self, column: str, parties: list[str]) -> list[str]:
        return [p for p in parties if column in self._catalog.get(p, {})]

    def _display(self, party: str, column: str) -> str:
        unique = len(self._owners(column, self._link)) == 1 and column not in self._derived
        return column if unique else f"{party}.{column}"

    def _plain(self, party: str, column: str) -> Column:
        meta = self._catalog[party][column]
        kind = meta.get("kind")
        qualified = f"{party}.{column}"
        desc: dict[str, Any] = {"party": party, "column": column, "kind": kind,
                                "missing": bool(meta.get("missing", True))}
        if kind == "numeric":  # the owner checks it is the published range
            low, high = meta.get("min"), meta.get("max")
            desc["range"] = [0.0, 0.0] if low is None or high is None else \
                [float(low), float(high)]
        if kind == "bool":
            desc["levels"] = list(meta.get("levels") or [False, True])
        elif kind == "categorical":
            levels = meta.get("levels")
            desc["levels"] = list(levels) if levels is not None else None
        return Column({"col": qualified}, kind, {qualified: desc}, self._display(party, column))

    def _suggest(self, name: str) -> str:
        known = sorted({c for p in self._link for c in self._catalog.get(p, {})}
                       | set(self._derived) | set(self.columns))
        close = difflib.get_close_matches(name, known, n=3)
        if close:
            return f"did you mean {', '.join(close)}?"
        return f"columns are {', '.join(known[:30])}{' ...' if len(known) > 30 else ''}"

    def _resolve(self, name: str) -> Column:
        """The column (or assigned expression) a name refers to."""
        if name in self._derived:
            return self._derived[name]
        party, dot, column = name.partition(".")
        if dot and party in self._parties:
            if column not in self._catalog.get(party, {}):
                raise PlanError(f"unknown column {name!r}", hint=self._suggest(name))
            if party not in self._link:
                raise PlanError(f"{name!r} belongs to {party}, which this frame does not link",
                                hint=f"include {party} in link(...)")
            return self._plain(party, column)
        linked = self._owners(name, self._link)
        if len(linked) > 1:
            options = " or ".join(f"t['{p}.{name}']" for p in linked)
            raise PlanError(f"{name} is at {' and '.join(linked)}; write {options}")
        if linked:
            return self._plain(linked[0], name)
        owners = self._owners(name, self._parties)
        if owners:
            raise PlanError(f"{name!r} belongs to {' and '.join(owners)}, which this frame "
                            f"does not link", hint=f"include {owners[0]} in link(...)")
        raise PlanError(f"unknown column {name!r}", hint=self._suggest(name))

    def column(self, key: Any) -> Column:
        """A name or Column as a Column of this frame (its parties must be linked)."""
        if isinstance(key, str):
            return self._resolve(key)
        if not isinstance(key, Column):
            raise PlanError(f"expected a column name or expression, got {key!r}")
        outside = sorted({meta["party"] for meta in key.columns.values()} - set(self._link))
        if outside:
            raise PlanError(f"{key.name!r} reads columns of {', '.join(outside)}, which this "
                            f"frame does not link", hint=f"include {outside[0]} in link(...)")
        return key

    def column_meta(self, name: str) -> dict:
        """The published description of a plain column ``party.column`` (kind, levels,
        range, missing, min_precision) as its party's catalog gives it."""
        party, column = name.split(".", 1)
        return self._catalog[party][column]

    def model_query(self, model: dict, *, groups: list[tuple[dict, Column]] | None = None,
                    aggregates: list[tuple[str, str, Column | None]] | None = None,
                    inputs: list[Column] | None = None) -> Query:
        """A query running a statistical model (the builders in
        :mod:`ppa_kernel.contract.models` call this; analysts call the model's method)."""
        return Query(self, list(groups or []), list(aggregates or []), kind="model",
                     model=model, inputs=inputs)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._resolve(key)
        if isinstance(key, Column):
            return self.filter(key)
        if isinstance(key, list | tuple):
            raise PlanError("a secure frame cannot select columns",
                            hint="name the columns inside agg(...), e.g. "
                                 "t.agg(n=('age', 'count'))")
        raise PlanError(f"index a secure frame with a column name or a condition, not {key!r}")

    def __getattr__(self, name: str) -> Column:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._resolve(name)
        except PlanError as exc:
            raise AttributeError(f"{type(self).__name__} has no column {name!r}: {exc}") \
                from None

    # --------------------------------------------------------------- building
    def filter(self, cond: Column) -> SecureFrame:
        """Rows where ``cond`` holds; filters combine with ``&``."""
        if not isinstance(cond, Column) or cond.kind != "bool":
            raise PlanError("filter with a condition, e.g. t[t.age >= 40]",
                            hint="build conditions with comparisons, isin(...), & | ~")
        cond = self.column(cond)
        combined = cond if self._filter is None else self._filter & cond
        return self._replace(condition=combined)

    def assign(self, **exprs: Column | Callable[[SecureFrame], Column]) -> SecureFrame:
        """New named columns (inlined expressions); later ones may use earlier ones."""
        frame = self
        for name, value in exprs.items():
            if "." in name:
                raise PlanError(f"assigned names cannot contain '.': {name!r}")
            if callable(value) and not isinstance(value, Column):
                value = value(frame)
            if not isinstance(value, Column):
                raise PlanError(f"{name}: assign a column expression, e.g. "
                                f"t.assign({name}=t.cost_2021 - t.cost_2020)")
            value = frame.column(value)
            frame = frame._replace(derived={**frame._derived, name: value._renamed(name)})
        return frame

    def groupby(self, by: ColumnLike | list[ColumnLike]) -> GroupBy:
        """Group by categorical or boolean columns, or numeric ones whose party publishes
        whole-number levels (a 0/1 flag, a small score), of any linked parties."""
        keys = list(by) if isinstance(by, list | tuple) else [by]
        if not keys:
            raise PlanError("groupby needs at least one column")
        entries = [self._group_entry(key) for key in keys]
        names = [entry["name"] for entry, _ in entries]
        if len(set(names)) != len(names):
            raise PlanError(f"cannot group by the same column twice: {names}")
        return GroupBy(self, entries)

    def _group_entry(self, key: ColumnLike) -> tuple[dict, Column]:
        column = self.column(key)
        if "col" not in column.expr:
            raise PlanError(f"cannot group by the expression {column.name!r}",
                            hint="group by categorical or boolean columns")
        if column.kind == "numeric":
            party, name = column.expr["col"].split(".", 1)
            levels = self._catalog[party][name].get("levels")
            if levels is None:
                raise _numeric_group_error(column.name, party, name, self._catalog[party][name])
            return {"name": column.name, "expr": column.expr, "levels": list(levels)}, column
        levels = column.columns[column.expr["col"]].get("levels")
        if levels is None:
            raise PlanError(f"{column.name!r} has too many levels to group by",
                            hint="its party publishes no list of levels for it")
        return {"name": column.name, "expr": column.expr, "levels": list(levels)}, column

    def agg(self, **named: AggSpec) -> Query:
        """Whole-frame aggregates, e.g. ``agg(n=("cost", "count"), m=("cost", "mean"))``."""
        return GroupBy(self, []).agg(**named)

    def count(self) -> Query:
        """Number of rows of the (filtered) join, as ``agg(n="size")``."""
        return self.agg(n="size")

    def histogram(self, column: ColumnLike, bins: int | list[float]) -> Query:
        """Counts of a numeric column in bins, as numpy.histogram (last bin closed)."""
        col = self.column(column)
        if col.kind != "numeric" or "col" not in col.expr:
            raise PlanError(f"histogram needs a numeric column, not {col.name!r}",
                            hint="count categories with groupby(...).size()")
        if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
            edges = self._even_edges(col, int(bins))
        elif isinstance(bins, Iterable) and not isinstance(bins, str):
            edges = []
            for edge in bins:
                value = _constant(edge)["const"]
                if isinstance(value, bool | str):
                    raise PlanError(f"bin edges must be numbers, not {edge!r}")
                edges.append(float(value))
        else:
            raise PlanError("bins must be a number of bins or a list of edges")
        if len(edges) < 2 or any(a >= b for a, b in itertools.pairwise(edges)):
            raise PlanError(f"bin edges must increase strictly: {edges}")
        labels = [f"[{_edge(a)}, {_edge(b)})" for a, b in itertools.pairwise(edges)]
        labels[-1] = labels[-1][:-1] + "]"
        entry = {"name": col.name, "expr": col.expr, "bins": edges, "levels": labels}
        return Query(self, [(entry, col)], [("count", "size", None)], kind="histogram")

    def _even_edges(self, col: Column, bins: int) -> list[float]:
        if bins < 1:
            raise PlanError("histogram needs at least one bin")
        party, column = col.expr["col"].split(".", 1)
        meta = self._catalog[party][column]
        low, high = meta.get("min"), meta.get("max")
        if low is None or high is None:
            raise PlanError(f"{col.name!r} has no published range",
                            hint="give the bin edges, e.g. bins=[0, 10, 20]")
        return [float(e) for e in np.linspace(low, high, bins + 1)]

    def crosstab(self, index: ColumnLike, columns: ColumnLike) -> Query:
        """Counts by two categorical columns; ``collect()`` returns a pandas.crosstab shape."""
        entries = self.groupby([index, columns]).entries
        return Query(self, entries, [("count", "size", None)], kind="crosstab")


def _install_statistics() -> None:
    """One method per registered statistic: ``t.corr(...)`` is the corr builder with
    ``t`` as its frame (see :mod:`ppa_kernel.contract.models.registry`)."""
    for statistic in MODELS:
        setattr(SecureFrame, statistic.method, statistic.builder())


_install_statistics()


def _numeric_group_error(shown: str, party: str, column: str, meta: dict) -> PlanError:
    """Why a numeric column without published levels is not grouped, and how it could be:
    in bins, or declared by its owner (whole-number levels or a categorical column)."""
    message = f"cannot group by numeric {shown!r}: {party} publishes no levels for it"
    bins = f"group it in bins: histogram({shown!r}, bins=10)"
    low, high = meta.get("min"), meta.get("max")
    if low is None or high is None:
        return PlanError(f"{message} (it has no values)")
    if not (float(low).is_integer() and float(high).is_integer()):
        return PlanError(f"{message} (not whole numbers)", hint=bins)
    span = int(high) - int(low) + 1
    message += (f" (its range {low:g} .. {high:g} spans {span} whole numbers; levels are "
                f"published for up to [policy] integer_levels, default "
                f"{limits.DEFAULT_INTEGER_LEVELS})")
    categorical = (f"categorical = [\"{column}\"] under [data] (at most "
                   f"{limits.MAX_CATEGORICAL_INT_LEVELS} distinct whole numbers; it becomes a "
                   "category)")
    if span > limits.MAX_INTEGER_LEVELS:
        return PlanError(message, hint=f"{bins}; or {party}'s owner sets {categorical}")
    return PlanError(message, hint=f"{bins}; or {party}'s owner sets integer_levels = {span} "
                                   f"under [policy] (if its values are whole; it stays a "
                                   f"number) or {categorical}")


def _edge(value: float) -> str:
    """Short exact text of a bin edge (36.0 -> '36')."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


class GroupBy:
    """A grouped secure frame; aggregate it like pandas named aggregation."""

    def __init__(self, frame: SecureFrame, entries: list[tuple[dict, Column]]) -> None:
        self.frame = frame
        self.entries = entries

    def __repr__(self) -> str:
        return f"GroupBy({[e['name'] for e, _ in self.entries]})"

    def agg(self, **named: AggSpec) -> Query:
        """Named aggregates: ``n=("cost", "count")``, ``m=(t.a - t.b, "mean")``, ``k="size"``."""
        if not named:
            raise PlanError("agg needs at least one aggregate, e.g. n=('age', 'count')")
        specs = [self._spec(out, spec) for out, spec in named.items()]
        kind = "groupby" if self.entries else "agg"
        return Query(self.frame, self.entries, specs, kind=kind)

    def _spec(self, out: str, spec: AggSpec) -> tuple[str, str, Column | None]:
        if _is_size(spec):
            return out, "size", None
        if not isinstance(spec, tuple | list) or len(spec) != 2:
            raise PlanError(f"{out}: give (column, statistic), e.g. ('cost', 'mean'), "
                            f"or 'size'")
        source, stat = spec
        if not isinstance(stat, str) or stat not in AGGREGATES:
            raise PlanError(f"{out}: unknown statistic {stat!r}",
                            hint=f"use one of {', '.join(AGGREGATES)}")
        if stat == "size":
            if source is not None:
                raise PlanError(f"{out}: 'size' counts rows and takes no column",
                                hint=f"write {out}='size', or count the column")
            return out, "size", None
        column = self.frame.column(source)
        if column.kind == "categorical" and stat != "count":
            raise PlanError(f"cannot take the {stat} of categorical {column.name!r}",
                            hint="group by it, or count it")
        return out, stat, column

    def size(self) -> Query:
        """Rows per group, in a column named ``size``."""
        return self.agg(size="size")

    def _one(self, stat: str, column: ColumnLike) -> Query:
        label = column if isinstance(column, str) else self.frame.column(column).name
        return self.agg(**{label: (column, stat)})

    def count(self, column: ColumnLike) -> Query:
        """Non-missing values of ``column`` per group."""
        return self._one("count", column)

    def sum(self, column: ColumnLike) -> Query:
        """Sum of ``column`` per group."""
        return self._one("sum", column)

    def mean(self, column: ColumnLike) -> Query:
        """Mean of ``column`` per group."""
        return self._one("mean", column)

    def var(self, column: ColumnLike) -> Query:
        """Sample variance of ``column`` per group."""
        return self._one("var", column)

    def std(self, column: ColumnLike) -> Query:
        """Sample standard deviation of ``column`` per group."""
        return self._one("std", column)


def _is_size(spec: AggSpec) -> bool:
    """Whether an aggregate spec is the row count: ``"size"`` or ``("size",)``."""
    if isinstance(spec, tuple) and len(spec) == 1:
        spec = spec[0]
    return isinstance(spec, str) and spec == "size"


class Query:
    """A complete analysis: ``plan()`` to inspect it, ``collect()`` to run it."""

    def __init__(self, frame: SecureFrame, entries: list[tuple[dict, Column]],
                 specs: list[tuple[str, str, Column | None]], *, kind: str,
                 min_cell_size: int | None = None, model: dict | None = None,
                 inputs: list[Column] | None = None) -> None:
        if kind not in QUERY_KINDS:
            raise ValueError(f"unknown query kind {kind!r}")
        self._frame = frame
        self._entries = entries
        self._specs = specs
        self._min_cell_size = min_cell_size
        self._model = model
        self._inputs = list(inputs or [])  # columns a model reads beyond groups/aggregates
        self.kind = kind
        self.index_names = [entry["name"] for entry, _ in entries]
        self._plan = self._build()

    def __repr__(self) -> str:
        return f"Query({self.kind}, plan {self.plan_hash()[:12]})"

    def _build(self) -> dict:
        used = [self._frame._filter] + [c for _, c in self._entries] + \
            [c for _, _, c in self._specs] + self._inputs
        columns: dict[str, dict] = {}
        for column in used:
            if column is not None:
                columns.update(column.columns)
        condition = self._frame._filter
        plan = {"ppa_plan": PLAN_VERSION,
                "parties": list(self._frame._parties),
                "link": list(self._frame._link),
                "columns": {name: columns[name] for name in sorted(columns)},
                "filter": condition.expr if condition is not None else None,
                "groupby": [entry for entry, _ in self._entries],
                "aggregates": [{"name": out, "stat": stat,
                                "expr": column.expr if column is not None else None}
                               for out, stat, column in self._specs],
                "min_cell_size": self._min_cell_size}
        if self._model is not None:
            plan["model"] = self._model
        return validate_plan(copy.deepcopy(plan))

    def with_min_cell_size(self, k: int) -> Query:
        """The same query asking for at least ``k`` rows in every released cell."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise PlanError(f"min_cell_size must be a positive integer, not {k!r}")
        return Query(self._frame, self._entries, self._specs, kind=self.kind,
                     min_cell_size=int(k), model=self._model, inputs=self._inputs)

    def plan(self) -> dict:
        """The validated analysis plan (a fresh copy) this query sends to the parties."""
        return copy.deepcopy(self._plan)

    def plan_hash(self) -> str:
        """SHA-256 of the plan's canonical JSON."""
        return _plan_hash(self._plan)

    def collect(self, *, timeout: float | None = None, **options: Any) -> pd.DataFrame:
        """Run the plan through the frame's runner and return the released table."""
        runner = self._frame._runner
        if runner is None:
            raise PlanError("this frame has no runner to run plans",
                            hint="make frames with Consortium.link(...), or inspect plan()")
        check_cohort(self._plan, self._frame._catalog)  # an empty cohort says why, before any run
        logger.debug("running %s plan %s", self.kind, self.plan_hash()[:12])
        if self.kind == "crosstab":  # rows = index levels, columns = column levels
            options["layout"] = "crosstab"
        return runner.run(self.plan(), timeout=timeout, **options)
