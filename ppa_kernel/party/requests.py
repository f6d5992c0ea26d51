"""Who may ask a party kernel what, and the refusal of replayed requests.

A request reaches the kernel over mutual TLS from a client whose certificate the party's
policy pins for an analyst (:class:`~ppa_kernel.contract.config.Analyst`). The kernel then
checks, in :meth:`RequestGuard.check`, that the request names that analyst and this party,
is signed with the analyst's key, is fresh (its time within :data:`MAX_REQUEST_AGE` of the
kernel's clock and not before the kernel started) and carries a nonce not seen before,
and that the analyst's role allows the operation.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from typing import Any

from ppa_kernel.contract.config import Analyst
from ppa_kernel.contract.errors import PolicyRefused, ProtocolError
from ppa_kernel.contract.identity import IdentityError, verify
from ppa_kernel.contract.protocol import NONCE_HEX

MAX_REQUEST_AGE = 120.0
"""Seconds a request's time may lie behind (or ahead of) the kernel's clock."""

MAX_NONCES = 100_000
"""Live nonces remembered; beyond this the kernel refuses requests until some expire."""

OPERATIONS = {"hello": {"analyst", "reviewer"}, "check": {"analyst"}, "run": {"analyst"},
              "cancel": {"analyst"}, "go": {"analyst"},
              **{f"review_{act}": {"reviewer"}
                 for act in ("list", "show", "approve", "reject", "pin", "unpin", "login")}}
"""Which roles may send each request. Stopping a kernel is not a request: it is the local
operator's (SIGTERM, ``ppa party stop``)."""

_NONCE = re.compile(f"[0-9a-f]{{{NONCE_HEX}}}")


class Nonces:
    """The nonces seen within ``max_age`` seconds (older ones are refused as stale anyway),
    at most ``capacity`` of them, forgotten in the order they expire."""

    def __init__(self, max_age: float, capacity: int) -> None:
        self.max_age, self.capacity = max_age, capacity
        self.seen: dict[str, float] = {}  # nonce -> time it expires
        self.expiry: list[tuple[float, str]] = []  # a heap of (expiry, nonce)

    def remember(self, nonce: str, stamp: float, now: float) -> str | None:
        """Keep a new nonce (None), or say why not: ``"seen"`` or ``"full"``."""
        self.forget(now)
        if nonce in self.seen:
            return "seen"
        if len(self.seen) >= self.capacity:
            return "full"
        self.seen[nonce] = expires = stamp + self.max_age
        heapq.heappush(self.expiry, (expires, nonce))
        return None

    def forget(self, now: float) -> None:
        """Drop the nonces that have expired by ``now``."""
        while self.expiry and self.expiry[0][0] < now:
            _, nonce = heapq.heappop(self.expiry)
            self.seen.pop(nonce, None)


class RequestGuard:
    """Checks every request's sender, signature, freshness and nonce (see the module doc)."""

    def __init__(self, party: str, *, max_age: float = MAX_REQUEST_AGE,
                 capacity: int = MAX_NONCES, started: float | None = None) -> None:
        self.party, self.max_age, self.capacity = party, max_age, capacity
        self.started = time.time() if started is None else started
        self.nonces = Nonces(max_age, capacity)

    def check(self, request: dict[str, Any], analyst: Analyst,
              now: float | None = None) -> None:
        """Refuse ``request`` from the TLS peer ``analyst`` unless it passes every check."""
        now = time.time() if now is None else now
        op = request.get("op")
        if request.get("analyst") != analyst.name:
            raise ProtocolError(f"request names analyst {str(request.get('analyst'))[:64]!r} "
                                f"but comes from {analyst.name}")
        if request.get("party") != self.party:
            raise ProtocolError(f"request is meant for {str(request.get('party'))[:64]!r}, "
                                f"not {self.party}", hint="a request is signed for one party")
        try:
            verify(request, analyst.pin)
        except IdentityError as exc:
            raise ProtocolError(exc.message) from None
        stamp, nonce = request.get("time"), request.get("nonce")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool) or \
                not math.isfinite(stamp):
            raise ProtocolError("request has no valid time")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise ProtocolError("request has no valid nonce",
                                hint=f"a nonce is {NONCE_HEX} lowercase hex digits")
        if analyst.role not in OPERATIONS.get(str(op), set()):  # before it costs memory
            raise PolicyRefused(f"{analyst.name} ({analyst.role}) may not send {op!r}",
                                party=self.party)
        if abs(now - stamp) > self.max_age:
            raise ProtocolError(f"stale request: made {now - stamp:+.0f} s from now, outside "
                                f"±{self.max_age:g} s", hint="check the clocks, then retry")
        if stamp < self.started:
            raise ProtocolError("request was made before this kernel started (a replay?)",
                                hint="send a new request")
        refused = self.nonces.remember(nonce, stamp, now)
        if refused == "seen":
            raise ProtocolError("replayed request (its nonce was seen before)")
        if refused == "full":
            raise ProtocolError("too many requests; retry in a minute")

    def _forget(self, now: float) -> None:
        self.nonces.forget(now)
