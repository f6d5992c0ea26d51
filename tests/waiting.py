"""Bounded waiting for tests that watch real processes."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30.0, step: float = 0.02):
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, else fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")
