"""The lazy secure-frame API: expressions, plan shapes and errors (no parties needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ppa_kernel.analyst.frame import Column, GroupBy, Query, SecureFrame, expression
from ppa_kernel.analyst.results import layout_table
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.plan import plan_hash, validate_plan

CATALOG = {
    "insurer": {
        "age": {"kind": "numeric", "levels": None, "min": 18.0, "max": 90.0, "missing": 0},
        "sex": {"kind": "categorical", "levels": ["F", "M"], "min": None, "max": None,
                "missing": 0},
        "cost_2020": {"kind": "numeric", "levels": None, "min": 0.0, "max": 9e4, "missing": 4},
        "cost_2021": {"kind": "numeric", "levels": None, "min": 0.0, "max": 9e4, "missing": 2},
        "region": {"kind": "categorical", "levels": ["Central", "East", "North", "South"],
                   "min": None, "max": None, "missing": 0},
        "postcode": {"kind": "categorical", "levels": None, "min": None, "max": None,
                     "missing": 0},
    },
    "hospital": {
        "app_user": {"kind": "bool", "levels": [False, True], "min": None, "max": None,
                     "missing": 0},
        "visits": {"kind": "numeric", "levels": None, "min": 0.0, "max": 50.0, "missing": 0},
        "age": {"kind": "numeric", "levels": None, "min": 0.0, "max": 99.0, "missing": 1},
        "intensity": {"kind": "numeric", "levels": None, "min": None, "max": None,
                      "missing": 7},
    },
    "bureau": {
        "income_band": {"kind": "categorical", "levels": ["Q1", "Q2", "Q3", "Q4", "Q5"],
                        "min": None, "max": None, "missing": 0},
        "education": {"kind": "categorical", "levels": ["low", "mid", "high"],
                      "min": None, "max": None, "missing": 3},
    },
}
PARTIES = ["bureau", "hospital", "insurer"]


class RecordingRunner:
    """Records every plan and timeout it is given; returns a fixed table."""

    def __init__(self, result: pd.DataFrame | None = None) -> None:
        self.plans: list[dict] = []
        self.timeouts: list[float | None] = []
        self.result = result if result is not None else pd.DataFrame()

    def run(self, plan: dict, *, timeout: float | None = None,
            layout: str = "table") -> pd.DataFrame:
        self.plans.append(plan)
        self.timeouts.append(timeout)
        return layout_table(self.result, plan, layout)


def frame(link: list[str] = PARTIES, runner: RecordingRunner | None = None) -> SecureFrame:
    return SecureFrame(CATALOG, PARTIES, link, runner)


def col(name: str) -> dict:
    return {"col": name}


def const(value) -> dict:
    return {"const": value}


def op(name: str, *args: dict) -> dict:
    return {"op": name, "args": list(args)}


AGE = col("insurer.age")
VISITS = col("hospital.visits")

OPERATORS = [
    (lambda t: t.visits + 1, op("add", VISITS, const(1))),
    (lambda t: 1 + t.visits, op("add", const(1), VISITS)),
    (lambda t: t.visits - t["insurer.age"], op("sub", VISITS, AGE)),
    (lambda t: 10 - t.visits, op("sub", const(10), VISITS)),
    (lambda t: t.visits * 2.5, op("mul", VISITS, const(2.5))),
    (lambda t: 2 * t.visits, op("mul", const(2), VISITS)),
    (lambda t: t.visits / 4, op("div", VISITS, const(4))),
    (lambda t: -t.visits, op("neg", VISITS)),
    (lambda t: t.visits < 3, op("lt", VISITS, const(3))),
    (lambda t: t.visits <= 3, op("le", VISITS, const(3))),
    (lambda t: t.visits > t["insurer.age"], op("gt", VISITS, AGE)),
    (lambda t: t.visits >= 0.5, op("ge", VISITS, const(0.5))),
    (lambda t: t.sex == "F", op("eq", col("insurer.sex"), const("F"))),
    (lambda t: t.sex != "M", op("ne", col("insurer.sex"), const("M"))),
    (lambda t: t.app_user == True, op("eq", col("hospital.app_user"), const(True))),  # noqa: E712
    (lambda t: 3 < t.visits, op("gt", VISITS, const(3))),  # reflected comparison
    (lambda t: t.region.isin(["North", "East"]),
     {"op": "isin", "args": [col("insurer.region")], "values": ["North", "East"]}),
    (lambda t: t.app_user & (t.visits > 1),
     op("and", col("hospital.app_user"), op("gt", VISITS, const(1)))),
    (lambda t: (t.sex == "F") | t.app_user,
     op("or", op("eq", col("insurer.sex"), const("F")), col("hospital.app_user"))),
    (lambda t: ~t.app_user, op("not", col("hospital.app_user"))),
    (lambda t: np.float64(2.0) * t.visits + np.int64(3),
     op("add", op("mul", const(2.0), VISITS), const(3))),
]


@pytest.mark.parametrize("build, expected", OPERATORS)
def test_operator_json(build, expected):
    t = frame()
    node = build(t)
    assert isinstance(node, Column)
    assert expression(node) == expected
    assert canonical_json(node.expr) == canonical_json(expected)  # plain JSON types only


def test_numpy_constants_become_python_values():
    t = frame()
    expr = (t.visits > np.int64(3)).expr
    assert type(expr["args"][1]["const"]) is int
    assert expression(np.float32(0.5)) == {"const": 0.5}
    assert type(expression(np.bool_(True))["const"]) is bool
    with pytest.raises(PlanError, match="finite"):
        t.visits + float("nan")


def test_operator_kinds_and_display_names():
    t = frame()
    assert (t.visits + 1).kind == "numeric"
    assert (t.visits > 1).kind == "bool" and t.sex.kind == "categorical"
    assert (t.cost_2021 - (t.cost_2020 - 3)).name == "cost_2021 - (cost_2020 - 3)"
    assert ((t.visits > 1) & ~t.app_user).name == "(visits > 1) & ~app_user"
    assert t["insurer.age"].name == "insurer.age" and t.sex.name == "sex"


def test_filters_combine_with_and():
    t = frame()
    stepwise = t[t.visits > 1][t.sex == "F"].filter(t.app_user).count()
    assert stepwise.plan()["filter"] == op(
        "and", op("and", op("gt", VISITS, const(1)), op("eq", col("insurer.sex"), const("F"))),
        col("hospital.app_user"))
    at_once = t[((t.visits > 1) & (t.sex == "F")) & t.app_user].count()
    assert stepwise.plan_hash() == at_once.plan_hash()
    assert set(stepwise.plan()["columns"]) == {"hospital.visits", "insurer.sex",
                                               "hospital.app_user"}
    assert t.count().plan()["filter"] is None  # filtering returns a new frame


def test_filter_needs_a_condition():
    t = frame()
    with pytest.raises(PlanError, match="condition"):
        t[t.visits + 1]
    with pytest.raises(PlanError, match="condition"):
        t.filter("visits > 1")


def test_groupby_plan_shape():
    t = frame()
    query = (t[t.visits >= 2]
             .groupby(["income_band", "app_user"])
             .agg(n=("cost_2021", "count"), change=(t.cost_2021 - t.cost_2020, "mean"),
                  rows="size", also=(None, "size")))
    plan = query.plan()
    assert plan["parties"] == PARTIES and plan["link"] == PARTIES
    assert plan["groupby"] == [
        {"name": "income_band", "expr": col("bureau.income_band"),
         "levels": ["Q1", "Q2", "Q3", "Q4", "Q5"]},
        {"name": "app_user", "expr": col("hospital.app_user"), "levels": [False, True]},
    ]
    assert plan["aggregates"] == [
        {"name": "n", "stat": "count", "expr": col("insurer.cost_2021")},
        {"name": "change", "stat": "mean",
         "expr": op("sub", col("insurer.cost_2021"), col("insurer.cost_2020"))},
        {"name": "rows", "stat": "size", "expr": None},
        {"name": "also", "stat": "size", "expr": None},
    ]
    assert plan["columns"] == {
        "bureau.income_band": {"party": "bureau", "column": "income_band",
                               "kind": "categorical", "missing": False,
                               "levels": ["Q1", "Q2", "Q3", "Q4", "Q5"]},
        "hospital.app_user": {"party": "hospital", "column": "app_user", "kind": "bool",
                              "missing": False, "levels": [False, True]},
        "hospital.visits": {"party": "hospital", "column": "visits", "kind": "numeric",
                            "missing": False, "range": [0.0, 50.0]},
        "insurer.cost_2020": {"party": "insurer", "column": "cost_2020", "kind": "numeric",
                              "missing": True, "range": [0.0, 9e4]},
        "insurer.cost_2021": {"party": "insurer", "column": "cost_2021", "kind": "numeric",
                              "missing": True, "range": [0.0, 9e4]},
    }
    assert plan["min_cell_size"] is None
    assert query.kind == "groupby" and query.index_names == ["income_band", "app_user"]


def test_groupby_names_qualify_only_ambiguous_columns():
    t = frame()
    plan = t.groupby([t.sex, "bureau.education"]).size().plan()
    assert [g["name"] for g in plan["groupby"]] == ["sex", "education"]
    assert plan["aggregates"] == [{"name": "size", "stat": "size", "expr": None}]


def test_groupby_convenience_methods_name_results_after_columns():
    t = frame()
    for method in ("count", "sum", "mean", "var", "std"):
        query = getattr(t.groupby("sex"), method)("cost_2021")
        assert query.plan()["aggregates"] == [
            {"name": "cost_2021", "stat": method, "expr": col("insurer.cost_2021")}]
    derived = t.groupby("sex").mean(t.cost_2021 - t.cost_2020)
    assert derived.plan()["aggregates"][0]["name"] == "cost_2021 - cost_2020"


def test_whole_frame_aggregates():
    t = frame()
    query = t.agg(m=("visits", "mean"), s=("insurer.age", "std"))
    plan = query.plan()
    assert plan["groupby"] == [] and query.kind == "agg" and query.index_names == []
    assert [a["stat"] for a in plan["aggregates"]] == ["mean", "std"]
    assert t.count().plan()["aggregates"] == [{"name": "n", "stat": "size", "expr": None}]


def test_groupby_refuses_numeric_and_unlisted_levels():
    t = frame()
    with pytest.raises(PlanError, match="numeric") as info:
        t.groupby("visits")
    assert "histogram" in str(info.value)
    with pytest.raises(PlanError, match="too many levels"):
        t.groupby("postcode")
    with pytest.raises(PlanError, match="expression"):
        t.groupby(t.visits > 3)
    with pytest.raises(PlanError, match="twice"):
        t.groupby(["sex", "insurer.sex"])


def test_aggregate_spec_errors():
    t = frame()
    with pytest.raises(PlanError, match="unknown statistic"):
        t.agg(x=("visits", "median"))
    with pytest.raises(PlanError, match="categorical"):
        t.groupby("app_user").agg(x=("sex", "mean"))
    with pytest.raises(PlanError, match="takes no column"):
        t.agg(x=("visits", "size"))
    with pytest.raises(PlanError, match="statistic"):
        t.agg(x="visits")
    with pytest.raises(PlanError, match="at least one"):
        t.groupby("sex").agg()
    assert t.groupby("sex").agg(k=("sex", "count")).plan()["aggregates"][0]["stat"] == "count"


def test_histogram_edges_from_int_bins():
    t = frame()
    query = t[t.sex == "F"].histogram("visits", bins=5)
    plan = query.plan()
    entry = plan["groupby"][0]
    assert entry["bins"] == np.linspace(0.0, 50.0, 6).tolist() == [0, 10, 20, 30, 40, 50]
    assert entry["levels"] == ["[0, 10)", "[10, 20)", "[20, 30)", "[30, 40)", "[40, 50]"]
    assert entry["name"] == "visits" and entry["expr"] == VISITS
    assert plan["aggregates"] == [{"name": "count", "stat": "size", "expr": None}]
    assert plan["filter"] == op("eq", col("insurer.sex"), const("F"))
    assert query.kind == "histogram" and query.index_names == ["visits"]


def test_histogram_explicit_edges_and_errors():
    t = frame()
    entry = t.histogram("insurer.age", bins=[18, 40.5, 90]).plan()["groupby"][0]
    assert entry["bins"] == [18.0, 40.5, 90.0]
    assert entry["levels"] == ["[18, 40.5)", "[40.5, 90]"]
    assert entry["name"] == "insurer.age"
    with pytest.raises(PlanError, match="no published range"):
        t.histogram("intensity", bins=4)
    with pytest.raises(PlanError, match="numeric"):
        t.histogram("sex", bins=2)
    with pytest.raises(PlanError, match="increase"):
        t.histogram("visits", bins=[0, 10, 10])
    with pytest.raises(PlanError, match="at least one bin"):
        t.histogram("visits", bins=0)


def test_crosstab_collect_unstacks_in_level_order():
    index = pd.MultiIndex.from_tuples(
        [("high", "M"), ("low", "F"), ("low", "M"), ("mid", "F"), ("mid", "M"), ("high", "F")],
        names=["education", "sex"])
    result = pd.DataFrame({"count": [6.0, 1.0, 2.0, 3.0, np.nan, 5.0]}, index=index)
    result.attrs["suppressed"] = pd.DataFrame(
        {"count": [False, False, False, False, True, False]}, index=index)
    result.attrs["run_id"] = "abc"
    runner = RecordingRunner(result)
    query = frame(runner=runner).crosstab("education", "sex")
    assert query.kind == "crosstab" and query.index_names == ["education", "sex"]
    table = query.collect(timeout=5.0)
    assert runner.plans == [query.plan()] and runner.timeouts == [5.0]
    assert list(table.index) == ["low", "mid", "high"] and list(table.columns) == ["F", "M"]
    assert table.index.name == "education" and table.columns.name == "sex"
    assert table.loc["low"].tolist() == [1.0, 2.0]
    assert table.loc["high"].tolist() == [5.0, 6.0]
    assert table.loc["mid", "M"] is pd.NA and all(str(d) == "Int64" for d in table.dtypes)
    assert table.attrs["run_id"] == "abc"
    assert table.attrs["suppressed"].loc["mid"].tolist() == [False, True]
    assert query.plan()["aggregates"] == [{"name": "count", "stat": "size", "expr": None}]


def test_histogram_and_groupby_results_are_returned_as_is():
    result = pd.DataFrame({"count": [4.0, 5.0]}, index=pd.Index(["[0, 25)", "[25, 50]"]))
    runner = RecordingRunner(result)
    got = frame(runner=runner).histogram("visits", bins=2).collect()
    assert got is result
    assert runner.plans[0]["groupby"][0]["bins"] == [0.0, 25.0, 50.0]


def test_collect_needs_a_runner():
    with pytest.raises(PlanError, match="no runner"):
        frame().count().collect()


def test_assign_inlines_derived_expressions():
    runner = RecordingRunner()
    t = frame(runner=runner)
    t = t.assign(change=t.cost_2021 - t.cost_2020, heavy=lambda f: f.change > 1000)
    assert t["change"].expr == op("sub", col("insurer.cost_2021"), col("insurer.cost_2020"))
    assert t.change.name == "change" and t.change.kind == "numeric"
    query = t[t.heavy].groupby("sex").agg(m=("change", "mean"), sd=(t.change * 2, "std"))
    plan = query.plan()
    change = op("sub", col("insurer.cost_2021"), col("insurer.cost_2020"))
    assert plan["filter"] == op("gt", change, const(1000))
    assert plan["aggregates"][0]["expr"] == change
    assert plan["aggregates"][1]["expr"] == op("mul", change, const(2))
    assert "change" not in plan["columns"]
    assert set(plan["columns"]) == {"insurer.cost_2020", "insurer.cost_2021", "insurer.sex"}
    query.collect()
    assert runner.plans == [plan]
    with pytest.raises(PlanError, match="column expression"):
        t.assign(one=1)


def test_ambiguous_unknown_and_unlinked_columns():
    t = frame()
    with pytest.raises(PlanError, match="age is at hospital and insurer") as info:
        t["age"]
    assert "t['insurer.age']" in str(info.value) and "t['hospital.age']" in str(info.value)
    assert t["insurer.age"].expr == AGE and t["hospital.age"].expr == col("hospital.age")
    with pytest.raises(PlanError, match="did you mean cost_2021") as info:
        t["cost_202"]
    assert info.value.hint and "cost_2020" in info.value.hint
    with pytest.raises(PlanError, match=r"unknown column 'insurer\.nope'"):
        t["insurer.nope"]
    pair = frame(["insurer", "bureau"])
    assert pair.columns == [f"bureau.{c}" for c in CATALOG["bureau"]] + \
        [f"insurer.{c}" for c in CATALOG["insurer"]]
    assert pair.age.expr == AGE  # unique once the hospital is not linked
    for name in ("visits", "hospital.visits"):
        with pytest.raises(PlanError, match="belongs to hospital, which this frame does not"):
            pair[name]
    with pytest.raises(PlanError, match="does not link"):
        pair.agg(v=(frame().visits, "mean"))


def test_attribute_access_and_indexing_errors():
    t = frame()
    assert t.visits.expr == VISITS
    assert not hasattr(t, "no_such_column")
    with pytest.raises(AttributeError, match="is at hospital and insurer"):
        _ = t.age
    with pytest.raises(PlanError, match="agg"):
        t[["sex", "visits"]]
    assert "visits" in dir(t) and "age" not in dir(t)


def test_categorical_arithmetic_and_ordering_are_refused():
    t = frame()
    with pytest.raises(PlanError, match="categorical"):
        t.sex + 1
    with pytest.raises(PlanError, match="categorical"):
        2 * t.income_band
    with pytest.raises(PlanError, match="categorical"):
        _ = -t.sex
    with pytest.raises(PlanError, match="categorical"):
        _ = t.sex < "M"
    with pytest.raises(PlanError, match="not a level of 'region'") as info:
        _ = t.region == "Nort"
    assert "'North'" in str(info.value)
    with pytest.raises(PlanError, match="not a level"):
        t.income_band.isin(["Q1", "Q9"])
    with pytest.raises(PlanError, match="text"):
        _ = t.visits > "3"


def test_division_only_by_nonzero_constant():
    t = frame()
    for bad in (lambda: t.visits / t["insurer.age"], lambda: t.visits / 0,
                lambda: 1 / t.visits, lambda: t.visits / "2"):
        with pytest.raises(PlanError, match="nonzero number"):
            bad()
    assert (t.visits / np.int64(2)).expr == op("div", VISITS, const(2))


def test_conditions_have_no_truth_value():
    t = frame()
    with pytest.raises(TypeError, match=r"use & \| ~ instead of and/or/not"):
        bool(t.visits > 1)
    with pytest.raises(TypeError, match="and/or/not"):
        _ = (t.visits > 1) and (t.sex == "F")
    with pytest.raises(PlanError, match="conditions only"):
        t.visits & (t.sex == "F")
    with pytest.raises(PlanError, match="conditions only"):
        _ = ~t.visits


def test_isin_values_are_checked_and_sets_sorted():
    t = frame()
    with pytest.raises(PlanError, match="list of values"):
        t.region.isin("North")
    a = t[t.region.isin({"South", "East", "North"})].count()
    b = t[t.region.isin(frozenset(["North", "East", "South"]))].count()
    assert a.plan()["filter"]["values"] == ["East", "North", "South"]
    assert a.plan_hash() == b.plan_hash()


def test_plan_hash_is_deterministic_and_sensitive():
    def build(threshold: float) -> Query:
        t = frame()
        t = t.assign(change=t.cost_2021 - t.cost_2020)
        return (t[(t.visits > threshold) & t.region.isin(["North"])]
                .groupby(["income_band", "sex"]).agg(m=("change", "mean"), n="size"))

    first, second = build(2), build(2)
    assert first.plan_hash() == second.plan_hash() == plan_hash(first.plan())
    assert json.dumps(first.plan(), sort_keys=True) == json.dumps(second.plan(), sort_keys=True)
    assert build(3).plan_hash() != first.plan_hash()
    assert first.with_min_cell_size(20).plan_hash() != first.plan_hash()


def test_min_cell_size_and_plan_copies():
    query = frame().groupby("sex").size()
    stricter = query.with_min_cell_size(25)
    assert stricter.plan()["min_cell_size"] == 25 and query.plan()["min_cell_size"] is None
    assert stricter.kind == "groupby" and stricter.index_names == ["sex"]
    for bad in (0, True, 2.5):
        with pytest.raises(PlanError, match="min_cell_size"):
            query.with_min_cell_size(bad)
    plan = query.plan()
    plan["groupby"][0]["levels"].append("X")
    assert query.plan()["groupby"][0]["levels"] == ["F", "M"]


def test_link_follows_consortium_order_and_is_checked():
    plan = SecureFrame(CATALOG, PARTIES, ["insurer", "bureau"]).count().plan()
    assert plan["link"] == ["bureau", "insurer"] and plan["parties"] == PARTIES
    with pytest.raises(PlanError, match="not in the consortium"):
        SecureFrame(CATALOG, PARTIES, ["insurer", "police"])


def test_every_plan_passes_validation():
    t = frame()
    t = t.assign(load=t.visits + t["insurer.age"] / 2)
    queries = [
        t.count(),
        t.agg(m=("load", "mean"), v=("load", "var")),
        t[~t.app_user | (t.sex == "M")].groupby(["sex", "education"]).agg(
            n=("cost_2021", "count"), s=(t.cost_2021 * t.visits, "sum")),
        t.groupby("app_user").std("visits"),
        t.histogram("insurer.age", bins=3),
        t.crosstab("income_band", t.app_user).with_min_cell_size(5),
    ]
    for query in queries:
        assert isinstance(query, Query)
        plan = query.plan()
        assert validate_plan(json.loads(canonical_json(plan))) == plan
    assert isinstance(t.groupby("sex"), GroupBy)
