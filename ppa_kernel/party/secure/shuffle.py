"""Oblivious shuffle of secret-shared rows by resharing (honest majority, passive).

For each subset S of m - t parties, the members of S turn their Shamir shares into
additive shares over S (Lagrange coefficients), permute them with a permutation that
only S knows, and re-share the result with fresh Shamir sharings; everyone adds what it
receives. A coalition of at most t parties misses at least one subset's permutation, so
the composed permutation is uniformly secret to it.

Leakage: nothing is opened. Each member of S learns only its own additive share, which
it immediately re-shares.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .runtime import mpc, prss_keys, recombination_coefficient, shares

logger = logging.getLogger(__name__)

Subset = tuple[int, ...]


def subsets(m: int, t: int) -> list[Subset]:
    """All subsets of m - t parties, in the fixed order every party uses."""
    return list(itertools.combinations(range(m), m - t))


def derive_seeds(nonce: bytes) -> dict[Subset, str]:
    """Permutation seeds (hex) for the subsets this party belongs to.

    Derived from MPyC's PRSS keys, which exactly the members of each subset share, and a
    public per-linkage nonce. The seeds are this party's secret; keep them private.
    """
    seeds = {}
    for subset, key in prss_keys().items():
        digest = hashlib.sha256(b"ppa-shuffle-v1" + bytes(key) + nonce).hexdigest()
        seeds[tuple(subset)] = digest
    return seeds


def permutation(seed_hex: str, n: int) -> np.ndarray:
    """The permutation of ``range(n)`` that a subset's seed defines."""
    seed = int.from_bytes(hashlib.sha256(bytes.fromhex(seed_hex) + n.to_bytes(8, "big")).digest())
    return np.random.Generator(np.random.PCG64(seed)).permutation(n)


async def shuffle_rows(x, seeds: dict[Subset, str], step: Callable[[], Any] | None = None):
    """Permute the rows of secure array ``x`` by the composition of all subsets' permutations.

    ``seeds`` holds this party's seeds (from :func:`derive_seeds`); ``step`` is called
    after each subset's turn (``len(subsets(m, t))`` times). Opens nothing.
    """
    sectype = type(x).sectype
    field = sectype.field
    m, t = len(mpc.parties), mpc.threshold
    n = x.shape[0]
    for subset in subsets(m, t):
        senders = list(subset)
        if mpc.pid in subset:
            points = tuple(i + 1 for i in subset)
            coefficient = recombination_coefficient(field, points, subset.index(mpc.pid))
            mine = (await shares(x)) * coefficient % field.modulus
            mine = mine[permutation(seeds[tuple(subset)], n)]
            own = sectype.array(field.array(mine, check=False))
        else:
            own = sectype.array(field.array(np.zeros(x.shape, dtype=object), check=False))
        received = mpc.input(own, senders=senders)
        x = received[0]
        for part in received[1:]:
            x = x + part
        if step is not None:
            step()
    return x
