"""Keyed Legendre PRF evaluated on secret link keys.

Tag bit j of a key x is the Legendre symbol of (x + k_j) for secret random keys k_j that
no party knows (the sum of one random contribution per party). To evaluate it, the
parties open (x + k_j) * r_j^2 for a fresh secret random r_j: a uniformly random field
element whose Legendre symbol equals that of (x + k_j). The product is opened from its
degree-2t shares, re-randomised with a pseudorandom sharing of zero, which saves a
resharing round.

Leakage: per row and key, the opened masked value reveals only the Legendre symbol, i.e.
the tag bit; the tags are opened to every party. Keys and masks are fresh per linkage.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import gmpy2
import numpy as np

from .openings import reveal
from .runtime import mpc, random_field_array, shares, zero_sharing

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2048
"""Rows per batch, bounding memory: each batch holds rows * TAG_BITS field elements."""


async def secret_keys(sectype, count: int):
    """``count`` secret uniformly random field elements, one contribution from every party."""
    field = sectype.field
    mine = field.array([secrets.randbelow(field.modulus) for _ in range(count)], check=False)
    contributions = mpc.input(sectype.array(mine))
    total = contributions[0]
    for part in contributions[1:]:
        total = total + part
    return total


async def legendre_tags(sectype, x_share: np.ndarray, bits: int, *, chunk: int = CHUNK_ROWS,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``bits`` Legendre-PRF bits (fresh keys) of each secret key, given by this party's shares.

    Opens (x + k_j) * r_j^2 for every row and bit under the name ``linkage.prf_masked``.
    """
    field = sectype.field
    p = field.modulus
    n = len(x_share)
    k_share = await shares(await secret_keys(sectype, bits))
    weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
    tags = np.zeros(n, dtype=np.uint64)
    legendre = np.frompyfunc(lambda v: gmpy2.legendre(v, p), 1, 1)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = stop - start
        shifted = (x_share[start:stop, None] + k_share[None, :]).reshape(-1)
        r = random_field_array(sectype, rows * bits)
        squares = await shares(r * r)
        masked = (shifted * squares) % p
        masked = field.array(masked + zero_sharing(field, rows * bits).value)
        opened = await reveal("linkage.prf_masked", masked, threshold=2 * mpc.threshold)
        symbols = legendre(opened.value.reshape(rows, bits)).astype(np.int64)
        tags[start:stop] = ((symbols == 1).astype(np.uint64) * weights).sum(axis=1)
        if progress is not None:
            progress(rows)
    return tags
