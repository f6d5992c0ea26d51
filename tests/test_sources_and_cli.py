"""The same API over every kind of data source, over separately started kernels, and `ppa`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from oracle import assert_matches, expected, join

from ppa_kernel import Consortium
from ppa_kernel.analyst.demo import headline_study
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError
from ppa_kernel.party.policy_report import check_policy_file

PARTIES = ["insurer", "hospital", "bureau"]


@pytest.fixture(scope="module")
def small():
    return generate(n_core=150, seed=21, insurer_extra=0.3, bureau_extra=0.5,
                    hospital_extra=0.1)


def test_csv_parquet_and_sql_sources(small, tmp_path):
    small["insurer"].to_csv(tmp_path / "ins.csv", index=False)
    small["hospital"].to_parquet(tmp_path / "hosp.parquet")
    with sqlite3.connect(tmp_path / "bureau.sqlite") as db:
        small["bureau"].to_sql("people", db, index=False)
    sources = {"insurer": tmp_path / "ins.csv", "hospital": tmp_path / "hosp.parquet",
               "bureau": {"source": f"sqlite:///{tmp_path / 'bureau.sqlite'}",
                          "query": "SELECT * FROM people WHERE 1 = 1"}}
    with Consortium.local(sources, link="pseudonym", workdir=tmp_path / "w") as c:
        t = c.link()
        got = t.groupby("income_band").agg(n=("cost_2021", "count"),
                                           mean=("cost_2021", "mean")).collect()
        levels = c.catalog["bureau"]["income_band"]["levels"]
        rows = ", ".join(f"{p} ({len(small[p]):,} rows)" for p in PARTIES)
        assert repr(c) == (f"<Consortium 'local': {rows}; connected as analyst; local "
                           f"kernels in {tmp_path / 'w'}>")
    assert "; closed; local kernels in" in repr(c)
    want, mask = expected(join(small, PARTIES), ["income_band"], [levels],
                          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")})
    assert_matches(got, want, mask)


def test_kernels_started_separately_from_a_consortium_file(small, tmp_path):
    folder = tmp_path / "consortium"
    ppa = [sys.executable, "-m", "ppa_kernel.cli"]
    subprocess.run([*ppa, "init", str(folder), "--n-core", "150", "--seed", "21"], check=True,
                   capture_output=True, timeout=120)
    for p in PARTIES:  # each party file carries a commented policy that checks clean
        assert "# approval = \"manual\"" in (folder / f"{p}.toml").read_text()
        check = check_policy_file(folder / f"{p}.toml")
        assert check.ok and not check.warnings and check.rows, check.problems
        assert check.policy.approval == "auto"
    procs = [subprocess.Popen([*ppa, "party", "serve", str(folder / f"{p}.toml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in PARTIES]
    files = [str(folder / f"{p}.toml") for p in PARTIES]
    try:
        wait = subprocess.run([*ppa, "party", "wait", *files, "--timeout", "60"],
                              capture_output=True, text=True, timeout=90)
        assert wait.returncode == 0, wait.stderr
        assert all(f"{p}: ready on 127.0.0.1:" in wait.stdout for p in PARTIES), wait.stdout
        for proc in procs:  # ready means ready: each has said so by now
            assert "PPA-PARTY-READY" in proc.stdout.readline()
        twice = subprocess.run([*ppa, "party", "serve", str(folder / "insurer.toml")],
                               capture_output=True, text=True, timeout=60)
        assert twice.returncode == 1 and "already serves" in twice.stderr, twice.stderr
        with Consortium.from_file(folder / "consortium.toml",
                                  identity=folder / "keys" / "analyst") as c:
            assert repr(c).startswith("<Consortium 'local': insurer (")
            assert repr(c).endswith(f"; connected as analyst; from "
                                    f"{(folder / 'consortium.toml').resolve()}>")
            got = headline_study(c)
            assert c.catalog["insurer"]["sex"]["uses"] == ["filter", "group"]
            with pytest.raises(ConsortiumError, match="'sex' may not be used for 'measure' "
                                                      "by insurer"):
                c.link().agg(n=("sex", "count")).collect()  # the written policy is in force
        for p in PARTIES:  # the operator's stop, not a request
            stop = subprocess.run([*ppa, "party", "stop", str(folder / f"{p}.toml")],
                                  capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0 and "SIGTERM" in stop.stdout, stop.stderr
        for proc in procs:
            proc.wait(timeout=15)
        again = subprocess.run([*ppa, "party", "stop", str(folder / "insurer.toml")],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "no kernel" in again.stderr
        gone = subprocess.run([*ppa, "party", "wait", *files[:2], "--timeout", "0.5"],
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode == 1 and "not ready within 0.5 s" in gone.stderr
        assert "- insurer: nothing answers" in gone.stderr and "- hospital:" in gone.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    started = [json.loads(line) for line in
               (folder / "state" / "insurer" / "audit.jsonl").read_text().splitlines()]
    started = [r for r in started if r["event"] == "kernel_started"]
    assert started[-1]["policy"]["columns"]["sex"] == ["filter", "group"]  # recorded
    from ppa_kernel.party.datasource import load_table

    paths = {"insurer": "insurer.csv", "hospital": "hospital.parquet", "bureau": "bureau.csv"}
    data = {p: load_table(folder / "data" / paths[p], link="pseudonym") for p in PARTIES}
    joined = join(data, PARTIES)
    joined["cost_change"] = joined["cost_2021"] - joined["cost_2020"]
    levels = [sorted(joined["income_band"].unique()), [False, True]]
    want, mask = expected(joined, ["income_band", "app_user"], levels,
                          {"n": ("cost_change", "count"), "mean": ("cost_change", "mean"),
                           "sd": ("cost_change", "std")})
    assert_matches(got, want, mask)


def test_ppa_demo_command_writes_table_and_plot(tmp_path):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ppa_kernel.cli", "demo", "--out",
                          str(tmp_path), "--n-core", "300"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Headline study" in out.stdout and "suppressed" in out.stdout
    table = pd.read_csv(tmp_path / "headline_study.csv")
    assert {"income_band", "app_user", "n", "mean", "sd"} <= set(table.columns)
    assert (tmp_path / "headline_study.png").stat().st_size > 10_000
    assert time.monotonic() - started < 300


def test_ppa_init_and_party_wait_explain_every_option():
    from ppa_kernel.cli import parser

    commands = parser()._subparsers._group_actions[0].choices
    party = commands["party"]._subparsers._group_actions[0].choices
    for command in (commands["init"], party["wait"]):
        assert command.description and len(command.description) > 100
        for action in command._actions:
            assert action.help and len(action.help) > 15, action.dest
    text = commands["init"].format_help()
    assert "--n-core N" in text and "--seed SEED" in text and "FOLDER/keys/" in text


def test_the_repr_of_a_mock_and_of_a_party_not_heard_from():
    from types import SimpleNamespace

    from ppa_kernel.contract.config import ConsortiumConfig

    c = Consortium.__new__(Consortium)
    c.config = ConsortiumConfig("study", [SimpleNamespace(name=n) for n in
                                          ("insurer", "helper", "bureau")], "00" * 16)
    c.parties = {"insurer": {"rows": 12345}, "helper": {"rows": 0, "holds_data": False}}
    c.identity, c._closed, c.is_mock = SimpleNamespace(name="alice"), False, True
    assert repr(c) == ("<Consortium 'study' MOCK (synthetic data, no releases): insurer "
                       "(12,345 rows), helper (computes only), bureau (not heard from); "
                       "connected as alice; from a config>")
