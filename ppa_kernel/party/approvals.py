"""Who approves a plan at this party, by the policy's ``approval`` mode.

* ``auto``   -- the policy's rules decide (the plan passed them: it runs);
* ``manual`` -- the plan waits here until one of the party's reviewers approves or rejects
  it, with a reason, or until ``approval_wait`` seconds have passed (then it expires);
* ``pinned`` -- only plans a reviewer pinned in advance run: by exact hash, or as a
  template whose listed numbers (papermill parameters, say) may vary within ranges. Any
  other plan is refused, and kept for the reviewers so they can pin it.

Every decision is recorded in the audit log. Pins live in ``approvals.json`` in the state
folder (0600) and expire; pending plans live only as long as the analyst's run waits.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppa_kernel.contract.errors import PartyFailed, PlanError, PolicyRefused, PPAError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.protocol import HEARTBEAT_INTERVAL

from .audit import AuditLog

logger = logging.getLogger(__name__)

MODES = ("auto", "manual", "pinned")
MAX_PENDING = 64
"""Plans waiting for a reviewer at once (the run queue bounds them too); one analyst's at
most half of them."""
MAX_KEPT = 100
"""Decided and refused-unpinned plans kept for the reviewers' list."""
MAX_PINS = 1000
MAX_PARAMS = 32
MAX_REASON = 2000
STORE = "approvals.json"
MAX_STORE = 32 * 1024 * 1024
"""Bytes the pins may take in the state folder (a plan is at most about 1 MiB)."""


@dataclass
class Review:
    """A plan a reviewer can act on: waiting (manual) or refused as not pinned."""

    id: str
    plan: dict
    plan_hash: str
    analyst: str
    asked: float
    status: str = "waiting"  # waiting | approved | rejected | expired | cancelled | unpinned
    reviewer: str | None = None
    reason: str | None = None
    decided: float | None = None
    expires: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "plan_hash": self.plan_hash, "analyst": self.analyst,
                "asked": self.asked, "status": self.status, "reviewer": self.reviewer,
                "reason": self.reason, "decided": self.decided, "expires": self.expires}


@dataclass
class Pin:
    """A reviewer's advance approval: a plan, and the numbers in it that may vary."""

    id: str
    plan: dict
    plan_hash: str
    params: dict[str, list[float]]  # JSON pointer -> [low, high]
    reviewer: str
    created: float
    expires: float
    reason: str = ""

    def matches(self, plan: dict, digest: str) -> bool:
        """Whether ``plan`` is this pin's plan, its parameters within their ranges."""
        if not self.params:
            return digest == self.plan_hash
        candidate = copy.deepcopy(plan)
        for pointer, (low, high) in self.params.items():
            try:
                value = resolve(candidate, pointer)
            except PlanError:
                return False
            if not _is_number(value) or not low <= value <= high:
                return False
            assign(candidate, pointer, resolve(self.plan, pointer))
        return canonical_json(candidate) == canonical_json(self.plan)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "plan"}


class Approvals:
    """This party's approvals (see the module docstring)."""

    def __init__(self, party: str, mode: str, wait: float, valid: float, state_dir: Path,
                 audit: AuditLog) -> None:
        self.party, self.audit = party, audit
        self.configure(mode, wait, valid)
        self.path = state_dir / STORE
        self.reviews: OrderedDict[str, Review] = OrderedDict()
        self.pins: dict[str, Pin] = self._load()

    def configure(self, mode: str, wait: float, valid: float) -> None:
        """Set the mode and times (at start, and when the policy is reloaded: plans
        already waiting keep waiting under the rules they started with)."""
        if mode not in MODES:
            raise ValueError(f"unknown approval mode {mode!r}")
        self.mode, self.wait, self.valid = mode, wait, valid

    # ------------------------------------------------------------------ a run's approval
    async def approve(self, run_id: str, plan: dict, digest: str, analyst: str,
                      beat: Callable[[float], Awaitable[None]]) -> list[str]:
        """Wait for this party's approval of a checked plan; return who approved it
        (``["policy"]`` in auto mode). Raises PolicyRefused when rejected, expired or not
        pinned; ``beat`` gets the seconds waited every :data:`HEARTBEAT_INTERVAL`."""
        if self.mode == "auto":
            return ["policy"]
        if self.mode == "pinned":
            return [self._pinned(run_id, plan, digest, analyst)]
        return [await self._manual(run_id, plan, digest, analyst, beat)]

    def _pinned(self, run_id: str, plan: dict, digest: str, analyst: str) -> str:
        now = time.time()
        expired = None
        for pin in self.pins.values():
            if pin.matches(plan, digest):
                if pin.expires > now:
                    self.audit.append("plan_approved", run_id=run_id, plan_hash=digest,
                                      approvers=[pin.reviewer], pin=pin.id)
                    return f"{pin.reviewer} (pin {pin.id})"
                expired = pin
        if run_id in self.reviews:  # never swap the plan a reviewer may be reading
            raise self._refused(run_id, digest, analyst, PlanError(
                f"run {run_id} was already submitted", party=self.party,
                hint="send a new run (a new run_id)"))
        self._keep(Review(run_id, plan, digest, analyst, now, status="unpinned"))
        reason = f"the pin {expired.id} that allowed this plan expired" if expired else \
            "this plan is not pinned here"
        self.audit.append("plan_not_pinned", run_id=run_id, plan_hash=digest, analyst=analyst,
                          reason=reason)
        raise PolicyRefused(f"{reason} (plan {digest[:12]})", party=self.party,
                            hint=f"ask a reviewer of {self.party} to pin it: `ppa review pin "
                                 f"{run_id}` (with --param ranges for what may vary)")

    async def _manual(self, run_id: str, plan: dict, digest: str, analyst: str,
                      beat: Callable[[float], Awaitable[None]]) -> str:
        waiting = [r.analyst for r in self.reviews.values() if r.status == "waiting"]
        if len(waiting) >= MAX_PENDING:
            raise self._refused(run_id, digest, analyst, PolicyRefused(
                f"{len(waiting)} plans already wait for a reviewer", party=self.party,
                hint="retry when some are decided"))
        if waiting.count(analyst) >= MAX_PENDING // 2:  # no analyst fills the list alone
            raise self._refused(run_id, digest, analyst, PolicyRefused(
                f"{analyst} already has {MAX_PENDING // 2} plans waiting for a reviewer",
                party=self.party, hint="retry when some of yours are decided"))
        if run_id in self.reviews:
            raise self._refused(run_id, digest, analyst, PlanError(
                f"run {run_id} was already submitted", party=self.party))
        wait = self.wait
        review = Review(run_id, plan, digest, analyst, time.time(),
                        expires=time.time() + wait)
        self._keep(review)
        self.audit.append("approval_requested", run_id=run_id, plan_hash=digest,
                          analyst=analyst, expires=review.expires)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(wait):
                while not review.done.is_set():
                    await beat(loop.time() - started)
                    try:
                        async with asyncio.timeout(HEARTBEAT_INTERVAL):
                            await review.done.wait()
                    except TimeoutError:
                        pass
        except TimeoutError:
            if review.done.is_set():  # decided in the very tick it expired: the decision holds
                pass
            else:
                review.status, review.decided = "expired", time.time()
                self.audit.append("approval_expired", run_id=run_id, plan_hash=digest,
                                  waited=round(wait, 3))
                raise PolicyRefused(f"no reviewer decided within {wait:g} s: the request "
                                    "expired", party=self.party,
                                    hint="ask the reviewers, then run it again") from None
        finally:
            if review.status == "waiting":  # the analyst cancelled or went away
                review.status, review.decided = "cancelled", time.time()
                self.audit.append("approval_withdrawn", run_id=run_id, plan_hash=digest)
        if review.status == "rejected":
            raise PolicyRefused(f"rejected by {review.reviewer}: {review.reason}",
                                party=self.party)
        if review.status == "cancelled":
            raise PartyFailed("cancelled while waiting for approval", party=self.party)
        return str(review.reviewer)

    def _refused(self, run_id: str, digest: str, analyst: str, exc: PPAError) -> PPAError:
        """Record a plan refused before any reviewer could see it; return the error."""
        self.audit.append("approval_refused", run_id=run_id, plan_hash=digest,
                          analyst=analyst, reason=exc.message)
        return exc

    def withdraw(self, run_id: str, analyst: str) -> bool:
        """The analyst cancels a plan waiting for a reviewer; whether one was waiting."""
        review = self.reviews.get(run_id)
        if review is None or review.status != "waiting" or review.analyst != analyst:
            return False
        review.status, review.decided = "cancelled", time.time()
        self.audit.append("approval_withdrawn", run_id=run_id, plan_hash=review.plan_hash)
        review.done.set()
        return True

    # ------------------------------------------------------------------ reviewers' acts
    def listing(self) -> list[dict[str, Any]]:
        """Every review item (newest first) and every pin."""
        items = [r.summary() for r in reversed(self.reviews.values())]
        now = time.time()
        pins = [{**p.summary(), "expired": p.expires <= now} for p in self.pins.values()]
        return [*items, *({"pin": True, **p} for p in pins)]

    def review(self, item: str, plan_hash: str | None = None) -> Review:
        """The review item ``item`` (PlanError if unknown). With ``plan_hash`` (the hash
        the reviewer read, or at least its first 12 digits), PlanError unless the item
        still holds that plan: a run id can come back with another plan once its old
        item left the list, and a reviewer's act must not apply to a plan never read."""
        review = self.reviews.get(str(item))
        if review is None:
            raise PlanError(f"no plan {str(item)[:64]!r} to review at {self.party}",
                            party=self.party, hint="see `ppa review list`")
        if plan_hash is not None and not (
                isinstance(plan_hash, str) and len(plan_hash) >= 12
                and review.plan_hash.startswith(plan_hash)):
            raise PlanError(f"plan {review.id} changed since you read it (its hash is now "
                            f"{review.plan_hash[:12]})", party=self.party,
                            hint="read it again (`ppa review show`) before you decide")
        return review

    def decide(self, item: str, reviewer: str, approve: bool, reason: str,
               plan_hash: str | None = None) -> Review:
        """Approve or reject a waiting plan (a rejection needs a reason); with
        ``plan_hash``, only if it is still the plan of that hash (see :meth:`review`)."""
        review = self.review(item, plan_hash)
        if review.status != "waiting":
            raise PlanError(f"plan {review.id} is {review.status}, not waiting",
                            party=self.party)
        reason = _reason(reason, required=not approve)
        review.status = "approved" if approve else "rejected"
        review.reviewer, review.reason, review.decided = reviewer, reason, time.time()
        self.audit.append("plan_approved" if approve else "plan_rejected", run_id=review.id,
                          plan_hash=review.plan_hash, approvers=[reviewer], reason=reason)
        review.done.set()
        return review

    def pin(self, item: str, reviewer: str, params: Any, valid_for: Any = None,
            reason: str = "", plan_hash: str | None = None) -> Pin:
        """Pin a reviewed plan (waiting, decided or refused as not pinned) for reruns:
        exactly, or with ``params`` (JSON pointer -> [low, high]) that may vary; with
        ``plan_hash``, only if it is still the plan of that hash."""
        review = self.review(item, plan_hash)
        if self.mode != "pinned":  # a pin would be kept and never consulted
            raise PlanError(f"{self.party} approves {self.mode}, not by pins",
                            party=self.party, hint="pins apply with approval = \"pinned\"")
        checked = check_params(review.plan, params)
        valid = self.valid if valid_for is None else _seconds(valid_for)
        if valid > self.valid:
            raise PlanError(f"a pin may hold at most {self.valid:g} s here (the policy's "
                            "approval_valid)", party=self.party,
                            hint="pin for less, or ask the owner to raise approval_valid")
        if len(self.pins) >= MAX_PINS:
            self._drop_expired()
            if len(self.pins) >= MAX_PINS:
                raise PlanError(f"{MAX_PINS} pins already", party=self.party,
                                hint="remove some with `ppa review unpin`")
        now = time.time()
        pin = Pin(secrets.token_hex(6), review.plan, review.plan_hash, checked, reviewer,
                  now, now + valid, _reason(reason, required=False))
        self.pins[pin.id] = pin
        try:
            self._save()
        except (PlanError, OSError):
            del self.pins[pin.id]  # not kept: it would not survive a restart
            raise
        self.audit.append("pin_added", pin=pin.id, plan_hash=pin.plan_hash, params=checked,
                          reviewer=reviewer, expires=pin.expires, reason=pin.reason)
        return pin

    def unpin(self, pin_id: str, reviewer: str) -> None:
        if self.pins.pop(str(pin_id), None) is None:
            raise PlanError(f"no pin {str(pin_id)[:64]!r} at {self.party}", party=self.party)
        self._save()
        self.audit.append("pin_removed", pin=str(pin_id), reviewer=reviewer)

    # ------------------------------------------------------------------ storage
    def _keep(self, review: Review) -> None:
        """Add a review item, dropping old decided ones: first the same analyst's beyond
        their share (so one analyst's refused plans cannot flush everyone's), then the
        oldest of all."""
        self.reviews[review.id] = review
        decided = [k for k, r in self.reviews.items()
                   if r.status != "waiting" and r.analyst == review.analyst]
        for key in decided[:max(0, len(decided) - MAX_KEPT // 4)]:
            del self.reviews[key]
        while len(self.reviews) > MAX_KEPT + MAX_PENDING:
            oldest = next((k for k, r in self.reviews.items() if r.status != "waiting"), None)
            if oldest is None:
                break
            del self.reviews[oldest]

    def _drop_expired(self) -> None:
        now = time.time()
        for key in [k for k, p in self.pins.items() if p.expires <= now]:
            del self.pins[key]

    def _load(self) -> dict[str, Pin]:
        if not self.path.exists():
            return {}
        try:
            if self.path.stat().st_size > MAX_STORE:
                raise ValueError(f"larger than {MAX_STORE} bytes")
            entries = json.loads(self.path.read_text(encoding="utf-8"))
            pins = {e["id"]: _checked_pin(Pin(**e)) for e in entries}
            if len(pins) > MAX_PINS:
                raise ValueError(f"more than {MAX_PINS} pins")
            return pins
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PolicyRefused(f"cannot read the pins in {self.path}: {exc}",
                                party=self.party, hint="restore the file or remove it "
                                                       "(every pin is then gone)") from None

    def _save(self) -> None:
        text = json.dumps([asdict(p) for p in self.pins.values()])
        if len(text) > MAX_STORE:
            raise PlanError(f"the pins would take more than {MAX_STORE} bytes",
                            party=self.party, hint="remove some with `ppa review unpin`")
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.path)


def _checked_pin(pin: Pin) -> Pin:
    """A pin read back from the store, its fields of the types matching expects."""
    ok = (isinstance(pin.id, str) and isinstance(pin.plan, dict)
          and isinstance(pin.plan_hash, str) and isinstance(pin.reviewer, str)
          and _is_number(pin.created) and _is_number(pin.expires)
          and isinstance(pin.params, dict)
          and all(isinstance(k, str) and isinstance(v, list) and len(v) == 2
                  and all(_is_number(b) for b in v) for k, v in pin.params.items()))
    if not ok:
        raise ValueError(f"pin {str(pin.id)[:20]!r} is malformed")
    return pin


# ---------------------------------------------------------------------- parameters
def resolve(plan: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901) in ``plan``; PlanError if there is none."""
    node = plan
    for token in _tokens(pointer):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise PlanError(f"the plan has nothing at {pointer[:120]!r}")
    return node


def assign(plan: Any, pointer: str, value: Any) -> None:
    """Set the value at an existing JSON pointer."""
    *parents, last = _tokens(pointer)
    node = resolve(plan, "".join("/" + t.replace("~", "~0").replace("/", "~1")
                                 for t in parents))
    node[int(last) if isinstance(node, list) else last] = value


def _tokens(pointer: str) -> list[str]:
    if not isinstance(pointer, str) or not pointer.startswith("/") or len(pointer) > 300:
        raise PlanError(f"malformed parameter path {str(pointer)[:120]!r}",
                        hint="a JSON pointer such as /filter/args/1/const")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def plan_numbers(plan: dict) -> dict[str, float]:
    """Every number in the plan's cohort, groups, aggregates and model, by JSON pointer:
    what a pin may let vary."""
    found: dict[str, float] = {}

    def walk(node: Any, pointer: str) -> None:
        if _is_number(node):
            found[pointer] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{pointer}/{i}")

    for key in ("filter", "groupby", "aggregates", "model"):
        walk(plan.get(key), f"/{key}")
    return found


def check_params(plan: dict, params: Any) -> dict[str, list[float]]:
    """Bounded, well-formed pin parameters: numbers of the plan, each with a range."""
    if params is None:
        return {}
    if not isinstance(params, dict) or len(params) > MAX_PARAMS:
        raise PlanError(f"parameters must be at most {MAX_PARAMS} path: [low, high] pairs")
    numbers = plan_numbers(plan)
    checked = {}
    for pointer, bounds in params.items():
        if pointer not in numbers:
            raise PlanError(f"{str(pointer)[:120]!r} is not a number of this plan",
                            hint="`ppa review show` lists them: "
                                 + ", ".join(list(numbers)[:8]))
        if not (isinstance(bounds, list | tuple) and len(bounds) == 2
                and all(_is_number(b) and math.isfinite(b) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise PlanError(f"the range of {pointer} must be [low, high] with low <= high")
        checked[pointer] = [bounds[0], bounds[1]]
    return checked


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 10 * 365 * 86400:
        raise PlanError(f"a validity must be a positive number of seconds, not {value!r}")
    return float(value)


def _reason(reason: Any, *, required: bool) -> str:
    text = "" if reason is None else str(reason)
    text = "".join(c if c.isprintable() else " " for c in text).strip()  # no escapes
    if required and not text:
        raise PlanError("a rejection needs a reason", hint="say why, for the analyst")
    if len(text) > MAX_REASON:
        raise PlanError(f"a reason may have at most {MAX_REASON} characters")
    return text
