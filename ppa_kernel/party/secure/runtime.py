"""Access to the MPyC runtime and the secure types the engine uses.

MPyC parses ``sys.argv`` and builds its global runtime when ``mpyc.runtime`` is first
imported, so only the worker process imports this module, after it has set ``sys.argv``.
"""

from __future__ import annotations

import functools

import numpy as np
from mpyc import finfields
from mpyc.runtime import mpc

from . import patches

patches.install()

__all__ = ["link_type", "mpc", "shares", "value_type", "wrap"]

LINK_FIELD_BITS = 128
"""Field size for link keys and the Legendre PRF (at least 2^128, see ARCHITECTURE.md)."""

VALUE_FIELD_BITS = 256
"""Field size for analysis values: room for sums of products of squared fixed-point values."""

COMPARE_BITS = 64
"""Bit length assumed by secure comparisons: compared values satisfy |v| < 2^63."""


@functools.cache
def link_type():
    """Secure prime-field type for link keys and PRF tags."""
    return mpc.SecFld(min_order=1 << LINK_FIELD_BITS)


@functools.cache
def value_type():
    """Secure integer type (64-bit comparisons) over a 256-bit prime field."""
    p = finfields.find_prime_root(VALUE_FIELD_BITS)[0]
    return mpc.SecInt(COMPARE_BITS, p=p)


async def shares(x) -> np.ndarray:
    """This party's shares of secure array ``x`` as an object array of field values."""
    share = await mpc.gather(x)
    return share.value


def wrap(sectype, values: np.ndarray):
    """Secure array of ``sectype`` holding ``values`` as this party's local shares.

    Only for results of local linear operations on shares (no communication, no opening).
    """
    field = sectype.field
    return sectype.array(field.array(np.asarray(values, dtype=object) % field.modulus, check=False))

