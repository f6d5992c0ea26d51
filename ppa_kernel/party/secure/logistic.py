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
bounded); the function also returns a secret sum that is 0 exactly when every row was
in range, which the regression checks before it releases anything.

Every product is reduced and truncated in one opening
(:func:`~.fixed.truncate_product`); independent products share a round.

Leakage: nothing is opened in the clear. Truncations open values masked by random
numbers 30 bits longer (``protocol.truncation_masked``) and the bit decomposition opens
``k + 2^(B-1)`` masked by a random number 30 bits longer than 2^64, the bound on k for
any input (``protocol.comparison_masked``): statistically hiding, also for rows out of
range.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from . import limb_fixed
from .fixed import FRAC_BITS, truncate_product
from .linalg import bits
from .runtime import reshare, value_type
from .truncation import carry_bound

EXPONENT_BITS = 9
"""Bits of ``k + 2^(B-1)``: the integer part of u must satisfy ``|k| < 2^(B-1)``."""

K_BOUND = 64
"""|k + 2^(B-1)| < 2^64 for every |u| < 2^119 (the first truncation's bound): the bit
decomposition's mask hides k however far out of range it is."""

ONE = 1 << FRAC_BITS
PRODUCT_BITS = 2 * FRAC_BITS + 16
"""Bound on the bit length of products truncated here (factors below 2^(56+7))."""

ACCURACY = 2.0 ** -44
"""Target error of the polynomial and of Goldschmidt's iteration (each)."""

LN2 = "0.693147180559945309417232121458176568075500134360255254120680009"


def _raw(value: Fraction | Decimal | int) -> int:
    """A public constant as a raw fixed-point integer (round half to even)."""
    return round(Fraction(value) * ONE)


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
            self.power_of_centre = _raw(Decimal(2) ** (Decimal(centre.numerator)
                                                       / Decimal(centre.denominator)))
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


class ObjectOps:
    """The arithmetic on MPyC's share arrays (Python integers): the reference the tests
    and ``benchmarks/bench_primitives.py`` compare :class:`LimbOps` with."""

    truncate = staticmethod(truncate_product)
    bits = staticmethod(bits)
    stack = staticmethod(np.stack)
    concatenate = staticmethod(np.concatenate)

    @staticmethod
    def array(u: np.ndarray) -> np.ndarray:
        return np.asarray(u, dtype=object)

    @staticmethod
    def result(x: np.ndarray) -> np.ndarray:
        return x % value_type().field.modulus

    @staticmethod
    async def out_of_range(values: np.ndarray, digits: np.ndarray) -> np.ndarray:
        """Shares of sum_i (v_i - bits(v_i))^2: the squares of a local product summed,
        then one resharing of a single value; nothing is opened."""
        field = value_type().field
        weights = np.array([1 << i for i in range(digits.shape[1])], dtype=object)
        gap = (np.asarray(values, dtype=object) - digits @ weights) % field.modulus
        local = int(np.sum(gap * gap)) % field.modulus  # degree 2t
        reshared = await reshare(field.array(np.array([local], dtype=object), check=False))
        return np.asarray(reshared.value, dtype=object)


class LimbOps:
    """The same arithmetic on limb shares (:mod:`.limb_fixed`): no Python integer per
    element; what logistic regression runs on."""

    truncate = staticmethod(limb_fixed.truncate)
    bits = staticmethod(limb_fixed.bits)
    stack = staticmethod(limb_fixed.stack)
    concatenate = staticmethod(limb_fixed.concatenate)
    out_of_range = staticmethod(limb_fixed.out_of_range)
    array = staticmethod(limb_fixed.Shares.of)

    @staticmethod
    def result(x: limb_fixed.Shares) -> limb_fixed.Shares:
        return x


async def logistic(u, ops: type[LimbOps] | type[ObjectOps]) -> tuple:
    """Shares of ``p = 1 / (1 + 2^u)`` and ``p (1 - p)`` (raw fixed point) for shares of
    raw fixed-point ``u`` (n values), and of the out-of-range sum: 0 exactly when every
    ``|u| < 2^(B-1)`` (a 1-element array; see ``out_of_range``). ``ops``: the share
    arithmetic, :class:`LimbOps` or :class:`ObjectOps`; results are in its form."""
    c = constants()
    u = ops.array(u)
    k = await ops.truncate(u, FRAC_BITS, FRAC_BITS + 64)
    g = u - k * ONE
    offset = 1 << (EXPONENT_BITS - 1)
    digits = await ops.bits(k + offset, EXPONENT_BITS, bound=K_BOUND)
    sign, low = digits[:, -1], digits[:, :-1]
    spill = await ops.out_of_range(k + offset, digits)
    drop = np.array(c.drop, dtype=object)
    # 2^-k = prod 2^-(b_i 2^i) for k >= 0 (low = k); for k < 0, low = 2^(B-1) + k and
    # 2^k = 2^-(1 + sum (1 - b_i) 2^i) = 1/2 prod 2^-((1 - b_i) 2^i)
    positive = ONE - low * drop
    negative = 2 * ONE - drop - positive  # = ONE - (1 - low) drop, without a product
    quarter = ONE >> 2  # the extra 1/2 in the first: (ONE - drop_0 (1 - b_0)) / 2
    negative[:, 0] = quarter + low[:, 0] * quarter
    factors = ops.stack([positive, negative])
    (t,) = await _products(ops, (g - c.centre, c.step))
    y = c.taylor[-1]
    for coefficient in reversed(c.taylor[:-1]):  # Horner; the factors' halvings ride along
        pairs = [(t, y)]
        if factors.shape[2] > 1:
            half = factors.shape[2] // 2
            pairs.append((factors[:, :, :half], factors[:, :, half:]))
        done = await _products(ops, *pairs)
        y = done[0] + coefficient
        factors = done[1] if len(done) > 1 else factors
    while factors.shape[2] > 1:  # (only if the polynomial were shorter than the halvings)
        half = factors.shape[2] // 2
        (factors,) = await _products(ops, (factors[:, :, :half], factors[:, :, half:]))
    for _ in range(c.squarings):
        (y,) = await _products(ops, (y, y))
    power, inverse_power = factors[0, :, 0], factors[1, :, 0]
    exp_g, numerator, other = await _products(
        ops, (y, c.power_of_centre), (sign * ONE, power - ONE),
        ((1 - sign) * ONE, inverse_power - ONE))
    numerator, other = numerator + ONE, other + ONE
    (excess,) = await _products(ops, (exp_g, other))  # D - N
    reciprocal = await _goldschmidt(ops, numerator + excess, c)
    p, q = await _products(ops, (numerator, reciprocal), (excess, reciprocal))
    (w,) = await _products(ops, (p, q))
    return ops.result(p), ops.result(w), ops.result(spill)


async def _products(ops: type[LimbOps] | type[ObjectOps], *pairs: tuple) -> list:
    """Fixed-point products of pairs of raw shares (or a share and a public raw
    constant), all in one round (``ops.truncate``: :func:`~.fixed.truncate_product`)."""
    local = [a * b for a, b in pairs]
    flat = await ops.truncate(ops.concatenate([x.reshape(-1) for x in local]),
                              FRAC_BITS, PRODUCT_BITS)
    out, start = [], 0
    for x in local:
        out.append(flat[start:start + x.size].reshape(x.shape))
        start += x.size
    return out


async def _goldschmidt(ops: type[LimbOps] | type[ObjectOps], d, c: _Constants):
    """1/d for d in [2^-carry, 3) (raw shares); the two products of a step in one round."""
    (scaled,) = await _products(ops, (d, c.beta))
    y = c.alpha - scaled
    (dy,) = await _products(ops, (d, y))
    error = ONE - dy
    for step in range(c.goldschmidt):
        if step < c.goldschmidt - 1:
            y, error = await _products(ops, (y, ONE + error), (error, error))
        else:
            (y,) = await _products(ops, (y, ONE + error))
    return y
