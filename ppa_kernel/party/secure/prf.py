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

import numpy as np

from . import limb_shares
from .limbs import LINK
from .openings import reveal_limbs
from .runtime import mpc, shares

logger = logging.getLogger(__name__)

CHUNK_ROWS = 16384
"""Rows per batch, bounding memory: a batch holds rows * bits elements, about 200 bytes
each at its peak (limb arrays and their products), so about 70 MB at 21 bits."""


async def secret_keys(sectype, count: int):
    """``count`` secret uniformly random field elements, one contribution from every party."""
    field = sectype.field
    mine = field.array([secrets.randbelow(field.modulus) for _ in range(count)], check=False)
    contributions = mpc.input(sectype.array(mine))
    total = contributions[0]
    for part in contributions[1:]:
        total = total + part
    return total


async def legendre_tags(sectype, x: np.ndarray, bits: int, *, chunk: int = CHUNK_ROWS,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``bits`` Legendre-PRF bits (fresh keys) of each secret key, given by this party's
    shares ``x`` (link-field limbs, ``(L, n)``).

    Opens (x + k_j) * r_j^2 for every row and bit under the name ``linkage.prf_masked``.
    The arithmetic runs on limb arrays (:mod:`.limbs`, :mod:`.limb_shares`).
    """
    if sectype.field.modulus != LINK.modulus:
        raise ValueError("the Legendre tags need the link field GF(2^130 - 5)")
    k_share = await shares(await secret_keys(sectype, bits))
    return await keyed_tags(x, LINK.from_ints(k_share), chunk=chunk, progress=progress)


async def keyed_tags(x: np.ndarray, keys: np.ndarray, *, chunk: int = CHUNK_ROWS,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Tag bit j of row i is 1 when x_i + k_j is a nonzero square (this party's limb
    shares of the link-field values x and keys k). Opens ``linkage.prf_masked``."""
    t, n, bits = mpc.threshold, x.shape[1], keys.shape[1]
    weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
    tags = np.zeros(n, dtype=np.uint64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        count = (stop - start) * bits
        shifted = LINK.add(x[:, start:stop, None], keys[:, None, :]).reshape(LINK.limbs, count)
        r = limb_shares.random_shares(LINK, count)
        squares = await limb_shares.reshare(LINK, LINK.mul(r, r))
        masked = LINK.add(LINK.mul(shifted, squares), limb_shares.zero_shares(LINK, count))
        opened = await reveal_limbs("linkage.prf_masked", LINK, masked, threshold=2 * t)
        symbols = LINK.legendre(opened).reshape(stop - start, bits)
        tags[start:stop] = ((symbols == 1).astype(np.uint64) * weights).sum(axis=1)
        if progress is not None:
            progress(stop - start)
    return tags
