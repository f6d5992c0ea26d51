"""Each party kernel keeps one spare MPC worker, started ahead and waiting for its job on
stdin (``ppa_kernel.party.runs``): runs use it, a dead spare is replaced, a spare takes
only a job file of its own party's jobs folder, and no spare outlives its kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from oracle import assert_matches, expected, join
from waiting import is_busy_worker, wait_for

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate

PARTIES = ["insurer", "hospital", "bureau"]


def spares(c: Consortium, party: str) -> list[psutil.Process]:
    """The idle spare workers of ``party``'s kernel."""
    try:
        children = psutil.Process(c.local_parties.procs[party].pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "--spare" in p.cmdline() and not is_busy_worker(p)
            and p.status() != psutil.STATUS_ZOMBIE]


def check(c: Consortium, data: dict) -> None:
    got = c.link().groupby("app_user").agg(n=("age", "count"), age=("age", "mean")).collect()
    want, mask = expected(join(data, PARTIES), ["app_user"], [[False, True]],
                          {"n": ("age", "count"), "age": ("age", "mean")})
    assert_matches(got, want, mask)


def test_kernels_keep_one_spare_and_replace_a_dead_one(tmp_path):
    data = generate(n_core=120, seed=5)
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        for party in PARTIES:  # one spare per kernel, waiting in its jobs folder
            spare = wait_for(lambda p=party: spares(c, p), timeout=20)
            assert len(spare) == 1
            assert Path(spare[0].cwd()) == tmp_path / "state" / party / "jobs"
        before = {p: spares(c, p)[0].pid for p in PARTIES}
        check(c, data)
        for party in PARTIES:  # the run took it; a new one waits for the next run
            after = wait_for(lambda p=party: spares(c, p), timeout=20)
            assert len(after) == 1 and after[0].pid != before[party]
            assert not psutil.pid_exists(before[party]) or \
                psutil.Process(before[party]).status() == psutil.STATUS_ZOMBIE
        victim = spares(c, "hospital")[0]
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: not victim.is_running() or
                 victim.status() == psutil.STATUS_ZOMBIE, timeout=10)
        check(c, data)  # a dead spare is not used: the run starts its own worker
        wait_for(lambda: len(spares(c, "hospital")) == 1, timeout=20)
        kernels = {p: c.local_parties.procs[p].pid for p in PARTIES}
        left = {p: spares(c, p)[0] for p in PARTIES}
    for party, spare in left.items():  # the kernels stopped: so did their spares
        wait_for(lambda s=spare: not s.is_running() or s.status() == psutil.STATUS_ZOMBIE,
                 timeout=15)
        assert not psutil.pid_exists(kernels[party]) or \
            psutil.Process(kernels[party]).status() == psutil.STATUS_ZOMBIE


def test_the_next_spare_is_started_while_a_run_is_under_way(tmp_path):
    """A run right after another need not wait for a worker's imports: the next spare
    is started as soon as the run's worker has its job."""
    data = generate(n_core=600, seed=5)
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        for party in PARTIES:
            wait_for(lambda p=party: spares(c, p), timeout=20)
        seen: dict[str, int] = {}

        def look(party: str, phase: str, elapsed: float) -> None:
            if phase == "input" and party not in seen:  # the run's worker is busy now
                seen[party] = len(wait_for(lambda: spares(c, party), timeout=20))

        c.run(c.link().agg(n=("age", "count")).plan(), progress=look)
        assert seen == {p: 1 for p in PARTIES}


def spare(jobs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ppa_kernel.cli", "worker", "--spare",
                             str(jobs)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("line", ["/etc/passwd", "{jobs}/../job.json", "{jobs}/job.json",
                                  "{jobs}/run/../../elsewhere/job.json", "{jobs}/run/x.json"])
def test_a_spare_takes_only_a_job_file_of_its_jobs_folder(tmp_path, line):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    out, err = spare(jobs).communicate(line.format(jobs=jobs) + "\n", timeout=60)
    assert "refusing job path" in err
    assert out == ""  # it ran nothing and reported nothing


def test_a_spare_whose_kernel_closes_its_stdin_exits_quietly(tmp_path):
    proc = spare(tmp_path)
    out, err = proc.communicate("", timeout=60)
    assert proc.returncode == 0 and out == "" and "Traceback" not in err


def test_a_kernel_without_a_spare_starts_each_worker_per_run(tmp_path):
    data = generate(n_core=120, seed=6)
    with Consortium.local(data, link="pseudonym", workdir=tmp_path,
                          party_options={"hospital": {"spare_worker": False}}) as c:
        wait_for(lambda: spares(c, "insurer") and spares(c, "bureau"), timeout=20)
        check(c, data)
        assert spares(c, "hospital") == []


def test_spare_worker_must_be_true_or_false(tmp_path):
    from ppa_kernel.analyst.local import write_local_config
    from ppa_kernel.contract.config import ConfigError, load_party

    data = generate(n_core=40, seed=6)
    write_local_config(tmp_path, data, "pseudonym", party_options={"spare_worker": "yes"})
    with pytest.raises(ConfigError, match="spare_worker must be true or false"):
        load_party(tmp_path / "insurer.toml")
