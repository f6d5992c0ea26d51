"""Truncated products, random bits, bit decompositions and the logistic function on limb
shares, in real MPyC runs of three and five parties (``mpc_programs/limb_fixed_check.py``):
each against a plaintext oracle of the opened values, the logistic function also against
the same function on MPyC's share arrays; and the limb helpers against Python integers."""

from __future__ import annotations

import numpy as np
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


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(0, 40), left=st.integers(1, 4),
       right=st.integers(0, 4), budget=st.sampled_from([1, 3000, 1 << 26]))
def test_dot_products_match_python_integers(data, rows, left, right, budget):
    from ppa_kernel.party.secure import limbs

    element = st.one_of(st.integers(0, VALUE.modulus - 1), st.just(VALUE.modulus - 1))
    a = np.array(data.draw(st.lists(element, min_size=rows * left, max_size=rows * left)),
                 dtype=object).reshape(rows, left)
    b = np.array(data.draw(st.lists(element, min_size=rows * right, max_size=rows * right)),
                 dtype=object).reshape(rows, right)
    la = VALUE.from_ints(a.reshape(-1)).reshape(VALUE.limbs, rows, left)
    lb = VALUE.from_ints(b.reshape(-1)).reshape(VALUE.limbs, rows, right)
    lb = VALUE.mul(lb, VALUE.constant(1).reshape(VALUE.limbs, 1, 1))  # limbs up to 2^27
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limbs, "DOT_BUDGET", budget)  # blocks of rows and tiles of columns
        got = VALUE.to_ints(VALUE.dot(la, lb).reshape(VALUE.limbs, -1))
    assert got == ((a.T @ b) % VALUE.modulus).reshape(-1).tolist()


def _limbs_of(values: list[int]) -> np.ndarray:
    """Limbs of integers below 2^260 as they are (not reduced, uint32)."""
    return np.array([[(v >> (26 * i)) & ((1 << 26) - 1) for v in values]
                     for i in range(VALUE.limbs)], dtype=np.uint32)


def test_dot_products_reduce_uint32_limbs_of_values_above_p():
    above = [VALUE.modulus + 5, 2**256 - 1, 3]  # as read back from storage: not reduced
    a = _limbs_of(above).reshape(VALUE.limbs, 3, 1)
    ones = VALUE.from_ints([1, 1, 1]).reshape(VALUE.limbs, 3, 1)
    got = VALUE.to_ints(VALUE.dot(a, ones).reshape(VALUE.limbs, -1))
    assert got == [sum(above) % VALUE.modulus]


def test_canonical_limbs_are_told_apart():
    assert VALUE.canonical(_limbs_of([0, 1, VALUE.modulus - 1]))
    assert not VALUE.canonical(_limbs_of([VALUE.modulus]))  # every limb in range
    wide = _limbs_of([7])
    wide[2, 0] = 1 << 26
    assert not VALUE.canonical(wide)
    assert not VALUE.canonical(_limbs_of([7])[:-1])  # a limb short


def test_fixed_bytes_refuse_rows_of_another_width():
    with pytest.raises(ValueError, match="rows of 32 bytes"):
        VALUE.from_fixed_bytes(np.zeros((3, 31), dtype=np.uint8))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, VALUE.modulus - 1), min_size=1, max_size=20))
def test_fixed_bytes_are_32_byte_big_endian_integers(values):
    stored = VALUE.to_fixed_bytes(VALUE.from_ints(values))
    assert stored.tobytes() == b"".join(v.to_bytes(32, "big") for v in values)
    assert VALUE.to_ints(VALUE.from_fixed_bytes(stored)) == values


def test_history_files_keep_their_format(tmp_path):
    from ppa_kernel.party.secure.history import History, RowSet

    values = [0, 1, VALUE.modulus - 1, 12345678901234567890]
    History(tmp_path).append([RowSet("d" * 64, 3, 77, VALUE.from_ints(values))])
    stored = np.load(tmp_path / "history" / "000000.npy", allow_pickle=False)
    assert stored.tobytes() == b"".join(v.to_bytes(32, "big") for v in [77, *values])
    [loaded] = History(tmp_path).load()
    assert (loaded.definition, loaded.joined, loaded.size) == ("d" * 64, 3, 77)
    assert VALUE.to_ints(loaded.shares) == values


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


def test_a_kept_row_set_of_another_length_fails_by_name():
    from ppa_kernel.contract.errors import PartyFailed
    from ppa_kernel.party.secure.disclosure import Kept
    from ppa_kernel.party.secure.history import RowSet

    group_sizes = np.array([3, 3, 2, 3])  # three people seen at every party
    short = RowSet("d" * 64, 3, 1, VALUE.from_ints([1, 0]))  # two shares, not three
    with pytest.raises(PartyFailed, match="holds 2 rows, this epoch's linkage 3"):
        Kept.align([short], np.flatnonzero(group_sizes >= 3), group_sizes)


def test_workers_get_one_blas_thread_unless_the_operator_set_one(monkeypatch):
    from ppa_kernel.party.worker_process import BLAS_THREADS, worker_environment

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    for name in BLAS_THREADS[1:]:
        monkeypatch.delenv(name, raising=False)
    env = worker_environment()
    assert env["OPENBLAS_NUM_THREADS"] == "4"
    assert all(env[name] == "1" for name in BLAS_THREADS[1:])
