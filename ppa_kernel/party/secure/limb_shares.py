"""Shamir shares held as limb arrays (:mod:`.limbs`): the same sharings,
resharing and openings MPyC makes, without a Python integer per element.

- :func:`random_shares` and :func:`zero_shares` are pseudorandom secret sharings (PRSS)
  from the subset keys MPyC's PRSS uses: for each subset S of m - t parties with key
  k_S, the members evaluate u_S = PRF(k_S, input) (a ChaCha20 stream keyed by
  SHA-256 of the key and the input) and party i holds
  ``sum_S u_S * prod_{j not in S} (x_j - x_i)`` (times ``x_i^k`` for zero sharings of
  degree 2t). That is MPyC's PRSS with each u_S scaled by a public nonzero constant, so
  the secret is uniform to any t parties; for three parties every coefficient is a small
  integer. Each u_S has 78 PRF bits more than p, reduced mod p: within 2^-78 of uniform.
- :func:`reshare` is MPyC's degree reduction [GRR98]: 2t + 1 parties share their
  degree-2t shares afresh (coefficients: a ChaCha20 stream under an ``os.urandom`` key) and everyone
  recombines; :func:`open_shares` is MPyC's ``output``: each party sends its share to
  the ``threshold`` parties after it.

Messages carry exactly the expected count of canonical elements (``LimbField.from_bytes``
rejects anything else). Callers open values only through :func:`.openings.reveal_limbs`.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .limbs import LimbField, MalformedShares
from .runtime import exchange, mpc, prss_input, prss_keys

PRF_LABEL = b"ppa-limb-prss-v1"


def points() -> list[int]:
    """Every party's Shamir evaluation point, by party id (MPyC's: 1..m)."""
    return [p + 1 for p in range(len(mpc.parties))]


def key_stream(key: bytes, size: int) -> bytes:
    """``size`` bytes of the ChaCha20 key stream of a 32-byte key (nonce zero)."""
    cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None)
    return cipher.encryptor().update(bytes(size))


def _prf(field: LimbField, key: bytes, uci: bytes, k: int, n: int) -> np.ndarray:
    """n pseudorandom field elements from a subset's key and a common input: the ChaCha20
    stream of SHA-256(label, key, input, k)."""
    seed = hashlib.sha256(PRF_LABEL + bytes(key) + uci + k.to_bytes(2, "big")).digest()
    return field.from_random(key_stream(seed, field.random_bytes(n)), n)


def _random_words(field: LimbField, n: int) -> np.ndarray:
    """n field elements uniform up to 2^-78 (a ChaCha20 stream under a fresh system key)."""
    return field.from_random(key_stream(os.urandom(32), field.random_bytes(n)), n)


def _subset_terms(field: LimbField, powers: range, n: int) -> list[tuple[int, np.ndarray]]:
    """(coefficient, u) pairs whose combination is this party's PRSS share (see module)."""
    xs, me = points(), mpc.pid
    uci = prss_input()
    terms = []
    for subset, key in prss_keys().items():
        outside = math.prod(x - xs[me] for j, x in enumerate(xs) if j not in subset)
        terms += [(outside * xs[me] ** k, _prf(field, key, uci, k, n)) for k in powers]
    return terms


def random_shares(field: LimbField, n: int) -> np.ndarray:
    """This party's degree-t shares of n secret uniformly random field elements (PRSS)."""
    return field.combine(_subset_terms(field, range(1), n), n)


def zero_shares(field: LimbField, n: int) -> np.ndarray:
    """This party's degree-2t shares of n zeros (PRSS), to re-randomise an opening."""
    return field.combine(_subset_terms(field, range(1, mpc.threshold + 1), n), n)


def split(field: LimbField, secrets_: np.ndarray, t: int, m: int) -> list[np.ndarray]:
    """Fresh degree-t Shamir shares at points 1..m of every secret (random coefficients)."""
    n = secrets_.shape[1]
    coefficients = [_random_words(field, n) for _ in range(t)]
    if t == 1:  # s + c x at each point
        return [field.combine([(x, coefficients[0]), (1, secrets_)], n) for x in range(1, m + 1)]
    out = []
    for x in range(1, m + 1):  # Horner: (((c_t x + c_(t-1)) x + ...) + c_1) x + s
        value = field.zeros(n)
        for c in reversed(coefficients):
            value = field.combine([(x, value), (1, c)], n)
        out.append(field.combine([(x, value), (1, secrets_)], n))
    return out


async def reshare(field: LimbField, x: np.ndarray) -> np.ndarray:
    """Degree-t shares of the values of which ``x`` holds degree-2t shares (one round)."""
    m, t, me, n = len(mpc.parties), mpc.threshold, mpc.pid, x.shape[1]
    senders = list(range(2 * t + 1))
    outgoing, own = {}, None
    if me in senders:
        for pid, share in enumerate(split(field, x, t, m)):
            if pid == me:
                own = share
            else:
                outgoing[pid] = field.to_bytes(share)
    received = await exchange(outgoing, [s for s in senders if s != me])
    pieces = {pid: parse(field, data, n, pid) for pid, data in received.items()}
    if own is not None:
        pieces[me] = own
    weights = field.lagrange_at_zero([s + 1 for s in senders])
    return field.combine([(w, pieces[s]) for w, s in zip(weights, senders, strict=True)], n)


async def open_shares(field: LimbField, x: np.ndarray, threshold: int) -> np.ndarray:
    """The values of which ``x`` holds degree-``threshold`` shares, to every party."""
    m, me, n = len(mpc.parties), mpc.pid, x.shape[1]
    mine = field.to_bytes(x)
    outgoing = {pid: mine for pid in range(m) if 0 < (pid - me) % m <= threshold}
    sources = [(me - threshold + j) % m for j in range(threshold)]
    received = await exchange(outgoing, sources)
    pieces = [(s + 1, parse(field, received[s], n, s)) for s in sources] + [(me + 1, x)]
    weights = field.lagrange_at_zero([point for point, _ in pieces])
    return field.freeze(field.combine(
        [(w, share) for w, (_, share) in zip(weights, pieces, strict=True)], n))


SLICE = 1 << 17
"""Elements shared per round: bounds the memory of splitting and of the messages, and
keeps a round's arrays (10 MB each) in cache: splitting, serialising and parsing cost
0.22 µs per element in rounds of 2^17 and 0.54 µs in rounds of 2^19 (3 million
elements, this machine's 32 MB L3 shared by three workers)."""


async def inputs_from(field: LimbField, values: np.ndarray | None, senders: list[int],
                      count: int) -> np.ndarray:
    """The sum over ``senders`` of the ``count`` values each holds (``values``, limbs, at
    a sender; None elsewhere), as this party's degree-t shares: each sender sends fresh
    shares, all at once, in rounds of at most :data:`SLICE` elements."""
    if mpc.pid in senders and (values is None or values.shape[1] != count):
        raise ValueError("a sender must give exactly the announced count of values")
    out = np.empty((field.limbs, count), dtype=np.uint64)
    for start in range(0, count, SLICE):
        stop = min(count, start + SLICE)
        part = values[:, start:stop] if mpc.pid in senders else None
        out[:, start:stop] = await _share_round(field, part, senders, stop - start)
    return out


async def _share_round(field: LimbField, values: np.ndarray | None, senders: list[int],
                       count: int) -> np.ndarray:
    m, t, me = len(mpc.parties), mpc.threshold, mpc.pid
    outgoing, total = {}, None
    if me in senders:
        pieces = split(field, np.ascontiguousarray(values), t, m)
        outgoing = {pid: field.to_bytes(share) for pid, share in enumerate(pieces) if pid != me}
        total = pieces[me]
    received = await exchange(outgoing, [s for s in senders if s != me])
    for pid, data in received.items():
        share = parse(field, data, count, pid)
        total = share if total is None else field.add(total, share)
    return total


def parse(field: LimbField, data: bytes, n: int, pid: int) -> np.ndarray:
    """Party ``pid``'s message of n canonical elements, or :class:`MalformedShares`."""
    try:
        return field.from_bytes(data, n)
    except MalformedShares as exc:
        raise MalformedShares(f"party {pid} sent malformed shares: {exc}") from None
