"""Quantile precision set by the data owners: policy keys, the parties' checks, the default."""

from __future__ import annotations

import math
import tomllib
from fractions import Fraction

import numpy as np
import pytest
from oracle import join

import ppa_kernel.party.policy as policy_module
from ppa_kernel import Consortium
from ppa_kernel.analyst.local import write_local_config
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.config import load_party
from ppa_kernel.contract.errors import ConsortiumError, PolicyRefused
from ppa_kernel.contract.models.quantile import nice_step, quantiles
from ppa_kernel.party.kernel import PartyKernel
from ppa_kernel.party.policy import Policy, PolicyError, QuantileRequest

PARTIES = ["insurer", "hospital", "bureau"]
POLICIES = {"insurer": {"quantile_resolution": 200, "quantile_precision": {"cost_2021": 100}},
            "hospital": {"quantile_resolution": 10}}


def errors(data: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict("insurer", data)
    return info.value.reasons


# --- policy keys ---------------------------------------------------------------------

def test_docstring_quantile_example_parses() -> None:
    doc = policy_module.__doc__
    start = doc.index("[policy]\n", doc.index("as TOML requires::"))
    end = doc.index("\n\n", start)
    text = "\n".join(line.strip() for line in doc[start:end].splitlines())
    policy = Policy.from_dict("insurer", tomllib.loads(text)["policy"])
    assert policy.quantile_resolution == 500
    assert policy.quantile_precision == {"cost_2021": 100}
    assert policy.summary()["quantile_precision"] == {"cost_2021": 100}


def test_defaults() -> None:
    policy = Policy.from_dict("insurer", None)
    assert policy.quantile_resolution == 1000 and policy.quantile_precision == {}
    assert policy.min_precision("cost_2021", 38.0, 19000.0) == Fraction(9481, 500)  # 18.962
    assert policy.min_precision("empty", None, None) == 0


@pytest.mark.parametrize("value", [0, -3, 2.5, "1000", True])
def test_bad_quantile_resolution(value: object) -> None:
    assert errors({"quantile_resolution": value}) == [
        f"'policy.quantile_resolution' must be a whole number of at least 1, got {value!r}"]
    with pytest.raises(PolicyError, match="quantile_resolution"):
        Policy("insurer", None, quantile_resolution=value)  # the constructor checks too


@pytest.mark.parametrize("value", [0, -1, "100", True, math.inf, math.nan, [100]])
def test_bad_column_precision(value: object) -> None:
    assert errors({"quantile_precision": {"cost_2021": value}}) == [
        f"'policy.quantile_precision.cost_2021' must be a positive number, got {value!r}"]


def test_column_precision_table_shape_and_names() -> None:
    assert errors({"quantile_precision": 100}) == [
        "'policy.quantile_precision' must be a table of column = minimum precision"]
    columns = {"cost_2021": ["measure"]}
    assert errors({"columns": columns, "quantile_precision": {"cost_2012": 100}}) == [
        "'policy.quantile_precision.cost_2012' names a column that [policy.columns] does "
        "not list"]
    policy = Policy.from_dict("insurer", {"columns": columns,
                                          "quantile_precision": {"cost_2021": 0.5}})
    assert policy.min_precision("cost_2021", 38.0, 19000.0) == Fraction(1, 2)
    assert len(errors({"quantile_resolution": 0, "quantile_precision": {"a": -1},
                       "quantile_resolutoin": 5})) == 3  # every problem at once


def test_check_precision_and_range() -> None:
    policy = Policy.from_dict("insurer", {"quantile_resolution": 7,
                                          "quantile_precision": {"age": 2}})
    columns = {"cost_2021": (0.0, 72.0), "age": (18.0, 90.0)}  # cost: 72 / 7 = 10.2857...
    policy.check({}, ["quantile"], 10, None, QuantileRequest(10.285715, (0, 72), columns))
    with pytest.raises(PolicyError) as info:
        policy.check({}, ["quantile"], 10, None,
                     QuantileRequest(1, (0.0, 50.0), columns, measure="cost_2021"))
    assert info.value.reasons == [
        "quantile precision 1 is finer than insurer's minimum of 2 for 'age' (its own "
        "setting in [policy.quantile_precision])",
        "quantile precision 1 is finer than insurer's minimum of 10.285715 for 'cost_2021' "
        "(published range 0 .. 72 / quantile_resolution 7)",  # shown rounded up
        "quantile range [0, 50] does not contain insurer's published range 0 .. 72 of "
        "'cost_2021'"]
    assert "ask for precision=10.285715 or coarser" in info.value.hint
    assert "published range" in info.value.hint
    # an expression (no measure column): a narrower range is not this rule's concern
    policy.check({}, ["quantile"], 10, None, QuantileRequest(20, (0.0, 50.0), columns))


# --- three parties with their own settings --------------------------------------------

@pytest.fixture(scope="module")
def data():
    return generate(n_core=120, seed=3)


@pytest.fixture(scope="module")
def owners(data, tmp_path_factory):
    with Consortium.local(data, policies=POLICIES,
                          workdir=tmp_path_factory.mktemp("owners")) as c:
        yield c


def test_owners_publish_their_minimums(owners) -> None:
    insurer, hospital = owners.catalog["insurer"], owners.catalog["hospital"]
    assert insurer["cost_2021"]["min_precision"] == 100
    age = insurer["age"]
    assert age["min_precision"] == (age["max"] - age["min"]) / 200
    visits = hospital["outpatient_visits"]
    assert visits["min_precision"] == (visits["max"] - visits["min"]) / 10
    assert owners.status()["quantile_resolution"].to_dict() == {
        "insurer": 200, "hospital": 10, "bureau": 1000}


def test_default_precision_follows_the_policies(owners) -> None:
    t = owners.link()
    catalog = owners.catalog
    assert quantiles(t, "cost_2021").plan()["model"]["precision"] == 100
    age = catalog["insurer"]["age"]
    assert quantiles(t, "age").plan()["model"]["precision"] == \
        nice_step((age["max"] - age["min"]) / 200) != nice_step((age["max"] - age["min"]) / 1000)
    visits = catalog["hospital"]["outpatient_visits"]
    product = quantiles(t, t.cost_2021 * t.outpatient_visits).plan()
    assert product["model"]["precision"] >= max(100, visits["min_precision"])
    owners.check(product)  # the default is never refused


def test_default_precision_run_matches_numpy(owners, data) -> None:
    t = owners.link()
    table = quantiles(t, "cost_2021", q=[0.5]).collect()
    assert table.attrs["precision"] == 100
    values = join(data, PARTIES).cost_2021.dropna().to_numpy()
    median = np.quantile(values, 0.5, method="inverted_cdf")
    want = math.ceil(Fraction(float(median)) / 100 - Fraction(1, 2)) * 100  # halves down
    assert table["q0.5"].iloc[0] == want


def test_finer_precision_is_refused_by_its_owner(owners) -> None:
    t = owners.link()
    with pytest.raises(ConsortiumError) as info:
        owners.check(quantiles(t, "cost_2021", precision=50).plan())
    assert [e.party for e in info.value.errors] == ["insurer"]
    assert str(info.value.errors[0]) == (
        "[insurer] quantile precision 50 is finer than insurer's minimum of 100 for "
        "'cost_2021' (its own setting in [policy.quantile_precision]) (ask for "
        "precision=100 or coarser, or leave precision unset (the default meets every "
        "owner's minimum))")
    assert isinstance(info.value.errors[0], PolicyRefused)


def test_column_precision_must_name_a_numeric_column(data, tmp_path) -> None:
    write_local_config(tmp_path, data, "pseudonym",
                       {"insurer": {"quantile_precision": {"region": 5, "cost_221": 10}}})
    with pytest.raises(PolicyRefused) as info:
        PartyKernel(load_party(tmp_path / "insurer.toml"))
    assert info.value.message == (
        "invalid policy: 'policy.quantile_precision.cost_221' names no column of the data; "
        "'policy.quantile_precision.region' names a categorical column (numeric only)")
    assert "cost_2021" in info.value.hint
