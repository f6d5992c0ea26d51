"""A party's state folder is private, job folders never outlive their run, and every
accepted plan gets exactly one outcome record in the audit log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import threading
from pathlib import Path

import pytest
from waiting import BackgroundRun, wait_for

from ppa_kernel import Consortium, ConsortiumError
from ppa_kernel.analyst.local import write_local_config
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.config import load_party
from ppa_kernel.contract.errors import PartyFailed, PlanError
from ppa_kernel.party.audit import AuditLog
from ppa_kernel.party.kernel import PartyKernel

PARTIES = ("insurer", "hospital", "bureau")
OUTCOMES = ("run_completed", "run_failed")


@pytest.fixture(scope="module")
def data():
    return generate(n_core=200, seed=3)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def records(state: Path) -> list[dict]:
    """The audit records written so far (a line being written is skipped)."""
    text = (state / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.split("\n")[:-1]]


def outcomes(log: list[dict]) -> dict[str, list[str]]:
    """For each accepted run: the outcome records that follow its plan_accepted record."""
    found: dict[str, list[str]] = {}
    for record in log:
        if record["event"] == "plan_accepted":
            found[record["run_id"]] = []
        elif record["event"] in OUTCOMES and record["run_id"] in found:
            found[record["run_id"]].append(record["event"])
    return found


def settled(state: Path, since: int, runs: int) -> list[dict] | None:
    """The new records once ``runs`` accepted plans all have an outcome, else None."""
    new = records(state)[since:]
    found = outcomes(new)
    return new if len(found) == runs and all(found.values()) else None


def reason(log: list[dict], run_id: str) -> str:
    return next(r["reason"] for r in log if r["event"] == "run_failed" and r["run_id"] == run_id)


# --------------------------------------------------------------------------- real kernels


def temp_entries(folder: Path) -> list[str]:
    """Job folders the kernels created in their temporary directory (``folder``)."""
    return sorted(n for n in os.listdir(folder) if any(n.startswith(f"ppa-{p}-") for p in PARTIES))


def test_state_is_private_and_jobs_do_not_outlive_runs(data, tmp_path, monkeypatch):
    state = tmp_path / "state" / "insurer"
    leftover = state / "jobs" / "deadbeef00"  # as a kernel SIGKILLed mid-run leaves it
    leftover.mkdir(parents=True)
    (leftover / "job.json").write_text('{"link_salt": "secret"}')
    AuditLog(state / "audit.jsonl").append("kernel_started", party="insurer")
    (state / "snapshot.parquet").write_bytes(b"old")
    for path, old in ((state, 0o755), (state / "jobs", 0o755), (state / "audit.jsonl", 0o644),
                      (state / "snapshot.parquet", 0o644)):
        os.chmod(path, old)
    temp = tmp_path / "tmp"  # the kernels' own temporary directory
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        assert not leftover.exists()
        assert c.link().agg(n=("age", "count")).collect()["n"].iloc[0] > 0
        for party in PARTIES:
            folder = tmp_path / "state" / party
            assert mode(folder) == 0o700 and mode(folder / "jobs") == 0o700
            assert mode(folder / "snapshot.parquet") == 0o600
            assert mode(folder / "audit.jsonl") == 0o600
            assert list((folder / "jobs").iterdir()) == []
        assert temp_entries(temp) == []
    assert AuditLog(state / "audit.jsonl").verify() > 2  # the old chain goes on


@pytest.fixture(scope="module")
def running(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    (folder / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder / "tmp"))
        c = Consortium.local(data, link="pseudonym", workdir=folder)
    with c:
        yield c, folder / "state"


def test_a_completed_run_has_one_outcome(running):
    c, states = running
    since = {p: len(records(states / p)) for p in PARTIES}
    run_id = c.link().agg(n=("age", "count")).collect().attrs["run_id"]
    for p in PARTIES:
        new = wait_for(lambda p=p: settled(states / p, since[p], 1))
        assert outcomes(new) == {run_id: ["run_completed"]}


def test_a_timed_out_run_has_one_outcome(running):
    c, states = running
    since = {p: len(records(states / p)) for p in PARTIES}
    plan = c.link().agg(m=("cost_2021", "mean")).plan()
    with pytest.raises(ConsortiumError):
        c.run(plan, timeout=0.5, progress=False)
    for p in PARTIES:
        new = wait_for(lambda p=p: settled(states / p, since[p], 1))
        (run_id, events), = outcomes(new).items()
        assert events == ["run_failed"] and reason(new, run_id)
        assert list((states / p / "jobs").iterdir()) == []


def test_a_second_run_waits_its_turn_and_jobs_are_private(running):
    c, states = running
    since = {p: len(records(states / p)) for p in PARTIES}
    plan = c.link().agg(m=("cost_2021", "mean")).plan()
    phases: list[tuple[str, str]] = []
    box: dict = {}

    def first():
        try:
            box["result"] = c.run(plan, progress=lambda party, phase, _: phases.append(
                (party, phase)))
        except ConsortiumError as exc:  # pragma: no cover - reported below
            box["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for(lambda: all((p, "policy check") in phases for p in PARTIES))
        for p in PARTIES:  # the running job's folder and file are owner only
            # the kernel makes the folder, then writes the job into it
            job, = wait_for(lambda p=p: list((states / p / "jobs").glob("*/job.json")))
            assert mode(job.parent) == 0o700 and mode(job) == 0o600
        assert temp_entries(states.parent / "tmp") == []  # not in the temporary directory
        second = c.run(plan, progress=False)  # queued behind the first, not refused
    finally:
        thread.join(60)
    assert "result" in box, box.get("error")
    first_id, second_id = box["result"].attrs["run_id"], second.attrs["run_id"]
    assert second.equals(box["result"])  # the same release (NaN where suppressed)
    for p in PARTIES:
        new = wait_for(lambda p=p: settled(states / p, since[p], 2))
        assert outcomes(new) == {first_id: ["run_completed"], second_id: ["run_completed"]}
        assert list((states / p / "jobs").iterdir()) == []


def test_a_kernel_stopped_mid_run_records_the_outcome_and_cleans_up(data, tmp_path):
    state = tmp_path / "state" / "hospital"
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        kernel = c.local_parties.procs["hospital"]
        run = BackgroundRun(c, c.link().agg(m=("age", "mean")).plan())
        wait_for(lambda: ("hospital", "policy check") in run.phases)
        os.kill(kernel.pid, signal.SIGTERM)
        kernel.wait(15)
        run.join(60)
        assert "hospital" in str(run.error)
    found = outcomes(records(state))
    assert len(found) == 1 and list(found.values()) == [["run_failed"]]
    assert list((state / "jobs").iterdir()) == []


# --------------------------------------------------------------------------- one kernel


class Writer:
    """Stands in for a client's stream: keeps what the kernel sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None:
        pass


@pytest.fixture
def kernel(data, tmp_path):
    write_local_config(tmp_path, data, "pseudonym")
    kernel = PartyKernel(load_party(tmp_path / "insurer.toml"))
    kernel.check_plan = lambda request: ({"stub": True}, "ab" * 32)  # accept anything
    return kernel


def events(kernel) -> list[tuple[str, str | None]]:
    return [(r["event"], r.get("reason")) for r in kernel.audit.records()[1:]]


@pytest.mark.parametrize("run_id", ["../../etc", "DEADBEEF00", "abc", "None", "0" * 65])
def test_a_malformed_run_id_is_refused_before_acceptance(kernel, run_id):
    with pytest.raises(PlanError, match="malformed run_id"):
        asyncio.run(kernel._run({"op": "run", "run_id": run_id}, Writer()))
    (event, _), = events(kernel)
    assert event == "plan_refused"
    assert not (kernel.config.state_dir / "jobs").is_dir() or \
        list((kernel.config.state_dir / "jobs").iterdir()) == []


def test_a_full_queue_refuses_and_records_it(kernel):
    kernel.queue.capacity = 0

    with pytest.raises(PartyFailed, match="already waiting"):
        asyncio.run(kernel._run({"op": "run", "run_id": "0123456789abcdef"}, Writer()))
    assert [e for e, _ in events(kernel)] == ["plan_accepted", "run_failed"]
    assert "already waiting" in events(kernel)[1][1]


def test_a_cancelled_run_is_recorded_its_worker_killed_and_folder_removed(kernel):
    run_id = "0123456789abcdef"
    folder = kernel.config.state_dir / "jobs" / run_id

    async def hang(proc, writer):  # a worker that never reports back
        await asyncio.sleep(60)

    kernel.workers._follow = hang

    async def cancelled():
        task = asyncio.create_task(kernel._run({"op": "run", "run_id": run_id}, Writer()))
        for _ in range(500):
            if run_id in kernel.workers.running:
                break
            await asyncio.sleep(0.01)
        proc = kernel.workers.running[run_id]
        assert mode(folder) == 0o700 and mode(folder / "job.json") == 0o600
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return proc

    proc = asyncio.run(cancelled())
    assert proc.returncode is not None
    assert events(kernel) == [("plan_accepted", None), ("run_failed", "cancelled")]
    assert not folder.exists() and kernel.workers.running == {}


def test_a_job_file_is_private_never_follows_a_planted_link_and_reads_back_whole(tmp_path):
    from ppa_kernel.party.job import JOB_FILE, Job

    job = Job(party="insurer", index=2, names=["bureau", "hospital", "insurer"],
              addresses=["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], plan={"p": 1},
              run_id="0123456789abcdef", snapshot="s.parquet", link_column="pseudonym",
              link_salt="00", state_dir=str(tmp_path), record_openings=False,
              connect_timeout=30.0, result_path=str(tmp_path / "result.json"),
              certificate="keys/insurer.crt", key="keys/insurer.key",
              peer_certificates=["pem0", "pem1", "pem2"],
              fingerprints=["sha256:" + "0" * 64, "sha256:" + "1" * 64, "sha256:" + "2" * 64],
              stall_timeout=30.0, handoff_fd=3)
    path = job.write(tmp_path)
    assert mode(path) == 0o600 and Job.read(path) == job
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / JOB_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FileExistsError):
        job.write(planted)  # O_EXCL: a planted name (or link) is never written through
    assert not (tmp_path / "elsewhere.json").exists()
    extra = json.loads(path.read_text()) | {"snapshot_override": "/etc/passwd"}
    path.write_text(json.dumps(extra))
    with pytest.raises(ValueError, match="snapshot_override"):
        Job.read(path)


def test_no_analyst_can_fill_the_queue_alone():
    from ppa_kernel.party.schedule import RunQueue

    async def scenario():
        queue = RunQueue("hospital", sequencer=False, capacity=4)  # quota: 2 per analyst

        async def beat(position):
            pass

        waiting = [asyncio.create_task(queue.turn(f"{i:016x}", "mallory", 30, beat))
                   for i in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PartyFailed, match="mallory already has 2 runs waiting"):
            await queue.turn("f" * 16, "mallory", 30, beat)
        alice = asyncio.create_task(queue.turn("a" * 16, "alice", 30, beat))
        await asyncio.sleep(0.05)
        assert queue.trigger("a" * 16)  # a lower party's worker asks for alice's run
        await asyncio.wait_for(alice, 5)
        assert queue.active == "a" * 16
        for task in waiting:  # cancelled as the queue changes: they stop at once
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)
        assert set(queue.waiting) == set()

    asyncio.run(scenario())
