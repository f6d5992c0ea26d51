"""The logistic function of secret fixed-point values, row by row, for logistic regression.

:func:`logistic` takes shares of ``u`` (raw fixed point, ``u * 2^56``) and returns
shares of ``p = 1 / (1 + 2^u)`` and ``p (1 - p)``; the sigmoid of a linear predictor
``eta`` is ``p`` at ``u = -eta log2(e)``. All parties make the same calls on public
constants (exact decimals, so every party derives identical integers).

1. ``k``, the integer part of ``u`` by truncation, rounded up by a carry ``0..d`` (see
   :mod:`.truncation`; d = 3 for three parties), and ``g = u - k`` in ``[-d, 1)``.
2. The bits of ``k + 2^(B-1)`` (:func:`~.linalg.bits`, B = :data:`EXPONENT_BITS`): the
   sign ``s = [k >= 0]`` and the low bits, from which ``2^-k`` (k >= 0) and ``2^k``
   (k < 0) follow as products of public powers of two selected by the bits (values
   below 2^-56 round to 0, which saturates p for ``|k| > 56``).
3. ``2^g`` by range reduction: a Taylor polynomial of ``e^t`` at ``t = (g - c) ln 2 /
   2^r`` (|t| <= 1/5, c the middle of g's range), squared r times, times ``2^c``.
4. ``p = N / D`` with ``N = 2^-k, D = 2^-k + 2^g`` (k >= 0) or ``N = 1, D = 1 + 2^k 2^g``
   (k < 0), chosen by ``s`` without branching: D lies in ``[2^-d, 3)``, so
   Goldschmidt's iteration from a linear minimax start needs no normalisation.
   ``1 - p = (D - N) / D`` keeps its relative precision as p nears 1.

Accuracy: relative error of ``p`` and ``1 - p`` below about 2^-40 for ``|u| < 2^(B-1)``
(|eta| < 177 for B = 9). Outside that range the bits wrap and p is wrong (but stays
bounded); the regression's convergence check catches it.

Leakage: nothing is opened in the clear. Truncations open values masked by random
numbers 30 bits longer (``protocol.truncation_masked``) and the bit decomposition opens
``k + 2^(B-1)`` masked likewise (``protocol.comparison_masked``): statistically hiding.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from ..models import MASKED_TRUNCATION
from .fixed import FRAC_BITS
from .linalg import bits
from .openings import masked
from .runtime import mpc, shares, value_type, wrap
from .truncation import carry_bound

EXPONENT_BITS = 9
"""Bits of ``k + 2^(B-1)``: the integer part of u must satisfy ``|k| < 2^(B-1)``."""

ONE = 1 << FRAC_BITS
PRODUCT_BITS = 2 * FRAC_BITS + 16
"""Bound on the bit length of products truncated here (factors below 2^(56+7))."""

ACCURACY = 2.0 ** -44
"""Target error of the polynomial and of Goldschmidt's iteration (each)."""

LN2 = "0.693147180559945309417232121458176568075500134360255254120680009"


def _raw(value: Fraction | Decimal | int) -> int:
    """A public constant as a raw fixed-point integer (round half to even)."""
    return round(Fraction(value) * ONE)


def _mul(a, b):
    """Fixed-point product of secure raw values (a pending secure array)."""
    return mpc.np_trunc(a * b, f=FRAC_BITS, l=PRODUCT_BITS)


def _times_public(a, raw: int):
    """Fixed-point product of secure raw values with a public raw constant."""
    return mpc.np_trunc(a * raw, f=FRAC_BITS, l=PRODUCT_BITS)


class _Constants:
    """The public constants for carries up to d (identical at every party)."""

    def __init__(self, d: int) -> None:
        self.d = d
        low, high = Fraction(-d), Fraction(1)
        centre, half = (low + high) / 2, (high - low) / 2
        ln2 = Fraction(Decimal(LN2))
        self.squarings = max(0, math.ceil(math.log2(float(half * ln2) * 5)))
        scale = ln2 / 2 ** self.squarings
        self.centre = _raw(centre)
        self.step = _raw(scale)  # t = (g - centre) * step
        bound = float(half * scale)
        degree = 1
        while bound ** (degree + 1) / math.factorial(degree + 1) * 2 ** self.squarings \
                > ACCURACY:
            degree += 1
        self.taylor = [_raw(Fraction(1, math.factorial(j))) for j in range(degree + 1)]
        with localcontext() as context:
            context.prec = 60
            self.power_of_centre = _raw(Decimal(2) ** Decimal(centre.numerator)
                                        / Decimal(centre.denominator))
        # 1/D for D in [a, b]: y0 = alpha - beta D, |1 - D y0| <= e0 (minimax)
        a, b = Fraction(1, 2 ** d), Fraction(3)
        beta = 2 / (a * b + (a + b) ** 2 / 4)
        self.alpha, self.beta = _raw(beta * (a + b)), _raw(beta)
        e0 = float(1 - beta * a * b)
        self.goldschmidt = max(1, math.ceil(math.log2(math.log(ACCURACY) / math.log(e0))))
        # powers of two selected by the low bits of k: 2^-(2^i) as raw (0 below 2^-56)
        width = EXPONENT_BITS - 1
        self.drop = [ONE - (ONE >> (1 << i)) if (1 << i) <= FRAC_BITS else ONE
                     for i in range(width)]


def constants() -> _Constants:
    """The constants for this runtime's number of parties and threshold."""
    return _Constants(carry_bound())


async def logistic(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shares of ``p = 1 / (1 + 2^u)`` and ``p (1 - p)`` (raw fixed point) for shares of
    raw fixed-point ``u`` (n values); see the module docstring."""
    sectype = value_type()
    c = constants()
    u = np.asarray(u, dtype=object)
    with masked(MASKED_TRUNCATION):
        k = await shares(mpc.np_trunc(wrap(sectype, u), f=FRAC_BITS, l=FRAC_BITS + 64))
    g = wrap(sectype, u - k * ONE)
    offset = 1 << (EXPONENT_BITS - 1)
    digits = await bits(k + offset, EXPONENT_BITS)
    sign, low = digits[:, -1], digits[:, :-1]
    drop = np.array(c.drop, dtype=object)
    # 2^-k = prod 2^-(b_i 2^i) for k >= 0 (low = k); for k < 0, low = 2^(B-1) + k and
    # 2^k = 2^-(1 + sum (1 - b_i) 2^i) = 1/2 prod 2^-((1 - b_i) 2^i)
    positive = ONE - low * drop
    negative = ONE - (1 - low) * drop
    quarter = ONE >> 2  # the extra 1/2 in the first: (ONE - drop_0 (1 - b_0)) / 2
    negative[:, 0] = quarter + low[:, 0] * quarter
    with masked(MASKED_TRUNCATION):
        factors = wrap(sectype, np.stack([positive, negative]))
        while factors.shape[2] > 1:
            half = factors.shape[2] // 2
            factors = _mul(factors[:, :, :half], factors[:, :, half:2 * half])
        powers = await shares(factors)
        power, inverse_power = powers[0, :, 0], powers[1, :, 0]
        exp_g = _power_of_two(g, c)
        s = wrap(sectype, sign)
        numerator = ONE + s * wrap(sectype, power - ONE)
        other = ONE + (1 - s) * wrap(sectype, inverse_power - ONE)
        excess = _mul(exp_g, other)  # D - N
        reciprocal = _goldschmidt(numerator + excess, c)
        p = _mul(numerator, reciprocal)
        q = _mul(excess, reciprocal)
        w = _mul(p, q)
        p, w = await shares(p), await shares(w)
    return p, w


def _power_of_two(g, c: _Constants):
    """2^g for g in [-d, 1] (pending secure raw values)."""
    t = _times_public(g - c.centre, c.step)
    y = c.taylor[-1]
    for coefficient in reversed(c.taylor[:-1]):
        y = (_mul(y, t) if not isinstance(y, int) else _times_public(t, y)) + coefficient
    for _ in range(c.squarings):
        y = _mul(y, y)
    return _times_public(y, c.power_of_centre)


def _goldschmidt(d, c: _Constants):
    """1/d for d in [2^-carry, 3) (pending secure raw values)."""
    y = c.alpha - _times_public(d, c.beta)
    error = ONE - _mul(d, y)
    for step in range(c.goldschmidt):
        y = _mul(y, ONE + error)
        if step < c.goldschmidt - 1:
            error = _mul(error, error)
    return y
