"""Fixed-point truncation with pseudorandom masks instead of random bits.

MPyC 0.11 truncates ``a`` (dropping ``f`` low bits) by opening ``a + r`` with
``r = r_low + 2^f r_high``, ``r_low`` built from ``f`` shared random *bits*. Each bit
costs a PRSS sharing, an opened square and a 256-bit modular square root: about 24 µs
here, so one fixed-point product of 100,000 values spent 134 of its 160 s on bits.

Truncation does not need the bits of ``r_low``, only shares of ``r_low`` itself with a
known bound. PRSS gives such shares without communication: every set ``S`` of ``m - t``
parties shares a PRF key, and the random value is the sum over the ``d = C(m, t)`` sets
of ``u_S`` (below ``2^f``) plus ``2^f v_S`` (below ``2^(k+l-f)``), each from the PRF.
The parties open ``c = a + 2^(l-1) + r_low + 2^f r_high`` and take
``(a + 2^(l-1) + r_low - (c mod 2^f)) / 2^f``: the floor of ``(a + 2^(l-1) + r_low) /
2^f``, which exceeds the exact floor of the (offset) value by a carry in ``0..d`` -- so
results round up by at most ``d`` units in the last place (3 for three parties, i.e.
4e-17 at 56 fraction bits), where MPyC's probabilistic rounding errs by at most one.

Leakage: the opened ``c`` (named ``protocol.truncation_masked`` by callers) is ``a``
plus, from the point of view of any ``t`` colluding parties, a uniform ``u_S + 2^f v_S``
in ``[0, 2^(k+l))`` from a set they are not in: statistically hiding ``a`` (|a| <
2^(l-1)) to within 2^-k, exactly as MPyC's own truncation. Semi-honest, like MPyC.

Importing this module (:mod:`.fixed` and the worker do) makes MPyC's runtime use these
truncations.
"""

from __future__ import annotations

import math
from asyncio import Future

import numpy as np

from .runtime import Runtime, mpc, mpc_coro, random_field_array, use_truncation


def _mask_sets(runtime: Runtime) -> int:
    """How many pseudorandom terms a random sharing sums (d above)."""
    t = runtime.threshold
    return t + 1 if runtime.options.no_prss else math.comb(len(runtime.parties), t)


def carry_bound() -> int:
    """The largest rounding carry of a truncation in this runtime (d above)."""
    return _mask_sets(mpc)


@mpc_coro
async def np_trunc(self: Runtime, a, f=None, l=None):  # noqa: E741 (MPyC's signature)
    """Secure truncation of the ``f`` low bits of (elements of) ``a``; rounds up by at
    most ``d`` units (see the module docstring). Replaces ``Runtime.np_trunc``."""
    n = a.size
    sftype = type(a)
    if issubclass(sftype, self.SecureObject):
        await self.returnType((sftype, a.shape))
        field = sftype.sectype.field
        l = l or sftype.sectype.bit_length  # noqa: E741
        if f is None:
            f = sftype.frac_length
        if issubclass(sftype, self.SecureFixedPoint):
            l += f  # noqa: E741
    else:
        await self.returnType(Future)
        field = sftype.field
    k = self.options.sec_param
    d = _mask_sets(self)
    low = random_field_array(field, n, d << f)
    high = random_field_array(field, n, d << (k + l - f))
    if self.options.no_prss:
        low, high = await low, await high
    low, high = low.value.reshape(a.shape), high.value.reshape(a.shape)
    if issubclass(sftype, self.SecureObject):
        a = await self.gather(a)
    low = low + a.value
    opened = await self.output(field.array(low + (1 << l - 1) + (high << f)))
    remainder = opened.value & ((1 << f) - 1)
    return field.array(low - remainder) >> f


@mpc_coro
async def trunc(self: Runtime, x, f=None, l=None):  # noqa: E741 (MPyC's signature)
    """Scalar and list form of :func:`np_trunc` (replaces ``Runtime.trunc``)."""
    x_is_list = isinstance(x, list)
    items = x if x_is_list else [x]
    n = len(items)
    sftype = type(items[0])
    if issubclass(sftype, self.SecureObject):
        if x_is_list:
            await self.returnType(sftype, n)
        else:
            await self.returnType(sftype)
        field = sftype.field
        l = l or sftype.bit_length  # noqa: E741
        if f is None:
            f = sftype.frac_length
        if issubclass(sftype, self.SecureFixedPoint):
            l += f  # noqa: E741
        items = await self.gather(items)
    else:
        await self.returnType(Future)
        field = sftype
    values = np.array([v.value for v in items], dtype=object)
    result = await np_trunc(self, field.array(values), f=f, l=l)
    out = [field(int(v)) for v in result.value]
    return out if x_is_list else out[0]


use_truncation(np_trunc, trunc)  # for every fixed-point operation of the MPyC runtime
