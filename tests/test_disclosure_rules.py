"""Dominance, p-ratio and differencing, inside MPC, against a plaintext oracle.

The oracle replays the same rules on the joined plain data, keeping its own history of
released row sets (sets of pseudonyms), so every suppression the parties make (and its
reason) is predicted exactly: the classic attacks are stopped and benign queries still
release.
"""

from __future__ import annotations

import copy
import itertools
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from oracle import dominance_reason, join

from ppa_kernel import Consortium, format_table, plot
from ppa_kernel.analyst.local import LocalParties
from ppa_kernel.analyst.results import format_html
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.config import load_consortium

PARTIES = ["insurer", "hospital", "bureau"]
K = 10


class Oracle:
    """Plaintext replay of the parties' disclosure rules (ppa_kernel.party.secure.disclosure)."""

    def __init__(self, data: dict[str, pd.DataFrame], differencing: bool = True):
        self.history: list[frozenset] = []
        self.definitions: set = set()
        self.differencing = differencing
        self.complete = {c for frame in data.values() for c in frame.columns
                         if not frame[c].isna().any()}

    def table(self, rows: pd.DataFrame, by: list[str], levels: list[list],
              measures: list[tuple[str, bool]], definition: object) -> dict[str, tuple]:
        """Per measure (column, is a magnitude whose sum is released): the released counts
        (None where suppressed) and the reasons per cell; then records the release."""
        cells = list(itertools.product(*levels)) if by else [()]
        stored, out, new = list(self.history), {}, []
        for measure, magnitude in measures:
            presence = None if measure in self.complete else measure
            sets, status = [], []
            for cell in cells:
                part = rows
                for column, level in zip(by, cell):
                    part = part[part[column] == level]
                part = part[part[measure].notna()]
                sets.append(frozenset(part["pseudonym"]))
                status.append(self._rule(sets[-1], part, measure, magnitude, stored))
            released = [i for i, st in enumerate(status) if st is None]
            for round_ in range(4):  # the union of released cells, as the parties check it
                if len(released) < 2 or not stored:
                    break
                if not self._near(frozenset().union(*(sets[i] for i in released)), stored):
                    break
                victims = released[-1:] if round_ < 3 else released
                for v in victims:
                    status[v] = "differencing"
                released = [i for i in released if i not in victims]
            new += [((definition, presence, cells[i]), sets[i]) for i in released]
            if len(released) >= 2:
                new.append(((definition, presence, tuple(cells[i] for i in released)),
                            frozenset().union(*(sets[i] for i in released))))
            out[measure] = ([len(x) if st is None else None for x, st in zip(sets, status)],
                            status)
        for key, members in new:
            if key not in self.definitions:
                self.definitions.add(key)
                self.history.append(members)
        return out

    def _near(self, members: frozenset, stored: list[frozenset]) -> bool:
        return self.differencing and any(0 < len(members ^ h) < K for h in stored)

    def _rule(self, members, part, measure, magnitude, stored) -> str | None:
        if len(members) < K:
            return "minimum size"
        if magnitude and (reason := dominance_reason(part[measure])) is not None:
            return reason
        if self._near(members, stored):
            return "differencing"
        return None


@pytest.fixture(scope="module")
def data():
    data = generate(n_core=300, seed=21, insurer_extra=0.3, bureau_extra=0.3,
                    hospital_extra=0.1)
    # One person dominates one cell's costs: about 81% of its total.
    insurer = data["insurer"]
    joined = join(data, PARTIES)
    cell = joined[(joined.region == "North") & joined.cost_2021.notna()]
    whale = cell.pseudonym.iloc[0]
    others = cell.cost_2021.sum() - cell.cost_2021.iloc[0]
    insurer.loc[insurer.pseudonym == whale, "cost_2021"] = round(others * 0.808 / 0.192, 2)
    return data


def start(data, workdir, **policy):
    policies = {p: dict(policy) for p in data} if policy else None
    return Consortium.local(data, link="pseudonym", workdir=workdir, policies=policies)


def released(result, column: str) -> list:
    mask = result.attrs["suppressed"][column].to_numpy(bool)
    return [None if gone else int(v) for v, gone in zip(result[column], mask)]


def reasons(result, column: str) -> list:
    return [r if isinstance(r, str) else None for r in result.attrs["reasons"][column]]


def age_with_few(joined: pd.DataFrame) -> int:
    """An age that between 1 and K - 1 linked people have."""
    counts = joined.age.value_counts()
    return int(counts[(counts > 0) & (counts < K)].index[0])


def test_differencing_attacks_are_stopped_and_benign_queries_release(data, tmp_path):
    joined = join(data, PARTIES)
    oracle = Oracle(data)
    measures = [("age", False), ("cost_2021", True)]
    with start(data, tmp_path) as c:
        t = c.link()
        # Attack 1: mean cost of age >= a minus age > a describes the people aged a.
        a = age_with_few(joined)
        first = t[t.age >= a].agg(n=("age", "count"), m=("cost_2021", "mean")).collect()
        want = oracle.table(joined[joined.age >= a], [], [], measures, ("ge", a))
        assert released(first, "n") == want["age"][0] and first["n"].iloc[0] > K
        assert reasons(first, "m") == want["cost_2021"][1]
        second = t[t.age > a].agg(n=("age", "count"), m=("cost_2021", "mean")).collect()
        want = oracle.table(joined[joined.age > a], [], [], measures, ("gt", a))
        assert want["age"] == ([None], ["differencing"]), "the oracle must see the attack"
        assert released(second, "n") == [None] and reasons(second, "n") == ["differencing"]
        assert reasons(second, "m") == want["cost_2021"][1]
        assert np.isnan(second["m"].iloc[0]) == (want["cost_2021"][0] == [None])

        # Attack 2: everyone minus the cohort without "other" households, by app use.
        levels, counted = [[False, True]], [("app_user", False)]
        whole = t.groupby("app_user").agg(n=("app_user", "count")).collect()
        want = oracle.table(joined, ["app_user"], levels, counted, ("all",))
        assert released(whole, "n") == want["app_user"][0]
        cut = t[t.household != "other"].groupby("app_user").agg(
            n=("app_user", "count")).collect()
        rest = joined[joined.household != "other"]
        want = oracle.table(rest, ["app_user"], levels, counted, ("no other",))
        assert "differencing" in want["app_user"][1], "the data must hold the attack"
        assert released(cut, "n") == want["app_user"][0]
        assert reasons(cut, "n") == want["app_user"][1]

        # Benign: the same query again releases the same table; another grouping of the
        # same cohort releases what the minimum size allows.
        again = t.groupby("app_user").agg(n=("app_user", "count")).collect()
        want = oracle.table(joined, ["app_user"], levels, counted, ("all",))
        assert released(again, "n") == released(whole, "n") == want["app_user"][0]
        sexes = t.groupby("sex").agg(n=("sex", "count")).collect()
        want = oracle.table(joined, ["sex"], [["F", "M"]], [("sex", False)], ("sex",))
        assert released(sexes, "n") == want["sex"][0]
        assert all(v is not None for v in want["sex"][0])


def test_total_minus_released_cells_is_stopped(data, tmp_path):
    """A released total, then a table whose one small cell is suppressed: the released
    cells' union would give it away, so a further cell is suppressed."""
    joined = join(data, PARTIES)
    oracle = Oracle(data)
    households = sorted(joined.household.unique())
    counted = [("household", False)]
    with start(data, tmp_path) as c:
        t = c.link()
        total = t.agg(n=("household", "count")).collect()
        oracle.table(joined, [], [], counted, ("total",))
        assert int(total["n"].iloc[0]) == len(joined)
        by = t.groupby(["household", "app_user"]).agg(n=("household", "count")).collect()
        want, why = oracle.table(joined, ["household", "app_user"],
                                 [households, [False, True]], counted, ("hh",))["household"]
        assert "minimum size" in why and "differencing" in why, "the data must hold the attack"
        assert released(by, "n") == want and reasons(by, "n") == why
        shown = sum(v for v in released(by, "n") if v is not None)
        assert not 0 < len(joined) - shown < K


def test_dominance_and_p_ratio(data, tmp_path):
    joined = join(data, PARTIES)
    oracle = Oracle(data, differencing=False)
    regions = sorted(joined.region.unique())
    with start(data, tmp_path, differencing=False) as c:
        t = c.link()
        got = t.groupby("region").agg(n=("cost_2021", "count"),
                                      m=("cost_2021", "mean")).collect()
        # A change can be negative: not a magnitude, so the rules do not apply to it.
        change = t.assign(change=t.cost_2021 - t.cost_2020).groupby("region").agg(
            m=("change", "mean")).collect()
    want, why = oracle.table(joined, ["region"], [regions], [("cost_2021", True)],
                             ("r",))["cost_2021"]
    north = regions.index("North")
    assert why[north] == "dominance", "one person holds about 81% of North's costs"
    assert reasons(got, "m") == reasons(got, "n") == why and released(got, "n") == want
    for i, count in enumerate(want):
        if count is not None:
            cell = joined[(joined.region == regions[i]) & joined.cost_2021.notna()]
            assert got["m"].iloc[i] == pytest.approx(cell.cost_2021.mean(), rel=1e-6)
    # The reason shows in the table, in the notebook's HTML and in the plot's legend.
    assert "suppressed (dominance)" in format_table(got)
    assert "suppressed (dominance)" in format_html(got)
    legend = plot(got, y="m").get_legend()
    assert any("dominance" in text.get_text() for text in legend.get_texts())
    plt.close("all")
    north_change = joined[joined.region == "North"]
    assert change["m"].iloc[north] == pytest.approx(
        (north_change.cost_2021 - north_change.cost_2020).mean(), rel=1e-6)


def test_history_survives_a_restart_on_the_same_data(data, tmp_path):
    joined = join(data, PARTIES)
    a = age_with_few(joined)
    with start(data, tmp_path) as c:
        t = c.link()
        t[t.age >= a].agg(n=("age", "count")).collect()
    epoch = tmp_path / "state" / "insurer" / "epoch"
    assert epoch.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in epoch.rglob("*") if f.is_file())
    parties = LocalParties(tmp_path, PARTIES)  # the same files: same data, same epoch
    try:
        parties.wait_ready(60)
        with Consortium(load_consortium(tmp_path / "consortium.toml"),
                        identity=parties.analyst) as c:
            t = c.link()
            outcome = c.run_raw(t[t.age > a].agg(n=("age", "count")).plan())
    finally:
        parties.kill()
    result = outcome.results["insurer"]
    assert not result["relinked"]
    assert list(result["stats"]["reasons"].values()) == [["differencing"]]


def test_bins_are_recorded_by_their_edges_not_their_labels(data, tmp_path):
    """A bin released under another bin's label is still recorded as its own row set (by
    its edges), so a later release one person away from it is caught."""
    joined = join(data, PARTIES)
    ages = joined.age.to_numpy()
    low = next(a for a in range(30, 80) if K <= ((ages >= a) & (ages < a + 3)).sum() < 50
               and 0 < (ages == a + 2).sum() < K)
    edges = [18, low, low + 3, 91]
    index = tmp_path / "state" / "insurer" / "epoch" / "history" / "index.json"
    with start(data, tmp_path) as c:
        t = c.link()
        first = t.histogram("age", bins=edges).with_min_cell_size(50).plan()
        assert c.run(first).attrs["suppressed"].to_numpy()[1].all(), "the narrow bin is small"
        recorded = len(json.loads(index.read_text()))
        relabelled = copy.deepcopy(first)
        levels = relabelled["groupby"][0]["levels"]
        relabelled["groupby"][0]["levels"] = [levels[0], levels[2], levels[1]]
        relabelled["min_cell_size"] = None  # the consortium's 10
        second = c.run(relabelled)  # min size 10: the narrow bin, under another's label
        assert not second.attrs["suppressed"].to_numpy()[1].any(), second.attrs["reasons"]
        assert len(json.loads(index.read_text())) > recorded
        third = c.run(t.histogram("age", bins=[18, low, low + 2, 91]).plan())
        assert third.attrs["reasons"]["count"].iloc[1] == "differencing"
