"""A party's run diagnostics (phase seconds, peak memory, replayed columns) reach the
analyst's table attrs only field by field checked: a hostile kernel's extra or malformed
values are dropped, not copied."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from ppa_kernel.analyst.client import DIAGNOSTIC_LIMIT, diagnostics

NAMES = ["insurer", "hospital", "bureau"]


def test_honest_diagnostics_pass_unchanged():
    results = {p: {"phases": {"connect": 0.5, "input": 1.25}, "peak_rss_mb": 300.5,
                   "input_widths": {"insurer": 3, "hospital": 1, "bureau": 4},
                   "reused_widths": {"insurer": 0, "hospital": 2, "bureau": 0}} for p in NAMES}
    out = diagnostics(results, NAMES)
    assert out["phases"]["bureau"] == {"connect": 0.5, "input": 1.25}
    assert out["peak_rss_mb"] == {p: 300.5 for p in NAMES}
    assert out["input_widths"] == {"insurer": 3, "hospital": 1, "bureau": 4}
    assert out["reused_widths"] == {"insurer": 0, "hospital": 2, "bureau": 0}


def test_hostile_values_are_dropped():
    hostile = {"phases": {"connect": "rm -rf", "input": -1, "x" * 100: 1.0, "tags": math.inf,
                          "shuffle": 2.0, "model": True, "disclosure": [1]},
               "peak_rss_mb": {"nested": 1}, "input_widths": {"evil": 10**9},
               "reused_widths": {"insurer": True}}
    results = {"insurer": hostile, "hospital": {}, "bureau": {"phases": "text"}}
    out = diagnostics(results, NAMES)
    assert out["phases"] == {"insurer": {"shuffle": 2.0}, "hospital": {}, "bureau": {}}
    assert out["peak_rss_mb"] == {"insurer": None, "hospital": None, "bureau": None}
    assert out["input_widths"] is None and out["reused_widths"] is None


@given(st.dictionaries(st.text(max_size=40), st.one_of(
    st.floats(allow_nan=True), st.integers(), st.text(), st.booleans(), st.none()),
    max_size=10))
def test_every_kept_phase_is_a_bounded_number(phases):
    out = diagnostics({"insurer": {"phases": phases}}, ["insurer"])["phases"]["insurer"]
    for name, seconds in out.items():
        assert isinstance(seconds, float) and 0 <= seconds <= DIAGNOSTIC_LIMIT
        assert name in phases and len(name) <= 32
