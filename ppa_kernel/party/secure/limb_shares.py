"""Shamir shares in the link field held as limb arrays (:mod:`.limbs`): the same sharings,
resharing and openings MPyC makes, without a Python integer per element.

- :func:`random_shares` and :func:`zero_shares` are pseudorandom secret sharings (PRSS)
  from the subset keys MPyC's PRSS uses: for each subset S of m - t parties with key
  k_S, the members evaluate u_S = SHAKE-128(k_S, input) and party i holds
  ``sum_S u_S * prod_{j not in S} (x_j - x_i)`` (times ``x_i^k`` for zero sharings of
  degree 2t). That is MPyC's PRSS with each u_S scaled by a public nonzero constant, so
  the secret is uniform to any t parties; for three parties every coefficient is a small
  integer. Each u_S is 192 PRF bits reduced mod p: within 2^-62 of uniform.
- :func:`reshare` is MPyC's degree reduction [GRR98]: 2t + 1 parties share their
  degree-2t shares afresh (coefficients from ``os.urandom``, 192 bits each) and everyone
  recombines; :func:`open_shares` is MPyC's ``output``: each party sends its share to
  the ``threshold`` parties after it.

Messages carry exactly the expected count of canonical elements (:func:`.limbs.from_bytes`
rejects anything else). Callers open values only through :func:`.openings.reveal_limbs`.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from . import limbs
from .runtime import exchange, mpc, prss_input, prss_keys

PRF_LABEL = b"ppa-limb-prss-v1"


def _points() -> list[int]:
    return [p + 1 for p in range(len(mpc.parties))]


def _prf(key: bytes, uci: bytes, k: int, n: int) -> np.ndarray:
    """n pseudorandom field elements from a subset's key and a common input."""
    raw = hashlib.shake_128(PRF_LABEL + bytes(key) + uci + k.to_bytes(2, "big")).digest(24 * n)
    words = np.frombuffer(raw, dtype="<u8").reshape(n, 3)
    return limbs.from_words(words[:, 0], words[:, 1], words[:, 2])


def _subset_terms(powers: range, n: int) -> list[tuple[int, np.ndarray]]:
    """(coefficient, u) pairs whose combination is this party's PRSS share (see module)."""
    points, me = _points(), mpc.pid
    uci = prss_input()
    terms = []
    for subset, key in prss_keys().items():
        outside = math.prod(x - points[me] for j, x in enumerate(points) if j not in subset)
        terms += [(outside * points[me] ** k, _prf(key, uci, k, n)) for k in powers]
    return terms


def random_shares(n: int) -> np.ndarray:
    """This party's degree-t shares of n secret uniformly random field elements (PRSS)."""
    return limbs.combine(_subset_terms(range(1), n), n)


def zero_shares(n: int) -> np.ndarray:
    """This party's degree-2t shares of n zeros (PRSS), to re-randomise an opening."""
    return limbs.combine(_subset_terms(range(1, mpc.threshold + 1), n), n)


def _split(secrets_: np.ndarray, t: int, m: int) -> list[np.ndarray]:
    """Fresh degree-t Shamir shares at points 1..m of every secret (random coefficients)."""
    n = secrets_.shape[1]
    coefficients = []
    for _ in range(t):
        words = np.frombuffer(os.urandom(24 * n), dtype="<u8").reshape(n, 3)
        coefficients.append(limbs.from_words(words[:, 0], words[:, 1], words[:, 2]))
    out = []
    for x in range(1, m + 1):  # Horner: (((c_t x + c_(t-1)) x + ...) + c_1) x + s
        value = limbs.zeros(n)
        for c in reversed(coefficients):
            value = limbs.combine([(x, value), (1, c)], n)
        out.append(limbs.combine([(x, value), (1, secrets_)], n))
    return out


async def reshare(x: np.ndarray) -> np.ndarray:
    """Degree-t shares of the values of which ``x`` holds degree-2t shares (one round)."""
    m, t, me, n = len(mpc.parties), mpc.threshold, mpc.pid, x.shape[1]
    senders = list(range(2 * t + 1))
    outgoing, own = {}, None
    if me in senders:
        for pid, share in enumerate(_split(x, t, m)):
            if pid == me:
                own = share
            else:
                outgoing[pid] = limbs.to_bytes(share)
    received = await exchange(outgoing, [s for s in senders if s != me])
    pieces = {pid: _parse(data, n, pid) for pid, data in received.items()}
    if own is not None:
        pieces[me] = own
    weights = limbs.lagrange_at_zero([s + 1 for s in senders])
    return limbs.combine([(w, pieces[s]) for w, s in zip(weights, senders, strict=True)], n)


async def open_shares(x: np.ndarray, threshold: int) -> np.ndarray:
    """The values of which ``x`` holds degree-``threshold`` shares, to every party."""
    m, me, n = len(mpc.parties), mpc.pid, x.shape[1]
    mine = limbs.to_bytes(x)
    outgoing = {pid: mine for pid in range(m) if 0 < (pid - me) % m <= threshold}
    sources = [(me - threshold + j) % m for j in range(threshold)]
    received = await exchange(outgoing, sources)
    pieces = [(s + 1, _parse(received[s], n, s)) for s in sources] + [(me + 1, x)]
    weights = limbs.lagrange_at_zero([point for point, _ in pieces])
    return limbs.freeze(limbs.combine(
        [(w, share) for w, (_, share) in zip(weights, pieces, strict=True)], n))


def _parse(data: bytes, n: int, pid: int) -> np.ndarray:
    try:
        return limbs.from_bytes(data, n)
    except limbs.MalformedShares as exc:
        raise limbs.MalformedShares(f"party {pid} sent malformed shares: {exc}") from None
