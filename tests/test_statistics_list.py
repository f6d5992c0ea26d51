"""One list of statistics: the policy check and ``%ppa status`` agree on histograms and
crosstabs, the default allows them, and an explicit list without them refuses them --
whatever the plan's aggregates or model, since a hostile analyst writes the plan."""

from __future__ import annotations

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.frame import Query
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError
from ppa_kernel.party.policy import STATISTICS

NO_CROSSTAB = sorted(set(STATISTICS) - {"crosstab"})
NO_HISTOGRAM = sorted(set(STATISTICS) - {"histogram"})


@pytest.fixture(scope="module")
def strict():
    """A consortium whose bureau lists every statistic but ``crosstab`` and whose
    hospital lists every statistic but ``histogram``."""
    data = generate(n_core=120, seed=3, insurer_extra=0.3, bureau_extra=0.3,
                    hospital_extra=0.2)
    policies = {p: {"differencing": False} for p in data}
    policies["bureau"]["statistics"] = NO_CROSSTAB
    policies["hospital"]["statistics"] = NO_HISTOGRAM
    with Consortium.local(data, link="pseudonym", policies=policies) as c:
        yield c


def refusal(c: Consortium, query) -> list[tuple[str, str]]:
    with pytest.raises(ConsortiumError) as caught:
        c.check(query.plan())
    return sorted((e.party, e.message) for e in caught.value.errors)


def test_status_lists_histogram_and_crosstab_by_default(strict):
    status = strict.status()
    shown = {p: sorted(status.loc[p, "statistics"].split(", ")) for p in status.index}
    assert shown == {"insurer": sorted(STATISTICS), "hospital": NO_HISTOGRAM,
                     "bureau": NO_CROSSTAB}


def test_the_magic_status_shows_the_same_list(shell):
    status = shell.run_line_magic("ppa", "status")
    for party in status.index:
        assert {"histogram", "crosstab"} <= set(status.loc[party, "statistics"].split(", "))


def refused_statistics(c: Consortium, query) -> dict[str, set[str]]:
    """Per refusing party, the statistics it named as not allowed."""
    found: dict[str, set[str]] = {}
    for party, message in refusal(c, query):
        for part in message.split("; "):
            assert part.startswith("statistic '"), message
            found.setdefault(party, set()).add(part.split("'")[1])
    return found


def test_an_explicit_list_without_crosstab_refuses_crosstabs(strict):
    t = strict.link()
    (party, message), = refusal(strict, t.crosstab("income_band", "app_user"))
    assert party == "bureau"
    assert message.startswith("statistic 'crosstab' is not allowed by bureau")
    assert "policy.statistics" in message and "crosstab," not in message
    # the same release by another name is the same decision
    same = t.groupby(["income_band", "app_user"]).agg(n="size")
    assert refusal(strict, same) == [(party, message)]


def test_no_rewording_of_a_crosstab_escapes_the_list(strict):
    """Counts per cell of two or more variables are released with any aggregate."""
    t = strict.link()
    two = ["income_band", "app_user"]
    for query in (t.groupby(two).agg(m=("cost_2021", "mean")),
                  t.groupby(two).agg(n=("age", "count")),
                  t.groupby(two).agg(n="size", s=("cost_2021", "sum")),
                  t.groupby(["income_band", "app_user", "sex"]).agg(n="size"),
                  t.chi2("income_band", "app_user")):
        assert refused_statistics(strict, query) == {"bureau": {"crosstab"}}, query


def test_no_rewording_of_a_histogram_escapes_the_list(strict):
    """Counts per bin are released whatever is aggregated in the bins."""
    t = strict.link()
    bins = t.histogram("age", bins=4)._entries
    cost = t.column("cost_2021")
    for aggregates in ([("m", "mean", cost)], [("n", "count", t.column("age"))],
                       [("n", "size", None), ("s", "sum", cost)]):
        query = Query(t, bins, aggregates, kind="groupby")
        assert refused_statistics(strict, query) == {"hospital": {"histogram"}}, aggregates
    assert refused_statistics(strict, t.histogram("age", bins=4)) == {
        "hospital": {"histogram"}}
    # binned and grouped by a second variable: both names, each refused by its party
    crossed = Query(t, bins + t.groupby("app_user").entries, [("n", "size", None)],
                    kind="groupby")
    assert refused_statistics(strict, crossed) == {"hospital": {"histogram"},
                                                   "bureau": {"crosstab"}}


def test_what_the_list_allows_still_runs(strict):
    t = strict.link()
    for query in (t.groupby("income_band").agg(n="size", m=("cost_2021", "mean")),
                  t.agg(n="size"), t.ttest("cost_2021", by="app_user")):
        assert len(strict.check(query.plan())) == 64
