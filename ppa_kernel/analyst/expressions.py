"""Safe text expressions for secure frames: ``"cost_2021 - cost_2020"``, ``"age >= 40"``.

Front-ends that take conditions or measures as text (the query builder panel, study
parameters) turn them into :class:`~ppa_kernel.analyst.frame.Column` objects here. The text is
parsed with :mod:`ast` and only a small whitelist of syntax is accepted; nothing is ever
evaluated by Python (no ``eval``/``exec``):

* column names (``age``), party-qualified columns (``insurer.age``);
* number, text and ``True``/``False`` constants;
* ``+ - * /``, unary ``-``, comparisons with one operator (``<= == !=`` ...);
* conditions combined with ``and or not`` or ``& | ~``;
* ``x in [...]`` / ``x not in [...]`` with a list of constants, and ``x.isin([...])``.

:func:`expression_code` renders the same text as secure-frame Python code for a cell.
"""

from __future__ import annotations

import ast
import keyword
import logging
import numbers
import operator
from collections.abc import Callable
from typing import Any

from ppa_kernel.contract.errors import PlanError

from .frame import Column, SecureFrame

logger = logging.getLogger(__name__)

MAX_LENGTH = 2000
"""Longest expression text accepted."""
MAX_DEPTH = 60
"""Deepest nesting of sub-expressions accepted."""

_ARITH: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul), ast.Div: ("/", operator.truediv),
    ast.BitAnd: ("&", operator.and_), ast.BitOr: ("|", operator.or_)}
_COMPARE: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Lt: ("<", operator.lt), ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge), ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne)}
_BOOL: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.And: ("&", operator.and_), ast.Or: ("|", operator.or_)}
_REFUSED = {
    ast.Call: "function calls",
    ast.Subscript: "subscripts (x[...])", ast.Lambda: "lambda", ast.IfExp: "if/else",
    ast.Dict: "dictionaries", ast.Set: "sets", ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.Await: "await", ast.Yield: "yield",
    ast.YieldFrom: "yield", ast.NamedExpr: "assignment (:=)", ast.Starred: "starred (*x)",
    ast.JoinedStr: "f-strings", ast.FormattedValue: "f-strings", ast.Slice: "slices",
    ast.List: "lists (only after 'in' or inside isin([...]))",
    ast.Tuple: "tuples (only after 'in' or inside isin([...]))"}
_OPERATOR_NAMES = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@",
                   ast.LShift: "<<", ast.RShift: ">>", ast.BitXor: "^", ast.Is: "is",
                   ast.IsNot: "is not"}


def _refuse(what: str, hint: str | None = None) -> PlanError:
    return PlanError(f"not allowed in expressions: {what}",
                     hint=hint or "use columns, constants, + - * /, comparisons, "
                                  "and/or/not, in [...] or .isin([...])")


def _op_name(op: ast.AST) -> str:
    return _OPERATOR_NAMES.get(type(op), type(op).__name__)


def parse_tree(text: str) -> ast.expr:
    """The syntax tree of an expression text (only checked for length and syntax)."""
    if not isinstance(text, str):
        raise PlanError(f"an expression must be text, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise PlanError(f"expression is too long ({len(text)} characters, at most {MAX_LENGTH})")
    if not text.strip():
        raise PlanError("the expression is empty")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise PlanError(f"syntax error in expression {text!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise PlanError("expression is nested too deeply or malformed") from None


class _Walker:
    """Checks a tree against the whitelist and folds it with the hooks of a subclass."""

    def walk(self, node: ast.AST, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise PlanError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        method = getattr(self, f"_walk_{type(node).__name__}", None)
        if method is None:
            raise _refuse(_REFUSED.get(type(node), type(node).__name__))
        return method(node, depth + 1)

    # ----------------------------------------------------------------- leaves
    def _walk_Name(self, node: ast.Name, depth: int) -> Any:
        if node.id.startswith("__"):
            raise _refuse(f"the name {node.id!r} (names starting with '__')")
        return self.name(node.id)

    def _walk_Constant(self, node: ast.Constant, depth: int) -> Any:
        return self.constant(_literal(node))

    def _walk_Attribute(self, node: ast.Attribute, depth: int) -> Any:
        if node.attr.startswith("_"):
            raise _refuse(f"the attribute {node.attr!r} (names starting with '_')")
        if not isinstance(node.value, ast.Name) or node.attr == "isin":
            raise _refuse(f"attribute access ('.{node.attr}')",
                          hint="only party.column, e.g. insurer.age, or column.isin([...])")
        if node.value.id.startswith("__"):
            raise _refuse(f"the name {node.value.id!r} (names starting with '__')")
        return self.qualified(node.value.id, node.attr)

    # -------------------------------------------------------------- operators
    def _walk_BinOp(self, node: ast.BinOp, depth: int) -> Any:
        if type(node.op) not in _ARITH:
            raise _refuse(f"the operator {_op_name(node.op)!r}")
        left, right = self.walk(node.left, depth), self.walk(node.right, depth)
        return self.binary(type(node.op), left, right)

    def _walk_UnaryOp(self, node: ast.UnaryOp, depth: int) -> Any:
        return self.unary(type(node.op), self.walk(node.operand, depth))

    def _walk_BoolOp(self, node: ast.BoolOp, depth: int) -> Any:
        values = [self.walk(v, depth) for v in node.values]
        result = values[0]
        for value in values[1:]:
            result = self.logic(type(node.op), result, value)
        return result

    def _walk_Compare(self, node: ast.Compare, depth: int) -> Any:
        if len(node.ops) != 1:
            raise _refuse("chained comparisons (a < b < c)",
                          hint="write (a < b) and (b < c)")
        op, right = node.ops[0], node.comparators[0]
        left = self.walk(node.left, depth)
        if isinstance(op, ast.In | ast.NotIn):
            return self.isin(left, _values(right), negate=isinstance(op, ast.NotIn))
        if type(op) not in _COMPARE:
            raise _refuse(f"the comparison {_op_name(op)!r}", hint="use == or !=")
        return self.compare(type(op), left, self.walk(right, depth))

    def _walk_Call(self, node: ast.Call, depth: int) -> Any:
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "isin"):
            raise _refuse(_REFUSED[ast.Call], hint="the only call allowed is column.isin([...])")
        if node.keywords or len(node.args) != 1:
            raise _refuse("isin with other than one list argument",
                          hint="write column.isin(['a', 'b'])")
        return self.isin(self.walk(func.value, depth), _values(node.args[0]), negate=False)

    # ------------------------------------------------------------------ hooks
    def name(self, name: str) -> Any:
        raise NotImplementedError

    def qualified(self, party: str, column: str) -> Any:
        raise NotImplementedError

    def constant(self, value: Any) -> Any:
        raise NotImplementedError

    def binary(self, op: type, left: Any, right: Any) -> Any:
        raise NotImplementedError

    def unary(self, op: type, value: Any) -> Any:
        raise NotImplementedError

    def logic(self, op: type, left: Any, right: Any) -> Any:
        raise NotImplementedError

    def compare(self, op: type, left: Any, right: Any) -> Any:
        raise NotImplementedError

    def isin(self, value: Any, values: list, *, negate: bool) -> Any:
        raise NotImplementedError


def _literal(node: ast.AST) -> Any:
    """A number, text or boolean constant (a leading - or + is allowed on numbers)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _refuse(f"{_op_name(node.op)} before {value!r}")
        return -value if isinstance(node.op, ast.USub) else value
    if not isinstance(node, ast.Constant):
        raise _refuse(_REFUSED.get(type(node), type(node).__name__) + " as a value",
                      hint="list constants, e.g. region in ['North', 'South']")
    value = node.value
    if isinstance(value, bool | str | int | float):
        return value
    raise _refuse(f"the constant {value!r}", hint="use numbers, text or True/False")


def _values(node: ast.AST) -> list:
    """The constants of a list or tuple after ``in`` or inside ``isin(...)``."""
    if not isinstance(node, ast.List | ast.Tuple):
        raise _refuse(f"{_REFUSED.get(type(node), type(node).__name__)} after 'in'",
                      hint="compare with a list of constants, e.g. region in ['North']")
    return [_literal(item) for item in node.elts]


# ---------------------------------------------------------------------------- parsing
class _Builder(_Walker):
    """Builds a Column of ``frame``; constants stay Python values until combined."""

    def __init__(self, frame: SecureFrame) -> None:
        self.frame = frame
        self.parties = set(frame.parties)

    def name(self, name: str) -> Column:
        if name in self.parties:
            raise PlanError(f"{name!r} is a party, not a column",
                            hint=f"name one of its columns, e.g. {name}.column")
        try:
            return self.frame[name]
        except PlanError:
            owners = [q for q in self.frame.columns if q.split(".", 1)[1] == name]
            if len(owners) > 1:
                raise PlanError(f"{name} is at {' and '.join(q.split('.')[0] for q in owners)}",
                                hint=f"write {' or '.join(owners)}") from None
            raise

    def qualified(self, party: str, column: str) -> Column:
        if party not in self.parties:
            raise _refuse(f"attribute access on {party!r}",
                          hint="only party.column, with a party of the consortium")
        return self.frame[f"{party}.{column}"]

    def constant(self, value: Any) -> Any:
        return value

    def binary(self, op: type, left: Any, right: Any) -> Any:
        symbol, function = _ARITH[op]
        if isinstance(left, Column) or isinstance(right, Column):
            return _apply(function, left, right, symbol)
        if op in (ast.BitAnd, ast.BitOr):
            raise PlanError(f"{symbol!r} combines conditions only, not constants")
        return _fold(symbol, function, left, right)

    def unary(self, op: type, value: Any) -> Any:
        if not isinstance(value, Column):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or op not in (ast.USub, ast.UAdd):
                raise PlanError(f"cannot apply {_unary_symbol(op)!r} to the constant {value!r}")
            return -value if op is ast.USub else value
        if op is ast.USub:
            return -value
        if op is ast.UAdd:
            return +value
        return ~value  # not, ~

    def logic(self, op: type, left: Any, right: Any) -> Any:
        symbol, function = _BOOL[op]
        if not isinstance(left, Column) and not isinstance(right, Column):
            raise PlanError(f"{symbol!r} combines conditions only, not constants")
        return _apply(function, left, right, symbol)

    def compare(self, op: type, left: Any, right: Any) -> Any:
        symbol, function = _COMPARE[op]
        if not isinstance(left, Column) and not isinstance(right, Column):
            raise PlanError(f"the comparison {left!r} {symbol} {right!r} uses no column")
        return _apply(function, left, right, symbol)

    def isin(self, value: Any, values: list, *, negate: bool) -> Column:
        if not isinstance(value, Column):
            raise PlanError(f"'in' needs a column on its left, not {value!r}")
        result = value.isin(values)
        return ~result if negate else result


def _unary_symbol(op: type) -> str:
    return {ast.USub: "-", ast.UAdd: "+", ast.Not: "not", ast.Invert: "~"}[op]


def _apply(function: Callable[[Any, Any], Any], left: Any, right: Any, symbol: str) -> Any:
    """``left <op> right`` with Python's own dispatch (reflected operators for constants)."""
    try:
        return function(left, right)
    except TypeError as exc:
        raise PlanError(f"cannot combine {_show(left)} {symbol} {_show(right)}: {exc}") from None


def _fold(symbol: str, function: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    """Arithmetic on two number constants, as Python computes it."""
    for value in (left, right):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise PlanError(f"cannot compute {left!r} {symbol} {right!r}",
                            hint="arithmetic works on numbers and numeric columns")
    if symbol == "/" and right == 0:
        raise PlanError("division by zero")
    return function(left, right)


def _show(value: Any) -> str:
    return repr(value.name) if isinstance(value, Column) else repr(value)


def parse_expression(text: str, frame: SecureFrame) -> Column:
    """The Column of ``frame`` that an expression text describes; PlanError if not allowed.

    >>> parse_expression("age >= 40 and region in ['North']", t)   # doctest: +SKIP
    Column('(age >= 40) & region.isin(['North'])', bool)
    """
    tree = parse_tree(text)
    value = _Builder(frame).walk(tree)
    if not isinstance(value, Column):
        raise PlanError(f"the expression {text!r} uses no column",
                        hint="name at least one column, e.g. cost_2021 / 12")
    logger.debug("parsed %r as %s", text, value.name)
    return value


def plain_column(text: str) -> str | None:
    """``"age"`` or ``"party.age"`` if the text names a column and nothing else, else None."""
    try:
        tree = parse_tree(text)
    except PlanError:
        return None
    if isinstance(tree, ast.Name) and not tree.id.startswith("__"):
        return tree.id
    if isinstance(tree, ast.Attribute) and isinstance(tree.value, ast.Name) \
            and not tree.attr.startswith("_") and not tree.value.id.startswith("__"):
        return f"{tree.value.id}.{tree.attr}"
    return None


# -------------------------------------------------------------------------- rendering
# Python's precedence: comparisons bind loosest, then | & + - * / unary, atoms tightest.
_P_CMP, _P_OR, _P_AND, _P_ADD, _P_MUL, _P_UNARY, _P_ATOM = range(1, 8)
_LEVEL = {ast.Add: _P_ADD, ast.Sub: _P_ADD, ast.Mult: _P_MUL, ast.Div: _P_MUL,
          ast.BitAnd: _P_AND, ast.BitOr: _P_OR, ast.And: _P_AND, ast.Or: _P_OR}
Code = tuple[str, int, bool]
"""Rendered code, its precedence, and whether it is a constant."""


class _Renderer(_Walker):
    """Renders secure-frame code with the parentheses Python needs to keep the tree."""

    def __init__(self, frame_var: str) -> None:
        self.var = frame_var

    def name(self, name: str) -> Code:
        return column_code(name, self.var), _P_ATOM, False

    def qualified(self, party: str, column: str) -> Code:
        return column_code(f"{party}.{column}", self.var), _P_ATOM, False

    def constant(self, value: Any) -> Code:
        negative = isinstance(value, numbers.Real) and not isinstance(value, bool) and value < 0
        return repr(value), _P_UNARY if negative else _P_ATOM, True

    def _infix(self, symbol: str, level: int, left: Code, right: Code) -> Code:
        clarify = level == _P_OR  # a | (b & c): parentheses Python does not need, for readers
        left_text = _wrap(left, left[1] <= level if level == _P_CMP else
                          left[1] < level or (clarify and left[1] == _P_AND))
        right_text = _wrap(right, right[1] <= level or (clarify and right[1] == _P_AND))
        return f"{left_text} {symbol} {right_text}", level, False

    def binary(self, op: type, left: Code, right: Code) -> Code:
        return self._infix(_ARITH[op][0], _LEVEL[op], left, right)

    def unary(self, op: type, value: Code) -> Code:
        symbol = {ast.USub: "-", ast.UAdd: "+", ast.Not: "~", ast.Invert: "~"}[op]
        return f"{symbol}{_wrap(value, value[1] < _P_UNARY)}", _P_UNARY, value[2]

    def logic(self, op: type, left: Code, right: Code) -> Code:
        return self._infix(_BOOL[op][0], _LEVEL[op], left, right)

    def compare(self, op: type, left: Code, right: Code) -> Code:
        return self._infix(_COMPARE[op][0], _P_CMP, left, right)

    def isin(self, value: Code, values: list, *, negate: bool) -> Code:
        target = _wrap(value, value[1] < _P_ATOM or value[2])
        code = f"{target}.isin([{', '.join(map(repr, values))}])"
        return (f"~{code}", _P_UNARY, False) if negate else (code, _P_ATOM, False)


def _wrap(value: Code, parenthesize: bool) -> str:
    return f"({value[0]})" if parenthesize else value[0]


_FRAME_ATTRIBUTES = frozenset(dir(SecureFrame))


def column_code(name: str, frame_var: str = "t") -> str:
    """``t.age`` for a plain name, ``t["insurer.age"]`` where attribute access cannot work."""
    if name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") \
            and name not in _FRAME_ATTRIBUTES:
        return f"{frame_var}.{name}"
    return f"{frame_var}[{name!r}]"


def expression_code(text: str, frame_var: str = "t") -> str:
    """The expression as secure-frame Python code on the frame variable ``frame_var``.

    ``"age >= 40 and region in ['North']"`` becomes
    ``(t.age >= 40) & t.region.isin(['North'])``. Only the syntax is checked here; column
    names are resolved when the code (or :func:`parse_expression`) meets a frame.
    """
    if not frame_var.isidentifier() or keyword.iskeyword(frame_var):
        raise PlanError(f"{frame_var!r} is not a valid variable name")
    return _Renderer(frame_var).walk(parse_tree(text))[0]
