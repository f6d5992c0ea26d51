"""The link field on limb arrays: arithmetic against Python integers (hypothesis), the wire
form against hostile bytes, and the protocols against MPyC's object path in real MPyC runs.

The MPC checks run ``tests/mpc_programs/limb_protocol_check.py`` under MPyC's own local
launcher (three and five parties); it compares the Legendre tags with the object-array
path on the same shares and with a plaintext oracle, and checks the PRSS, resharing and
opening primitives through MPyC's own ``output``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpc_launch import run_program

from ppa_kernel.party.secure import limbs
from ppa_kernel.party.secure.limbs import LINK, VALUE

FIELDS = pytest.mark.parametrize("f", [LINK, VALUE], ids=repr)


def values_of(f: limbs.LimbField):
    p = f.modulus
    edge = st.sampled_from([0, 1, 2, 4, p - 1, p - 2, p - f.c, 1 << (f.k - 2), (1 << 104) - 1,
                            (1 << 26) - 1, 1 << 26, (1 << 234) % p])
    return st.one_of(st.integers(min_value=0, max_value=p - 1), edge)


PROGRAM = "limb_protocol_check.py"


@FIELDS
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_arithmetic_matches_python_integers(f, data):
    p = f.modulus
    pairs = data.draw(st.lists(st.tuples(values_of(f), values_of(f)), min_size=1, max_size=40))
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    a, b = f.from_ints(xs), f.from_ints(ys)
    assert f.to_ints(a) == xs
    assert f.to_ints(f.add(a, b)) == [(x + y) % p for x, y in zip(xs, ys)]
    product = f.mul(a, b)
    assert f.to_ints(product) == [x * y % p for x, y in zip(xs, ys)]
    again = f.mul(f.add(product, a), product)  # results feed further products
    assert f.to_ints(again) == [(x * y + x) * x * y % p for x, y in zip(xs, ys)]


@FIELDS
@settings(max_examples=150, deadline=None)
@given(data=st.data(), small=st.integers(-(1 << 30), 1 << 30))
def test_linear_combinations_small_and_large_coefficients(f, data, small):
    p = f.modulus
    pairs = data.draw(st.lists(st.tuples(values_of(f), values_of(f)), min_size=1, max_size=20))
    large = data.draw(values_of(f))
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    a, b = f.from_ints(xs), f.from_ints(ys)
    got = f.combine([(small, a), (large, b), (-3, a)], len(xs))
    assert f.to_ints(got) == [(small * x + large * y - 3 * x) % p for x, y in zip(xs, ys)]


@FIELDS
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_bytes_become_26_bit_limbs_reduced_mod_p(f, data):
    n = data.draw(st.integers(1, 20))
    raw = data.draw(st.binary(min_size=f.random_bytes(n), max_size=f.random_bytes(n)))
    drawn = np.frombuffer(raw, dtype="<u4").reshape(-1, n)
    expected = [sum((int(drawn[j, i]) & ((1 << 26) - 1)) << (26 * j) for j in range(len(drawn)))
                % f.modulus for i in range(n)]
    assert f.to_ints(f.from_random(raw, n)) == expected


@FIELDS
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_words_reduce_mod_p(f, data):
    top = (1 << (64 * f.words)) - 1
    values = data.draw(st.lists(st.integers(0, top) | st.just(top), min_size=1, max_size=30))
    raw = b"".join(v.to_bytes(8 * f.words, "little") for v in values)
    reduced = f.from_words(np.frombuffer(raw, dtype="<u8").reshape(-1, f.words))
    assert f.to_ints(reduced) == [v % f.modulus for v in values]


@FIELDS
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_wire_form_round_trips(f, data):
    values = data.draw(st.lists(values_of(f), max_size=30))
    a = f.from_ints(values) if values else f.zeros(0)
    wire = f.to_bytes(a)
    assert len(wire) == f.wire_bytes * len(values)
    assert f.to_ints(f.from_bytes(wire, len(values))) == values


def test_legendre_symbols_match_gmpy2():
    import gmpy2
    p = LINK.modulus
    values = [0, 1, 4, p - 1] + [random.randrange(p) for _ in range(200)]
    assert LINK.legendre(LINK.from_ints(values)).tolist() == [
        gmpy2.legendre(v, p) for v in values]


@FIELDS
def test_lagrange_coefficients_recombine_a_polynomial(f):
    rng, p = random.Random(3), f.modulus
    for points in ([1, 2, 3], [1, 2, 3, 4, 5], [2, 3], [1, 3, 5]):
        poly = [rng.randrange(p) for _ in points]  # degree len(points) - 1
        values = [sum(c * x**k for k, c in enumerate(poly)) % p for x in points]
        weights = f.lagrange_at_zero(points)
        assert sum(w * v for w, v in zip(weights, values)) % p == poly[0]


def _limb_bytes(f: limbs.LimbField, digits: list[int]) -> bytes:
    return b"".join(d.to_bytes(4, "little") for d in digits)


@FIELDS
@pytest.mark.parametrize("case", ["short", "long", "two for one", "32-bit limbs", "p itself",
                                  "above 2^k"])
def test_hostile_wire_bytes_are_refused(f, case):
    size, p = f.wire_bytes, f.modulus
    digits_of = [(p >> (26 * i)) & ((1 << 26) - 1) for i in range(f.limbs)]
    data, reason = {
        "short": (b"\x00" * (size - 1), "expected 1 field elements"),
        "long": (b"\x00" * (size + 1), "expected 1 field elements"),
        "two for one": (b"\x00" * (2 * size), "expected 1 field elements"),
        "32-bit limbs": (b"\xff" * size, "not in canonical form"),
        "p itself": (_limb_bytes(f, digits_of), "not in canonical form"),
        "above 2^k": (_limb_bytes(f, [(1 << 26) - 1] * f.limbs), "not in canonical form"),
    }[case]
    with pytest.raises(limbs.MalformedShares, match=reason):
        f.from_bytes(data, 1)


@FIELDS
def test_p_minus_one_is_accepted_on_the_wire(f):
    data = f.to_bytes(f.from_ints([f.modulus - 1]))
    assert f.to_ints(f.from_bytes(data, 1)) == [f.modulus - 1]


def _run(parties: int, *extra: str, env: dict | None = None) -> dict:
    return run_program(PROGRAM, parties, *extra, env=env)


@pytest.mark.parametrize("parties, extra", [(3, ()), (5, ())])
def test_limb_protocols_agree_with_the_object_path(parties, extra):
    report = _run(parties, *extra)
    assert report["parties"] == parties and report["threshold"] == (parties - 1) // 2
    failed = [k for k, v in report.items() if v is False]
    assert not failed, report
    assert report["distinct_tags"] > 20  # 150 keys in 32 tags: a constant tag would fail


def test_a_peer_sending_malformed_shares_is_refused_by_name():
    report = _run(3, env={"PPA_CHECK_HOSTILE": "1"})
    assert report["refused"] and "party 2 sent malformed shares" in report["refused"]
