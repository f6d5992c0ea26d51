"""The order in which a party kernel runs accepted plans: one at a time, the same order at
every party, and queued rather than refused.

Parties cannot each pick the next run from their own queue: two analysts' requests arrive
in different orders at different parties, and each party would wait for a run the others
have not started. So the first party in the consortium file sequences: it starts its
queued runs first come, first served; every other party starts a queued run when a lower
party's worker dials in for it (:meth:`RunQueue.trigger`), which happens only once that
party runs it. The runs themselves never mix: each MPC connection is bound to its run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ppa_kernel.contract.errors import PartyFailed, RunTimeout
from ppa_kernel.contract.protocol import HEARTBEAT_INTERVAL

EARLY_PER_ANALYST = 4
"""Releases (``go``) one analyst may send ahead of their runs queueing here."""


@dataclass
class Waiting:
    """A run waiting for its turn."""

    analyst: str
    triggered: bool = False
    cancelled: bool = False
    held: bool = False  # until the analyst says every party approved (:meth:`release`)


class RunQueue:
    """Runs waiting at this party, and the one running (see the module doc)."""

    def __init__(self, party: str, sequencer: bool, capacity: int) -> None:
        self.party, self.sequencer, self.capacity = party, sequencer, capacity
        self.waiting: OrderedDict[str, Waiting] = OrderedDict()
        self.active: str | None = None
        self.owners: dict[str, str] = {}  # run id -> analyst, while waiting or running
        self._early: OrderedDict[str, str] = OrderedDict()  # released before they queued
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _next(self) -> str | None:
        """The run to start now, if the party is free."""
        if self.active is not None:
            return None
        for run_id, entry in self.waiting.items():
            if (self.sequencer and not entry.held) or entry.triggered:
                return run_id
        return None

    def position(self, run_id: str) -> int:
        """How many runs are ahead of this one (the running one included)."""
        ahead = list(self.waiting).index(run_id) if run_id in self.waiting else 0
        return ahead + (self.active is not None)

    async def turn(self, run_id: str, analyst: str, timeout: float,
                   heartbeat: Callable[[int], Awaitable[None]], held: bool = False) -> None:
        """Queue the run and return once it is this party's running run; ``heartbeat``
        gets the queue position every :data:`HEARTBEAT_INTERVAL` while it waits. A
        ``held`` run does not start here until :meth:`release` (the sequencer waits for
        the analyst to report that every party approved it; the others would refuse)."""
        if run_id in self.owners:
            raise PartyFailed(f"run {run_id} is already queued", party=self.party)
        if len(self.waiting) >= self.capacity:
            raise PartyFailed(f"{len(self.waiting)} runs are already waiting", party=self.party,
                              hint="retry when some have finished")
        quota = max(1, self.capacity // 2)  # no analyst can fill the queue alone
        if sum(e.analyst == analyst for e in self.waiting.values()) >= quota:
            raise PartyFailed(f"{analyst} already has {quota} runs waiting", party=self.party,
                              hint="retry when some of yours have finished")
        held = held and self._early.pop(run_id, None) != analyst
        entry = self.waiting[run_id] = Waiting(analyst, held=held)
        self.owners[run_id] = analyst
        started = False
        loop = asyncio.get_running_loop()
        beat = loop.time() + HEARTBEAT_INTERVAL
        try:
            async with asyncio.timeout(timeout):
                while self._next() != run_id:
                    if entry.cancelled:
                        raise PartyFailed("cancelled while waiting", party=self.party)
                    if loop.time() >= beat:  # however often the queue changes
                        await heartbeat(self.position(run_id))
                        beat = loop.time() + HEARTBEAT_INTERVAL
                    # not wait_for: in Python 3.11 it can swallow a cancellation that
                    # arrives as the queue changes, and the run would then wait on
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, beat - loop.time())):
                            await self._changed.wait()
            started = True
        except TimeoutError:
            raise RunTimeout(f"waited {timeout:g} s for its turn", party=self.party,
                             hint="the parties are busy, or another party is not running it"
                             ) from None
        finally:
            del self.waiting[run_id]
            if started:
                self.active = run_id
            else:
                self.owners.pop(run_id, None)
            self._notify()

    def finish(self, run_id: str) -> None:
        """The running run has ended (in any way)."""
        if self.active == run_id:
            self.active = None
        self.owners.pop(run_id, None)
        self._notify()

    def trigger(self, run_id: str) -> bool:
        """A lower party's worker asks for ``run_id``: start it when free; whether known."""
        entry = self.waiting.get(run_id)
        if entry is None:
            return self.active == run_id
        entry.triggered = True
        self._notify()
        return True

    async def until_active(self, run_id: str, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``run_id`` runs; False if it ended or never did."""
        try:
            async with asyncio.timeout(timeout):
                while self.active != run_id:
                    if run_id not in self.waiting:
                        return False
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def release(self, run_id: str, analyst: str) -> bool:
        """The analyst reports every party approved ``run_id``: it may start; whether it
        is (or, arriving before the run queued here, will be) released."""
        entry = self.waiting.get(run_id)
        if entry is None:
            if run_id in self.owners:
                return False  # running already
            mine = [k for k, who in self._early.items() if who == analyst]
            if len(mine) >= EARLY_PER_ANALYST:  # one analyst cannot evict another's
                del self._early[mine[0]]
            self._early[run_id] = analyst
            while len(self._early) > self.capacity:
                self._early.popitem(last=False)
            return True
        if entry.analyst != analyst:
            return False
        entry.held = False
        self._notify()
        return True

    def cancel(self, run_id: str) -> bool:
        """Take a waiting run out of the queue; whether it was waiting."""
        entry = self.waiting.get(run_id)
        if entry is None:
            return False
        entry.cancelled = True
        self._notify()
        return True
