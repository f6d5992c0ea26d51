"""Load: two analysts, each with their own identity, fire five analyses at once; every one
queues, none is refused or lost, none mixes with another, and each equals pandas."""

from __future__ import annotations

import json
import threading
import time

import pytest
from oracle import assert_matches, expected, join

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate

PARTIES = ["insurer", "hospital", "bureau"]
PER_ANALYST = 5  # ten runs in flight at once: enough to queue at every party

# Three different analyses of the whole linked population over complete columns (so all
# cells of a table cover all linked people, and the union of every table is the same row
# set): repeats release the same row sets again, and cells of different analyses differ
# by far more than the minimum cell size, so the differencing rule suppresses nothing the
# oracle does not know of.
QUERIES = {
    "total": ([], {"n": ("cost_2020", "count"), "mean_cost": ("cost_2020", "mean")}),
    "by_app": (["app_user"], {"n": ("outpatient_visits", "count"),
                              "visits": ("outpatient_visits", "mean")}),
    "by_income": (["income_band"], {"n": ("age", "count"), "age": ("age", "mean")}),
}


def build(c: Consortium, name: str):
    by, aggs = QUERIES[name]
    t = c.link()
    return (t.groupby(by) if by else t).agg(**aggs)


@pytest.mark.timeout(600)
def test_two_analysts_times_five_concurrent_analyses_all_complete(tmp_path):
    data = generate(n_core=160, seed=11)
    with Consortium.local(data, link="pseudonym", workdir=tmp_path,
                          analysts=("analyst", "bob")) as alice:
        bob = Consortium(alice.config, identity=tmp_path / "keys" / "bob")
        plain = join(data, PARTIES)
        levels = {"app_user": [False, True],
                  "income_band": alice.catalog["bureau"]["income_band"]["levels"]}
        jobs = [(client, f"{who}-{i}", list(QUERIES)[i % len(QUERIES)])
                for who, client in (("alice", alice), ("bob", bob))
                for i in range(PER_ANALYST)]
        results, errors = {}, {}
        queued = threading.Event()

        def work(client, label, query):
            def seen(party, phase, elapsed):
                if phase == "queued":
                    queued.set()
            try:
                results[label] = (query, client.run(build(client, query).plan(),
                                                    progress=seen, timeout=300))
            except Exception as exc:
                errors[label] = exc

        threads = [threading.Thread(target=work, args=job) for job in jobs]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=540)
        elapsed = time.monotonic() - started
        assert not errors, errors
        assert len(results) == 2 * PER_ANALYST  # none lost
        assert queued.is_set()  # runs waited their turn instead of being refused
        run_ids = {table.attrs["run_id"] for _, table in results.values()}
        assert len(run_ids) == 2 * PER_ANALYST
        for query, table in results.values():
            by, aggs = QUERIES[query]
            want, mask = expected(plain, by, [levels[b] for b in by], aggs)
            assert_matches(table, want, mask)
        print(f"\n{2 * PER_ANALYST} concurrent analyses by two analysts: {elapsed:.1f} s")
    # every party's audit log names who asked for each run
    for party in PARTIES:
        records = [json.loads(line) for line in
                   (tmp_path / "state" / party / "audit.jsonl").read_text().splitlines()]
        accepted = [r for r in records if r["event"] == "plan_accepted"]
        assert {r["analyst"] for r in accepted} == {"analyst", "bob"}
        assert len({r["nonce"] for r in accepted}) == len(accepted)
        completed = {r["run_id"] for r in records if r["event"] == "run_completed"}
        assert run_ids <= completed
