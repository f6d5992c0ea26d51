"""One list of statistics: the policy check and ``%ppa status`` agree on histograms and
crosstabs, the default allows them, and an explicit list without them refuses them."""

from __future__ import annotations

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError
from ppa_kernel.party.policy import STATISTICS

NO_CROSSTAB = sorted(set(STATISTICS) - {"crosstab"})


@pytest.fixture(scope="module")
def strict():
    """A consortium whose bureau lists every statistic but ``crosstab``."""
    data = generate(n_core=120, seed=3, insurer_extra=0.3, bureau_extra=0.3,
                    hospital_extra=0.2)
    policies = {p: {"differencing": False} for p in data}
    policies["bureau"]["statistics"] = NO_CROSSTAB
    with Consortium.local(data, link="pseudonym", policies=policies) as c:
        yield c


def refusal(c: Consortium, query) -> list[tuple[str, str]]:
    with pytest.raises(ConsortiumError) as caught:
        c.check(query.plan())
    return sorted((e.party, e.message) for e in caught.value.errors)


def test_status_lists_histogram_and_crosstab_by_default(strict):
    status = strict.status()
    for party in ("insurer", "hospital"):
        shown = status.loc[party, "statistics"].split(", ")
        assert sorted(shown) == sorted(STATISTICS), party
    assert "crosstab" not in status.loc["bureau", "statistics"].split(", ")
    assert "histogram" in status.loc["bureau", "statistics"].split(", ")


def test_the_magic_status_shows_the_same_list(shell):
    status = shell.run_line_magic("ppa", "status")
    for party in status.index:
        assert {"histogram", "crosstab"} <= set(status.loc[party, "statistics"].split(", "))


def test_an_explicit_list_without_crosstab_refuses_crosstabs(strict):
    t = strict.link()
    (party, message), = refusal(strict, t.crosstab("income_band", "app_user"))
    assert party == "bureau"
    assert message.startswith("statistic 'crosstab' is not allowed by bureau")
    assert "policy.statistics" in message and "crosstab," not in message
    # the same release by another name is the same decision
    same = t.groupby(["income_band", "app_user"]).agg(n="size")
    assert refusal(strict, same) == [(party, message)]


def test_what_the_list_allows_still_runs(strict):
    t = strict.link()
    for query in (t.histogram("age", bins=4),
                  t.groupby("income_band").agg(n="size"),
                  t.groupby(["income_band", "app_user"]).agg(n="size",
                                                             m=("cost_2021", "mean"))):
        assert len(strict.check(query.plan())) == 64
