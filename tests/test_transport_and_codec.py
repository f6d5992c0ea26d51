"""The pickle-free MPC wire codec and the fast share randomness (signed client-kernel
requests: test_identity.py and test_protocol_hostile.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def test_wire_codec_carries_integer_arrays_only():
    from ppa_kernel.party.secure.runtime import WireCodec

    a = np.array([int.from_bytes(os.urandom(32)) for _ in range(60)], dtype=object).reshape(6, 10)
    assert (WireCodec.loads(WireCodec.dumps(a)) == a).all()
    assert WireCodec.loads(WireCodec.dumps(-12)) == -12
    for bad in ([1.5, 2], ["x"], [-1]):
        with pytest.raises(TypeError):
            WireCodec.dumps(np.array(bad, dtype=object))
    data = WireCodec.dumps(a)
    with pytest.raises(ValueError, match="truncated"):
        WireCodec.loads(data[:-1])
    import pickle

    with pytest.raises(ValueError, match="format"):
        WireCodec.loads(pickle.dumps(a))


def test_fast_shamir_shares_recombine_to_the_secret():
    from mpyc import finfields, thresha

    from ppa_kernel.party.secure.runtime import _bulk_randbelow, np_random_split

    field = finfields.GF(finfields.find_prime_root(128)[0])
    secrets_ = np.arange(40, dtype=object) * 12345
    shares = np_random_split(field, field.array(secrets_), 1, 3)
    for pair in ((0, 1), (0, 2), (1, 2)):
        value = thresha.np_recombine(field, [(i + 1, shares[i]) for i in pair])
        assert (np.asarray(value) == secrets_).all()
    draws = _bulk_randbelow(7, 5000)
    assert set(draws.tolist()) == set(range(7))


def test_opening_gate_refuses_names_the_plan_does_not_give():
    from ppa_kernel.party.secure.openings import LEDGER, UnnamedOpening, reveal
    from ppa_kernel.party.secure.runtime import mpc

    secint = mpc.SecInt(16)
    LEDGER.allowed = {"release.count:size"}
    try:
        assert mpc.run(reveal("release.count:size", secint(3))) == 3
        with pytest.raises(UnnamedOpening):
            mpc.run(reveal("release.sum:secret", secint(4)))
        with pytest.raises(UnnamedOpening):
            mpc.run(mpc.output(secint(5)))
        assert [e["name"] for e in LEDGER.entries[-1:]] == ["release.count:size"]
    finally:
        LEDGER.allowed = None
