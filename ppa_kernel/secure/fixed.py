"""Secure fixed-point numbers for the last, small steps of models (divisions, solves).

Values stay secure integers (``value_type``) while they are summed over rows; a model
turns its few per-cell totals into ``fixed_type()`` numbers -- the same 256-bit field,
so this is a local reinterpretation plus at most one truncation -- and finishes there.
``SecFxp(112, 56)`` keeps 56 fraction bits (relative error about 1e-13 on divisions)
and integer parts below 2^55; models scale their totals into that range first.

Fixed-point products and divisions truncate, and MPyC's truncation opens ``a + r`` for
a random ``r`` 30 bits longer than ``a`` (statistically hiding ``a``). Such openings are
named ``protocol.truncation_masked`` and happen only inside :func:`compute`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..models import MASKED_TRUNCATION
from .openings import masked
from .runtime import mpc, value_type

FRAC_BITS = 56
FIXED_BITS = 112
TRUNC_BITS = 200
"""Bound on the bit length of integer totals converted with a truncation (< 256 - 31)."""


@functools.cache
def fixed_type():
    """Secure fixed-point type over the value field (so conversion needs no resharing)."""
    return mpc.SecFxp(FIXED_BITS, FRAC_BITS, p=value_type().field.modulus)


async def from_scaled(shares: np.ndarray, shift: int):
    """Fixed-point array of ``shares / 2**shift`` (integer shares of ``value_type``)."""
    fx = fixed_type()
    field = fx.field
    raw = np.asarray(shares, dtype=object)
    if shift <= FRAC_BITS:
        raw = raw * (1 << (FRAC_BITS - shift))
        return fx.array(field.array(raw % field.modulus, check=False))
    wide = fx.array(field.array(raw % field.modulus, check=False))  # value shares / 2^56
    return await compute(lambda: mpc.np_trunc(wide, f=shift - FRAC_BITS, l=TRUNC_BITS))


async def compute(step: Callable[[], Any]) -> Any:
    """Run fixed-point arithmetic (products, divisions), naming its masked openings."""
    with masked(MASKED_TRUNCATION):
        result = step()
        await mpc.gather(result)
    return result
