"""Turn the body of a ``%%secure`` cell into a :class:`~ppa_kernel.analyst.frame.Query`.

The body runs in the analyst's own kernel, only to build a plan: it sees the analyst's
variables, ``link(...)``, ``consortium``, and each party's name bound to a secure frame
of that party alone. Its last statement must be an expression whose value is a query
(``t.groupby(...).agg(...)``, ``t.histogram(...)``, ...). Nothing in it reaches a party
but the plan that query describes.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from ppa_kernel.analyst.frame import GroupBy, Query, SecureFrame
from ppa_kernel.contract.errors import PlanError

CELL_FILENAME = "<secure cell>"


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
        return consortium.link(*names)

    namespace = dict(user_ns or {})
    namespace.update({name: consortium.link(name) for name in consortium.names
                      if name.isidentifier()})
    namespace.update(link=link, consortium=consortium)
    return namespace


def split_cell(body: str) -> tuple[ast.Module, ast.Expression]:
    """The statements before the final expression, and that expression."""
    try:
        tree = ast.parse(body, filename=CELL_FILENAME, mode="exec")
    except SyntaxError as exc:
        raise PlanError(f"syntax error in the cell, line {exc.lineno}: {exc.msg}") from None
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        raise PlanError("a %%secure cell must end with a query expression",
                        hint="e.g. t.groupby('income_band').agg(n=('cost_2021', 'count'))")
    last = tree.body.pop()
    return tree, ast.Expression(body=last.value)


def cell_query(body: str, consortium: Any, user_ns: Mapping[str, Any] | None = None) -> Query:
    """Evaluate a cell body in the analyst's kernel and return the query it ends with."""
    statements, final = split_cell(body)
    namespace = cell_namespace(consortium, user_ns)
    exec(compile(statements, CELL_FILENAME, "exec"), namespace)  # analyst's own code, own kernel
    value = eval(compile(final, CELL_FILENAME, "eval"), namespace)
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
