"""Model formulas like statsmodels/patsy (``"y ~ a * b + x - 1"``) and their design columns.

The language is the part of patsy's Wilkinson–Rogers notation that needs no code:

* ``y ~ rhs``: one response name, then terms joined by ``+`` (add) and ``-`` (remove);
* ``a:b`` the interaction of a and b, ``a * b`` = ``a + b + a:b``, parentheses group,
  ``(a + b):c`` = ``a:c + b:c``;
* an intercept by default; ``- 1``, ``+ 0`` or ``0 +`` remove it, ``+ 1`` puts it back;
* names are identifiers, optionally qualified (``insurer.age``), or ``Q("any name")``.

Numeric factors enter as they are; categorical and boolean factors as dummies, treatment
coded with the first level as reference where a lower-order term already spans it, and
fully coded otherwise -- patsy's rule, with patsy's column order and names
(``Intercept``, ``income_band[T.Q2]``, ``app_user[T.True]:age``, ``a[p]:x``).

:func:`parse_formula` and :func:`design_columns` are plain Python (no frames); the model
builders use :func:`build_design`, which resolves the names on a secure frame and turns
every design column into a plan expression the parties evaluate per row: a dummy is an
``eq`` condition (0/1), an interaction a ``mul`` of its factors' expressions.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanError
from .base import Frame, FrameColumn

INTERCEPT = "Intercept"

Term = tuple[str, ...]
"""An interaction of factors (names, in order of first appearance); () is the intercept."""

_TOKEN = re.compile(r"""\s*(?:
    (?P<quoted>Q\(\s*(?P<q>["'])(?P<qname>.*?)(?P=q)\s*\))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<number>\d+(?:\.\d*)?)
  | (?P<op>\*\*|[~+\-*:()/^|])
)""", re.VERBOSE)
_BINARY = {"+": 1, "-": 1, "*": 2, ":": 3}
_UNSUPPORTED = {"/": "nesting (a / b)", "**": "powers (**)", "^": "powers (^)", "|": "'|'"}


@dataclass(frozen=True)
class Formula:
    """A parsed formula: the response, whether there is an intercept, and the terms."""

    text: str
    response: str
    intercept: bool
    terms: tuple[Term, ...]

    @property
    def factors(self) -> list[str]:
        """Every factor name of the right-hand side, in order of first appearance."""
        return list(dict.fromkeys(f for term in self.terms for f in term))


@dataclass(frozen=True)
class _Part:
    """A parsed (sub)formula as patsy evaluates it."""

    intercept: bool = False
    removed: bool = False
    terms: tuple[Term, ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PlanError(f"cannot read the formula at {text[pos:].strip()!r}",
                            hint="write e.g. 'cost ~ age + sex * region'; quote odd names "
                                 "with Q(\"name\")")
        pos = match.end()
        if match["quoted"]:
            out.append(("name", match["qname"]))
        elif match["name"]:
            out.append(("name", match["name"]))
        elif match["number"]:
            out.append(("number", match["number"]))
        else:
            out.append(("op", match["op"]))
    return out


class _Parser:
    """Precedence climbing over the tokens: ``+ -`` < ``*`` < ``:``, left associative."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise PlanError("the formula ends too early")
        self.pos += 1
        return token

    def expression(self, min_prec: int = 1) -> tuple:
        left = self.prefix()
        while True:
            token = self.peek()
            if token is None or token[0] != "op" or token[1] in ("(", ")"):
                return left
            op = token[1]
            if op in _UNSUPPORTED:
                raise PlanError(f"formulas here do not support {_UNSUPPORTED[op]}",
                                hint="use + - * : and parentheses")
            if op == "~":
                raise PlanError("a formula has exactly one '~'")
            if _BINARY[op] < min_prec:
                return left
            self.take()
            left = (op, left, self.expression(_BINARY[op] + 1))

    def prefix(self) -> tuple:
        kind, value = self.take()
        if kind == "name":
            if self.peek() == ("op", "("):
                raise PlanError(f"formulas here do not support functions like {value}(...)",
                                hint="assign a derived column on the frame first, e.g. "
                                     "t.assign(x2=t.x * t.x)")
            return ("name", value)
        if kind == "number":
            if value not in ("0", "1"):
                raise PlanError(f"the only numbers in a formula are 0 and 1, not {value}")
            return ("one",) if value == "1" else ("zero",)
        if value == "(":
            inner = self.expression()
            if self.take() != ("op", ")"):
                raise PlanError("unbalanced parentheses in the formula")
            return inner
        if value in ("+", "-"):
            operand = self.prefix()
            if value == "+":
                return operand
            if operand[0] in ("one", "zero"):
                return ("minus", operand)
            raise PlanError("unary minus only applies to 1 or 0 (e.g. '- 1')")
        raise PlanError(f"unexpected {value!r} in the formula")


def _unique(terms: Iterable[Term]) -> tuple[Term, ...]:
    """Terms without repeats (a term is a set of factors; the first spelling stays)."""
    seen, out = set(), []
    for term in terms:
        key = frozenset(term)
        if key not in seen:
            seen.add(key)
            out.append(tuple(dict.fromkeys(term)))
    return tuple(out)


def _interaction(left: _Part, right: _Part) -> tuple[Term, ...]:
    if left.intercept or right.intercept:
        raise PlanError("the intercept cannot interact with anything else")
    return _unique(a + b for a in left.terms for b in right.terms)


def _evaluate(node: tuple) -> _Part:
    """patsy's semantics of +, -, *, : and of the intercept markers 1 and 0."""
    kind = node[0]
    if kind == "name":
        return _Part(terms=((node[1],),))
    if kind == "one":
        return _Part(intercept=True)
    if kind == "zero":
        return _Part(removed=True)
    if kind == "minus":  # unary: -1 removes the intercept, -0 keeps it
        return _Part(removed=True) if node[1][0] == "one" else _Part(intercept=True)
    left = _evaluate(node[1])
    right_node = node[2]
    if kind == "+":
        if right_node[0] == "zero":
            return _Part(removed=True, terms=left.terms)
        right = _evaluate(right_node)
        if right.intercept:
            return _Part(intercept=True, terms=_unique(left.terms + right.terms))
        return _Part(left.intercept, left.removed, _unique(left.terms + right.terms))
    if kind == "-":
        if right_node[0] == "zero":
            return _Part(intercept=True, terms=left.terms)
        if right_node[0] == "one":
            return _Part(removed=True, terms=left.terms)
        right = _evaluate(right_node)
        drop = {frozenset(t) for t in right.terms}
        terms = tuple(t for t in left.terms if frozenset(t) not in drop)
        if right.intercept:
            return _Part(removed=True, terms=terms)
        return _Part(left.intercept, left.removed, terms)
    right = _evaluate(right_node)
    if kind == ":":
        return _Part(terms=_interaction(left, right))
    return _Part(terms=_unique(left.terms + right.terms + _interaction(left, right)))  # *


def parse_formula(text: str) -> Formula:
    """Parse ``"response ~ terms"`` (PlanError naming the problem if malformed)."""
    if not isinstance(text, str) or "~" not in text:
        raise PlanError(f"a model formula needs 'response ~ terms', not {text!r}",
                        hint="e.g. 'cost_change ~ app_user * income_band + age'")
    tokens = _tokens(text)
    split = tokens.index(("op", "~"))
    lhs, rhs = tokens[:split], tokens[split + 1:]
    if len(lhs) != 1 or lhs[0][0] != "name":
        raise PlanError("the left of '~' must be one column name (the response)")
    if not rhs:
        raise PlanError("the right of '~' is empty", hint="write '~ 1' for the mean alone")
    parser = _Parser(rhs)
    part = _evaluate(parser.expression())
    if parser.peek() is not None:
        raise PlanError(f"unexpected {parser.peek()[1]!r} in the formula")
    response = lhs[0][1]
    if any(response in term for term in part.terms):
        raise PlanError(f"the response {response!r} is also on the right of '~'")
    return Formula(text, response, not part.removed, part.terms)


# ------------------------------------------------------------------ design columns


@dataclass(frozen=True)
class Part:
    """One factor's contribution to a design column: a numeric factor (level None), or
    the dummy of one level of a categorical factor."""

    factor: str
    level: Any = None
    numeric: bool = True


@dataclass(frozen=True)
class DesignColumn:
    """A design column: its patsy name and the product of its parts (() = intercept)."""

    name: str
    parts: tuple[Part, ...]


def _subsets(items: Sequence[str]) -> list[tuple[str, ...]]:
    """All subsets, shortest first, ties in the items' order (patsy's _subsets_sorted)."""
    return [c for r in range(len(items) + 1) for c in itertools.combinations(items, r)]


def _simplify(subterms: list[frozenset]) -> None:
    """Merge ``a- + a-:b-`` into ``a-:b+`` greedily from the left (patsy's rule).

    A subterm is a set of (full, factor): full = all levels, else treatment contrasts.
    """
    merged = True
    while merged:
        merged = False
        for i, short in enumerate(subterms):
            for j in range(i + 1, len(subterms)):
                long = subterms[j]
                if len(long) - len(short) == 1 and long > short:
                    (extra,) = long - short
                    subterms[j] = frozenset(short | {(True, extra[1])})
                    subterms.pop(i)
                    merged = True
                    break
            if merged:
                break


def _codings(term: Term, numeric: set[str], used: set[frozenset]) -> list[dict[str, bool]]:
    """For each subterm of a term: categorical factor -> full coding (True) or treatment."""
    categorical = [f for f in term if f not in numeric]
    subterms = [frozenset((False, f) for f in subset) for subset in _subsets(categorical)]
    subterms = [s for s in subterms if s not in used]
    used.update(subterms)
    _simplify(subterms)
    return [{factor: full for full, factor in subterm} for subterm in subterms]


def _columns_of(term: Term, coding: dict[str, bool], numeric: set[str],
                levels: dict[str, list]) -> list[DesignColumn]:
    options: list[list[tuple[str, Part]]] = []
    for factor in term:
        if factor in numeric:
            options.append([(factor, Part(factor))])
        elif factor in coding:
            full = coding[factor]
            chosen = levels[factor] if full else levels[factor][1:]
            options.append([(f"{factor}[{'' if full else 'T.'}{level}]",
                             Part(factor, level, numeric=False)) for level in chosen])
    columns = []
    for combo in itertools.product(*reversed(options)):  # the first factor varies fastest
        combo = combo[::-1]
        name = ":".join(n for n, _ in combo) or INTERCEPT
        columns.append(DesignColumn(name, tuple(p for _, p in combo)))
    return columns


def design_columns(formula: Formula, numeric: set[str],
                   levels: dict[str, list]) -> list[DesignColumn]:
    """The design columns of a formula, in patsy's order and with patsy's names.

    ``numeric`` names the numeric factors; ``levels`` gives every other factor's levels
    (the first is the reference). As patsy: terms are bucketed by their numeric factors
    (the purely categorical bucket first, then in order of appearance), sorted by degree
    within a bucket, and coded so that no column is implied by an earlier one.
    """
    terms = ((),) * formula.intercept + formula.terms
    buckets: dict[frozenset, list[Term]] = {}
    for term in terms:
        buckets.setdefault(frozenset(f for f in term if f in numeric), []).append(term)
    order = sorted(buckets, key=lambda b: b != frozenset())  # stable: () first
    columns: list[DesignColumn] = []
    for bucket in order:
        used: set[frozenset] = set()
        for term in sorted(buckets[bucket], key=len):
            for coding in _codings(term, numeric, used):
                columns += _columns_of(term, coding, numeric, levels)
    return columns


def has_constant(formula: Formula, numeric: set[str]) -> bool:
    """Whether the design spans a constant: an intercept, or (without one) a purely
    categorical term, whose first occurrence patsy codes with all levels. statsmodels
    then reports the centred R² (it detects such implicit constants by rank)."""
    return formula.intercept or any(all(f not in numeric for f in t) for t in formula.terms)


# ------------------------------------------------------------------ on a secure frame


@dataclass
class Design:
    """A formula resolved on a secure frame: plan expressions for every design column."""

    formula: Formula
    response: FrameColumn
    columns: list[DesignColumn]
    exprs: list[dict | None]  # per design column; None = the intercept (constant 1)
    complete: list[dict]  # conditions: a categorical factor is not missing
    centered: bool
    inputs: list[FrameColumn] = field(default_factory=list)  # every column read

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def model(self, kind: str) -> dict:
        """The plan's model object (see :mod:`ppa_kernel.contract.models.ols`)."""
        return {"kind": kind, "formula": self.formula.text,
                "response": {"name": self.formula.response, "expr": self.response.expr},
                "design": [{"name": n, "expr": e} for n, e in zip(self.names, self.exprs)],
                "complete": self.complete, "centered": self.centered}


def _levels(column: FrameColumn) -> list:
    if "col" not in column.expr:
        if column.kind == "bool":
            return [False, True]
        raise PlanError(f"{column.name!r} is a categorical expression without levels")
    levels = column.columns[column.expr["col"]].get("levels")
    if not levels:
        raise PlanError(f"{column.name!r} has too many levels for dummies",
                        hint="its party publishes no list of levels for it")
    return list(levels)


def _dummy(column: FrameColumn, level: Any) -> dict:
    """0/1 condition: the factor takes this level (missing: 0)."""
    if "col" not in column.expr:  # a derived boolean: the condition itself, or its negation
        return column.expr if level else {"op": "not", "args": [column.expr]}
    return {"op": "eq", "args": [column.expr, {"const": level}]}


def _present(column: FrameColumn, levels: list) -> dict | None:
    """Condition that a categorical column is not missing (None if it never is)."""
    if "col" not in column.expr or column.columns[column.expr["col"]].get("missing") is False:
        return None
    return {"op": "isin", "args": [column.expr], "values": levels}


def _product(exprs: list[dict]) -> dict | None:
    if not exprs:
        return None
    out = exprs[0]
    for expr in exprs[1:]:
        out = {"op": "mul", "args": [out, expr]}
    return out


def build_design(frame: Frame, text: str, response_kind: str = "numeric") -> Design:
    """Parse a formula and resolve its names on ``frame`` (``frame[name]``) into plan
    expressions; PlanError for unknown names (with the frame's suggestion), a response
    not of ``response_kind`` ("numeric" or "bool"), or a formula without columns."""
    formula = parse_formula(text)
    response = frame.column(formula.response)
    if response.kind != response_kind:
        hint = None
        if response.kind == "bool":
            hint = "a boolean response needs logistic regression (logit)"
        elif response_kind == "bool":
            hint = ("logit needs a truth value: assign a condition, e.g. "
                    "t.assign(high=t.cost > 5000)")
        raise PlanError(f"the response {formula.response!r} must be {response_kind}, not "
                        f"{response.kind}", hint=hint)
    factors = {name: frame.column(name) for name in formula.factors}
    numeric = {n for n, c in factors.items() if c.kind == "numeric"}
    levels = {n: _levels(c) for n, c in factors.items() if n not in numeric}
    for name, found in levels.items():
        if len(found) < 2:
            raise PlanError(f"{name!r} has a single level {found}: nothing to compare")
    columns = design_columns(formula, numeric, levels)
    if not columns:
        raise PlanError("the formula has no columns", hint="keep the intercept or add terms")
    exprs = [_product([factors[p.factor].expr if p.numeric else _dummy(factors[p.factor],
                                                                      p.level)
                       for p in column.parts]) for column in columns]
    present = [_present(factors[name], found) for name, found in levels.items()]
    if response_kind == "bool":  # a missing truth value is not False: drop the row
        present.append(_present(response, [False, True]))
    complete = [condition for condition in present if condition is not None]
    return Design(formula, response, columns, exprs, complete,
                  has_constant(formula, numeric), [response, *factors.values()])
