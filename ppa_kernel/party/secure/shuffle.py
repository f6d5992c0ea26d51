"""Oblivious shuffle of secret-shared rows by resharing (honest majority, passive).

For each subset S of m - t parties, the members of S turn their Shamir shares into
additive shares over S (Lagrange coefficients), permute them with a permutation that
only S knows, and re-share the result with fresh Shamir sharings; everyone adds what it
receives. Shares are limb arrays (:mod:`.limbs`), moved by :mod:`.limb_shares`. A
coalition of at most t parties misses at least one subset's permutation, so the composed
permutation is uniformly secret to it.

Leakage: nothing is opened. Each member of S learns only its own additive share, which
it immediately re-shares.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from .limb_shares import inputs_from
from .limbs import LimbField
from .runtime import mpc, prss_keys

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


def integer_weights(subset: Subset) -> tuple[list[int], int]:
    """Integer multiples ``D * lambda_i`` of the Lagrange coefficients that recombine the
    shares of ``subset`` (points i + 1) at 0, and the smallest such D: members scale by
    small integers instead of field constants, and the result carries a factor D."""
    points = [i + 1 for i in subset]
    weights = []
    for i, xi in enumerate(points):
        others = [x for j, x in enumerate(points) if j != i]
        weights.append(Fraction(math.prod(others), math.prod(x - xi for x in others)))
    scale = math.lcm(*(w.denominator for w in weights))
    return [int(w * scale) for w in weights], scale


def owner_prefix(owner: int, m: int, t: int) -> list[Subset]:
    """The leading subsets (in :func:`subsets` order) that all contain ``owner``: an owner
    may apply their permutations to its own plain rows before it shares them."""
    prefix = []
    for subset in subsets(m, t):
        if owner not in subset:
            break
        prefix.append(subset)
    return prefix


def permute_plain(rows: np.ndarray, seeds: dict[Subset, str], order: list[Subset]) -> np.ndarray:
    """``rows`` (plain values, rows on axis 1) permuted by the subsets' permutations in turn."""
    for subset in order:
        rows = rows[:, permutation(seeds[tuple(subset)], rows.shape[1])]
    return rows


async def shuffle_rows(field: LimbField, x: np.ndarray, seeds: dict[Subset, str],
                       step: Callable[[], Any] | None = None, *,
                       skip: int = 0) -> tuple[np.ndarray, int]:
    """Permute the rows of ``x`` (this party's limb shares, shape ``(L, rows, columns)``)
    by the composition of all subsets' permutations.

    Returns shares of the permuted rows times a public integer ``scale`` (the product
    of the subsets' :func:`integer_weights` factors, 2 for three parties), and the scale:
    the caller divides by it once, on whatever it computes from the rows. ``seeds``
    holds this party's seeds (from :func:`derive_seeds`); ``step`` is called after each
    subset's turn. ``skip``: the first subsets' permutations are already applied (see
    :func:`owner_prefix`). Opens nothing.
    """
    m, t = len(mpc.parties), mpc.threshold
    limbs_, n, width = x.shape
    count, total_scale = n * width, 1
    for subset in subsets(m, t)[skip:]:
        weights, scale = integer_weights(subset)
        total_scale *= scale
        mine = None
        if mpc.pid in subset:
            weight = weights[subset.index(mpc.pid)]
            additive = field.combine([(weight, x.reshape(limbs_, count))], count)
            order = permutation(seeds[tuple(subset)], n)
            mine = additive.reshape(limbs_, n, width)[:, order].reshape(limbs_, count)
        x = (await inputs_from(field, mine, list(subset), count)).reshape(limbs_, n, width)
        if step is not None:
            step()
    return x, total_scale
