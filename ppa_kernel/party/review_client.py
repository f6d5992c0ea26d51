"""A reviewer's client: list, show, approve, reject and pin the plans waiting at one party
kernel, as the reviewer identity that party's policy pins (``ppa review ...``).

Every request is signed and sent over the same mutual TLS as an analyst's; the kernel
checks the reviewer role and records every act in its audit log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ppa_kernel.contract.config import ConfigError, ConsortiumConfig, load_consortium
from ppa_kernel.contract.identity import Identity
from ppa_kernel.contract.protocol import ask

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


class ReviewClient:
    """Talks to one party's kernel as one of its reviewers."""

    def __init__(self, consortium: ConsortiumConfig | str | Path, party: str | None,
                 identity: Identity, timeout: float = DEFAULT_TIMEOUT) -> None:
        config = consortium if isinstance(consortium, ConsortiumConfig) else \
            load_consortium(consortium)
        names = [p.name for p in config.parties]
        if party is None:
            raise ConfigError("say which party's plans to review (--party)",
                              hint=f"parties are {', '.join(names)}")
        if party not in names:
            raise ConfigError(f"unknown party {party!r}", hint=f"parties are {', '.join(names)}")
        self.address = config.party(party)
        self.identity, self.timeout = identity, timeout

    def ask(self, op: str, expect: str, **fields: Any) -> dict[str, Any]:
        """Send one signed request; return the reply (the party's error is raised)."""
        party = self.address
        return ask(party.host, party.port, self.identity, party.pin, op, fields, expect,
                   timeout=self.timeout, connect_timeout=self.timeout)

    def list(self) -> dict[str, Any]:
        return self.ask("review_list", "reviews")

    def show(self, item: str) -> dict[str, Any]:
        return self.ask("review_show", "review", id=item)

    # ``plan_hash``: the hash of the plan you read; the party refuses if ``item`` no
    # longer holds that plan (a run id resent with another plan).
    def approve(self, item: str, reason: str = "",
                plan_hash: str | None = None) -> dict[str, Any]:
        return self.ask("review_approve", "decided", id=item, reason=reason,
                        plan_hash=plan_hash)

    def reject(self, item: str, reason: str, plan_hash: str | None = None) -> dict[str, Any]:
        return self.ask("review_reject", "decided", id=item, reason=reason,
                        plan_hash=plan_hash)

    def pin(self, item: str, params: dict[str, list[float]] | None = None,
            valid_for: float | None = None, reason: str = "",
            plan_hash: str | None = None) -> dict[str, Any]:
        return self.ask("review_pin", "pinned", id=item, params=params or {},
                        valid_for=valid_for, reason=reason, plan_hash=plan_hash)

    def unpin(self, pin: str) -> dict[str, Any]:
        return self.ask("review_unpin", "unpinned", pin=pin)

    def login(self) -> dict[str, Any]:
        """A one-time sign-in link to the party's reviewer web page."""
        return self.ask("review_login", "login")
