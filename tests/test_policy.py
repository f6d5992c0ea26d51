"""Tests for ppa_kernel.party.policy."""

from __future__ import annotations

import json
import tomllib

import pytest

from ppa_kernel.contract.models import MODEL_KINDS as MODELS
from ppa_kernel.party.policy import STATISTICS, USES, ColumnRule, Policy, PolicyError

EXAMPLE = """
[policy]
min_cell_size = 10
statistics = ["count", "sum", "mean", "var", "std"]
approval = "automatic"
[policy.columns]
age = ["filter", "group", "measure"]
cost_2021 = ["measure", "filter"]
"""


def load(text: str, party: str = "insurer") -> Policy:
    return Policy.from_dict(party, tomllib.loads(text).get("policy"))


def load_error(data: dict | None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict("insurer", data)
    assert info.value.party == "insurer"
    return info.value


@pytest.fixture
def policy() -> Policy:
    return load(EXAMPLE)


# --- loading -------------------------------------------------------------------------

def test_documented_example_parses(policy: Policy) -> None:
    assert policy.party == "insurer"
    assert policy.min_cell_size == 10
    assert policy.statistics == frozenset({"count", "sum", "mean", "var", "std"})
    assert policy.min_residual_df == 10
    assert policy.approval == "auto"
    assert policy.columns == {"age": ColumnRule(frozenset({"filter", "group", "measure"})),
                              "cost_2021": ColumnRule(frozenset({"measure", "filter"}))}


def test_module_docstring_example_parses() -> None:
    import ppa_kernel.party.policy as module

    doc = module.__doc__
    start = doc.index("[policy]\n")
    end = doc.index("\n\nKeys")
    text = "\n".join(line.strip() for line in doc[start:end].splitlines())
    assert load(text) == load(EXAMPLE)


def test_missing_table_gives_defaults() -> None:
    policy = Policy.from_dict("bureau", None)
    assert policy.columns is None
    assert policy.min_cell_size == 10
    assert policy.statistics == frozenset({"count", "sum", "mean", "var", "std", "histogram",
                                           "crosstab", *MODELS})
    assert policy.statistics == frozenset(STATISTICS)  # the default allows all
    assert policy.min_residual_df == 10
    assert policy.approval == "auto"


def test_table_without_columns_approves_every_column() -> None:
    policy = load("[policy]\nmin_cell_size = 20\n")
    assert policy.columns is None
    assert policy.min_cell_size == 20
    policy.check({"anything": {"group", "link"}}, {"count"}, None)


def test_empty_columns_table_approves_nothing() -> None:
    policy = load("[policy.columns]\n")
    assert policy.columns == {}
    with pytest.raises(PolicyError, match="column 'age' is not approved by insurer"):
        policy.check({"age": {"measure"}}, {"count"}, None)


def test_extended_statistics_and_quoted_column_names() -> None:
    policy = load('[policy]\nstatistics = ["histogram", "crosstab"]\n'
                  '[policy.columns]\n"cost.2021" = ["measure"]\nid = []\n')
    assert policy.statistics == frozenset({"histogram", "crosstab"})
    assert set(policy.columns) == {"cost.2021", "id"}
    assert policy.columns["id"].uses == frozenset()


def test_unknown_key_names_the_key() -> None:
    err = load_error({"min_cel_size": 5})
    assert err.reasons == [("unknown key 'policy.min_cel_size' (expected one of: "
                            "min_cell_size, statistics, approval, approval_wait, approval_valid, "
                            "columns, min_residual_df, "
                            "quantile_resolution, quantile_precision, integer_levels, "
                            "dominance_n, dominance_k, p_ratio, differencing_history, "
                            "differencing)")]


def test_table_must_be_mapping() -> None:
    assert load_error(["not", "a", "table"]).reasons == ["[policy] must be a table"]


@pytest.mark.parametrize("value", [0, -3])
def test_min_cell_size_below_one(value: int) -> None:
    err = load_error({"min_cell_size": value})
    assert len(err.reasons) == 1
    assert "'policy.min_cell_size' must be at least 1" in err.reasons[0]


@pytest.mark.parametrize("value", [True, 10.0, "10"])
def test_min_cell_size_wrong_type(value: object) -> None:
    err = load_error({"min_cell_size": value})
    assert len(err.reasons) == 1
    assert "'policy.min_cell_size' must be a whole number" in err.reasons[0]


def test_unknown_statistic() -> None:
    err = load_error({"statistics": ["count", "median"]})
    assert len(err.reasons) == 1
    assert "'policy.statistics' has unknown statistic 'median'" in err.reasons[0]


@pytest.mark.parametrize("value", ["count", ["count", 3]])
def test_statistics_wrong_type(value: object) -> None:
    assert load_error({"statistics": value}).reasons == [
        "'policy.statistics' must be a list of names"]


@pytest.mark.parametrize("value", ["auto", "manual", "pinned"])
def test_approval_modes(value: str) -> None:
    policy = Policy.from_dict("p", {"approval": value, "approval_wait": 60,
                                    "approval_valid": 3600})
    assert (policy.approval, policy.approval_wait, policy.approval_valid) == (value, 60, 3600)


def test_approval_unknown_value() -> None:
    err = load_error({"approval": "whenever"})
    assert err.reasons == ["'policy.approval' has unknown value 'whenever' "
                           "(use one of: auto, manual, pinned)"]


@pytest.mark.parametrize("value", [0, -1, True, "1h", 31 * 86400])
def test_approval_wait_bounded(value: object) -> None:
    err = load_error({"approval_wait": value})
    assert err.reasons == ["'policy.approval_wait' must be a number of seconds above 0 and "
                           f"at most 2.592e+06, got {value!r}"]


def test_approval_wrong_type() -> None:
    assert "'policy.approval' must be a string" in load_error({"approval": 1}).reasons[0]


def test_unknown_use() -> None:
    err = load_error({"columns": {"age": ["measure", "publish"]}})
    assert len(err.reasons) == 1
    assert "'policy.columns.age' has unknown use 'publish'" in err.reasons[0]


@pytest.mark.parametrize("value", ["measure", [1]])
def test_column_uses_wrong_type(value: object) -> None:
    err = load_error({"columns": {"age": value}})
    assert len(err.reasons) == 1
    assert err.reasons[0].startswith("'policy.columns.age' must be a list of uses")


def test_columns_wrong_type() -> None:
    assert load_error({"columns": ["age"]}).reasons == [
        "'policy.columns' must be a table of column = [uses]"]


def test_load_reports_every_problem() -> None:
    err = load_error({"colour": "red", "min_cell_size": 0, "statistics": ["mode"],
                      "approval": "sometimes", "columns": {"age": ["sell"]}})
    assert len(err.reasons) == 5
    text = str(err)
    for key in ("policy.colour", "policy.min_cell_size", "policy.statistics",
                "policy.approval", "policy.columns.age"):
        assert key in text


def test_constructor_validates_and_normalises() -> None:
    policy = Policy("p", {"a": ColumnRule({"measure"})}, statistics={"count"})
    assert isinstance(policy.statistics, frozenset)
    assert isinstance(policy.columns["a"].uses, frozenset)
    hash(policy)
    with pytest.raises(PolicyError, match="unknown use 'fly'"):
        Policy("p", {"a": ColumnRule(frozenset({"fly"}))})
    with pytest.raises(PolicyError, match="min_cell_size"):
        Policy("p", None, min_cell_size=0)


def test_columns_are_copied() -> None:
    columns = {"a": ColumnRule(frozenset({"measure"}))}
    policy = Policy("p", columns)
    columns["b"] = ColumnRule(frozenset(USES))
    assert set(policy.columns) == {"a"}


def test_allow_all() -> None:
    policy = Policy.allow_all("bureau", min_cell_size=3)
    assert policy.columns is None
    assert policy.min_cell_size == 3
    assert policy.approval == "auto"
    policy.check({c: set(USES) for c in ("x", "y")}, {"count", "mean"}, 3)
    with pytest.raises(PolicyError):
        Policy.allow_all("bureau", min_cell_size=0)


def test_vocabularies() -> None:
    assert USES == ("group", "filter", "measure", "link")
    assert set(STATISTICS) == {"count", "sum", "mean", "var", "std", "histogram", "crosstab",
                               "ttest", "chi2", "corr", "ols", "logit", "km", "quantile"}


# --- checking plans ------------------------------------------------------------------

def test_check_accepts_approved_plan(policy: Policy) -> None:
    assert policy.check({"age": {"group", "filter"}, "cost_2021": {"measure"}},
                        {"count", "mean"}, None) is None
    policy.check({}, set(), 25)


def test_check_unapproved_column(policy: Policy) -> None:
    with pytest.raises(PolicyError) as info:
        policy.check({"income": {"measure"}}, {"count"}, None)
    assert info.value.reasons == ["column 'income' is not approved by insurer"]


def test_check_unapproved_use(policy: Policy) -> None:
    with pytest.raises(PolicyError) as info:
        policy.check({"cost_2021": {"group", "link", "measure"}}, {"sum"}, None)
    assert info.value.reasons == [
        "'cost_2021' may not be used for 'group' by insurer (approved: filter, measure)",
        "'cost_2021' may not be used for 'link' by insurer (approved: filter, measure)"]


def test_check_column_with_no_uses() -> None:
    policy = Policy("p", {"id": ColumnRule(frozenset())})
    with pytest.raises(PolicyError, match=r"\(approved: none\)"):
        policy.check({"id": {"link"}}, set(), None)


def test_check_statistic_not_allowed(policy: Policy) -> None:
    with pytest.raises(PolicyError) as info:
        policy.check({"age": {"measure"}}, {"mean", "histogram", "size"}, None)
    assert info.value.reasons == [
        "statistic 'histogram' is not allowed by insurer "
        "(policy.statistics allows: count, mean, std, sum, var)",
        "statistic 'size' is not allowed by insurer "
        "(policy.statistics allows: count, mean, std, sum, var)"]


def test_check_min_cell_size(policy: Policy) -> None:
    policy.check({}, set(), 10)
    policy.check({}, set(), 11)
    with pytest.raises(PolicyError) as info:
        policy.check({}, set(), 9)
    assert info.value.reasons == ["min_cell_size 9 is below insurer's minimum of 10"]


def test_check_reports_every_reason(policy: Policy) -> None:
    with pytest.raises(PolicyError) as info:
        policy.check({"age": {"link"}, "zip": {"group"}}, {"crosstab"}, 2)
    err = info.value
    assert len(err.reasons) == 4
    assert str(err) == "[insurer] " + "; ".join(err.reasons)
    for reason in err.reasons:
        assert reason in str(err)


def test_check_unknown_use_is_a_bug(policy: Policy) -> None:
    with pytest.raises(ValueError, match="unknown use"):
        policy.check({"age": {"publish"}}, set(), None)
    with pytest.raises(ValueError, match="unknown use"):
        Policy.allow_all("p").check({"age": {"publish"}}, set(), None)


def test_check_allow_all_still_checks_statistics_and_threshold() -> None:
    policy = Policy.allow_all("bureau")
    with pytest.raises(PolicyError) as info:
        policy.check({"x": {"measure"}}, {"median"}, 5)
    assert len(info.value.reasons) == 2


@pytest.mark.parametrize(("requested", "expected"), [(None, 10), (5, 10), (10, 10), (40, 40)])
def test_effective_min_cell(policy: Policy, requested: int | None, expected: int) -> None:
    assert policy.effective_min_cell(requested) == expected


def test_summary(policy: Policy) -> None:
    summary = policy.summary()
    assert summary == {"party": "insurer",
                       "columns": {"age": ["filter", "group", "measure"],
                                   "cost_2021": ["filter", "measure"]},
                       "min_cell_size": 10,
                       "statistics": ["count", "mean", "std", "sum", "var"],
                       "approval": "auto", "approval_wait": 86400.0,
                       "approval_valid": 604800.0, "min_residual_df": 10,
                       "quantile_resolution": 1000, "quantile_precision": {},
                       "integer_levels": 12,
                       "disclosure": {"dominance_n": 2, "dominance_k": 90, "p_ratio": 10,
                                      "history_limit": 1000, "differencing": True}}
    assert json.loads(json.dumps(summary)) == summary
    assert Policy.allow_all("b").summary()["columns"] is None


def test_policy_error_str_lists_all() -> None:
    err = PolicyError("hospital", ["first problem", "second problem"])
    assert err.party == "hospital"
    assert err.reasons == ["first problem", "second problem"]
    assert str(err) == "[hospital] first problem; second problem"


def test_min_residual_df_is_checked_and_refuses_lower_plans():
    policy = Policy.from_dict("bureau", {"min_residual_df": 25})
    assert policy.summary()["min_residual_df"] == 25
    policy.check({}, ["ols"], 10, 25)
    with pytest.raises(PolicyError, match="min_residual_df 12 is below bureau's minimum of 25"):
        policy.check({}, ["ols"], 10, 12)
    with pytest.raises(PolicyError, match="min_residual_df"):
        Policy.from_dict("bureau", {"min_residual_df": 0})


@pytest.mark.parametrize("key, value", [("dominance_n", 0), ("dominance_k", 101),
                                        ("p_ratio", -1), ("differencing_history", 0),
                                        ("differencing", 1), ("dominance_k", 2.5)])
def test_disclosure_keys_are_bounded(key: str, value: object) -> None:
    err = load_error({key: value})
    assert any(f"'policy.{key}'" in r for r in err.reasons)


def test_plans_laxer_than_the_disclosure_rules_are_refused() -> None:
    policy = Policy.from_dict("insurer", {"dominance_k": 80, "p_ratio": 20})
    strict = {**policy.disclosure}
    policy.check({}, set(), 10, disclosure=strict)
    for rule, value in (("dominance_k", 85), ("p_ratio", 15), ("dominance_n", 1),
                        ("history_limit", 5000), ("differencing", False)):
        with pytest.raises(PolicyError, match=f"disclosure rule {rule}"):
            policy.check({}, set(), 10, disclosure={**strict, rule: value})
    policy.check({}, set(), 10, disclosure={**strict, "dominance_k": 50, "p_ratio": 40,
                                             "dominance_n": 3, "history_limit": 10})
