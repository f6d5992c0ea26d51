"""Bounded waiting for tests that watch real processes."""

from __future__ import annotations

import threading
import time

from ppa_kernel import ConsortiumError


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
