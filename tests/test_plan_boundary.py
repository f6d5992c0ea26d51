"""The plan boundary against a hostile analyst: bounded numbers and sizes, the party order
from the consortium file, arithmetic that cannot wrap, and kernels that stay responsive."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
from oracle import join

from ppa_kernel import Consortium, ConsortiumError, PlanError
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.limits import MAX_LEVELS, MAX_THRESHOLD
from ppa_kernel.contract.plan import plan_hash, validate_plan
from ppa_kernel.contract.program import compile_plan
from ppa_kernel.contract.protocol import Channel, request

PARTIES = ["insurer", "hospital", "bureau"]
FIELD_PRIME_PLUS_ONE = 2 ** 256 + 1  # larger than the value field: wraps to a tiny number


PASSING = ("progress", "alive", "approved")
"""Events a kernel sends while a run goes on (the test waits for the final one)."""


@pytest.fixture(scope="module")
def data():
    data = generate(n_core=200, seed=3)
    # Two parties' columns near 1e13: inside the encoding limit, and a cross-party
    # comparison of them must still be exact.
    rng = np.random.default_rng(1)
    data["insurer"]["big"] = rng.uniform(1e13, 2e13, len(data["insurer"])).round()
    data["hospital"]["big2"] = rng.uniform(1e13, 2e13, len(data["hospital"])).round()
    return data


@pytest.fixture(scope="module")
def c(data, tmp_path_factory):
    with Consortium.local(data, link="pseudonym", workdir=tmp_path_factory.mktemp("boundary"),
                          policies={p: {"differencing": False} for p in data}) as c:
        yield c


def unprepared(c, monkeypatch):
    """Send plans to the kernels exactly as given (the client fixes nothing up)."""
    monkeypatch.setattr(c, "prepare", lambda plan: copy.deepcopy(plan))


def errors_of(info) -> str:
    return "\n".join(str(e) for e in info.value.errors)


def test_a_threshold_beyond_the_field_is_refused_not_wrapped(c, monkeypatch):
    t = c.link()
    with pytest.raises(PlanError, match="min_cell_size"):
        t.groupby("household").agg(n=("age", "count")).with_min_cell_size(FIELD_PRIME_PLUS_ONE)
    plan = c.prepare(t.groupby(["household", "app_user"]).agg(n=("age", "count")).plan())
    unprepared(c, monkeypatch)
    for value in (FIELD_PRIME_PLUS_ONE, MAX_THRESHOLD + 1, 0, -3, 2.5, True):
        bad = {**plan, "min_cell_size": value}
        with pytest.raises(ConsortiumError) as info:
            c.run_raw(bad)
        assert len(info.value.errors) == 3
        assert all("min_cell_size" in str(e) for e in info.value.errors), errors_of(info)
    for value in (FIELD_PRIME_PLUS_ONE, -1):
        with pytest.raises(ConsortiumError, match="min_residual_df"):
            c.run_raw({**plan, "min_residual_df": value})


def test_parties_in_another_order_are_refused(c, monkeypatch):
    plan = c.prepare(c.link().agg(n=("age", "count")).plan())
    unprepared(c, monkeypatch)
    for parties in (PARTIES[::-1], ["hospital", "insurer", "bureau"], PARTIES[:2]):
        bad = {**plan, "parties": parties, "link": [p for p in plan["link"] if p in parties]}
        with pytest.raises(ConsortiumError) as info:
            c.run_raw(bad)
        assert "'parties' must list the consortium's parties in its order" in errors_of(info)
    bad = {**plan, "link": plan["link"][::-1]}
    with pytest.raises(ConsortiumError, match="'link' must list its parties"):
        c.run_raw(bad)


def test_large_values_compare_exactly_across_parties(c, data):
    t = c.link()
    got = t[t.big > t.big2].agg(n=("age", "count")).collect()
    p = join(data, PARTIES)
    assert got["n"].iloc[0] == int((p.big > p.big2).sum())


def test_arithmetic_that_could_wrap_is_refused_before_anything_runs(c):
    t = c.link()
    started = time.monotonic()
    with pytest.raises(PlanError, match="range of secure comparisons"):
        t[t.big * t.big2 > 5].agg(n=("age", "count")).collect()  # ~4e26 at scale 2**32
    with pytest.raises(PlanError, match=r"sum of squares .* could exceed"):
        t.assign(v=t.big * t.big2 * t.app_use_intensity).agg(sd=("v", "std")).collect()
    assert time.monotonic() - started < 2


def test_plan_sizes_are_bounded_and_hello_stays_fast(c, monkeypatch):
    """Oversized plans are refused quickly, while every kernel answers hello within 1 s."""
    plan = c.prepare(c.link().groupby("income_band").agg(n=("age", "count")).plan())
    levels = [f"L{i}" for i in range(32_000)]
    many = copy.deepcopy(plan)
    many["groupby"][0]["levels"] = levels
    many["columns"]["bureau.income_band"]["levels"] = levels
    extra = copy.deepcopy(plan)  # more levels than published, within the limits
    extra["groupby"][0]["levels"] = ["Q1", "Q2", "Q3", "Q4", "Q5", *[f"X{i}" for i in range(900)]]
    deep = copy.deepcopy(plan)
    condition = {"op": "gt", "args": [{"col": "insurer.age"}, {"const": 40}]}
    for _ in range(33):  # within the JSON depth the client sends, beyond the expressions'
        condition = {"op": "not", "args": [condition]}
    deep["filter"] = condition
    unprepared(c, monkeypatch)
    slowest, stop = [0.0], threading.Event()

    def ping():
        while not stop.is_set():
            for party in c.config.parties:
                started = time.monotonic()
                c._request(party, "hello", {}, "hello", timeout=5)
                slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.05)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        expectations = [(many, f"at most {MAX_LEVELS:,}"),
                        (extra, "must use the published levels"),
                        (deep, "nested")]
        for bad, message in expectations * 3:
            started = time.monotonic()
            with pytest.raises(ConsortiumError) as info:
                c.run_raw(bad)
            assert message in errors_of(info)
            assert time.monotonic() - started < 3
    finally:
        stop.set()
        pinger.join(10)
    assert slowest[0] < 1.0, f"a hello waited {slowest[0]:.2f} s"


def test_ranges_are_the_published_ones(c, monkeypatch):
    plan = c.prepare(c.link().agg(m=("cost_2021", "mean")).plan())
    unprepared(c, monkeypatch)
    for bad_range in ([0, 1], None):
        bad = copy.deepcopy(plan)
        if bad_range is None:
            del bad["columns"]["insurer.cost_2021"]["range"]
        else:
            bad["columns"]["insurer.cost_2021"]["range"] = bad_range
        with pytest.raises(ConsortiumError, match=r"\[insurer\].*published range"):
            c.run_raw(bad)


def test_disclosure_rules_may_not_be_laxer_than_the_policies(c, monkeypatch):
    plan = c.prepare(c.link().agg(m=("cost_2021", "mean")).plan())
    unprepared(c, monkeypatch)
    for rule, value in (("dominance_k", 99), ("p_ratio", 1), ("dominance_n", 1)):
        bad = copy.deepcopy(plan)
        bad["disclosure"][rule] = value
        with pytest.raises(ConsortiumError, match=f"disclosure rule {rule}"):
            c.run_raw(bad)
    missing = {k: v for k, v in plan.items() if k != "disclosure"}
    with pytest.raises(ConsortiumError, match="disclosure rules"):
        c.run_raw(missing)


CATALOG = {"insurer": {"age": {"kind": "numeric", "min": 18.0, "max": 90.0, "missing": 0},
                       "cost": {"kind": "numeric", "min": 0.0, "max": 6e13, "missing": 0}},
           "hospital": {"visits": {"kind": "numeric", "min": 0.0, "max": 5e13, "missing": 0}},
           "bureau": {"band": {"kind": "categorical", "levels": ["a", "b"], "missing": 0}}}


def test_bounds_follow_the_published_ranges():
    t = SecureFrame(CATALOG, PARTIES, PARTIES)
    compile_plan(t[t.cost > t.visits].agg(n=("age", "count")).plan())  # scale 1: fits
    with pytest.raises(PlanError, match="range of secure comparisons"):
        compile_plan(t[t.cost * t.visits > t.age].agg(n=("age", "count")).plan())
    with pytest.raises(PlanError, match="division is only by a nonzero"):
        validate_plan({**t.agg(n=("age", "count")).plan(),
                       "filter": {"op": "gt", "args": [
                           {"op": "div", "args": [{"col": "insurer.age"}, {"const": 0}]},
                           {"const": 1}]}})
    with pytest.raises(PlanError, match="non-finite"):
        validate_plan({**t.agg(n=("age", "count")).plan(),
                       "filter": {"op": "gt", "args": [{"col": "insurer.age"},
                                                       {"const": float("nan")}]}})


def send_runs(c, requests: dict) -> dict[str, dict]:
    """Send each party its own raw run request at once; each party's final reply."""
    replies: dict[str, dict] = {}

    def ask(party):
        channel = Channel(party.host, party.port, c.identity, party.pin, 10)
        try:
            fields = {k: v for k, v in requests[party.name].items() if k != "op"}
            channel.send(request("run", c.identity, party.name, **fields))
            while (reply := channel.receive(timeout=60))["event"] in PASSING:
                pass
            replies[party.name] = reply
        finally:
            channel.close()

    threads = [threading.Thread(target=ask, args=(p,)) for p in c.config.parties]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert set(replies) == set(PARTIES)
    return replies


def run_request(plan: dict, run_id: str, **extra) -> dict:
    return {"op": "run", "run_id": run_id, "plan": plan, "plan_hash": plan_hash(plan),
            "timeout": 60, **extra}


def test_a_hostile_linkage_id_reaches_no_file(c, tmp_path):
    """The linkage belongs to the data epoch the parties keep under their state folders;
    a linkage id in a request (once used as a path) is ignored."""
    target = tmp_path / "escaped"
    plan = c.prepare(c.link().agg(n=("age", "count")).plan())
    hostile = run_request(plan, "ab" * 8, linkage_id=str(target))
    replies = send_runs(c, {p: hostile for p in PARTIES})
    assert {r["event"] for r in replies.values()} == {"result"}
    assert not target.exists()


def test_operators_on_constants_alone_are_refused():
    """Their scale would differ from the evaluator's: a comparison could open row values."""
    t = SecureFrame(CATALOG, PARTIES, PARTIES)
    base = t.agg(n=("age", "count")).plan()
    half = {"op": "neg", "args": [{"const": -0.5}]}
    diff = {"op": "sub", "args": [{"col": "insurer.age"}, {"col": "hospital.visits"}]}
    nested = {"op": "mul", "args": [half, {"op": "mul", "args": [half, diff]}]}
    plan = {**base, "filter": {"op": "lt", "args": [nested, {"const": 0}]}}
    with pytest.raises(PlanError, match="constants only"):
        validate_plan(plan)


def test_measures_may_not_weight_rows_by_a_condition():
    t = SecureFrame(CATALOG, PARTIES, PARTIES)
    with pytest.raises(PlanError, match="weights rows by a condition"):
        t.assign(w=t.cost * (t.age != 37)).agg(s=("w", "sum")).plan()
    t.agg(share=(t.age > 40, "mean")).plan()  # a proportion is fine


def test_an_unbounded_owner_expression_is_refused():
    """inf * 0 would make a row drop out of one measure's row set and not another's."""
    t = SecureFrame(CATALOG, PARTIES, PARTIES)
    huge = t.assign(z=t.age / 1e-300 / 1e-300 * 0 + t.cost)
    with pytest.raises(PlanError, match="could exceed"):
        compile_plan(huge.agg(m=("z", "mean")).plan())


def test_parties_sent_different_plans_refuse_before_any_input(c):
    """An analyst's own client could send each party another plan; the parties compare."""
    t = c.link()
    plans = {name: c.prepare(t[t.outpatient_visits > limit].agg(n=("age", "count")).plan())
             for name, limit in (("insurer", 5), ("hospital", 6), ("bureau", 5))}
    replies = send_runs(c, {p: run_request(plan, "cd" * 8) for p, plan in plans.items()})
    messages = [r.get("error", {}).get("message", r["event"]) for r in replies.values()]
    assert all("different plans" in m for m in messages), messages
