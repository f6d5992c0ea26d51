"""Attacks on owner governance: a hostile analyst, a careless reviewer and a web attacker
against approval modes, pins and the reviewer's page, and what refuses each.

One local consortium for the module (insurer auto, hospital manual with a reviewer page,
bureau pinned; analysts ``analyst`` and ``mallory``, reviewer ``rita``). Most attacks need
no MPC: a run request to one party stops at its approval, so they cost milliseconds.
The approval logic is also attacked in-process (:class:`Approvals` on a scratch audit log).
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import math
import re
import secrets
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.local import free_ports
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import PlanError, PolicyRefused
from ppa_kernel.contract.identity import Identity
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.protocol import Channel, request
from ppa_kernel.party.approvals import Approvals, Pin, check_params
from ppa_kernel.party.audit import AuditLog
from ppa_kernel.party.review_client import ReviewClient
from ppa_kernel.party.schedule import RunQueue

pytestmark = pytest.mark.timeout(120)
REVIEWER, MALLORY = "rita", "mallory"
AGE = "/filter/args/1/const"
FINAL = {"error", "result", "cancelled", "go", "reviews", "review", "decided", "pinned",
         "unpinned", "login", "approved"}


# ---------------------------------------------------------------------- the consortium
@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    data = generate(n_core=60, seed=7, insurer_extra=0.2, bureau_extra=0.2,
                    hospital_extra=0.1)
    (port,) = free_ports(1)
    policies = {"insurer": {"approval": "auto", "differencing": False},
                "hospital": {"approval": "manual", "approval_wait": 8,
                             "differencing": False},
                "bureau": {"approval": "pinned", "differencing": False}}
    with Consortium.local(data, workdir=tmp_path_factory.mktemp("governance"),
                          policies=policies, analysts=(MALLORY,), reviewers=(REVIEWER,),
                          party_options={"hospital": {"review_port": port}}) as c:
        yield c


def identity(c: Consortium, name: str) -> Identity:
    return Identity.from_prefix(c.local_parties.folder / "keys" / name)


def reviewer(c: Consortium, party: str) -> ReviewClient:
    return ReviewClient(c.config, party, identity(c, REVIEWER))


def plan_for(c: Consortium, age: int = 40, name: str | None = None) -> dict:
    t = c.link()
    plan = c.prepare(t[t.age >= age].groupby("sex").agg(n=("cost_2021", "count")).plan())
    if name is not None:
        plan["aggregates"][0]["name"] = name
    return plan


def send(c: Consortium, party: str, who: str, op: str, wait: float = 10.0,
         **fields) -> list[dict]:
    """One signed request from ``who`` to ``party``; its replies up to the final one
    (progress and heartbeats left out)."""
    address, ident = c.config.party(party), identity(c, who)
    channel = Channel(address.host, address.port, ident, address.pin, 10)
    replies: list[dict] = []
    try:
        channel.send(request(op, ident, party, **fields))
        while True:
            reply = channel.receive(timeout=wait)
            if reply.get("event") not in ("progress", "alive"):
                replies.append(reply)
            if reply.get("event") in FINAL - {"approved"}:
                return replies
    finally:
        channel.close()


def run_request(plan: dict, run_id: str | None = None, **extra) -> dict:
    return {"run_id": run_id or secrets.token_hex(8), "plan": plan,
            "plan_hash": plan_hash(plan), **extra}


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["replies"] = fn(*args, **kwargs)
        except Exception as exc:  # the test reads it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def until_listed(client: ReviewClient, run_id: str, status: str = "waiting") -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for item in client.list()["items"]:
            if item.get("id") == run_id and item.get("status") == status:
                return item
        time.sleep(0.05)
    raise AssertionError(f"{run_id} never listed as {status}")


def wait_at_hospital(c: Consortium, plan: dict, who: str = "analyst"):
    """A run request that waits for the hospital's reviewer; (run_id, thread, box)."""
    fields = run_request(plan, timeout=60)
    thread, box = in_background(send, c, "hospital", who, "run", wait=70, **fields)
    until_listed(reviewer(c, "hospital"), fields["run_id"])
    return fields["run_id"], thread, box


def audit_events(c: Consortium, party: str, run_id: str) -> list[str]:
    import json

    path = c.local_parties.folder / "state" / party / "audit.jsonl"
    return [r["event"] for r in map(json.loads, path.read_text().splitlines())
            if r.get("run_id") == run_id]


# ---------------------------------------------------------------------- in-process approvals
async def _no_beat(_waited: float) -> None:
    return None


def scratch(tmp_path: Path, mode: str = "manual") -> Approvals:
    return Approvals("hospital", mode, 30.0, 3600.0, tmp_path, AuditLog(tmp_path / "a.jsonl"))


def variant(plan: dict, i: int) -> dict:
    other = copy.deepcopy(plan)
    other["filter"]["args"][1]["const"] = 20 + i % 50
    other["aggregates"][0]["name"] = f"n{i}"
    return other


# ---------------------------------------------------------------------- refused attacks
def test_skipping_hold_and_going_early_runs_nothing_at_a_manual_party(consortium):
    """The analyst releases the sequencer at once and never holds: the insurer starts,
    but the hospital starts no worker for a plan its reviewer has not approved."""
    c, plan = consortium, plan_for(consortium, 41)
    fields = run_request(plan, timeout=3)
    assert send(c, "insurer", "analyst", "go", run_id=fields["run_id"])[-1]["released"]
    hospital_thread, hospital = in_background(send, c, "hospital", "analyst", "run", **fields)
    insurer = send(c, "insurer", "analyst", "run", **fields)
    hospital_thread.join(15)
    assert insurer[0]["event"] == "approved" and insurer[-1]["event"] == "error"
    assert "expired" in hospital["replies"][-1]["error"]["message"]
    assert audit_events(c, "hospital", fields["run_id"]) == [
        "plan_accepted", "approval_requested", "approval_expired"]


def test_a_stranger_can_neither_cancel_nor_decide_a_waiting_plan(consortium):
    c = consortium
    run_id, thread, box = wait_at_hospital(c, plan_for(c, 42))
    assert send(c, "hospital", MALLORY, "cancel", run_id=run_id)[-1]["killed"] is False
    refused = send(c, "hospital", MALLORY, "review_approve", id=run_id)[-1]
    assert refused["error"]["type"] == "PolicyRefused" and "may not send" in \
        refused["error"]["message"]
    same_id = send(c, "hospital", MALLORY, "run", **run_request(plan_for(c, 43), run_id))
    assert "already submitted" in same_id[-1]["error"]["message"]
    hospital = reviewer(c, "hospital")
    assert until_listed(hospital, run_id)["analyst"] == "analyst"
    for blank in ("", "   \n\t"):
        with pytest.raises(PlanError, match="needs a reason"):
            hospital.reject(run_id, blank)
    hospital.reject(run_id, "not in the DPIA")
    thread.join(10)
    assert "rejected by rita: not in the DPIA" in box["replies"][-1]["error"]["message"]
    for act in (lambda: hospital.approve(run_id), lambda: hospital.reject(run_id, "again")):
        with pytest.raises(PlanError, match="rejected, not waiting"):
            act()


def test_a_cancelled_or_expired_plan_cannot_be_decided(tmp_path):
    approvals = scratch(tmp_path)

    async def main() -> None:
        plan = {"filter": None, "groupby": [], "aggregates": [], "model": None}
        task = asyncio.ensure_future(approvals.approve("aa" * 8, plan, "h" * 64, "analyst",
                                                       _no_beat))
        await asyncio.sleep(0.01)
        assert not approvals.withdraw("aa" * 8, MALLORY)  # not mallory's
        assert approvals.withdraw("aa" * 8, "analyst")
        with pytest.raises(Exception, match="cancelled"):
            await task
        with pytest.raises(PlanError, match="cancelled, not waiting"):
            approvals.decide("aa" * 8, REVIEWER, True, "")
        approvals.configure("manual", 0.05, 3600.0)  # a reviewer's 50 ms pass by
        with pytest.raises(PolicyRefused, match="expired"):
            await approvals.approve("bb" * 8, plan, "h" * 64, "analyst", _no_beat)
        approvals.configure("manual", 30.0, 3600.0)
        with pytest.raises(PlanError, match="expired, not waiting"):
            approvals.decide("bb" * 8, REVIEWER, True, "")
        with pytest.raises(PlanError, match="already submitted"):  # no second chance
            await approvals.approve("bb" * 8, plan, "h" * 64, "analyst", _no_beat)

    asyncio.run(main())


def test_an_early_go_from_a_stranger_releases_nothing():
    async def main() -> None:
        queue = RunQueue("insurer", sequencer=True, capacity=8)
        assert queue.release("cc" * 8, MALLORY)  # before the run queues: remembered
        turn = asyncio.ensure_future(queue.turn("cc" * 8, "analyst", 0.3, _no_beat,
                                                held=True))
        await asyncio.sleep(0.05)
        assert not queue.release("cc" * 8, MALLORY) and queue.active is None
        with pytest.raises(Exception, match="waited"):
            await turn

    asyncio.run(main())


def test_pin_parameters_refuse_pointer_tricks_and_odd_numbers(consortium):
    plan = plan_for(consortium, 40)
    assert check_params(plan, {AGE: [30, 60]}) == {AGE: [30, 60]}
    tricks = ["/filter/args/01/const", "/filter/args/-/const", "/filter/args/1/const/",
              "/filter~1args/1/const", "filter/args/1/const", "/filter/args/1", "",
              "/filter/args/0/col", "/min_cell_size", "/disclosure/dominance_k",
              "/filter/args/1/const" + "/x" * 200]
    for pointer in tricks:
        with pytest.raises(PlanError):
            check_params(plan, {pointer: [30, 60]})
    for bounds in ([math.nan, 60], [30, math.inf], [60, 30], [True, 60], ["30", 60], [30],
                   (30, 60, 90), None, "30:60"):
        with pytest.raises(PlanError):
            check_params(plan, {AGE: bounds})
    with pytest.raises(PlanError):
        check_params(plan, [[AGE, 30, 60]])


def test_pin_templates_match_only_their_own_plan(consortium):
    c = consortium
    plan = plan_for(c, 40)
    pin = Pin("p1", plan, plan_hash(plan), {AGE: [30, 60]}, REVIEWER, 0, 1e12)

    def with_age(value):
        other = copy.deepcopy(plan)
        other["filter"]["args"][1]["const"] = value
        return other

    assert pin.matches(with_age(55), plan_hash(with_age(55)))
    assert pin.matches(with_age(30.5), "x")
    for value in (29, 61, True, "45", None, [45], {"const": 45}):
        assert not pin.matches(with_age(value), "x"), value
    changed = []
    for path, value in (("min_cell_size", 1), ("link", ["insurer", "hospital"]),
                        ("model", {"kind": "ttest"})):
        other = copy.deepcopy(plan)
        other[path] = value
        changed.append(other)
    extra = copy.deepcopy(plan)
    extra["aggregates"].append({**extra["aggregates"][0], "name": "n2"})
    other_op = copy.deepcopy(plan)
    other_op["filter"]["op"] = "le"
    renamed = copy.deepcopy(plan)
    renamed["aggregates"][0]["name"] = "m"
    for other in (*changed, extra, other_op, renamed):
        assert not pin.matches(other, plan_hash(other))
    exact = Pin("p2", plan, plan_hash(plan), {}, REVIEWER, 0, 1e12)
    assert exact.matches(plan, plan_hash(plan)) and not exact.matches(with_age(41), "x")


def test_pin_validity_and_reason_are_bounded(tmp_path, consortium):
    approvals = scratch(tmp_path, "pinned")
    plan = plan_for(consortium, 40)
    with pytest.raises(PolicyRefused, match="not pinned"):
        approvals._pinned("dd" * 8, plan, plan_hash(plan), "analyst")
    for valid in (0, -1, math.nan, math.inf, True, "7d", 11 * 365 * 86400):
        with pytest.raises(PlanError, match="validity"):
            approvals.pin("dd" * 8, REVIEWER, {AGE: [30, 60]}, valid)
    with pytest.raises(PlanError, match="at most"):
        approvals.pin("dd" * 8, REVIEWER, None, 60, "x" * 5000)
    assert not approvals.pins
    pin = approvals.pin("dd" * 8, REVIEWER, {AGE: [30, 60]}, 60)
    assert approvals.path.stat().st_mode & 0o077 == 0
    assert approvals._pinned("ee" * 8, plan, plan_hash(plan), "analyst").endswith(
        f"(pin {pin.id})")


# ---------------------------------------------------------------------- the reviewer page
class Browser:
    """A minimal HTTPS client for the hospital's page, trusting only its certificate."""

    def __init__(self, c: Consortium) -> None:
        self.login_url = reviewer(c, "hospital").login()["url"]
        parts = urlsplit(self.login_url)
        self.host, self.port = parts.hostname, parts.port
        self.context = ssl.create_default_context(
            cafile=str(c.local_parties.folder / "state" / "hospital" / "review-web.crt"))
        self.context.check_hostname = False
        self.cookie = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, str]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=10)
        try:
            all_headers = {"Cookie": self.cookie} if self.cookie else {}
            conn.request(method, path, body=body, headers={**all_headers, **(headers or {})})
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read().decode()
        finally:
            conn.close()

    def sign_in(self) -> dict:
        parts = urlsplit(self.login_url)
        status, headers, _ = self.request("GET", f"{parts.path}?{parts.query}")
        assert status == 303
        self.cookie = headers["Set-Cookie"].split(";")[0]
        return headers

    def form(self, path: str, fields: dict, headers: dict | None = None):
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded",
                             **(headers or {})})

    @staticmethod
    def csrf(page: str) -> str:
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@pytest.fixture(scope="module")
def browser(consortium) -> Browser:
    page = Browser(consortium)
    headers = page.sign_in()
    cookie = headers["Set-Cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    return page


def test_the_page_escapes_what_the_analyst_wrote(consortium, browser):
    c = consortium
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    run_id, thread, _ = wait_at_hospital(c, plan_for(c, 44, name=evil))
    try:
        for path in ("/", f"/plan/{run_id}"):
            status, headers, page = browser.request("GET", path)
            assert status == 200 and "<script" not in page and "<img" not in page
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Cache-Control"] == "no-store"
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    finally:
        reviewer(c, "hospital").reject(run_id, "test over")
        thread.join(10)


def test_the_page_refuses_forged_stale_and_odd_requests(consortium, browser):
    c = consortium
    run_id, thread, _ = wait_at_hospital(c, plan_for(c, 45))
    try:
        _, _, page = browser.request("GET", f"/plan/{run_id}")
        token = browser.csrf(page)
        act = f"/plan/{run_id}/approve"
        stranger = Browser.__new__(Browser)
        stranger.__dict__.update(browser.__dict__, cookie="ppa_review=" + "A" * 43)
        assert stranger.request("GET", "/")[0] == 401  # a made-up session
        assert stranger.form(act, {"csrf": token})[0] == 401
        assert browser.form(act, {})[0] == 403  # no CSRF token
        assert browser.form(act, {"csrf": token[:-1] + "x"})[0] == 403
        assert browser.request("GET", act)[0] == 404  # no act by GET
        assert browser.request("PUT", act, b"")[0] == 501
        assert browser.request("DELETE", act)[0] == 501
        assert browser.form(f"/plan/{run_id}/nope", {"csrf": token})[0] == 404
        assert browser.request("POST", act, b"x" * 10, {"Content-Length": "999999"})[0] == 413
        assert browser.request("POST", act, b"", {"Content-Length": "-1"})[0] == 413
        assert browser.request("GET", f"/plan/{run_id}/../../etc/passwd")[0] == 404
        assert browser.request("GET", "/plan/" + "f" * 16)[0] == 400  # unknown plan
        parts = urlsplit(browser.login_url)
        assert browser.request("GET", f"{parts.path}?{parts.query}")[0] == 403  # one time
        assert until_listed(reviewer(c, "hospital"), run_id)["status"] == "waiting"
        read = re.search(r'name="plan_hash" value="([^"]+)"', page).group(1)
        status, headers, _ = browser.form(f"/plan/{run_id}/reject", {
            "csrf": token, "plan_hash": read, "reason": "  "})
        assert status == 400  # a rejection needs a reason, on the page too
        status, headers, _ = browser.form(f"/plan/{run_id}/reject", {
            "csrf": token, "plan_hash": read, "reason": "no"})
        assert status == 303 and headers["Location"] == f"/plan/{run_id}?done=rejected"
    finally:
        thread.join(10)


# ---------------------------------------------------------------------- fixed weaknesses
def test_a_pinned_party_keeps_the_plan_its_reviewer_saw(consortium):
    """A refused plan is kept under its run id for the reviewers to pin. Resending that
    run id with another plan must not swap the plan under the id the reviewer read."""
    c = consortium
    seen, swapped = plan_for(c, 46), plan_for(c, 18, name="everything")
    run_id = secrets.token_hex(8)
    first = send(c, "bureau", "analyst", "run", **run_request(seen, run_id))
    assert "not pinned" in first[-1]["error"]["message"]
    bureau = reviewer(c, "bureau")
    assert bureau.show(run_id)["item"]["plan_hash"] == plan_hash(seen)
    for who in ("analyst", MALLORY):
        again = send(c, "bureau", who, "run", **run_request(swapped, run_id))
        assert "already submitted" in again[-1]["error"]["message"]
    shown = bureau.show(run_id)
    assert shown["item"]["plan_hash"] == plan_hash(seen) and shown["plan"] == seen
    assert shown["item"]["analyst"] == "analyst"
    assert bureau.pin(run_id, valid_for=60)["pin"]["plan_hash"] == plan_hash(seen)
    assert audit_events(c, "bureau", run_id) == [  # every accepted plan, its outcome
        "plan_accepted", "plan_not_pinned", *["plan_accepted", "approval_refused"] * 2]


def test_a_reviewer_acts_on_the_plan_they_read_not_a_swapped_one(tmp_path, consortium):
    """The analyst withdraws a plan the reviewer is reading, pushes it out of the kept
    list with throwaway plans and resends its run id with another plan: an approval or a
    pin given for the plan the reviewer read must not apply to the new one."""
    from ppa_kernel.party.approvals import MAX_KEPT, MAX_PENDING

    approvals = scratch(tmp_path)
    seen, swapped = plan_for(consortium, 47), plan_for(consortium, 18, name="everything")
    run_id = "ab" * 8

    async def submit(rid: str, plan: dict) -> asyncio.Future:
        task = asyncio.ensure_future(approvals.approve(rid, plan, plan_hash(plan), "analyst",
                                                       _no_beat))
        await asyncio.sleep(0)
        return task

    async def withdraw(rid: str, task: asyncio.Future) -> None:
        assert approvals.withdraw(rid, "analyst")
        with pytest.raises(Exception, match="cancelled"):
            await task

    async def main() -> None:
        first = await submit(run_id, seen)
        read = approvals.review(run_id).plan_hash  # what the reviewer's page shows
        await withdraw(run_id, first)
        for i in range(MAX_KEPT + MAX_PENDING):
            rid = f"{i:016x}"
            await withdraw(rid, await submit(rid, seen))
        swap = await submit(run_id, swapped)
        assert approvals.review(run_id).plan_hash != read  # the id now holds another plan
        with pytest.raises(PlanError, match="changed since you read it"):
            approvals.decide(run_id, REVIEWER, True, "", plan_hash=read)
        with pytest.raises(PlanError, match="changed since you read it"):
            approvals.pin(run_id, REVIEWER, None, 60, "", plan_hash=read)
        for short in ("", read[:11], read.upper(), 12345):
            with pytest.raises(PlanError, match="changed"):
                approvals.decide(run_id, REVIEWER, True, "", plan_hash=short)
        assert approvals.review(run_id).status == "waiting" and not approvals.pins
        approvals.decide(run_id, REVIEWER, False, "read it first",
                         plan_hash=plan_hash(swapped)[:12])
        with pytest.raises(PolicyRefused, match="read it first"):
            await swap

    asyncio.run(main())


def test_the_page_and_the_client_send_the_hash_of_the_plan_read(consortium, browser):
    c = consortium
    run_id, thread, box = wait_at_hospital(c, plan_for(c, 48))
    read = plan_hash(plan_for(c, 48))
    _, _, page = browser.request("GET", f"/plan/{run_id}")
    assert page.count(f'name="plan_hash" value="{read}"') == 2  # approve, reject: manual
    token = browser.csrf(page)
    for form in ({"csrf": token}, {"csrf": token, "plan_hash": plan_hash(plan_for(c, 18))}):
        status, _, text = browser.form(f"/plan/{run_id}/approve", form)
        assert status == 400 and "changed since you read it" in text
    hospital = reviewer(c, "hospital")
    with pytest.raises(PlanError, match="changed since you read it"):
        hospital.approve(run_id, plan_hash="0" * 64)
    assert until_listed(hospital, run_id)["status"] == "waiting"
    status, _, _ = browser.form(f"/plan/{run_id}/reject", {"csrf": token, "plan_hash": read,
                                                           "reason": "checked"})
    assert status == 303
    thread.join(10)
    assert "rejected by rita: checked" in box["replies"][-1]["error"]["message"]


def test_one_analyst_cannot_fill_the_waiting_list(tmp_path):
    """Mallory keeps plans waiting at a manual party until the list is full: the other
    analysts' plans must still reach the reviewers."""
    from ppa_kernel.party.approvals import MAX_PENDING

    approvals = scratch(tmp_path)
    plan = {"filter": None, "groupby": [], "aggregates": [], "model": None}

    async def main() -> None:
        tasks, refused = [], 0
        for i in range(MAX_PENDING):
            task = asyncio.ensure_future(approvals.approve(f"{i:016x}", plan, "h" * 64,
                                                           MALLORY, _no_beat))
            await asyncio.sleep(0)
            if task.done():
                with pytest.raises(PolicyRefused, match=f"{MALLORY} already has"):
                    task.result()
                refused += 1
            else:
                tasks.append(task)
        assert refused and len(tasks) == MAX_PENDING // 2
        assert [r["event"] for r in approvals.audit.records()].count(
            "approval_refused") == refused
        mine = asyncio.ensure_future(approvals.approve("ff" * 8, plan, "h" * 64, "analyst",
                                                       _no_beat))
        await asyncio.sleep(0)
        assert not mine.done() and approvals.review("ff" * 8).status == "waiting"
        for task in (*tasks, mine):
            task.cancel()
        await asyncio.gather(*tasks, mine, return_exceptions=True)

    asyncio.run(main())


HIDE = "n\x1b[2K\x1b[1A\r\x1b]0;owned\x07\u202eelbat\n  opened: nothing"
"""An aggregate name that, printed raw, erases and rewrites lines of a reviewer's terminal,
sets its title and reverses the text after it."""


def test_plan_text_cannot_rewrite_what_the_reviewer_reads(consortium, browser):
    from ppa_kernel.party.review_view import format_listing, format_review

    c = consortium
    run_id, plain = secrets.token_hex(8), secrets.token_hex(8)
    send(c, "bureau", "analyst", "run", **run_request(plan_for(c, 49, name=HIDE), run_id))
    send(c, "bureau", "analyst", "run", **run_request(plan_for(c, 49), plain))
    bureau = reviewer(c, "bureau")
    text = format_review(bureau.show(run_id)) + format_listing(bureau.list())
    clean = format_review(bureau.show(plain))
    for raw in ("\x1b", "\r", "\x07", "\u202e"):
        assert raw not in text
    assert r"n\x1b[2K\x1b[1A\r\x1b]0;owned\x07\u202eelbat\n  opened: nothing" in text
    shown = format_review(bureau.show(run_id))
    assert len(shown.splitlines()) == len(clean.splitlines())  # no line added or hidden
    run_id, thread, box = wait_at_hospital(c, plan_for(c, 50, name=HIDE))
    _, _, page = browser.request("GET", f"/plan/{run_id}")
    assert "\x1b" not in page and "\u202e" not in page and r"\u202eelbat" in page
    reviewer(c, "hospital").reject(run_id, "no\x1b[2K\x1b[1A\u202e hidden")
    thread.join(10)
    message = box["replies"][-1]["error"]["message"]
    assert "\x1b" not in message and "\u202e" not in message and "hidden" in message


def test_a_slow_client_cannot_hold_the_page(tmp_path, monkeypatch):
    """A client that trickles its request a byte at a time, each within the socket
    timeout, is cut off at the page's deadline (or sixteen such clients would keep every
    reviewer out, before any sign-in)."""
    import socket
    from types import SimpleNamespace

    from ppa_kernel.party import review_web

    monkeypatch.setattr(review_web, "SOCKET_TIMEOUT", 1.0)
    monkeypatch.setattr(review_web, "REQUEST_DEADLINE", 2.0, raising=False)
    (port,) = free_ports(1)
    web = review_web.ReviewWeb(SimpleNamespace(name="hospital"), "127.0.0.1", port,
                               "127.0.0.1", tmp_path)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start() -> None:
        web.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    context = ssl.create_default_context(cafile=str(web.cert_path))
    context.check_hostname = False
    try:
        slow = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
        slow.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
        started, cut = time.monotonic(), None
        while cut is None and time.monotonic() - started < 6:
            try:
                slow.sendall(b"x")
                slow.settimeout(0.3)
                if slow.recv(1) == b"":
                    cut = time.monotonic() - started
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                cut = time.monotonic() - started
        assert cut is not None and cut < 4, "the trickling client still holds its slot"
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 401  # the page serves the next client
    finally:
        web.close()
        loop.call_soon_threadsafe(loop.stop)


def test_a_tampered_or_oversized_pin_store_is_refused(tmp_path, monkeypatch):
    import json as json_module

    from ppa_kernel.party import approvals as approvals_module

    store = tmp_path / approvals_module.STORE
    for entries in ([{"id": 1}], [{"id": "a", "plan": "x", "plan_hash": "h", "params": {},
                                   "reviewer": "r", "created": 0, "expires": 1}], {"id": 1}):
        store.write_text(json_module.dumps(entries))
        with pytest.raises(PolicyRefused, match="cannot read the pins"):
            scratch(tmp_path, "pinned")
    store.unlink()
    approvals = scratch(tmp_path, "pinned")
    plan = {"filter": None, "groupby": [], "aggregates": [], "model": None}
    with pytest.raises(PolicyRefused, match="not pinned"):
        approvals._pinned("dd" * 8, plan, "h" * 64, "analyst")
    monkeypatch.setattr(approvals_module, "MAX_STORE", 10)
    with pytest.raises(PlanError, match="more than 10 bytes"):
        approvals.pin("dd" * 8, REVIEWER, None, 60)
    assert not approvals.pins and not store.exists()  # nothing kept half-way


def test_a_go_for_a_malformed_run_id_is_refused(consortium):
    c = consortium
    for run_id in ("x" * 100_000, "../../etc", "AB" * 8, "", None):
        reply = send(c, "insurer", "analyst", "go", run_id=run_id)[-1]
        assert reply["event"] == "error" and "malformed run_id" in \
            reply["error"]["message"], reply
