"""Approval modes at three real parties: the insurer approves by its policy (auto), the
hospital's reviewer approves each plan (manual), the bureau runs only pinned plans.

One consortium for the module; every run is checked against a pandas oracle, every
refusal names its party and reason, and every act is in the audit logs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from oracle import join

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError, PlanError
from ppa_kernel.contract.receipts import read_receipts
from ppa_kernel.party.approvals import check_params
from ppa_kernel.party.review_client import ReviewClient
from ppa_kernel.party.review_view import format_review

REVIEWER = "rita"
WAIT = 5.0  # the hospital's approval_wait: how long a plan waits for its reviewer
AGE = "/filter/args/1/const"  # where the cohort's age threshold sits in the plan


@pytest.fixture(scope="module")
def data():
    return generate(n_core=160, seed=5, insurer_extra=0.3, bureau_extra=0.5,
                    hospital_extra=0.1)


@pytest.fixture(scope="module")
def consortium(data, tmp_path_factory):
    policies = {"insurer": {"approval": "auto", "differencing": False},
                "hospital": {"approval": "manual", "approval_wait": WAIT,
                             "differencing": False},
                "bureau": {"approval": "pinned", "differencing": False}}
    folder = tmp_path_factory.mktemp("approvals")
    with Consortium.local(data, workdir=folder, policies=policies,
                          reviewers=(REVIEWER,)) as c:
        yield c


def reviewer(consortium: Consortium, party: str) -> ReviewClient:
    from ppa_kernel.contract.identity import Identity

    folder = consortium.local_parties.folder
    return ReviewClient(consortium.config, party, Identity.from_prefix(folder / "keys" /
                                                                       REVIEWER))


def query(consortium: Consortium, age: int):
    t = consortium.link()
    return t[t.age >= age].groupby("sex").agg(n=("cost_2021", "count"),
                                              mean=("cost_2021", "mean"))


def oracle(data, age: int) -> pd.DataFrame:
    joined = join(data, ["insurer", "hospital", "bureau"])
    return joined[joined.age >= age].groupby("sex")["cost_2021"].agg(["count", "mean"])


def in_background(q, progress="off"):
    """Run a query in a thread; (thread, box) where box gets "result" or "error"."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = q.collect(timeout=60, progress=progress)
        except ConsortiumError as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def waiting_item(client: ReviewClient, timeout: float = 10.0) -> dict:
    """The one plan waiting for the reviewer (the tests run one at a time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in client.list()["items"]:
            if item.get("status") == "waiting":
                return item
        time.sleep(0.1)
    raise AssertionError("the plan never showed up as waiting")


def refused_here(error: ConsortiumError, party: str) -> str:
    texts = [str(e) for e in error.errors if e.party == party]
    assert texts, f"no error from {party}: {error}"
    return texts[0]


@pytest.fixture(scope="module")
def pinned(consortium):
    """The bureau's reviewer pins the age-threshold plan with the threshold in [30, 60]
    (the first attempt is refused there as not pinned, and kept for the reviewer)."""
    q = query(consortium, 40)
    with pytest.raises(ConsortiumError) as caught:
        q.collect(timeout=60)
    assert "not pinned" in refused_here(caught.value, "bureau")
    bureau = reviewer(consortium, "bureau")
    item = next(i for i in bureau.list()["items"] if i.get("status") == "unpinned")
    shown = bureau.show(item["id"])
    assert AGE in shown["view"]["numbers"] and shown["view"]["numbers"][AGE] == 40
    return bureau.pin(item["id"], {AGE: [30, 60]}, valid_for=600, reason="study 7")["pin"]


def test_manual_approval_runs_after_the_reviewer_approves(consortium, data, pinned, capsys):
    q = query(consortium, 40)
    thread, box = in_background(q, progress="text")
    hospital = reviewer(consortium, "hospital")
    item = waiting_item(hospital)
    time.sleep(0.5)
    assert thread.is_alive()  # nothing runs before the hospital approves
    text = format_review(hospital.show(item["id"]))
    assert "insurer.age >= 40" in text and "release.count" in text
    assert "dominance" in text and "multiplicity" in text
    assert "waiting for approval at hospital" in capsys.readouterr().out
    hospital.approve(item["id"], reason="within the DPIA")
    thread.join(60)
    result = box["result"]
    want = oracle(data, 40)
    pd.testing.assert_series_equal(result["n"].astype(int), want["count"], check_names=False)
    pd.testing.assert_series_equal(result["mean"], want["mean"], check_names=False, rtol=1e-6)
    assert result.attrs["approvers"] == {"insurer": ["policy"], "hospital": [REVIEWER],
                                         "bureau": [f"{REVIEWER} (pin {pinned['id']})"]}
    receipts = read_receipts(consortium.receipts_path)
    assert receipts[-1]["run_id"] == result.attrs["run_id"]
    assert set(receipts[-1]["parties"]) == {"insurer", "hospital", "bureau"}


def test_audit_names_analyst_approvers_and_release(consortium, pinned):
    folder = consortium.local_parties.folder
    records = [json.loads(line) for line in
               (folder / "state" / "hospital" / "audit.jsonl").read_text().splitlines()]
    done = [r for r in records if r["event"] == "run_completed"][-1]
    assert done["analyst"] == "analyst" and done["approvers"] == [REVIEWER]
    assert len(done["released_digest"]) == 64 and "release.count:" in " ".join(done["opened"])
    approved = [r for r in records if r["event"] == "plan_approved"][-1]
    assert approved["run_id"] == done["run_id"] and approved["reason"] == "within the DPIA"


def test_rejection_reaches_the_analyst_with_the_reason(consortium, pinned):
    q = query(consortium, 50)  # inside the bureau's pinned range
    thread, box = in_background(q)
    hospital = reviewer(consortium, "hospital")
    item = waiting_item(hospital)
    similar = hospital.show(item["id"])["view"]["similar"]  # the age >= 40 release before
    assert similar and similar[0]["cohort"] == "insurer.age >= 40"
    assert similar[0]["shared"] == ["insurer.age", "insurer.sex"]
    hospital.reject(item["id"], "cohort too narrow for the DPIA")
    thread.join(30)
    text = refused_here(box["error"], "hospital")
    assert f"rejected by {REVIEWER}: cohort too narrow for the DPIA" in text


def test_pinned_range_refuses_a_parameter_outside_it(consortium, pinned):
    with pytest.raises(ConsortiumError) as caught:
        query(consortium, 70).collect(timeout=30)  # 70 is outside [30, 60]
    assert "not pinned" in refused_here(caught.value, "bureau")


def test_waiting_plan_expires(consortium, pinned):
    started = time.monotonic()
    with pytest.raises(ConsortiumError) as caught:
        query(consortium, 45).collect(timeout=60)
    assert "expired" in refused_here(caught.value, "hospital")
    assert WAIT - 1 <= time.monotonic() - started < WAIT + 15
    latest = next(i for i in reviewer(consortium, "hospital").list()["items"]
                  if not i.get("pin"))
    assert latest["status"] == "expired"


def test_an_expired_pin_allows_nothing(consortium, pinned):
    bureau = reviewer(consortium, "bureau")
    item = next(i for i in bureau.list()["items"] if not i.get("pin"))
    with pytest.raises(PlanError, match="at most 604800 s here"):  # the policy's ceiling
        bureau.pin(item["id"], {AGE: [61, 65]}, valid_for=604801)
    short = bureau.pin(item["id"], {AGE: [61, 65]}, valid_for=0.5)["pin"]
    time.sleep(1)
    with pytest.raises(ConsortiumError) as caught:
        query(consortium, 62).collect(timeout=30)
    assert f"pin {short['id']} that allowed this plan expired" in \
        refused_here(caught.value, "bureau")


def test_only_reviewers_review_and_only_waiting_plans_are_decided(consortium, pinned):
    from ppa_kernel.contract.errors import PolicyRefused
    from ppa_kernel.contract.identity import Identity

    analyst = ReviewClient(consortium.config, "hospital", Identity.from_prefix(
        consortium.local_parties.folder / "keys" / "analyst"))
    with pytest.raises(PolicyRefused, match="may not send 'review_list'"):
        analyst.list()
    hospital = reviewer(consortium, "hospital")
    decided = next(i for i in hospital.list()["items"] if i.get("status") == "rejected")
    with pytest.raises(PlanError, match="not waiting"):
        hospital.approve(decided["id"])


def test_cancel_while_waiting_withdraws_the_plan(consortium, pinned):
    q = query(consortium, 55)
    thread, box = in_background(q)
    hospital = reviewer(consortium, "hospital")
    item = waiting_item(hospital)
    consortium._cancel(item["id"])
    thread.join(30)
    assert "cancelled while waiting for approval" in refused_here(box["error"], "hospital")
    status = {i["id"]: i["status"] for i in hospital.list()["items"] if not i.get("pin")}
    assert status[item["id"]] == "cancelled"


def test_pin_parameters_are_checked():
    plan = {"filter": {"op": "ge", "args": [{"col": "insurer.age"}, {"const": 40}]},
            "groupby": [], "aggregates": [], "model": None}
    assert check_params(plan, {AGE: [30, 60]}) == {AGE: [30, 60]}
    for bad in ({"/filter/args/0/col": [1, 2]}, {AGE: [60, 30]}, {AGE: [0, float("inf")]},
                {AGE: "30:60"}, {"/nope": [1, 2]}, {f"/x{i}": [1, 2] for i in range(40)}):
        with pytest.raises(PlanError):
            check_params(plan, bad)


def test_receipts_file_is_private(consortium, pinned):
    path = Path(consortium.receipts_path)
    assert path.exists() and path.stat().st_mode & 0o077 == 0


def test_review_command_line(consortium, pinned, capsys):
    from ppa_kernel.cli import main

    folder = consortium.local_parties.folder
    base = ["review", "--consortium", str(folder / "consortium.toml"), "--party", "bureau",
            "--identity", str(folder / "keys" / REVIEWER)]
    assert main([*base, "list"]) == 0
    out = capsys.readouterr().out
    assert "approval mode: pinned" in out and f"pin {pinned['id']}" in out
    assert f"varying {AGE} in [30, 60]" in out
    item = next(line.split()[0] for line in out.splitlines() if "unpinned" in line)
    assert main([*base, "show", item]) == 0
    out = capsys.readouterr().out
    assert "cohort:      insurer.age >= " in out and f"  {AGE} = " in out
    assert main([*base, "pin", item, "--param", f"{AGE}=oops"]) == 1
    assert "malformed parameter range" in capsys.readouterr().err
    assert main([*base, "reject", item, "--reason", "late"]) == 1  # not waiting
    assert "not waiting" in capsys.readouterr().err
    assert main([*base, "pin", item, "--hash", "0" * 12]) == 1  # not the plan read
    assert "changed since you read it" in capsys.readouterr().err
    assert main([*base, "login"]) == 1  # the bureau serves no reviewer page
    assert "serves no reviewer web page" in capsys.readouterr().err


def test_policy_reload_takes_effect_without_a_restart(consortium, data, pinned, capsys):
    """Last in the module: it switches the hospital to auto approval."""
    from ppa_kernel.cli import main

    folder = consortium.local_parties.folder
    party_file = folder / "hospital.toml"
    text = party_file.read_text()
    party_file.write_text(text.replace('approval = "manual"', 'approval = "sometimes"'))
    assert main(["party", "reload", str(party_file)]) == 1  # checked before it is sent
    assert "unknown value 'sometimes'" in capsys.readouterr().err
    party_file.write_text(text.replace('approval = "manual"', 'approval = "auto"'))
    assert main(["party", "reload", str(party_file)]) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        consortium.refresh()
        if consortium.approval_modes() == {"auto", "pinned"}:
            break
        time.sleep(0.1)
    result = query(consortium, 35).collect(timeout=60)  # no reviewer at the hospital now
    want = oracle(data, 35)
    assert result["n"].astype(int).to_dict() == want["count"].to_dict()
    assert result.attrs["approvers"]["hospital"] == ["policy"]
    records = [json.loads(line) for line in
               (folder / "state" / "hospital" / "audit.jsonl").read_text().splitlines()]
    reloaded = [r for r in records if r["event"] == "policy_reloaded"]
    assert reloaded[-1]["policy"]["approval"] == "auto"
