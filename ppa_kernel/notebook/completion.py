"""Tab completion for ``%ppa`` and ``%%secure`` cells (an IPython context matcher).

Jupyter asks the kernel's ``shell.Completer.completions(cell, cursor)`` with the whole
cell, so the matcher sees the ``%%secure`` line above the cursor. It completes

- ``%ppa`` subcommands, options and option values, and ``%%secure`` options, from the
  magics' own argument parsers;
- in a ``%%secure`` body: party names (alone and in ``link(``), the columns and methods
  after ``t.``, column names in strings: ``t["``, ``groupby(["``, ``agg(n=("``,
  ``t.ols("y ~ ``, ..., and a column's levels in ``t.region == "`` and ``isin(["``.

``t`` is a party name, a secure frame among the analyst's variables, or a name the cell
assigns from ``link(...)``, a party or another such name (``.assign(...)``, filters).
Those assignments are read with :mod:`ast`, never run: completing runs no analyst code
and sends nothing to a party; columns come from the catalog the consortium already has.
"""

from __future__ import annotations

import argparse
import ast
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ppa_kernel.analyst.frame import GroupBy, SecureFrame
from ppa_kernel.analyst.progress import MODES
from ppa_kernel.contract.errors import PPAError
from ppa_kernel.notebook.cell import party_names

logger = logging.getLogger(__name__)

MATCHER_ID = "ppa_kernel.notebook.completion"
SECURE_LINE = re.compile(r"%%secure(\s|$)")
NAME_TAIL = re.compile(r"\w*$")
COLUMN_TAIL = re.compile(r"[\w.]*$")
COMPARED = re.compile(r"\s*[=!]=\s*$")  # a string compared with a column
FILTERS = ("filter",)  # frame methods that keep the frame's columns
GROUP_METHODS = sorted(n for n in dir(GroupBy) if not n.startswith("_"))


@dataclass
class Suggestions:
    """Completions of the ``fragment`` just before the cursor."""

    fragment: str
    names: list[str]
    kind: str  # shown as the completion's type
    exclusive: bool = True  # hide IPython's other completions (Jedi knows none of these)
    kinds: dict[str, str] = field(default_factory=dict)  # other types of some names


@dataclass
class FrameInfo:
    """A frame the cell names: a real secure frame plus the names its assign() adds."""

    frame: SecureFrame
    derived: list[str] = field(default_factory=list)
    grouped: bool = False

    def with_names(self, names: list[str]) -> FrameInfo:
        return FrameInfo(self.frame, [*self.derived, *names], self.grouped)

    def attributes(self) -> tuple[list[str], list[str]]:
        """Columns (assigned ones first) and methods after ``t.``."""
        if self.grouped:
            return [], GROUP_METHODS
        public = {n for n in dir(self.frame) if not n.startswith("_")}
        methods = sorted(n for n in public if hasattr(type(self.frame), n))
        columns = [n for n in [*self.derived, *sorted(public - set(methods))]
                   if n.isidentifier()]
        return [*dict.fromkeys(columns)], methods

    def columns(self, prefix: str) -> list[str]:
        """Column names for a string: qualified ones only once the prefix has a dot."""
        names = [*self.derived, *self.frame._ipython_key_completions_()]
        if "." not in prefix:
            bare = {name.split(".", 1)[-1] for name in self.frame._ipython_key_completions_()
                    if "." not in name}
            names = [n for n in names if "." not in n or n.split(".", 1)[1] not in bare]
        return [*dict.fromkeys(names)]


@dataclass
class CellScope:
    """What a ``%%secure`` body can name: the consortium's parties and the user's frames."""

    consortium: Any
    user_ns: Mapping[str, Any]

    @property
    def data_parties(self) -> list[str]:
        """The parties ``link`` takes (by name, in a string)."""
        return list(getattr(self.consortium, "data_parties", None) or self.consortium.names)

    @property
    def parties(self) -> list[str]:
        """The parties a cell sees as names."""
        return party_names(self.consortium)

    def link(self, parties: list[str]) -> FrameInfo | None:
        try:
            return FrameInfo(self.consortium.link(*parties))
        except PPAError:
            return None


# ----------------------------------------------------------------------- magic options


def parser_options(parser: argparse.ArgumentParser, prefix: str,
                   given: Sequence[str] = ()) -> list[str]:
    """The parser's option strings starting with ``prefix`` (long ones for ``--``),
    without those of options already ``given``."""
    options = [o for action in parser._actions if not set(action.option_strings) & set(given)
               for o in action.option_strings]
    return [o for o in options if o.startswith(prefix) and (len(o) > 2 or prefix in ("", "-"))]


def _option_choices(parser: argparse.ArgumentParser, option: str) -> list[str] | None:
    for action in parser._actions:
        if option in action.option_strings:
            return [str(c) for c in action.choices] if action.choices else []
    return None


def complete_magic_line(words: list[str], parser: argparse.ArgumentParser,
                        positional_choices: Callable[[list[str]], list[str]]
                        ) -> Suggestions | None:
    """Complete the last word of a magic's argument line (``words[-1]`` may be '')."""
    current, before = words[-1], words[:-1]
    if current.startswith("-"):
        return Suggestions(current, parser_options(parser, current, before), "option")
    if before and before[-1].startswith("-"):
        values = _option_choices(parser, before[-1])
        if values:
            return Suggestions(current, _starting(values, current), "value")
        if _takes_value(parser, before[-1]):
            return None  # a value of the user's choosing
    given = positionals(before, parser)
    choices = positional_choices(given)
    if choices:
        return Suggestions(current, _starting(choices, current),
                           "command" if not given else "value")
    return None  # e.g. a file name: IPython's file completion offers those


def positionals(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The positional arguments among ``words`` (options and their values skipped)."""
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = _takes_value(parser, word)
        else:
            found.append(word)
    return found


def ppa_positional_choices(parser: argparse.ArgumentParser) -> Callable[[list[str]], list[str]]:
    """Choices of ``%ppa``'s next positional: a command, then a mode after ``progress``."""
    commands = next([str(c) for c in a.choices] for a in parser._actions
                    if not a.option_strings and a.choices)

    def choices(given: list[str]) -> list[str]:
        if not given:
            return commands
        return list(MODES) if given == ["progress"] else []

    return choices


def _takes_value(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in a.option_strings and a.nargs != 0 for a in parser._actions)


def _starting(names: list[str], prefix: str) -> list[str]:
    return [n for n in names if n.startswith(prefix)]


# ----------------------------------------------------------------------- cell body scan


@dataclass
class Scan:
    """The body up to the cursor: open brackets, matched pairs and an open string."""

    text: str
    open_brackets: list[int]
    pairs: dict[int, int]  # closing bracket or quote position -> opening position
    string_start: int | None  # where the string the cursor is in starts (its quote)


def scan(text: str) -> Scan:
    """Track brackets, strings and comments of ``text`` from its start to its end."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif char in "'\"":
            quote = text[i:i + 3] if text[i:i + 3] == char * 3 else char
            end, closed = _string_end(text, i + len(quote), quote)
            if end is None:
                return Scan(text, stack, pairs, i)
            if closed:
                pairs[end - 1] = i
            i = end
            continue
        elif char in "([{":
            stack.append(i)
        elif char in ")]}" and stack:
            pairs[i] = stack.pop()
        i += 1
    return Scan(text, stack, pairs, None)


def _string_end(text: str, i: int, quote: str) -> tuple[int | None, bool]:
    """Index just past the string and whether a quote closed it (None: still open)."""
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i + len(quote), True
        elif text[i] == "\n" and len(quote) == 1:
            return i, False  # an unterminated one-line string ends with its line
        else:
            i += 1
    return None, False


def chain_before(state: Scan, end: int) -> str:
    """The primary expression (``t``, ``t[t.a].groupby(...).agg``) ending at ``end``."""
    text, i = state.text, end
    while i > 0:
        last = text[i - 1]
        if last in ")]" and i - 1 in state.pairs:  # a call or subscript: its callee next
            i = state.pairs[i - 1]
        elif last.isalnum() or last == "_":
            while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
                i -= 1
            if i == 0 or text[i - 1] != ".":
                break
            i -= 1
        else:
            if last in "'\"" and i - 1 in state.pairs:  # a string literal starts it
                i = state.pairs[i - 1]
            break
    return text[i:end]


def _parse(chain: str) -> ast.expr | None:
    if not chain or chain.startswith("."):
        return None
    try:
        return ast.parse(chain, mode="eval").body
    except SyntaxError:
        return None


# ----------------------------------------------------------------------- frames of a cell


class Resolver:
    """Which frames the names of a cell body stand for, read statically."""

    def __init__(self, scope: CellScope, body: str) -> None:
        self.scope = scope
        self.names: dict[str, FrameInfo | None] = {}
        for target, value in _assignments(body):
            self.names[target] = self.frame(value)

    def frame(self, node: ast.expr | None) -> FrameInfo | None:
        """The frame ``node`` evaluates to, if it is one built from links and parties."""
        if isinstance(node, ast.Name):
            return self._named(node.id)
        if isinstance(node, ast.Subscript):  # t[condition]; t["col"] is a column
            if isinstance(node.slice, ast.Constant):
                return None
            return self._ungrouped(node.value)
        if not isinstance(node, ast.Call):
            return None
        if self.is_link(node.func):
            return self._link(node.args)
        if not isinstance(node.func, ast.Attribute):
            return None
        method, receiver = node.func.attr, node.func.value
        if method == "assign":
            base = self._ungrouped(receiver)
            return base.with_names([k.arg for k in node.keywords if k.arg]) if base else None
        if method in FILTERS:
            return self._ungrouped(receiver)
        if method == "groupby":
            base = self._ungrouped(receiver)
            return FrameInfo(base.frame, base.derived, grouped=True) if base else None
        return None

    def _ungrouped(self, node: ast.expr) -> FrameInfo | None:
        info = self.frame(node)
        return info if info is not None and not info.grouped else None

    def columns_of(self, node: ast.expr | None) -> FrameInfo | None:
        """The frame whose columns a call's arguments name (``t.groupby``, ``g.agg``, ...)."""
        if isinstance(node, ast.Attribute):
            return self.frame(node.value)
        return None

    def levels(self, node: ast.expr | None) -> list[str] | None:
        """The published text levels of a plain column ``t.col`` or ``t["col"]``."""
        if isinstance(node, ast.Attribute):
            info, name = self.frame(node.value), node.attr
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            info, name = self.frame(node.value), node.slice.value
        else:
            return None
        if info is None or info.grouped or name in info.derived or not isinstance(name, str):
            return None
        try:
            column = info.frame[name]
        except PPAError:
            return None
        if "col" not in column.expr:
            return None
        levels = info.frame.column_meta(column.expr["col"]).get("levels") or []
        return [level for level in levels if isinstance(level, str)]

    def is_link(self, node: ast.expr | None) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "link" and "link" not in self.names
        return (isinstance(node, ast.Attribute) and node.attr == "link"
                and isinstance(node.value, ast.Name) and node.value.id == "consortium")

    def _named(self, name: str) -> FrameInfo | None:
        if name in self.names:
            return self.names[name]
        if name in self.scope.parties:
            return self.scope.link([name])
        value = self.scope.user_ns.get(name)
        if isinstance(value, SecureFrame):
            return FrameInfo(value)
        if isinstance(value, GroupBy):
            return FrameInfo(value.frame, grouped=True)
        return None

    def _link(self, args: list[ast.expr]) -> FrameInfo | None:
        parties: list[str] = []
        for arg in args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                parties.append(arg.value)
                continue
            info = self.frame(arg)
            if info is None:
                return None
            parties.extend(info.frame.linked)
        return self.scope.link(parties)


def _assignments(body: str) -> list[tuple[str, ast.expr]]:
    """``name = value`` statements of the body, in order (line by line if it does not
    parse as a whole, as while it is being typed)."""
    try:
        statements = ast.parse(body).body
    except SyntaxError:
        statements = []
        for line in body.splitlines():
            try:
                statements.extend(ast.parse(line.strip()).body)
            except SyntaxError:
                continue
    found = []
    for statement in statements:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and \
                isinstance(statement.targets[0], ast.Name):
            found.append((statement.targets[0].id, statement.value))
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None and \
                isinstance(statement.target, ast.Name):
            found.append((statement.target.id, statement.value))
    return found


def complete_body(body: str, scope: CellScope) -> Suggestions | None:
    """Complete at the end of ``body`` (a ``%%secure`` body up to the cursor)."""
    state = scan(body)
    done = body[:body.rfind("\n") + 1]  # the lines above the cursor's
    resolver = Resolver(scope, done)
    if state.string_start is not None:
        return _in_string(state, resolver, scope)
    prefix = NAME_TAIL.search(body).group()
    start = len(body) - len(prefix)
    if start > 0 and body[start - 1] == ".":
        info = resolver.frame(_parse(chain_before(state, start - 1)))
        if info is None:
            return None
        columns, methods = info.attributes()
        names = _starting([*columns, *(m for m in methods if m not in columns)], prefix)
        return Suggestions(prefix, names, "column", kinds=dict.fromkeys(methods, "method"))
    if prefix and prefix[0].isdigit():
        return None
    inside = state.open_brackets[-1] if state.open_brackets else None
    if inside is not None and body[inside] == "(" and \
            resolver.is_link(_parse(chain_before(state, inside))):
        return Suggestions(prefix, _starting(scope.parties, prefix), "party")
    names = [*scope.parties, "link", "consortium",
             *(name for name, info in resolver.names.items() if info is not None)]
    return Suggestions(prefix, _starting([*dict.fromkeys(names)], prefix), "name",
                       exclusive=False)


def _in_string(state: Scan, resolver: Resolver, scope: CellScope) -> Suggestions | None:
    """Column names (or party names, in ``link("``) for the string the cursor is in."""
    text = state.text
    prefix = COLUMN_TAIL.search(text[state.string_start + 1:]).group()
    compared = COMPARED.search(text[:state.string_start])
    if compared:  # t.region == "...": one of the column's levels
        levels = resolver.levels(_parse(chain_before(state, compared.start())))
        return Suggestions(prefix, _starting(levels, prefix), "level") if levels else None
    if not state.open_brackets or not _argument_position(text, state.open_brackets[-1],
                                                         state.string_start):
        return None
    for bracket in reversed(state.open_brackets):
        head = _parse(chain_before(state, bracket))
        if head is None:  # a list, tuple or dict literal: look further out
            continue
        if isinstance(head, ast.Attribute) and head.attr == "isin":
            levels = resolver.levels(head.value)
            return Suggestions(prefix, _starting(levels, prefix), "level") if levels else None
        if text[bracket] == "[":
            info = resolver.frame(head)
        elif resolver.is_link(head):
            return Suggestions(prefix, _starting(scope.data_parties, prefix), "party")
        else:
            info = resolver.columns_of(head)
        if info is None:
            return None
        return Suggestions(prefix, _starting(info.columns(prefix), prefix), "column")
    return None


def _argument_position(text: str, bracket: int, string_start: int) -> bool:
    """Whether a string at ``string_start`` is an item of the bracket opened at
    ``bracket``: the first, after a comma, or a keyword argument's value."""
    lead = text[bracket + 1:string_start].rstrip()
    return not lead or lead.endswith(",") or (
        lead.endswith("=") and not lead.endswith(("==", "!=", "<=", ">=")))


# ----------------------------------------------------------------------- the matcher


def suggest(text: str, line: int, column: int, *, scope: Callable[[], CellScope | None],
            ppa_parser: argparse.ArgumentParser,
            secure_parser: argparse.ArgumentParser) -> Suggestions | None:
    """Completions at ``line``/``column`` of a cell's ``text`` (None: not ours)."""
    lines = text.split("\n")
    if line >= len(lines):
        return None
    before = lines[line][:column]
    stripped = before.lstrip()
    if stripped.startswith("%ppa "):
        return complete_magic_line(_words(stripped[len("%ppa "):]), ppa_parser,
                                   ppa_positional_choices(ppa_parser))
    if not SECURE_LINE.match(lines[0]):
        return None
    if line == 0:
        if not before.startswith("%%secure "):
            return None  # the magic's own name: IPython completes that
        return complete_magic_line(_words(before[len("%%secure "):]), secure_parser,
                                   lambda given: [])
    context = scope()
    if context is None:
        return None
    return complete_body("\n".join([*lines[1:line], before]), context)


def _words(arguments: str) -> list[str]:
    """The words of a magic's argument line; the last one ('' after a space) is completed."""
    words = arguments.split(" ")
    return [w for w in words[:-1] if w] + [words[-1]]


def make_matcher(shell: Any, session: Any, magics: Any) -> Callable[[Any], dict]:
    """The IPython (API v2) context matcher for this shell's session and magics."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    def scope() -> CellScope | None:
        if session.consortium is None:
            return None
        return CellScope(session.consortium, shell.user_ns)

    @context_matcher(identifier=MATCHER_ID)
    def ppa_matcher(context: Any) -> dict:
        try:
            found = suggest(context.full_text, context.cursor_line, context.cursor_position,
                            scope=scope, ppa_parser=magics.ppa.parser,
                            secure_parser=magics.secure.parser)
        except Exception:  # completion must never break the kernel's completer
            logger.exception("ppa completion failed")
            found = None
        if found is None:
            return {"completions": [], "suppress": False}
        return {"completions": [SimpleCompletion(n, type=found.kinds.get(n, found.kind))
                                for n in found.names],
                "matched_fragment": found.fragment, "suppress": found.exclusive,
                "ordered": found.kind in ("command", "option", "party", "column")}

    return ppa_matcher


def install(shell: Any, session: Any, magics: Any) -> None:
    """Add the matcher to the shell's completer (replacing an earlier one)."""
    remove(shell)
    shell.Completer.custom_matchers.append(make_matcher(shell, session, magics))


def remove(shell: Any) -> None:
    """Take the matcher out of the shell's completer."""
    matchers = shell.Completer.custom_matchers
    matchers[:] = [m for m in matchers if getattr(m, "matcher_identifier", None) != MATCHER_ID]
