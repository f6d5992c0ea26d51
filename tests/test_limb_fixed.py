"""Truncated products, random bits, bit decompositions and the logistic function on limb
shares, in real MPyC runs of three and five parties (``mpc_programs/limb_fixed_check.py``):
each against a plaintext oracle of the opened values, the logistic function also against
the same function on MPyC's share arrays; and the limb helpers against Python integers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpc_launch import run_program

from ppa_kernel.party.secure.limbs import VALUE


@pytest.mark.parametrize("parties", [3, 5])
def test_limb_fixed_point_protocols_against_oracles(parties):
    report = run_program("limb_fixed_check.py", parties, timeout=300)
    assert report["parties"] == parties
    failed = [k for k, v in report.items() if v is False]
    assert not failed, report


def test_a_dealer_sending_malformed_random_bits_is_refused_by_name():
    report = run_program("limb_fixed_check.py", 3, env={"PPA_CHECK_HOSTILE": "1"})
    assert report["refused"] and "party 2 sent malformed shares" in report["refused"]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, VALUE.modulus - 1), min_size=1, max_size=30),
       shift=st.integers(0, 255), length=st.integers(1, 60))
def test_public_shifts_and_low_bits_match_python_integers(values, shift, length):
    a = VALUE.from_ints(values)
    assert VALUE.to_ints(VALUE.shift_right(a, shift)) == [v >> shift for v in values]
    assert VALUE.low_bits(a, length).tolist() == [
        [(v >> i) & 1 for i in range(length)] for v in values]
    assert VALUE.to_ints(VALUE.total(a)) == [sum(values) % VALUE.modulus]
    quotients = [v // 120 for v in values]
    multiples = VALUE.from_ints([q * 120 for q in quotients])
    assert VALUE.to_ints(VALUE.divide_exact(multiples, 120)) == quotients


def test_exact_division_refuses_a_remainder():
    with pytest.raises(ValueError, match="not a multiple of 6"):
        VALUE.divide_exact(VALUE.from_ints([12, 13]), 6)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), bits=st.integers(1, 255))
def test_bounded_random_values_are_below_the_bound(data, bits):
    n = data.draw(st.integers(1, 10))
    raw = data.draw(st.binary(min_size=VALUE.bounded_bytes(n, bits),
                              max_size=VALUE.bounded_bytes(n, bits)))
    got = VALUE.to_ints(VALUE.from_random_bits(raw, n, bits))
    words = [int.from_bytes(raw[4 * i:4 * i + 4], "little") & ((1 << 26) - 1)
             for i in range(len(raw) // 4)]
    count = -(-bits // 26)
    want = [sum(words[j * n + i] << (26 * j) for j in range(count)) % (1 << bits)
            for i in range(n)]
    assert got == want


def test_bounded_random_values_refuse_a_bound_at_the_field_size():
    with pytest.raises(ValueError, match="0 < bits < 256"):
        VALUE.from_random_bits(bytes(VALUE.bounded_bytes(1, 256)), 1, 256)


def test_models_on_limb_shares_refuse_a_runtime_without_prss():
    from ppa_kernel.contract.errors import PartyFailed
    from ppa_kernel.party.secure import limb_fixed
    from ppa_kernel.party.secure.runtime import mpc

    limb_fixed.require("quantiles")  # the in-process runtime has PRSS keys
    saved = mpc.options.no_prss
    mpc.options.no_prss = True
    try:
        with pytest.raises(PartyFailed, match="quantiles needs MPyC's pseudorandom"):
            limb_fixed.require("quantiles")
    finally:
        mpc.options.no_prss = saved
