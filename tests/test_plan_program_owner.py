"""Plans, their reading by parties, and owner-side evaluation (no MPC needed)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.plan import plan_hash, validate_plan
from ppa_kernel.contract.program import SCALE_BITS, compile_plan
from ppa_kernel.party.owner import encode, evaluate, feature_matrix, group_codes

CATALOG = {
    "insurer": {"age": {"kind": "numeric", "min": 18.0, "max": 90.0, "missing": 0},
                "cost": {"kind": "numeric", "min": 0.0, "max": 9e4, "missing": 3},
                "sex": {"kind": "categorical", "levels": ["F", "M"], "missing": 0}},
    "hospital": {"app_user": {"kind": "bool", "levels": [False, True], "missing": 0},
                 "visits": {"kind": "numeric", "min": 0.0, "max": 50.0, "missing": 0}},
    "bureau": {"income_band": {"kind": "categorical", "levels": ["Q1", "Q2"], "missing": 0}},
}
PARTIES = ["insurer", "hospital", "bureau"]


def frame(link=PARTIES):
    return SecureFrame(CATALOG, PARTIES, link)


def test_plan_hash_is_deterministic_and_sensitive():
    t = frame()
    a = t[t.age > 40].groupby("sex").agg(m=("cost", "mean")).plan()
    b = t[t.age > 40].groupby("sex").agg(m=("cost", "mean")).plan()
    c = t[t.age > 41].groupby("sex").agg(m=("cost", "mean")).plan()
    assert plan_hash(a) == plan_hash(b) != plan_hash(c)


@pytest.mark.parametrize("breakage, message", [
    (lambda p: p.update(ppa_plan=2), "version"),
    (lambda p: p.update(extra=1), "unknown plan keys"),
    (lambda p: p.update(link=["nobody"]), "'link'"),
    (lambda p: p["aggregates"][0].update(stat="median"), "unknown statistic"),
    (lambda p: p["aggregates"].append(dict(p["aggregates"][0])), "unique"),
    (lambda p: p.update(filter={"op": "gt", "args": [{"col": "insurer.nope"}, {"const": 1}]}),
     "unknown column"),
    (lambda p: p.update(filter={"col": "insurer.cost"}), "condition"),
    (lambda p: p.update(min_cell_size=0), "min_cell_size"),
    (lambda p: p["groupby"][0].update(levels=[]), "levels"),
    (lambda p: p.update(filter={"op": "exec", "args": []}), "operator"),
])
def test_malformed_plans_are_refused(breakage, message):
    plan = frame().groupby("sex").agg(m=("cost", "mean")).plan()
    broken = copy.deepcopy(plan)
    breakage(broken)
    with pytest.raises(PlanError, match=message):
        validate_plan(broken)


def test_owner_side_and_secure_parts_are_split():
    t = frame()
    q = (t[(t.age > 40) & (t.visits > t.age / 10)]
         .groupby(["sex", "app_user"])
         .agg(m=(t.cost - t.age, "var"), v=(t.cost * t.visits, "mean")))
    program = compile_plan(q.plan())
    kinds = {(f.party, f.kind) for fs in program.features.values() for f in fs}
    assert ("insurer", "ind") in kinds  # age > 40 evaluated by the insurer alone
    assert ("insurer", "sq") in kinds  # var of an insurer-only expression: owner squares it
    assert ("hospital", "val") in kinds and ("insurer", "val") in kinds  # cost * visits mixes
    assert program.group_parties == ["insurer", "hospital"]
    # sex is declared complete: its last level is implied (present minus the others)
    assert len([f for f in program.features["insurer"] if f.kind == "onehot"]) == 1
    assert not any(f.kind == "nn" for f in program.features["hospital"])  # visits complete
    assert any(f.kind == "nn" for f in program.features["insurer"])  # cost has gaps
    assert "release.sumsq:" + program.measures[0]["key"] in program.openings()
    assert not any(f.kind == "present" for fs in program.features.values() for f in fs)


def test_subset_link_adds_presence_and_rejects_unlinked_columns():
    t = frame(["insurer", "bureau"])
    program = compile_plan(t.groupby("income_band").agg(n=("cost", "count")).plan())
    assert {f.party for fs in program.features.values() for f in fs if f.kind == "present"} \
        == {"insurer", "bureau"}
    with pytest.raises(PlanError, match="does not link"):
        t["visits"]


def test_frame_errors_are_clear():
    t = frame()
    with pytest.raises(PlanError, match="did you mean cost"):
        t["cots"]
    with pytest.raises(PlanError, match="categorical"):
        t.sex + 1
    with pytest.raises(PlanError, match="nonzero number"):
        t.cost / t.age
    with pytest.raises(PlanError, match="numeric"):
        t.groupby("age")
    with pytest.raises(TypeError, match=r"& \| ~"):
        bool(t.age > 3)
    with pytest.raises(PlanError, match="unknown statistic"):
        t.agg(x=("age", "median"))


def test_histogram_bins_and_crosstab_shape():
    t = frame()
    plan = t.histogram("age", bins=4).plan()
    entry = plan["groupby"][0]
    assert entry["bins"] == [18.0, 36.0, 54.0, 72.0, 90.0]
    assert entry["levels"][-1] == "[72, 90]" and plan["aggregates"][0]["stat"] == "size"
    assert t.crosstab("sex", "income_band").kind == "crosstab"


PEOPLE = pd.DataFrame({"age": [30.0, 50.0, np.nan, 70.0],
                       "cost": [100.5, np.nan, 20.25, 0.0],
                       "sex": ["F", "M", None, "F"]})


def test_owner_evaluation_follows_pandas_missing_value_rules():
    gt = {"op": "gt", "args": [{"col": "insurer.age"}, {"const": 40}]}
    assert evaluate(gt, PEOPLE, "insurer").tolist() == [False, True, False, True]
    assert evaluate({"op": "not", "args": [gt]}, PEOPLE, "insurer").tolist() == \
        (~(PEOPLE.age > 40)).tolist()
    ne = {"op": "ne", "args": [{"col": "insurer.sex"}, {"const": "F"}]}
    assert evaluate(ne, PEOPLE, "insurer").tolist() == (PEOPLE.sex != "F").tolist()
    isin = {"op": "isin", "args": [{"col": "insurer.sex"}], "values": ["M"]}
    assert evaluate(isin, PEOPLE, "insurer").tolist() == [False, True, False, False]
    with pytest.raises(PlanError):
        evaluate({"col": "bureau.x"}, PEOPLE, "insurer")


def test_encoding_is_exact_fixed_point_with_flags():
    ints, present = encode(PEOPLE.cost)
    assert present.tolist() == [1, 0, 1, 1]
    assert ints.tolist() == [round(100.5 * 2 ** SCALE_BITS), 0, 20 * 2 ** SCALE_BITS + 2 ** 14, 0]


def test_feature_matrix_and_group_codes():
    t = frame()
    q = t.groupby("sex").agg(m=("cost", "var"))
    program = compile_plan(q.plan())
    with pytest.raises(PlanError, match="no missing values, but it has"):
        feature_matrix(program, "insurer", PEOPLE)  # the catalog says sex is complete
    plan = q.plan()
    plan["columns"]["insurer.sex"]["missing"] = True
    program = compile_plan(plan)
    assert len([f for f in program.features["insurer"] if f.kind == "onehot"]) == 2
    matrix = feature_matrix(program, "insurer", PEOPLE)
    assert matrix.shape == (4, len(program.features["insurer"]))
    assert group_codes(program, "insurer", PEOPLE).tolist() == [0, 1, -1, 0]
    bins = compile_plan(t.histogram("age", bins=[18, 40, 60, 90]).plan())
    assert group_codes(bins, "insurer", PEOPLE).tolist() == [0, 1, -1, 2]
    unknown = PEOPLE.assign(sex=["F", "X", "M", "F"])
    with pytest.raises(PlanError, match="not among the plan's levels"):
        group_codes(program, "insurer", unknown)


def test_released_table_formats_counts_and_marks_suppressed_cells():
    from ppa_kernel.analyst.results import format_table

    df = pd.DataFrame({"n": [432.0, np.nan], "mean": [3.14159, np.nan]}, index=["a", "b"])
    df.attrs["suppressed"] = pd.DataFrame({"n": [False, True], "mean": [False, True]},
                                          index=["a", "b"])
    df.attrs["statistics"] = {"n": "count", "mean": "mean"}
    lines = format_table(df).splitlines()
    assert lines[1].split() == ["a", "432", "3.14"]
    assert lines[2].split() == ["b", "suppressed", "suppressed"]


def test_a_size_aggregate_may_leave_out_its_expression():
    """The plan format allows ``{"name", "stat": "size"}`` without ``expr``; the uses of
    every column still come out of the compiled program."""
    plan = frame().groupby("income_band").size().plan()
    del plan["aggregates"][0]["expr"]
    program = compile_plan(plan)
    assert program.column_uses("bureau") == {"income_band": {"group"}}
    assert program.statistics() == {"count"}
