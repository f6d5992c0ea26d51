"""Bounded waiting for tests that watch real processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

from ppa_kernel import ConsortiumError


def is_busy_worker(proc) -> bool:
    """Whether a ``ppa_kernel.cli worker`` process (a psutil.Process) serves a run: a
    busy worker works in its run's folder ``jobs/<run_id>``; a kernel's idle spare waits
    in ``jobs`` itself (see ``ppa_kernel.party.runs``)."""
    try:
        return " worker " in " ".join(proc.cmdline()) and \
            Path(proc.cwd()).parent.name == "jobs"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def workers_under(root: Path, *, spares: bool = False) -> list[psutil.Process]:
    """Every live MPC worker on this machine serving a run of a kernel under ``root``
    (ours only: other test sessions may run workers of their own at the same time);
    with ``spares``, the kernels' idle spare workers too."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if " worker " in line and str(root) in line and (spares or is_busy_worker(proc)):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
    return found


def wait_for(predicate, timeout: float = 30.0, step: float = 0.02):
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, else fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


class BackgroundRun:
    """A plan run in a thread: each party's phases as they arrive, and the error it ends in."""

    def __init__(self, consortium, plan: dict):
        self.phases: list[tuple[str, str]] = []
        self.error: ConsortiumError | None = None
        self.failed_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(consortium, plan), daemon=True)
        self.thread.start()

    def _run(self, consortium, plan: dict) -> None:
        try:
            consortium.run(plan, progress=lambda party, phase, _: self.phases.append(
                (party, phase)))
        except ConsortiumError as exc:
            self.error, self.failed_at = exc, time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
