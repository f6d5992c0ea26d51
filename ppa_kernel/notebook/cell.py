"""Turn the body of a ``%%secure`` cell into a :class:`~ppa_kernel.analyst.frame.Query`.

The body runs in the analyst's own kernel, only to build a plan: it sees the analyst's
variables, ``link(...)``, ``consortium``, and each party's name bound to a secure frame
of that party alone. Its last statement must be an expression whose value is a query
(``t.groupby(...).agg(...)``, ``t.histogram(...)``, ...). Nothing in it reaches a party
but the plan that query describes.

Mistakes made while building the plan are :class:`PlanError` s naming the line of the
cell: a misspelt name, column or method (``NameError``, ``AttributeError``), a wrong
call (``TypeError``) or a missing key (``KeyError``) raised by the cell's own code gets
a "did you mean" hint against the parties, the cell's names and the frame's columns.
Errors raised deeper down (inside the analyst's own functions) keep their traceback.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import linecache
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from ppa_kernel.analyst.frame import Column, GroupBy, Query, SecureFrame
from ppa_kernel.contract.errors import PlanError

CELL_FILENAME = "<secure cell>"
BUILDING_ERRORS = (NameError, AttributeError, KeyError, TypeError)
"""Errors of the cell's own code that become one-line plan errors (others keep a traceback)."""
WORKBENCH_TYPES = (SecureFrame, GroupBy, Column, Query)


def did_you_mean(name: str, *candidates: Iterable[str]) -> str | None:
    """``"did you mean a, b?"`` for the close matches of ``name``, earlier groups first."""
    close: list[str] = []
    for group in candidates:
        known = sorted({c for c in group if c not in close and not c.startswith("_")})
        close.extend(difflib.get_close_matches(name, known, n=3, cutoff=0.6))
    return f"did you mean {', '.join(close[:3])}?" if close else None


def cell_namespace(consortium: Any, user_ns: Mapping[str, Any] | None = None) -> dict:
    """The names a cell body sees: the analyst's variables, the parties, ``link``."""

    def link(*parties: str | SecureFrame) -> SecureFrame:
        """The secure inner join of the given parties (names or party frames; none = all)."""
        names = []
        for party in parties:
            if isinstance(party, SecureFrame):
                names.extend(party.linked)
            elif isinstance(party, str):
                names.append(party)
            else:
                raise PlanError(f"link() takes party names or party frames, not {party!r}",
                                hint=f"parties are {', '.join(consortium.names)}")
        unknown = [name for name in names if name not in consortium.names]
        if unknown:
            raise PlanError(f"unknown parties {unknown}",
                            hint=did_you_mean(unknown[0], consortium.names)
                            or f"parties are {', '.join(consortium.names)}")
        return consortium.link(*names)

    namespace = dict(user_ns or {})
    namespace.update({name: consortium.link(name) for name in party_names(consortium)})
    namespace.update(link=link, consortium=consortium)
    return namespace


def party_names(consortium: Any) -> list[str]:
    """The parties a cell sees as names: those that hold data and are identifiers."""
    names = getattr(consortium, "data_parties", None) or consortium.names
    return [name for name in names if name.isidentifier()]


def split_cell(body: str, first_line: int = 1) -> tuple[ast.Module, ast.Expression]:
    """The statements before the final expression, and that expression; ``first_line``
    is the number of the body's first line in the cell (2 under a ``%%secure`` line)."""
    try:
        tree = ast.parse(body, filename=CELL_FILENAME, mode="exec")
    except SyntaxError as exc:
        line = (exc.lineno or 1) + first_line - 1
        raise PlanError(f"syntax error in the cell, line {line}: {exc.msg}") from None
    ast.increment_lineno(tree, first_line - 1)
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        raise PlanError("a %%secure cell must end with a query expression",
                        hint="e.g. t.groupby('income_band').agg(n=('cost_2021', 'count'))")
    last = tree.body.pop()
    return tree, ast.Expression(body=last.value)


def cell_query(body: str, consortium: Any, user_ns: Mapping[str, Any] | None = None,
               *, first_line: int = 1) -> Query:
    """Evaluate a cell body in the analyst's kernel and return the query it ends with."""
    statements, final = split_cell(body, first_line)
    lines = ["\n"] * (first_line - 1) + body.splitlines(keepends=True)
    linecache.cache[CELL_FILENAME] = (len(body), None, lines, CELL_FILENAME)  # tracebacks
    namespace = cell_namespace(consortium, user_ns)
    try:
        exec(compile(statements, CELL_FILENAME, "exec"), namespace)  # analyst's own code
        value = eval(compile(final, CELL_FILENAME, "eval"), namespace)
    except PlanError as exc:
        raise _at_line(exc, exc.__traceback__) from None
    except BUILDING_ERRORS as exc:
        if not _raised_by_cell(exc):
            raise
        raise _building_error(exc, namespace, consortium) from None
    if isinstance(value, GroupBy):
        raise PlanError("the cell ends with a groupby but no aggregate",
                        hint="add .agg(n=('column', 'count')) or .size()")
    if isinstance(value, SecureFrame):
        raise PlanError("the cell ends with a secure frame, not a query",
                        hint="end with an aggregate, e.g. t.agg(n='size') or t.count()")
    if not isinstance(value, Query):
        raise PlanError(f"the cell must end with a query, not {type(value).__name__}",
                        hint="e.g. t.groupby('income_band').agg(n=('cost_2021', 'count'))")
    return value


def _cell_line(tb: TracebackType | None) -> int | None:
    """The line of the cell the innermost cell frame of a traceback was running."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == CELL_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _raised_by_cell(exc: BaseException) -> bool:
    """Whether the cell's own code raised ``exc`` (or a workbench object refused an
    attribute), rather than a function it called."""
    if isinstance(exc, AttributeError) and isinstance(exc.obj, WORKBENCH_TYPES):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == CELL_FILENAME


def _at_line(exc: PlanError, tb: TracebackType | None) -> PlanError:
    """The plan error, its message prefixed with the cell line that raised it."""
    line = _cell_line(tb)
    if line is None:
        return exc
    return type(exc)(f"line {line}: {exc.message}", party=exc.party, hint=exc.hint)


def _building_error(exc: Exception, namespace: Mapping[str, Any], consortium: Any) -> PlanError:
    """A one-line plan error for a mistake in the cell's code, with a suggestion."""
    line = _cell_line(exc.__traceback__)
    where = f"line {line}: " if line is not None else ""
    if isinstance(exc, NameError) and exc.name:
        return PlanError(f"{where}name {exc.name!r} is not defined",
                         hint=_name_hint(exc.name, namespace, consortium))
    if isinstance(exc, AttributeError) and exc.name and exc.obj is not None:
        return _attribute_error(where, exc.name, exc.obj)
    detail = str(exc) if not isinstance(exc, KeyError) else repr(exc.args[0]) if exc.args else ""
    return PlanError(f"{where}{type(exc).__name__}: {detail}")


def _name_hint(name: str, namespace: Mapping[str, Any], consortium: Any) -> str:
    parties = party_names(consortium)
    catalog = getattr(consortium, "catalog", {})
    owners = [party for party, columns in catalog.items() if name in columns]
    if owners:
        return f"{name} is a column of {' and '.join(owners)}: write {owners[0]}.{name}, " \
               f"or t.{name} on a frame t"
    columns = {column for party in parties for column in catalog.get(party, {})}
    hint = did_you_mean(name, parties, [n for n in namespace if n not in parties],
                        dir(builtins), columns)
    return hint or f"a cell sees {', '.join(parties)}, link, consortium and your variables"


def _attribute_error(where: str, name: str, obj: Any) -> PlanError:
    if not isinstance(obj, SecureFrame):
        what = type(obj).__name__ if isinstance(obj, WORKBENCH_TYPES) else \
            f"{type(obj).__name__!r} object"
        return PlanError(f"{where}{what} has no attribute {name!r}",
                         hint=did_you_mean(name, dir(obj)))
    try:
        obj[name]
    except PlanError as exc:  # e.g. a column at two parties, or at an unlinked one
        if not exc.message.startswith("unknown column"):
            return PlanError(f"{where}{exc.message}", hint=exc.hint)
    columns = obj._ipython_key_completions_()
    bare = [column.rsplit(".", 1)[-1] for column in columns]  # also those at two parties
    hint = did_you_mean(name, bare, dir(obj))
    if hint is None:
        hint = f"columns are {', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}"
    return PlanError(f"{where}secure frame has no column or method {name!r}", hint=hint)
