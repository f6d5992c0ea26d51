"""Secure fixed-point numbers for the last, small steps of models (divisions, solves).

Values stay secure integers (``value_type``) while they are summed over rows; a model
turns its few per-cell totals into ``fixed_type()`` numbers -- the same 256-bit field,
so this is a local reinterpretation plus at most one truncation -- and finishes there.
``SecFxp(112, 56)`` keeps 56 fraction bits (relative error about 1e-13 on divisions)
and integer parts below 2^55; models scale their totals into that range first.

Fixed-point products and divisions truncate, and a truncation opens ``a + r`` for a
random ``r`` 30 bits longer than ``a`` (statistically hiding ``a``; see
:mod:`.truncation`). Such openings are named ``protocol.truncation_masked`` and happen
only inside :func:`compute`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ppa_kernel.contract.models import MASKED_TRUNCATION

from .openings import masked
from .runtime import mpc, random_field_array, reshare, shares, value_type, zero_sharing
from .truncation import carry_bound

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


async def truncate_product(product: np.ndarray, f: int, l: int) -> np.ndarray:  # noqa: E741
    """Shares (degree t) of ``product / 2^f``, rounded up by at most ``d`` units, from
    this party's *local* products of shares (degree up to 2t), in one round.

    Degree reduction and truncation in one opening: the parties open
    ``c = product + 2^(l-1) + r_low + 2^f r_high`` at threshold 2t, re-randomised by a
    pseudorandom sharing of zero of degree 2t (as MPyC's random bits are), and take
    ``(c - c mod 2^f) / 2^f - 2^(l-1-f) - r_high``: a public number minus degree-t
    shares. This saves the resharing round of a multiplication. Requires
    ``|product| < 2^(l-1)``; opens ``c`` as ``protocol.truncation_masked``, which hides
    the product statistically (see :mod:`.truncation`).
    """
    product = np.asarray(product, dtype=object)
    shape = product.shape
    sectype = value_type()
    field = sectype.field
    flat = product.reshape(-1) % field.modulus
    with masked(MASKED_TRUNCATION):
        if mpc.options.no_prss:  # no pseudorandom zero sharings: reshare, then truncate
            reshared = await reshare(field.array(flat, check=False))
            truncated = mpc.np_trunc(sectype.array(reshared), f=f, l=l)
            return (await shares(truncated)).reshape(shape)
        n = product.size
        k = mpc.options.sec_param
        low = random_field_array(field, n, carry_bound() << f).value
        high = random_field_array(field, n, carry_bound() << (k + l - f)).value
        zero = zero_sharing(field, n)
        offset = 1 << (l - 1)
        hidden = (flat + offset + low + (high << f) + zero.value) % field.modulus
        opened = await mpc.output(field.array(hidden, check=False),
                                  threshold=2 * mpc.threshold)
    public = (np.asarray(opened.value, dtype=object) >> f) - (offset >> f)
    return ((public - high) % field.modulus).reshape(shape)
