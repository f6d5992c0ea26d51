"""Failures end in one clear error naming the party and the cause, fast, leaving nothing behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import psutil
import pytest
from waiting import BackgroundRun, is_busy_worker, wait_for

from ppa_kernel import Consortium, ConsortiumError, PlanError
from ppa_kernel.analyst.synthetic import generate


def workers_of(consortium) -> list[psutil.Process]:
    found = []
    for proc in consortium.local_parties.procs.values():
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        found += [c for c in children if is_busy_worker(c)]
    return found


@pytest.fixture(scope="module")
def data():
    return generate(n_core=2500, seed=4)


def test_killed_worker_fails_fast_names_party_and_leaves_no_process(data, tmp_path):
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        run = BackgroundRun(c, c.link().agg(n=("age", "count")).plan())
        wait_for(lambda: ("hospital", "connect") in run.phases)
        victim = next(w for w in workers_of(c)
                      if psutil.Process(w.ppid()).pid == c.local_parties.procs["hospital"].pid)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        run.join(30)
        assert run.error is not None, "the run should fail"
        assert run.failed_at - killed_at < 15
        assert "hospital" in str(run.error)
        wait_for(lambda: not workers_of(c), timeout=10)
        again = c.link().agg(n=("age", "count")).collect()
        assert again["n"].iloc[0] > 0, "the consortium must still work after a crash"
        kernels = [psutil.Process(p.pid) for p in c.local_parties.procs.values()]
    psutil.wait_procs(kernels, timeout=10)
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kernels)


def test_run_timeout_kills_workers(data, tmp_path):
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        started = time.monotonic()
        with pytest.raises(ConsortiumError) as info:
            c.run(c.link().agg(n=("age", "count")).plan(), timeout=1.0, progress=False)
        assert time.monotonic() - started < 15
        assert "within 1 s" in str(info.value) or "deadline" in str(info.value)
        wait_for(lambda: not workers_of(c), timeout=10)


def test_unreachable_party_is_named(demo_data, tmp_path):
    with Consortium.local(demo_data, link="pseudonym", workdir=tmp_path) as c:
        os.kill(c.local_parties.procs["bureau"].pid, signal.SIGKILL)
        c.local_parties.procs["bureau"].wait(10)
        started = time.monotonic()
        with pytest.raises(ConsortiumError) as info:
            c.run(c.link().agg(n=("age", "count")).plan(), progress=False)
        assert time.monotonic() - started < 15
        assert "[bureau]" in str(info.value) and "cannot reach" in str(info.value)


def test_missing_party_at_connect(tmp_path, demo_data):
    from ppa_kernel.analyst.local import write_local_config

    path = write_local_config(tmp_path, demo_data, "pseudonym")
    with pytest.raises(ConsortiumError) as info:
        Consortium.from_file(path, identity=tmp_path / "keys" / "analyst", connect_timeout=2)
    text = str(info.value)
    assert all(f"[{p}]" in text for p in demo_data)


def test_malformed_plan_is_refused_by_every_party(consortium, monkeypatch):
    plan = consortium.link().agg(n=("age", "count")).plan()
    plan["aggregates"][0]["stat"] = "median"
    with pytest.raises(PlanError, match="unknown statistic"):  # the client's own check
        consortium.run(plan, progress=False)
    plan = consortium.prepare({**plan, "aggregates": [{"name": "n", "stat": "count",
                                                        "expr": {"col": "insurer.age"}}]})
    plan["aggregates"][0]["stat"] = "median"
    monkeypatch.setattr(consortium, "prepare", lambda p: p)  # the parties' checks
    with pytest.raises(ConsortiumError) as info:
        consortium.run(plan, progress=False)
    assert all(f"[{p}]" in str(info.value) for p in consortium.names)
    assert "unknown statistic" in str(info.value)


def test_unknown_column_is_a_plan_error(consortium):
    t = consortium.link()
    with pytest.raises(PlanError, match="no_such_column"):
        t.groupby("no_such_column")
    plan = t.agg(n=("age", "count")).plan()
    plan["columns"]["insurer.age"]["column"] = "agee"
    plan["columns"] = {"insurer.agee": plan["columns"].pop("insurer.age")}
    plan["aggregates"][0]["expr"] = {"col": "insurer.agee"}
    with pytest.raises(ConsortiumError, match=r"\[insurer\] unknown column"):
        consortium.run(plan, progress=False)


def test_policy_refusal_names_party_and_reasons(demo_data, tmp_path):
    policies = {"hospital": {"columns": {"app_user": ["group", "filter"],
                                         "outpatient_visits": ["measure"]}}}
    with Consortium.local(demo_data, link="pseudonym", workdir=tmp_path,
                          policies=policies) as c:
        assert "app_use_intensity" not in c.catalog["hospital"]
        t = c.link()
        ok = t.groupby("app_user").agg(v=("outpatient_visits", "mean")).collect()
        assert len(ok) == 2
        plan = t.agg(v=("app_user", "mean")).plan()
        with pytest.raises(ConsortiumError) as info:
            c.run(plan, progress=False)
        assert "[hospital]" in str(info.value) and "measure" in str(info.value)


def test_type_errors_in_a_data_source_are_named(demo_data, tmp_path):
    rows = demo_data["bureau"][["pseudonym", "income_band"]].astype(object).to_numpy().tolist()
    for row in rows[:5]:
        row[1] = 7  # a number among the income bands: SQLite columns without a type allow it
    with sqlite3.connect(tmp_path / "bureau.sqlite") as db:
        db.execute("CREATE TABLE people (pseudonym, income_band)")
        db.executemany("INSERT INTO people VALUES (?, ?)", rows)
    data = {**demo_data, "bureau": {"source": f"sqlite:///{tmp_path / 'bureau.sqlite'}",
                                    "table": "people"}}
    with pytest.raises(ConsortiumError) as info:
        Consortium.local(data, link="pseudonym", workdir=tmp_path / "w")
    assert "[bureau]" in str(info.value) and "mixed types" in str(info.value)


def test_a_kernel_that_is_not_the_pinned_party_is_refused(consortium):
    from dataclasses import replace

    from ppa_kernel.contract.config import ConsortiumConfig

    parties = consortium.config.parties
    swapped = [replace(parties[0], port=parties[1].port), *parties[1:]]  # hospital answers
    forged = ConsortiumConfig(consortium.config.name, swapped, consortium.config.link_salt)
    with pytest.raises(ConsortiumError, match=rf"\[{parties[0].name}\] TLS with the kernel"):
        Consortium(forged, identity=consortium.identity)


def test_data_that_changed_levels_fails_before_any_mpc(consortium):
    plan = consortium.link().groupby("income_band").agg(n=("age", "count")).plan()
    plan["groupby"][0]["levels"] = ["Q1", "Q2"]  # the bureau's data has Q3..Q5 as well
    plan["columns"]["bureau.income_band"]["levels"] = ["Q1", "Q2"]
    started = time.monotonic()
    with pytest.raises(ConsortiumError, match=r"\[bureau\].*must use the published levels"):
        consortium.run(plan, progress=False)
    assert time.monotonic() - started < 15
    assert consortium.link().agg(n=("age", "count")).collect()["n"].iloc[0] > 0


def test_empty_table_is_refused(demo_data, tmp_path):
    data = {**demo_data, "hospital": demo_data["hospital"].iloc[:0]}
    with pytest.raises(ConsortiumError, match=r"\[hospital\].*no rows"):
        Consortium.local(data, link="pseudonym", workdir=tmp_path)
