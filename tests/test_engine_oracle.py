"""Every engine operation against pandas on the same plaintext join, at three real parties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from oracle import assert_matches, expected, join

PARTIES = ["insurer", "hospital", "bureau"]


def levels(c, party, column):
    return c.catalog[party][column]["levels"]


def test_headline_study_matches_pandas(consortium, demo_data):
    c = consortium
    t = c.link()
    t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
    got = (t.groupby(["income_band", "app_user"])
            .agg(n=("cost_change", "count"), mean=("cost_change", "mean"),
                 sd=("cost_change", "std"))
            .collect())
    plain = join(demo_data, PARTIES)
    change = lambda r: r.cost_2021 - r.cost_2020  # noqa: E731
    want, mask = expected(plain, ["income_band", "app_user"],
                          [levels(c, "bureau", "income_band"), [False, True]],
                          {"n": (change, "count"), "mean": (change, "mean"),
                           "sd": (change, "std")})
    assert_matches(got, want, mask)
    assert (~mask).to_numpy().sum() > 0, "the test data must release some cells"


def test_filters_owner_side_and_cross_party(consortium, demo_data):
    c = consortium
    t = c.link()
    cohort = t[((t.age >= 40) & t.region.isin(["North", "South", "East"])) | ~t.app_user]
    cohort = cohort[t.outpatient_visits > t.admissions_2021 * 2]
    got = cohort.groupby("education").agg(n=("cost_2021", "count"),
                                          mean=("cost_2021", "mean")).collect()
    p = join(demo_data, PARTIES)
    keep = (((p.age >= 40) & p.region.isin(["North", "South", "East"]))
            | ~p.app_user.astype(bool)) & (p.outpatient_visits > p.admissions_2021 * 2)
    want, mask = expected(p[keep], ["education"], [levels(c, "bureau", "education")],
                          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")})
    assert_matches(got, want, mask)


def test_cross_party_derived_columns_with_missing_values(consortium, demo_data):
    c = consortium
    t = c.link()
    t = t.assign(load=t.outpatient_visits + t.admissions_2021 / 2,
                 weighted=t.app_use_intensity * t.admissions_2021 - 1.5)
    got = t.groupby("app_user").agg(load=("load", "mean"), wsum=("weighted", "sum"),
                                    wvar=("weighted", "var"),
                                    wn=("weighted", "count")).collect()
    p = join(demo_data, PARTIES)
    load = lambda r: r.outpatient_visits + r.admissions_2021 / 2  # noqa: E731
    weighted = lambda r: r.app_use_intensity * r.admissions_2021 - 1.5  # noqa: E731
    want, mask = expected(p, ["app_user"], [[False, True]],
                          {"load": (load, "mean"), "wsum": (weighted, "sum"),
                           "wvar": (weighted, "var"), "wn": (weighted, "count")})
    assert p.app_use_intensity.isna().any(), "test data must have missing values"
    assert_matches(got, want, mask)


def test_whole_frame_aggregates_exclude_missing(consortium, demo_data):
    t = consortium.link()
    got = t.agg(n=("cost_2021", "count"), mean=("cost_2021", "mean"),
                sd=("cost_2021", "std"), total=("admissions_2020", "sum")).collect()
    p = join(demo_data, PARTIES)
    assert p.cost_2021.isna().any()
    want, mask = expected(p, [], [], {"n": ("cost_2021", "count"),
                                      "mean": ("cost_2021", "mean"),
                                      "sd": ("cost_2021", "std"),
                                      "total": ("admissions_2020", "sum")})
    assert_matches(got, want, mask)


def test_histogram_matches_numpy(consortium, demo_data):
    t = consortium.link()
    edges = [18, 35, 50, 65, 80, 91]
    got = t.histogram("age", bins=edges).collect()
    p = join(demo_data, PARTIES)
    counts, _ = np.histogram(p.age, bins=edges)
    released = got.iloc[:, 0].to_numpy()
    gone = got.attrs["suppressed"].iloc[:, 0].to_numpy()
    np.testing.assert_array_equal(gone, counts < 10)
    np.testing.assert_array_equal(released[~gone], counts[~gone])


def test_crosstab_matches_pandas(consortium, demo_data):
    c = consortium
    got = c.link().crosstab("education", "sex").collect()
    p = join(demo_data, PARTIES)
    want = pd.crosstab(p.education, p.sex).reindex(index=levels(c, "bureau", "education"),
                                                    columns=levels(c, "insurer", "sex"))
    w = want.to_numpy(dtype=float)
    g = got.to_numpy(dtype=float)
    assert g.shape == w.shape
    np.testing.assert_array_equal(np.isnan(g), w < 10)
    np.testing.assert_array_equal(g[w >= 10], w[w >= 10])


def test_link_of_a_subset_of_parties(consortium, demo_data):
    c = consortium
    t = c.link("insurer", "bureau")
    got = t.groupby("income_band").agg(n=("cost_2021", "count"),
                                       mean=("cost_2021", "mean")).collect()
    p = join(demo_data, ["insurer", "bureau"])
    assert len(p) > len(join(demo_data, PARTIES))
    want, mask = expected(p, ["income_band"], [levels(c, "bureau", "income_band")],
                          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")})
    assert_matches(got, want, mask)


def test_small_cells_are_suppressed_not_opened(consortium, demo_data):
    c = consortium
    t = c.link()
    query = t.groupby(["household", "app_user"]).agg(n=("cost_2021", "count"),
                                                      mean=("cost_2021", "mean"))
    outcome = c.run_raw(query.plan())
    result = outcome.results["insurer"]
    p = join(demo_data, PARTIES)
    want, mask = expected(p, ["household", "app_user"],
                          [levels(c, "bureau", "household"), [False, True]],
                          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")})
    assert mask["n"].any() and not mask["n"].all(), "data must have small and large cells"
    passed = result["stats"]["passed"]
    key = next(k for k in passed if k != "size")
    np.testing.assert_array_equal(np.array(passed[key]), ~mask["n"].to_numpy())
    opened = {e["name"]: e for e in result["openings"]}
    allowed = {"linkage.ready", "linkage.party_sizes", "linkage.prf_masked",
               "linkage.equality_masked", "linkage.epoch", "disclosure.reason",
            "protocol.plan_agreement",
               "disclosure.pass", "protocol.comparison_masked"}
    releases = [e for e in result["openings"] if e["name"] not in allowed]
    assert all(e["name"].startswith("release.") for e in releases)
    n_pass = int((~mask["n"]).sum())
    for entry in releases:
        assert entry["count"] == len(entry["values"])
        if entry["name"].endswith(":size"):
            continue
        assert entry["count"] == n_pass, entry["name"]
    released_counts = sorted(opened[f"release.count:{key}"]["values"])
    assert released_counts == sorted(int(v) for v in want["n"].dropna())
    assert all(e["name"] is not None for e in result["openings"]), "unnamed opening"
    assert "release.count:size" not in opened, "row counts were not asked for"


def test_repeat_query_reuses_the_linkage(consortium):
    t = consortium.link()
    first = consortium.run_raw(t.agg(n=("age", "count")).plan())
    second = consortium.run_raw(t.agg(n=("age", "mean")).plan())
    for result in second.results.values():
        assert not result["relinked"]
        assert "tags" not in result["phases"]
    assert first.results["insurer"]["multiplicity"] == second.results["insurer"]["multiplicity"]


def test_workers_report_the_columns_they_replay(consortium):
    """``input_widths`` / ``reused_widths`` (read by benchmarks/bench_study.py): a mean
    replays only the measure's value at its owner, on top of the columns the count of
    the same (new) expression replayed just before, which it reuses."""
    t = consortium.link()
    t = t.assign(fresh=t.age * 7 - 2)  # a column no other test replays
    count = consortium.run_raw(t.agg(n=("fresh", "count")).plan()).results
    mean = consortium.run_raw(t.agg(n=("fresh", "mean")).plan()).results
    for results in (count, mean):
        seen = [(r["input_widths"], r["reused_widths"]) for r in results.values()]
        assert all(s == seen[0] for s in seen), "parties disagree on the replayed columns"
    total = {p: count["insurer"]["input_widths"][p] + count["insurer"]["reused_widths"][p]
             for p in PARTIES}
    assert count["insurer"]["input_widths"]["insurer"] >= 1  # the new expression's presence
    assert mean["insurer"]["input_widths"] == {p: int(p == "insurer") for p in PARTIES}
    assert mean["insurer"]["reused_widths"] == total


def test_multiplicity_pattern_matches_overlap(consortium, demo_data):
    t = consortium.link()
    outcome = consortium.run_raw(t.agg(n=("age", "count")).plan())
    pattern = {int(k): v for k, v in outcome.results["bureau"]["multiplicity"].items()}
    keys = pd.concat([d["pseudonym"] for d in demo_data.values()]).value_counts()
    assert pattern == {int(k): int(v) for k, v in keys.value_counts().items()}


@pytest.mark.parametrize("stat", ["sum", "mean", "var", "std"])
def test_each_statistic_on_owner_side_column(consortium, demo_data, stat):
    t = consortium.link()
    got = t.groupby("sex").agg(v=("cost_2020", stat)).collect()
    p = join(demo_data, PARTIES)
    want, mask = expected(p, ["sex"], [levels(consortium, "insurer", "sex")],
                          {"v": ("cost_2020", stat)})
    assert_matches(got, want, mask)


def test_every_run_is_in_each_partys_hash_chained_audit_log(consortium):
    from ppa_kernel.contract.plan import plan_hash
    from ppa_kernel.party.audit import AuditLog

    plan = consortium.prepare(consortium.link().agg(n=("age", "count")).plan())
    consortium.run(plan)
    for party in consortium.names:
        log = AuditLog(consortium.local_parties.folder / "state" / party / "audit.jsonl")
        assert log.verify() > 2
        events = [(r["event"], r.get("plan_hash")) for r in log.records()]
        assert ("plan_accepted", plan_hash(plan)) in events
        assert ("run_completed", plan_hash(plan)) in events
