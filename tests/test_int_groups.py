"""Grouping by whole-number columns (a 0/1 flag from a CSV, a small score) as in pandas:
the owner publishes every whole number of a small published range as levels, the column
stays measurable, the MPC result matches pandas, and wider or fractional columns are
refused with a message that says how to declare them, at the client and at the party."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from oracle import assert_matches, expected, join

from ppa_kernel import Consortium, ConsortiumError, PlanError
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.mock import mock_data, mock_policy
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.party.catalog import build_catalog, integer_levels
from ppa_kernel.party.datasource import describe_columns, load_table
from ppa_kernel.party.policy import Policy, PolicyError

PARTIES = ["clinic", "registry", "bureau"]


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    """Three small tables on 240 shared people; clinic holds the integer columns."""
    rng = np.random.default_rng(5)
    keys = [f"P{i:04d}" for i in range(300)]

    def rows(start: int, stop: int) -> list[str]:
        return keys[:240] + keys[start:stop]

    n = 260
    score = rng.choice([1.0, 2.0, 3.0], n)
    score[:4] = 5.0  # a rare level (4 people); 4 is held by nobody
    score[4:20] = np.nan  # whole numbers with missing values (floats, as a CSV reads them)
    visits = rng.integers(0, 41, n)
    visits[:2] = [0, 40]
    clinic = pd.DataFrame({"pseudonym": rows(240, 260),
                           "daycare": (rng.random(n) < 0.35).astype(np.int64),
                           "visits": visits,  # whole, but 41 of them
                           "dose": np.round(rng.uniform(0.5, 3.5, n), 2),
                           "score": score})
    m = 280
    ratio = np.round(rng.uniform(0.0, 9.0, m), 1)
    ratio[:2] = [0.0, 9.0]  # whole bounds, fractional values: no levels
    registry = pd.DataFrame({"pseudonym": rows(260, 300)[:m],
                             "cost": np.round(rng.gamma(4.0, 500.0, m) + 50, 2),
                             "ratio": ratio})
    k = 240
    bureau = pd.DataFrame({"pseudonym": keys[:k],
                           "region": rng.choice(["North", "South"], k),
                           "kids": rng.integers(0, 4, k)})
    return {"clinic": clinic, "registry": registry, "bureau": bureau}


@pytest.fixture(scope="module")
def c(data, tmp_path_factory):
    with Consortium.local(data, link="pseudonym", workdir=tmp_path_factory.mktemp("ints"),
                          policies={p: {"differencing": False} for p in PARTIES}) as c:
        yield c


# ------------------------------------------------------------------------------ catalog
def test_the_catalog_publishes_levels_for_small_whole_ranges_only(c):
    clinic = c.catalog["clinic"]
    assert clinic["daycare"]["kind"] == "numeric" and clinic["daycare"]["levels"] == [0, 1]
    assert all(type(v) is int for v in clinic["daycare"]["levels"])
    assert clinic["score"]["levels"] == [1, 2, 3, 4, 5]  # the range's, not the values'
    assert c.catalog["bureau"]["kids"]["levels"] == [0, 1, 2, 3]
    for party, column in (("clinic", "visits"), ("clinic", "dose"), ("registry", "ratio"),
                          ("registry", "cost")):
        assert "levels" not in c.catalog[party][column], column
    assert not any("whole" in meta for columns in c.catalog.values()
                   for meta in columns.values())  # the flag is never published
    assert c.parties["clinic"]["policy"]["integer_levels"] == 12


def test_the_policy_bounds_the_levels(data):
    described = describe_columns(data["clinic"], "pseudonym")
    assert described["daycare"]["whole"] and described["score"]["whole"]
    assert not described["dose"]["whole"]
    levels = {limit: {name: entry.get("levels") for name, entry in
                      build_catalog(Policy("clinic", None, integer_levels=limit),
                                    described).items()}
              for limit in (0, 4, 41)}
    assert levels[0] == {"daycare": None, "visits": None, "dose": None, "score": None}
    assert levels[4] == {"daycare": [0, 1], "visits": None, "dose": None, "score": None}
    assert levels[41]["visits"] == list(range(41)) and levels[41]["dose"] is None
    assert integer_levels({"kind": "numeric", "whole": True, "min": 95, "max": 104}, 12) \
        is None  # published as 95 .. 110: 16 whole numbers, more than 12
    assert integer_levels({"kind": "numeric", "whole": True, "min": 101, "max": 104}, 12) \
        == list(range(100, 111))  # the coarse range's, so no more than it tells
    for bad in (-1, 101, True, 2.5):
        with pytest.raises(PolicyError, match="integer_levels"):
            Policy.from_dict("clinic", {"integer_levels": bad})


# ----------------------------------------------------------------------------- grouping
def test_groupby_whole_numbers_matches_pandas(c, data):
    t = c.link()
    got = t.groupby(["daycare", "kids"]).agg(n=("cost", "count"),
                                             mean=("cost", "mean")).collect()
    plain = join(data, PARTIES)
    want, mask = expected(plain, ["daycare", "kids"], [[0, 1], [0, 1, 2, 3]],
                          {"n": ("cost", "count"), "mean": ("cost", "mean")},
                          magnitudes=("mean",))
    assert_matches(got, want, mask)
    assert (~mask).to_numpy().all(), "every cell of this grouping is large enough"
    pandas = plain.groupby(["daycare", "kids"])["cost"].mean()
    np.testing.assert_allclose(got["mean"].to_numpy(float), pandas.to_numpy(), rtol=1e-4)


def test_unpopulated_and_rare_levels_are_suppressed_cells(c, data):
    got = c.link().groupby("score").agg(n=("cost", "count")).collect()
    plain = join(data, PARTIES)
    want, mask = expected(plain, ["score"], [[1, 2, 3, 4, 5]], {"n": ("cost", "count")})
    assert_matches(got, want, mask)
    assert mask["n"].tolist() == [False, False, False, True, True]  # 4: nobody; 5: four


def test_a_grouping_column_stays_measurable(c, data):
    got = c.link().groupby("region").agg(share=("daycare", "mean"),
                                         n=("daycare", "count")).collect()
    plain = join(data, PARTIES)
    want, mask = expected(plain, ["region"], [["North", "South"]],
                          {"share": ("daycare", "mean"), "n": ("daycare", "count")},
                          magnitudes=("share",))
    assert_matches(got, want, mask)
    assert not mask.to_numpy().any()


# ------------------------------------------------------------------------------- errors
def test_a_wide_whole_number_column_says_how_to_declare_it(c):
    t = c.link()
    with pytest.raises(PlanError, match="publishes no levels") as info:
        t.groupby("visits")
    hint = info.value.hint
    assert "integer_levels = 41 under [policy]" in hint, hint
    assert 'categorical = ["visits"] under [data]' in hint and "histogram('visits'" in hint, \
        hint
    with pytest.raises(PlanError, match="not whole numbers") as info:
        t.groupby(["daycare", "dose"])
    assert "histogram('dose', bins=10)" in info.value.hint
    with pytest.raises(PlanError, match="spans 10"):  # 0 .. 9, but fractional values
        t.groupby("ratio")


def test_a_hostile_plan_grouping_a_wide_column_is_refused_at_the_party(c, monkeypatch):
    t = c.link()
    plan = c.prepare(t.groupby("daycare").agg(n=("cost", "count")).plan())
    wide = copy.deepcopy(plan)
    wide["columns"]["clinic.visits"] = t.visits.columns["clinic.visits"]
    wide["groupby"] = [{"name": "visits", "expr": {"col": "clinic.visits"},
                        "levels": list(range(41))}]
    extra = copy.deepcopy(plan)
    extra["groupby"][0]["levels"] = [0, 1, 2]
    fractional = copy.deepcopy(plan)
    fractional["groupby"][0]["levels"] = [0, 0.5, 1]
    monkeypatch.setattr(c, "prepare", lambda plan: copy.deepcopy(plan))  # sent as given
    cases = ((wide, r"\[clinic\] group 'visits': clinic publishes no levels for numeric "
                    r"'visits' .*integer_levels = N"),
             (extra, r"\[clinic\] group 'daycare' must use the published levels"),
             (fractional, r"whole-number levels its owner publishes"))
    for bad, refusal in cases:
        assert plan_hash(bad) != plan_hash(plan)
        with pytest.raises(ConsortiumError, match=refusal):
            c.run_raw(bad)


# --------------------------------------------------------------------------------- mock
def test_the_mock_publishes_the_same_levels_and_plans_hash_the_same(c, tmp_path):
    snapshot = c.catalog_snapshot()
    tables, categorical = mock_data(snapshot, rows=200, seed=4)
    assert categorical == {}
    mocked = {}
    for name in PARTIES:
        path = tmp_path / f"{name}.parquet"
        tables[name].to_parquet(path)  # as Consortium.local stores it for its kernels
        described = describe_columns(load_table(path, link="pseudonym"), "pseudonym")
        policy = Policy.from_dict(name, mock_policy(snapshot["parties"][name]["policy"]))
        mocked[name] = build_catalog(policy, described, rows=len(tables[name]))
    for name in PARTIES:
        for column, entry in c.catalog[name].items():
            assert mocked[name][column].get("levels") == entry.get("levels"), column
            assert mocked[name][column]["kind"] == entry["kind"], column
    for catalog in (c.catalog, mocked):
        assert "levels" not in catalog["registry"]["ratio"]

    def grouped(catalog: dict) -> str:
        t = SecureFrame(catalog, PARTIES, PARTIES)
        return t.groupby(["daycare", "score"]).agg(m=("cost", "mean")).plan_hash()

    assert grouped(mocked) == grouped(c.catalog)
