"""A model's own inputs are checked against every owner's policy, like aggregates."""

from __future__ import annotations

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    data = generate(n_core=120, seed=3)
    columns = {c: ["filter", "group", "measure"] for c in data["insurer"].columns}
    columns["age"] = ["group"]  # age may split rows, not be measured
    policies = {"insurer": {"columns": columns}}
    with Consortium.local(data, policies=policies,
                          workdir=tmp_path_factory.mktemp("strict")) as c:
        yield c


def test_a_model_measuring_an_unapproved_column_is_refused(strict):
    with pytest.raises(ConsortiumError, match="'age' may not be used for 'measure'"):
        strict.link().corr(["cost_2021", "age"]).collect()


def test_the_same_policy_allows_approved_columns(strict):
    result = strict.link().corr(["cost_2021", "cost_2020"]).collect()
    assert result["r"].notna().all()
