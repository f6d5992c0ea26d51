"""Safe text expressions: what the parser accepts, what it refuses, and the code it renders."""

from __future__ import annotations

import ast
import inspect

import pytest

from ppa_kernel.analyst import expressions
from ppa_kernel.analyst.expressions import expression_code, parse_expression, plain_column
from ppa_kernel.analyst.frame import Column, SecureFrame
from ppa_kernel.contract.errors import PlanError

CATALOG = {
    "insurer": {
        "age": {"kind": "numeric", "min": 18.0, "max": 90.0, "missing": False},
        "cost_2020": {"kind": "numeric", "min": 0.0, "max": 9e4, "missing": False},
        "cost_2021": {"kind": "numeric", "min": 0.0, "max": 9e4, "missing": True},
        "region": {"kind": "categorical", "levels": ["Central", "East", "North", "South"],
                   "missing": False},
    },
    "hospital": {
        "app_user": {"kind": "bool", "levels": [False, True], "missing": False},
        "visits": {"kind": "numeric", "min": 0.0, "max": 50.0, "missing": False},
        "age": {"kind": "numeric", "min": 0.0, "max": 99.0, "missing": True},
    },
    "bureau": {
        "income_band": {"kind": "categorical", "levels": ["Q1", "Q2", "Q3", "low"],
                        "missing": False},
        "filter": {"kind": "categorical", "levels": ["a", "b"], "missing": False},
    },
}
PARTIES = ["insurer", "hospital", "bureau"]


@pytest.fixture
def t() -> SecureFrame:
    return SecureFrame(CATALOG, PARTIES, PARTIES)


def same(a: Column, b: Column) -> None:
    assert a.expr == b.expr
    assert a.kind == b.kind
    assert a.columns == b.columns


# The text on the left must build exactly the column the secure-frame code on the right does.
ACCEPTED = [
    ("cost_2021 - cost_2020", lambda t: t.cost_2021 - t.cost_2020),
    ("insurer.cost_2021 / 12", lambda t: t["insurer.cost_2021"] / 12),
    ("cost_2021 / (12 * 2)", lambda t: t.cost_2021 / 24),
    ("insurer.age >= 40 and region in ['North', 'South']",
     lambda t: (t["insurer.age"] >= 40) & t.region.isin(["North", "South"])),
    ("app_user & ~(income_band == 'low')", lambda t: t.app_user & ~(t.income_band == "low")),
    ("not app_user or visits > 2 and visits < 5",
     lambda t: ~t.app_user | ((t.visits > 2) & (t.visits < 5))),
    ("visits > 1 and visits < 9 and app_user",
     lambda t: ((t.visits > 1) & (t.visits < 9)) & t.app_user),
    ("region not in ('North',)", lambda t: ~t.region.isin(["North"])),
    ("region.isin(['East'])", lambda t: t.region.isin(["East"])),
    ("(visits + 1).isin([1, 2.5])", lambda t: (t.visits + 1).isin([1, 2.5])),
    ("40 <= hospital.age", lambda t: t["hospital.age"] >= 40),
    ("'North' == region", lambda t: t.region == "North"),
    ("-visits * -2 + 3", lambda t: -t.visits * -2 + 3),
    ("visits - (2 - visits)", lambda t: t.visits - (2 - t.visits)),
    ("visits / 2 / 4", lambda t: t.visits / 2 / 4),
    ("app_user == True", lambda t: t.app_user == True),  # noqa: E712
    ("visits in [-1, +2]", lambda t: t.visits.isin([-1, 2])),
    ("+visits", lambda t: t.visits),
    ("bureau.filter == 'a'", lambda t: t["filter"] == "a"),
]


@pytest.mark.parametrize(("text", "build"), ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_accepted_expressions_build_the_secure_frame_column(t, text, build):
    same(parse_expression(text, t), build(t))


@pytest.mark.parametrize("text", [a for a, _ in ACCEPTED])
def test_rendered_code_builds_the_same_plan(t, text):
    code = expression_code(text)
    rendered = eval(code, {"__builtins__": {}}, {"t": t})  # the test runs the rendered code
    same(rendered, parse_expression(text, t))
    if rendered.kind == "bool":
        assert t[rendered].count().plan() == t[parse_expression(text, t)].count().plan()
    else:
        assert t.agg(m=(rendered, "mean")).plan() == \
            t.agg(m=(parse_expression(text, t), "mean")).plan()


@pytest.mark.parametrize(("text", "code"), [
    ("cost_2021 - cost_2020", "t.cost_2021 - t.cost_2020"),
    ("age >= 40 and region in ['North', 'South']",
     "(t.age >= 40) & t.region.isin(['North', 'South'])"),
    ("app_user & ~(income_band == 'low')", "t.app_user & ~(t.income_band == 'low')"),
    ("insurer.cost_2021 / 12", "t['insurer.cost_2021'] / 12"),
    ("a or b and not c", "t.a | (t.b & ~t.c)"),
    ("x not in [1, 2]", "~t.x.isin([1, 2])"),
    ("filter == 'a'", "t['filter'] == 'a'"),  # a SecureFrame method name: subscript
    ("(a - b) - c", "t.a - t.b - t.c"),
    ("a - (b - c)", "t.a - (t.b - t.c)"),
])
def test_expression_code_renders_secure_frame_code(text, code):
    assert expression_code(text) == code


def test_expression_code_frame_variable():
    assert expression_code("age > 1", "frame") == "frame.age > 1"
    with pytest.raises(PlanError, match="variable name"):
        expression_code("age > 1", "not valid")


REFUSED = [
    ("__import__('os')", "function calls"),
    ("__import__('os').system('true')", "function calls"),
    ("().__class__", "'__class__'"),
    ("visits.__class__", "'__class__'"),
    ("().__class__.__bases__[0].__subclasses__()", "function calls"),
    ("__builtins__", "'__builtins__'"),
    ("len(visits)", "function calls"),
    ("getattr(visits, 'expr')", "function calls"),
    ("visits.isin", "attribute access"),
    ("visits.isin([1], x=2)", "one list argument"),
    ("visits.isin(*[1])", "starred"),
    ("visits[0]", "subscripts"),
    ("lambda: 1", "lambda"),
    ("visits ** 2", "'**'"),
    ("visits % 2", "'%'"),
    ("visits // 2", "'//'"),
    ("1 < visits < 3", "chained comparisons"),
    ("foo.bar", "attribute access on 'foo'"),
    ("insurer.age.real", "attribute access"),
    ("insurer", "is a party"),
    ("visits is None", "'is'"),
    ("visits == None", "None"),
    ("visits if app_user else 0", "if/else"),
    ("region in income_band", "after 'in'"),
    ("region in {'North'}", "sets"),
    ("[visits]", "lists"),
    ("{'a': visits}", "dictionaries"),
    ("[x for x in visits]", "comprehensions"),
    ("(y := visits)", "assignment"),
    ("f'{visits}'", "f-strings"),
    ("visits == b'x'", "constant b'x'"),
    ("visits == 1j", "constant 1j"),
    ("visits and 1", "combines conditions only"),
    ("True and False", "combines conditions only"),
    ("1 + 2", "uses no column"),
    ("1 < 2", "uses no column"),
    ("'a' + 'b'", "cannot compute"),
    ("visits +", "syntax error"),
    ("visits = 1", "syntax error"),
    ("a\x00b", "syntax error"),
    ("   ", "empty"),
    ("x" * (expressions.MAX_LENGTH + 1), "too long"),
    ("-" * 100 + "visits", "nested too deeply"),
    ("visits" + " + visits" * 100, "nested too deeply"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED, ids=[r[0][:40] for r in REFUSED])
def test_refused_expressions_name_what_is_not_allowed(t, text, message):
    with pytest.raises(PlanError) as caught:
        parse_expression(text, t)
    assert message in str(caught.value)


@pytest.mark.parametrize("text", ["__import__('os')", "().__class__", "visits[0]",
                                  "open('x').read()", "lambda: 1"])
def test_expression_code_refuses_the_same_syntax(text):
    with pytest.raises(PlanError, match="not allowed"):
        expression_code(text)


@pytest.mark.parametrize(("text", "message"), [
    ("region + 1", "categorical"),
    ("visits / visits", "division is only by a nonzero number"),
    ("visits / 0", "division is only by a nonzero number"),
    ("visits + 1 / (1 - 1)", "division by zero"),
    ("region == 'Nowhere'", "not a level"),
    ("visits == 'x'", "never equal to text"),
    ("not visits", "negates conditions only"),
    ("age > 3", "write insurer.age or hospital.age"),
    ("nothing > 3", "unknown column"),
    ("visits > 1e999", "finite"),
])
def test_secure_frame_rules_apply(t, text, message):
    with pytest.raises(PlanError) as caught:
        parse_expression(text, t)
    assert message in str(caught.value)


def test_parties_not_linked_are_refused():
    t = SecureFrame(CATALOG, PARTIES, ["insurer"])
    with pytest.raises(PlanError, match="does not link"):
        parse_expression("visits > 1", t)
    with pytest.raises(PlanError, match="does not link"):
        parse_expression("hospital.visits > 1", t)
    same(parse_expression("age > 1", t), t.age > 1)  # unique among the linked parties


def test_assigned_columns_are_names(t):
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    same(parse_expression("change > 0", t), t.change > 0)


def test_parser_never_evaluates_python(t, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr("builtins.eval", forbidden)
    monkeypatch.setattr("builtins.exec", forbidden)
    parse_expression("cost_2021 - cost_2020 > 0 and region in ['North']", t)
    tree = ast.parse(inspect.getsource(expressions))
    called = {node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


def test_plain_column():
    assert plain_column("age") == "age"
    assert plain_column(" insurer.age ") == "insurer.age"
    for text in ("age + 1", "a.b.c", "f(x)", "", "1", "__class__"):
        assert plain_column(text) is None
