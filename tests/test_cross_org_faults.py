"""Faults across organisations, now that every link is mutual TLS bound to pinned identities.

Each fault ends in ONE ConsortiumError naming the right party within the stated time, and
the next analysis on the same consortium gives the right answer (checked against pandas
on the same data). Real kernels and workers on small data; every wait is bounded; only
processes these tests started are signalled, by pid, and none is left behind.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from oracle import join
from waiting import BackgroundRun, is_busy_worker, wait_for, workers_under

from ppa_kernel import Consortium, ConsortiumError
from ppa_kernel.analyst.local import KEYS, LocalParties, write_local_config
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.config import ConsortiumConfig
from ppa_kernel.contract.errors import RunTimeout
from ppa_kernel.contract.identity import Identity, IdentityError, create_identity
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.protocol import Channel, encode, request
from ppa_kernel.party.secure.links import format_header

PARTIES = ("insurer", "hospital", "bureau")  # MPC order: insurer sequences the runs
VICTIM = "hospital"  # index 1: it dials bureau and accepts insurer
STALL = 5.0  # stall timeout of the kernels' workers and of the client
FAIL_FAST = 15.0  # seconds from a crash to the error naming the party
EXPIRED = "expired"  # a pinned analyst whose certificate is no longer valid
BOB = "bob"  # a second pinned analyst, valid: the control for EXPIRED


@pytest.fixture(scope="module")
def data():
    return generate(n_core=300, seed=23)


def plan_of(c: Consortium) -> dict:
    return c.link().groupby("sex").agg(n=("age", "count"), m=("age", "mean")).plan()


def expected(data) -> pd.DataFrame:
    plain = join(data, list(PARTIES))
    return plain.groupby("sex").agg(n=("age", "count"), m=("age", "mean"))


def check_answer(got: pd.DataFrame, data) -> None:
    want = expected(data)
    assert list(got.index) == list(want.index)
    assert not got.attrs["suppressed"].to_numpy().any()
    np.testing.assert_array_equal(got["n"].to_numpy(float), want["n"].to_numpy(float))
    np.testing.assert_allclose(got["m"].to_numpy(float), want["m"].to_numpy(float), rtol=1e-4)


def answers(c: Consortium, data) -> None:
    """The next analysis succeeds with the right answer."""
    check_answer(c.run(plan_of(c), progress=False, timeout=120), data)


# --------------------------------------------------------------------------- processes


def kernel_pid(c: Consortium, party: str) -> int:
    return c.local_parties.procs[party].pid


def worker_of(c: Consortium, party: str) -> psutil.Process | None:
    """The party's running MPC worker (a child of its kernel), if any."""
    try:
        children = psutil.Process(kernel_pid(c, party)).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    return next((w for w in children if is_busy_worker(w)), None)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start(folder: Path, data, **client) -> Consortium:
    """Kernels over the files in ``folder`` and a client as the local analyst."""
    parties = LocalParties(folder, list(data))
    parties.wait_ready(60)
    try:
        c = Consortium(parties.config, identity=parties.analyst, on_close=parties.stop,
                       stall_timeout=STALL, **client)
    except BaseException:
        parties.kill()
        raise
    c.local_parties = parties
    return c


def write_files(folder: Path, data) -> None:
    """The local consortium's files; the analyst EXPIRED is pinned by every party, but its
    certificate (made again, as the party files pin it) expired days ago."""
    write_local_config(folder, data, "pseudonym", analysts=("analyst", BOB, EXPIRED),
                       party_options={"stall_timeout": STALL})
    keys = folder / KEYS
    old = Identity.from_prefix(keys / EXPIRED).fingerprint
    for suffix in (".crt", ".key"):
        (keys / f"{EXPIRED}{suffix}").unlink()
    ten_days_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    new = create_identity(keys, EXPIRED, days=1, not_before=ten_days_ago).fingerprint
    for party in PARTIES:
        path = folder / f"{party}.toml"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))


def kernels_under(root: Path) -> list[psutil.Process]:
    """Every live party kernel serving a party file under ``root``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if " party serve " in line and str(root) in line and not gone(proc.pid):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The module's folder; once every test is done, no kernel or worker of ours is left."""
    folder = tmp_path_factory.mktemp("cross-org")
    yield folder
    wait_for(lambda: not workers_under(folder, spares=True) and not kernels_under(folder),
             timeout=15)


@pytest.fixture(scope="module")
def consortium(data, root):
    folder = root / "shared"
    write_files(folder, data)
    with start(folder, data) as c:
        answers(c, data)  # links the data once (later runs reuse the linkage)
        yield c


def assert_one_error_naming(error: ConsortiumError | None, party: str, *words: str) -> None:
    """One error for the run that blames ``party``: each line is that party's own report or
    a peer's report naming it (the client drops knock-on lines: a peer that lost the
    worker of a party that had itself stopped the run over the fault). No line is a bare
    timeout; ``words`` appear in the lines that name ``party``."""
    assert isinstance(error, ConsortiumError), error
    text = str(error)
    blamed = [e for e in error.errors if e.party == party or party in e.message]
    assert blamed, text
    for line in error.errors:
        assert not isinstance(line, RunTimeout), text
        assert line in blamed, text
    for word in words:
        assert any(word in str(e) for e in blamed), text


def mid_run(c: Consortium, party: str = VICTIM) -> tuple[BackgroundRun, psutil.Process]:
    """A run in the background, once ``party``'s worker has linked ("connect")."""
    run = BackgroundRun(c, plan_of(c))
    worker = wait_for(lambda: worker_of(c, party), timeout=30)
    wait_for(lambda: (party, "connect") in run.phases or run.error is not None, timeout=30)
    assert run.error is None and run.thread.is_alive(), "the run ended before the fault"
    return run, worker


def report(name: str, seconds: float) -> None:
    print(f"\n{name}: error after {seconds:.1f} s")


# --------------------------------------------------------------------------- 1: kernel killed


def test_a_killed_kernel_is_named_and_its_restart_serves_the_next_run(data, root):
    """Its kernel is gone for good, so "the next analysis" is the honest one: the party's
    operator restarts it over the same folder (a new LocalParties for that party alone)
    and the same client, unchanged, gets the right answer."""
    folder = root / "kernel-killed"
    write_files(folder, data)
    restarted: LocalParties | None = None
    with start(folder, data) as c:
        try:
            answers(c, data)
            run, worker = mid_run(c)
            killed_at = time.monotonic()
            os.kill(kernel_pid(c, VICTIM), signal.SIGKILL)
            run.join(FAIL_FAST + 5)
            assert run.failed_at is not None, "the run should fail"
            report("kernel SIGKILL", run.failed_at - killed_at)
            assert run.failed_at - killed_at < FAIL_FAST
            assert_one_error_naming(run.error, VICTIM)
            c.local_parties.procs[VICTIM].wait(10)
            wait_for(lambda: gone(worker.pid), timeout=10)  # orphaned: it stops itself
            wait_for(lambda: not workers_under(folder), timeout=10)
            # and so does its idle spare: the dead kernel's end of its stdin closed
            wait_for(lambda: not workers_under(folder / "state" / VICTIM, spares=True),
                     timeout=10)
            with pytest.raises(ConsortiumError, match=rf"\[{VICTIM}\] cannot reach"):
                c.run(plan_of(c), progress=False)
            restarted = LocalParties(folder, [VICTIM])
            restarted.wait_ready(60)
            answers(c, data)
        finally:
            if restarted is not None:
                restarted.stop()
    assert not workers_under(folder, spares=True)


# --------------------------------------------------------------------------- 2-4: crashes, stalls


def test_a_killed_worker_is_named_and_the_next_run_succeeds(consortium, data, root):
    run, worker = mid_run(consortium)
    killed_at = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    run.join(FAIL_FAST + 5)
    assert run.failed_at is not None, "the run should fail"
    report("worker SIGKILL", run.failed_at - killed_at)
    assert run.failed_at - killed_at < FAIL_FAST
    assert_one_error_naming(run.error, VICTIM)
    wait_for(lambda: not workers_under(root), timeout=10)
    answers(consortium, data)


def test_a_stopped_worker_is_named_stalled_and_the_next_run_succeeds(consortium, data, root):
    run, worker = mid_run(consortium)
    stopped_at = time.monotonic()
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        run.join(STALL + 10)
        assert run.failed_at is not None, "a stalled worker must fail the run"
        report("worker SIGSTOP", run.failed_at - stopped_at)
        assert run.failed_at - stopped_at < STALL + 10  # the run's deadline is 600 s
        assert_one_error_naming(run.error, VICTIM, "stalled", f"for {STALL:g} s")
        wait_for(lambda: gone(worker.pid), timeout=10)  # the client's cancel killed it
    finally:
        if not gone(worker.pid):
            os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: not workers_under(root), timeout=10)
    answers(consortium, data)


def test_a_stopped_kernel_is_named_stalled_and_the_next_run_succeeds(consortium, data, root):
    run, _ = mid_run(consortium)
    kernel = kernel_pid(consortium, VICTIM)
    stopped_at = time.monotonic()
    os.kill(kernel, signal.SIGSTOP)
    try:
        run.join(STALL + 10)
        took = (run.failed_at or time.monotonic()) - stopped_at
    finally:
        os.kill(kernel, signal.SIGCONT)
    run.join(60)  # resumed, the kernel answers the cancel at once
    assert run.failed_at is not None, "a stalled kernel must fail the run"
    report("kernel SIGSTOP", run.failed_at - stopped_at)
    assert_one_error_naming(run.error, VICTIM, "stalled", f"for {STALL:g} s")
    wait_for(lambda: not workers_under(root), timeout=10)
    answers(consortium, data)
    assert took < STALL + 10, f"the error came {took:.1f} s after the kernel stopped"


# --------------------------------------------------------------------------- 5: strays


def stray(port: int, payload: bytes) -> None:
    """Connect to an MPC port, send ``payload`` (maybe nothing) and close."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if payload:
                s.sendall(payload)
    except OSError:
        pass


def test_stray_peers_at_the_mpc_ports_do_not_disturb_a_run(consortium, data, root):
    """While a run goes, connections to every kernel's MPC port that close at once, send
    garbage, send an unsigned header for the running run, or a header signed with a
    party's own key (a confused party's stray worker) and close."""
    jobs = {p.name: root / "shared" / "state" / p.name / "jobs" for p in consortium.config.parties}
    done = threading.Event()
    sent = {"close": 0, "garbage": 0, "header": 0}
    keys = {p: Identity.from_prefix(root / "shared" / KEYS / p) for p in consortium.names}

    def harass() -> None:
        while not done.is_set():
            for index, party in enumerate(consortium.config.parties):
                stray(party.mpc_port, b"")
                stray(party.mpc_port, secrets.token_bytes(200))
                sent["close"] += 1
                sent["garbage"] += 1
                for run_id in (os.listdir(jobs[party.name]) if jobs[party.name].is_dir()
                               else []):
                    stray(party.mpc_port, f"PPA-MPC/1 {run_id} 0\n".encode())
                    for sender in range(index):
                        signer = keys[consortium.names[sender]]
                        stray(party.mpc_port, format_header(run_id, sender, index, signer))
                        sent["header"] += 1
            time.sleep(0.01)

    log = consortium.local_parties.stderr["bureau"]
    since = log.stat().st_size
    thread = threading.Thread(target=harass, daemon=True)
    thread.start()
    try:
        answers(consortium, data)
    finally:
        done.set()
        thread.join(10)
    assert sent["header"] > 0 and sent["garbage"] > 0, sent
    with log.open("rb") as fh:  # strays reached this run's worker itself, and failed
        fh.seek(since)
        assert b"MPC connection dropped" in fh.read()


# --------------------------------------------------------------------------- 6: replay


class Raw:
    """A TLS connection to one kernel as a pinned analyst (as test_protocol_hostile)."""

    def __init__(self, c: Consortium, party: str, timeout: float = 10.0):
        self.channel = Channel(*_address(c, party), c.identity, c.config.party(party).pin,
                               timeout)
        self.timeout = timeout

    def send(self, line: bytes) -> None:
        self.channel.sock.sendall(line)

    def until(self, *events: str) -> dict:
        """The next reply whose event is one of ``events`` (progress and alive skipped)."""
        while True:
            reply = self.channel.receive(timeout=self.timeout)
            if reply.get("event") in events:
                return reply

    def close(self) -> None:
        self.channel.close()


def _address(c: Consortium, party: str) -> tuple[str, int]:
    address = c.config.party(party)
    return address.host, address.port


def audit(root: Path, party: str) -> list[dict]:
    path = root / "shared" / "state" / party / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_replayed_run_request_is_refused_and_nothing_runs_twice(consortium, data, root):
    plan = consortium.prepare(plan_of(consortium))
    run_id = secrets.token_hex(8)
    lines = {p: encode(request("run", consortium.identity, p, run_id=run_id, plan=plan,
                               plan_hash=plan_hash(plan), timeout=60)) for p in PARTIES}
    first = {p: Raw(consortium, p) for p in PARTIES}
    replays: list[Raw] = []
    try:
        for p in PARTIES:
            first[p].send(lines[p])
        for p in PARTIES:  # the same bytes again, on a new connection, while it runs
            again = Raw(consortium, p)
            replays.append(again)
            again.send(lines[p])
            assert "replayed request" in again.until("error")["error"]["message"]
        results = {p: first[p].until("result", "error") for p in PARTIES}
        assert all(r["event"] == "result" for r in results.values()), results
        for p in PARTIES:  # and once more on the connection it ran on, after the run
            first[p].send(lines[p])
            assert "replayed request" in first[p].until("error")["error"]["message"]
    finally:
        for conn in [*first.values(), *replays]:
            conn.close()
    stats = {json.dumps(r["result"]["stats"], sort_keys=True) for r in results.values()}
    assert len(stats) == 1  # every party released the same
    for p in PARTIES:
        log = wait_for(lambda p=p: [r for r in audit(root, p) if r.get("run_id") == run_id]
                       if any(r["event"] == "run_completed" and r.get("run_id") == run_id
                              for r in audit(root, p)) else None, timeout=10)
        events = [r["event"] for r in log]
        assert events.count("plan_accepted") == 1 and events.count("run_completed") == 1, events
    answers(consortium, data)


# --------------------------------------------------------------------------- 7: identities


def test_an_unknown_analyst_is_refused_by_every_party(consortium, tmp_path):
    mallory = create_identity(tmp_path, "analyst")  # the pinned name, not the pinned key
    with pytest.raises(ConsortiumError, match="without answering") as info:
        Consortium(consortium.config, identity=mallory, connect_timeout=5)
    assert all(f"[{p}]" in str(info.value) for p in PARTIES)
    assert len(info.value.errors) == len(PARTIES)


def test_an_expired_pinned_analyst_is_refused(consortium, root, monkeypatch):
    keys = root / "shared" / KEYS
    bob = Consortium(consortium.config, identity=keys / BOB, connect_timeout=5)
    assert bob.status(timeout=5)["reachable"].all()  # a second pinned analyst is served
    expired = Identity.from_prefix(keys / EXPIRED)
    assert expired.certificate.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    with pytest.raises(IdentityError, match="not valid now"):  # the client's own check
        Consortium(consortium.config, identity=keys / EXPIRED, connect_timeout=5)
    with pytest.raises(IdentityError, match="not valid now"):
        Consortium(consortium.config, identity=expired, connect_timeout=5)
    monkeypatch.setattr(Identity, "check_valid", lambda self: None)  # a client that skips it
    with pytest.raises(ConsortiumError) as info:  # the kernels' check of the same certificate
        Consortium(consortium.config, identity=expired, connect_timeout=5)
    assert all(f"[{p}]" in str(info.value) for p in PARTIES)
    assert len(info.value.errors) == len(PARTIES)
    assert "still valid" in str(info.value)


def test_a_kernel_with_another_partys_certificate_is_refused_naming_the_party(consortium):
    first, second, third = consortium.config.parties
    swapped = [replace(first, port=second.port), replace(second, port=first.port), third]
    forged = ConsortiumConfig(consortium.config.name, swapped, consortium.config.link_salt)
    with pytest.raises(ConsortiumError) as info:
        Consortium(forged, identity=consortium.identity, connect_timeout=5)
    text = str(info.value)
    assert {e.party for e in info.value.errors} == {first.name, second.name}, text
    assert f"[{first.name}] TLS with the kernel" in text
    assert f"[{second.name}] TLS with the kernel" in text


# --------------------------------------------------------------------------- after all faults


def test_no_worker_processes_remain(consortium, data, root):
    answers(consortium, data)
    wait_for(lambda: not workers_under(root), timeout=10)
