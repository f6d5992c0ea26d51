"""The client's wait for one party, without kernels: whose fault a timeout is, and a progress
callback that stops the run."""

from __future__ import annotations

import threading
import time

import pytest

from ppa_kernel.analyst.client import Consortium, RunOutcome
from ppa_kernel.contract.config import PartyAddress
from ppa_kernel.contract.errors import PartyFailed, PPAError, RunTimeout


class SilentChannel:
    """A connection that never answers: every receive times out."""

    def send(self, message: dict) -> None:
        pass

    def receive(self, timeout: float) -> dict:
        time.sleep(timeout)
        raise TimeoutError

    def close(self) -> None:
        pass


@pytest.fixture
def client(monkeypatch) -> Consortium:
    c = Consortium.__new__(Consortium)
    c.stall_timeout = 30.0
    monkeypatch.setattr(c, "_connect", lambda party: SilentChannel(), raising=False)
    monkeypatch.setattr(c, "_signed", lambda op, party, fields: {}, raising=False)
    return c


class TalkingChannel(SilentChannel):
    """A connection that reports progress once, then nothing."""

    def __init__(self) -> None:
        self.events = [{"event": "progress", "phase": "input", "elapsed": 1.0}]

    def receive(self, timeout: float) -> dict:
        return self.events.pop() if self.events else super().receive(timeout)


def follow(client: Consortium, another_party_failed: bool = False,
           report=None) -> RunOutcome:
    outcome = RunOutcome("r" * 16, {})
    outcome.deadline = time.monotonic() + 0.2
    failed = threading.Event()
    if another_party_failed:
        outcome.fail("bureau", PartyFailed("the MPC worker of hospital has sent nothing",
                                           party="bureau"))
        failed.set()
    party = PartyAddress("hospital", "127.0.0.1", 1, 2, pin=None)  # never dialled
    client._follow_run(party, {}, outcome, failed, report)
    return outcome


def test_a_silent_party_past_the_run_deadline_is_a_timeout(client) -> None:
    outcome = follow(client, another_party_failed=False)
    assert isinstance(outcome.errors.get("hospital"), RunTimeout), outcome.errors


def test_the_grace_after_another_partys_error_blames_nobody_else(client) -> None:
    outcome = follow(client, another_party_failed=True)
    assert "hospital" not in outcome.errors, outcome.errors
    assert set(outcome.errors) == {"bureau"}


def test_a_callback_that_stops_the_run_ends_the_wait_cleanly(client, monkeypatch) -> None:
    class Stop(PPAError):
        pass

    def report(*event) -> None:
        raise Stop("the analyst cancelled the run")

    monkeypatch.setattr(client, "_connect", lambda party: TalkingChannel(), raising=False)
    outcome = follow(client, report=report)  # raising from the thread fails this test
    assert isinstance(outcome.errors.get("hospital"), Stop), outcome.errors


class ApprovingChannel(SilentChannel):
    """A connection that approves the run once, then says nothing."""

    def __init__(self) -> None:
        self.events = [{"event": "approved", "approvers": ["auto"]}]

    def receive(self, timeout: float) -> dict:
        return self.events.pop() if self.events else super().receive(timeout)


def test_a_refused_go_fails_the_run_at_once(client, monkeypatch) -> None:
    """When every party approved but the first refuses ``go``, the run has failed: the
    wait ends at once (not at the deadline), and the error names the first party."""
    party = PartyAddress("hospital", "127.0.0.1", 1, 2, pin=None)  # never dialled
    client.config = type("Config", (), {"parties": [party]})()
    client.connect_timeout = 1.0
    client.stall_timeout = 0.5

    def request(party, op, fields, expect, **kwargs):
        raise PartyFailed("the kernel restarted and forgot the run")

    monkeypatch.setattr(client, "_connect", lambda party: ApprovingChannel(), raising=False)
    monkeypatch.setattr(client, "_request", request, raising=False)
    outcome = RunOutcome("r" * 16, {})
    outcome.deadline = time.monotonic() + 60
    failed = threading.Event()
    worker = threading.Thread(target=client._follow_run,
                              args=(party, {"hold": True, "timeout": 5}, outcome, failed, None))
    worker.start()
    assert failed.wait(5), "a refused go must mark the run failed"
    assert outcome.errors["hospital"].party == "hospital"
    assert "forgot the run" in str(outcome.errors["hospital"])
    outcome.closed = True
    worker.join(timeout=35)
