"""The link field on limb arrays: arithmetic against Python integers (hypothesis), the wire
form against hostile bytes, and the protocols against MPyC's object path in real MPyC runs.

The MPC checks run ``tests/mpc_programs/limb_protocol_check.py`` under MPyC's own local
launcher (three and five parties); it compares the Legendre tags with the object-array
path on the same shares and with a plaintext oracle, and checks the PRSS, resharing and
opening primitives through MPyC's own ``output``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppa_kernel.party.secure import limbs

P = limbs.P
elements = st.integers(min_value=0, max_value=P - 1)
edge = st.sampled_from([0, 1, 2, 4, P - 1, P - 2, P - 5, (1 << 128), (1 << 104) - 1,
                        (1 << 26) - 1, (1 << 26)])
field = st.one_of(elements, edge)
PROGRAM = Path(__file__).parent / "mpc_programs" / "limb_protocol_check.py"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(field, field), min_size=1, max_size=40))
def test_arithmetic_matches_python_integers(pairs):
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    a, b = limbs.from_ints(xs), limbs.from_ints(ys)
    assert limbs.to_ints(a) == xs
    assert limbs.to_ints(limbs.add(a, b)) == [(x + y) % P for x, y in zip(xs, ys)]
    product = limbs.mul(a, b)
    assert limbs.to_ints(product) == [x * y % P for x, y in zip(xs, ys)]
    again = limbs.mul(limbs.add(product, a), product)  # results feed further products
    assert limbs.to_ints(again) == [(x * y + x) * x * y % P for x, y in zip(xs, ys)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(field, field), min_size=1, max_size=20),
       st.integers(-(1 << 30), 1 << 30), st.integers(min_value=0, max_value=P - 1))
def test_linear_combinations_small_and_large_coefficients(pairs, small, large):
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    a, b = limbs.from_ints(xs), limbs.from_ints(ys)
    got = limbs.combine([(small, a), (large, b), (-3, a)], len(xs))
    assert limbs.to_ints(got) == [(small * x + large * y - 3 * x) % P for x, y in zip(xs, ys)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=(1 << 192) - 1), min_size=1, max_size=30))
def test_192_bit_words_reduce_mod_p(values):
    raw = b"".join(v.to_bytes(24, "little") for v in values)
    words = np.frombuffer(raw, dtype="<u8").reshape(-1, 3)
    reduced = limbs.from_words(words[:, 0], words[:, 1], words[:, 2])
    assert limbs.to_ints(reduced) == [v % P for v in values]


@settings(max_examples=100, deadline=None)
@given(st.lists(field, min_size=0, max_size=30))
def test_wire_form_round_trips(values):
    a = limbs.from_ints(values) if values else limbs.zeros(0)
    data = limbs.to_bytes(a)
    assert len(data) == limbs.WIRE_BYTES * len(values)
    assert limbs.to_ints(limbs.from_bytes(data, len(values))) == values


def test_legendre_symbols_match_gmpy2():
    import gmpy2
    values = [0, 1, 4, P - 1] + [random.randrange(P) for _ in range(200)]
    assert limbs.legendre(limbs.from_ints(values)).tolist() == [
        gmpy2.legendre(v, P) for v in values]


def test_lagrange_coefficients_recombine_a_polynomial():
    rng = random.Random(3)
    for points in ([1, 2, 3], [1, 2, 3, 4, 5], [2, 3], [1, 3, 5]):
        poly = [rng.randrange(P) for _ in points]  # degree len(points) - 1
        values = [sum(c * x**k for k, c in enumerate(poly)) % P for x in points]
        weights = limbs.lagrange_at_zero(points)
        assert sum(w * v for w, v in zip(weights, values)) % P == poly[0]


@pytest.mark.parametrize("data, count, reason", [
    (b"\x00" * 19, 1, "expected 1 field elements"),  # one byte short
    (b"\x00" * 21, 1, "expected 1 field elements"),  # one byte long
    (b"\x00" * 40, 1, "expected 1 field elements"),  # two elements for one
    (b"\xff" * 20, 1, "not in canonical form"),  # limbs of 32 bits
    (((1 << 26) - 5).to_bytes(4, "little") + ((1 << 26) - 1).to_bytes(4, "little") * 4,
     1, "not in canonical form"),  # p itself: limbs in range, value not below p
])
def test_hostile_wire_bytes_are_refused(data, count, reason):
    with pytest.raises(limbs.MalformedShares, match=reason):
        limbs.from_bytes(data, count)


def test_p_minus_one_is_accepted_on_the_wire():
    data = limbs.to_bytes(limbs.from_ints([P - 1]))
    assert limbs.to_ints(limbs.from_bytes(data, 1)) == [P - 1]


def _free_base_port(parties: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 60000)
        try:
            sockets = [socket.create_server(("localhost", base + i)) for i in range(parties)]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return base
    raise RuntimeError("no free run of ports")


def _run(parties: int, *extra: str, env: dict | None = None) -> dict:
    args = [sys.executable, str(PROGRAM), f"-M{parties}", "-B", str(_free_base_port(parties)),
            *extra]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})}, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


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
