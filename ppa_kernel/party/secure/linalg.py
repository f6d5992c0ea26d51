"""Small secure linear algebra for models: normalising Gram matrices and solving them.

In the value field; all but :func:`gram` on small matrices (a row and column per term):

* :func:`gram`: the exact Gram matrix ``D'D`` of a secure-integer matrix (rows x k), one
  degree reduction for all entries, the local share products in float64 limbs.
* :func:`bits` and :func:`highest_bit`: bit decomposition of secure integers and the
  one-hot position of their highest set bit, vectorised (a carry-lookahead and a prefix
  product, each log2(bits) rounds of one multiplication). Opens only ``x + r`` for a
  random r 30 bits longer than x (``protocol.comparison_masked``).
* :func:`power_normalisers`: for non-negative secure integers c_i (Gram diagonals), the
  secret powers of two q_i = 2^((L - bits(c_i)) // 2) with c_i q_i^2 / 2^L in [1/4, 1),
  their complements g_i = 2^(L/2) / q_i, and the flags c_i == 0. Scaling row and column
  i of a Gram matrix by q_i puts its diagonal in [1/4, 1) and every entry in [-1, 1]
  (Cauchy–Schwarz): fixed point then keeps ~56 significant bits whatever the data's
  units, and no public bounds are needed.
* :func:`reciprocal` (x in (0, 1], after a secret power-of-two normalisation from
  :func:`highest_bit`) and :func:`quarter_reciprocal` (x in [1/4, 1], no normalisation):
  Goldschmidt's iteration from a linear minimax start.
* :func:`factorise` and :func:`solve`: the LDL' factorisation (Cholesky without square
  roots; no pivot search, the matrix is symmetric positive semidefinite) of the
  normalised Gram matrix of ``[X, y]``; its last pivot is the residual sum of squares,
  and :func:`solve` gives the coefficients (``L' b = l_y``) and the diagonal of
  ``(X'X)^-1`` (``sum_k V_kj^2 / d_k`` with ``V = L^-1``). Pivots below a floor are
  dropped (their 1/d taken as 0), so every value stays bounded even for a singular
  design; :func:`factorise` also returns the determinant of X'X scaled to unit diagonal
  (the product of the relative pivots ``d_j / a_jj``), which callers check inside MPC
  before calling :func:`solve`: at least ``tolerance`` keeps every value of the solve
  below ``4 / tolerance``.

Fixed-point products truncate (one opening of a masked value each, see
:mod:`.truncation`); sums of products are taken as matrix products (one truncation per
result). Bit decompositions cost one random bit per bit decomposed. All
fixed-point arithmetic runs inside :func:`~.fixed.compute` (named masked openings).
Nothing here opens a value in the clear; callers open what their model releases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ppa_kernel.contract.models import MASKED_TRUNCATION

from .fixed import FRAC_BITS, compute, fixed_type
from .limb_fixed import mask_spread
from .openings import MASKED_COMPARISON, masked
from .runtime import mpc, random_field_array, shares, value_type, wrap
from .truncation import carry_bound

logger = logging.getLogger(__name__)

NORM_BITS = 200
"""Bound on the bit length of normalised integers (Gram diagonals): c < 2^NORM_BITS."""

HALF_BITS = NORM_BITS // 2

RECIPROCAL_BITS = FRAC_BITS + 2
"""Bits of the raw fixed-point values :func:`reciprocal` accepts (x <= 1, with margin)."""

NEWTON_STEPS = 4
"""Goldschmidt steps for 1/b, b in [1/2, 1), from 2.9142 - 2b (error 0.172^16 < 2^-40)."""

QUARTER_STEPS = 3
"""Steps for 1/y, y in [1/4, 1], from the linear minimax start (error 0.22^8 < 6e-6)."""


def fixed(raw: np.ndarray):
    """Secure fixed-point array from this party's raw shares (values times 2^56)."""
    fx = fixed_type()
    field = fx.field
    values = field.array(np.asarray(raw, dtype=object) % field.modulus, check=False)
    return fx.array(values, integral=False)


async def _times(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Shares of the elementwise product of two arrays of secure-integer shares."""
    sectype = value_type()
    return await shares(wrap(sectype, left) * wrap(sectype, right))


def random_bits(count: int):
    """Start generating ``count`` shared random bits (awaitable: a field array of shares)."""
    with masked(MASKED_COMPARISON):  # MPyC's own protocol opens squares of random numbers
        # (:func:`.limb_fixed.random_bits`, installed where the worker runs, opens nothing)
        return mpc.np_random_bits(value_type().field, count)


async def bits(values: np.ndarray, length: int, random=None,
               bound: int | None = None) -> np.ndarray:
    """Shares of the bits (low to high, shape n x length) of secure integers
    0 <= x < 2^length (else of x mod 2^length) given as shares; opens only x masked by a
    longer random number. ``random``: n length shared random bits from
    :func:`random_bits` (optional); ``bound``: every |x| < 2^bound (default: 0 <= x <
    2^length), which the mask then hides too.

    The mask is ``r_low + 2^length r_high``: ``r_low`` from random bits (its bits are
    needed), ``r_high`` a pseudorandom sharing (no communication, see
    :mod:`.truncation`) of a sum of terms each uniform 30 bits beyond the values'
    spread, which hides x statistically whatever the other terms are."""
    sectype = value_type()
    values = np.asarray(values, dtype=object).reshape(-1)
    n, k = len(values), mpc.options.sec_param
    spread, offset = mask_spread(length, bound)
    if random is None:
        random = await random_bits(n * length)
    low = np.asarray(random.value, dtype=object).reshape(n, length)
    r_low = low @ np.array([1 << i for i in range(length)], dtype=object)
    r_high = await pseudorandom(n, k + spread - length)
    with masked(MASKED_COMPARISON):  # c = x - r_low + 2^length r_high + offset hides x
        opened = await mpc.output(wrap(sectype, values - r_low + (r_high << length) + offset))
    c = np.array([int(v) % (1 << length) for v in np.asarray(opened).reshape(-1).tolist()],
                 dtype=object)
    a = np.array([[(int(v) >> i) & 1 for i in range(length)] for v in c], dtype=object)
    # x mod 2^length = c + r_low: add public bits a to secret bits low (carry lookahead)
    generate = a * low
    propagate = a + low - 2 * generate
    g, p = generate.copy(), propagate.copy()
    step = 1
    while step < length:
        products = await _times(np.stack([p[:, step:], p[:, step:]]),
                                np.stack([g[:, :-step], p[:, :-step]]))
        g[:, step:] = g[:, step:] + products[0]
        p[:, step:] = products[1]
        step *= 2
    carry = np.zeros_like(g)
    carry[:, 1:] = g[:, :-1]
    return propagate + carry - 2 * await _times(propagate, carry)


async def pseudorandom(count: int, bits: int) -> np.ndarray:
    """Shares of ``count`` sums of ``d`` pseudorandom terms each uniform below 2^bits
    (d from :func:`~.truncation.carry_bound`), without communication."""
    field = value_type().field
    values = random_field_array(field, count, carry_bound() << bits)
    if mpc.options.no_prss:
        values = await values
    return np.asarray(values.value, dtype=object)


async def highest_bit(values: np.ndarray, length: int, start: int = 0,
                      random=None) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the one-hot position (among positions start..length-1, so n x (length -
    start)) of the highest set bit of each 0 <= x < 2^length, all zero if no bit from
    ``start`` up is set, and of the flags for that case (x < 2^start)."""
    clear = 1 - (await bits(values, length, random))[:, start:]  # 1 where the bit is 0
    above = clear.copy()  # above[:, i] = product of clear[:, j] for j >= i
    step = 1
    while step < above.shape[1]:
        above[:, :-step] = await _times(above[:, :-step], above[:, step:])
        step *= 2
    ones = np.ones((above.shape[0], 1), dtype=object)
    onehot = np.concatenate([above[:, 1:], ones], axis=1) - above
    return onehot, above[:, 0]


GRAM_CHUNK = 1 << 16
"""Rows per float64 block in :func:`gram` (exact: 16-bit limbs, sums below 2^53)."""


async def gram(columns: np.ndarray) -> np.ndarray:
    """Shares of ``D'D`` from this party's shares of a secure-integer matrix D (rows x k).

    The local product of shares is a degree-2t sharing of ``D'D``; as in MPyC's own
    multiplication, every party secret-shares its value (``mpc.input``) and all combine
    them with the Lagrange coefficients at 0 (degree reduction, nothing is opened). The
    local product is exact and fast: 16-bit limbs in float64 matrix products.
    """
    sectype = value_type()
    field = sectype.field
    local = _local_gram(np.asarray(columns, dtype=object), field.modulus)
    k = local.shape[0]
    inputs = mpc.input(sectype.array(field.array(local.reshape(-1) % field.modulus,
                                                 check=False)))
    points = range(1, len(mpc.parties) + 1)
    total = None
    for x, share in zip(points, inputs):
        weight = 1
        for z in points:
            if z != x:
                weight = weight * z * pow(z - x, -1, field.modulus) % field.modulus
        term = share * weight
        total = term if total is None else total + term
    return (await shares(total)).reshape(k, k)


def _local_gram(columns: np.ndarray, modulus: int) -> np.ndarray:
    """``columns' columns mod modulus`` for an object array of integers."""
    n, k = columns.shape
    width = (modulus.bit_length() + 15) // 16  # limbs per value
    blocks = np.zeros((k * width, k * width), dtype=object)
    for start in range(0, n, GRAM_CHUNK):
        chunk = columns[start:start + GRAM_CHUNK]
        raw = b"".join((int(v) % modulus).to_bytes(2 * width, "little")
                       for v in chunk.reshape(-1))
        limbs = np.frombuffer(raw, dtype="<u2").reshape(len(chunk), k * width)
        limbs = limbs.astype(np.float64)
        blocks += (limbs.T @ limbs).astype(np.int64).astype(object)
    weights = np.array([1 << (16 * u) for u in range(width)], dtype=object)
    per_limb = blocks.reshape(k, width, k, width)
    return np.einsum("iujv,u,v->ij", per_limb, weights, weights) % modulus


async def power_normalisers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shares of q = 2^((L - bits(c)) // 2), g = 2^(L/2) / q and [c == 0] for shares of
    integers 0 <= c < 2^L (L = NORM_BITS), elementwise; c q^2 / 2^L lies in [1/4, 1).
    (q = g = 1 where c = 0.)"""
    onehot, zero = await highest_bit(values, NORM_BITS)
    lead = [(NORM_BITS - 1 - i) // 2 for i in range(NORM_BITS)]  # (L - bits) // 2
    q = onehot @ np.array([1 << e for e in lead], dtype=object)
    g = onehot @ np.array([1 << (HALF_BITS - e) for e in lead], dtype=object)
    return q + zero, g + zero, zero


async def reciprocal(x, floor: int = FRAC_BITS, random=None):
    """Secure fixed-point 1/x for a fixed-point array with 2^-floor <= x <= 1 (relative
    error below 2^-40); 0 where 0 <= x < 2^-floor, and a meaningless value below 16 for
    -2^-20 < x < 0 (a rounding error): never a value out of fixed-point range.
    ``random``: shared random bits for its bit decomposition (see :func:`bits`)."""
    start = FRAC_BITS - floor
    onehot, _ = await highest_bit(await shares(x), RECIPROCAL_BITS, start, random)
    # v = 2^(55 - k) for the highest bit k >= start of x's raw value: x v in [1/2, 1)
    powers = [1 << (2 * FRAC_BITS - 1 - k) for k in range(start, RECIPROCAL_BITS)]
    v = fixed(onehot @ np.array(powers, dtype=object))

    def goldschmidt():  # y -> v / b = 1 / x with error e -> e^2 per step, 2 products per round
        b = x * v
        start = 2.9142135623731 - b * 2  # minimax linear 1/b on [1/2, 1]: error 0.172
        error, y = 1 - b * start, start * v
        for step in range(NEWTON_STEPS):
            y = y * (1 + error)
            if step < NEWTON_STEPS - 1:
                error = error * error
        return y

    return await compute(goldschmidt)


def _quarter_goldschmidt(y):
    """1/y for y in [1/4, 1] (fixed point, inside a masked block), no normalisation."""
    start = 3.902439024390244 - y * 3.1219512195121952  # minimax linear start, error 0.22
    error, c = 1 - y * start, start
    for step in range(QUARTER_STEPS):
        c = c * (1 + error)
        if step < QUARTER_STEPS - 1:
            error = error * error
    return c


def quarter_reciprocal(y):
    """Start computing 1/y for a fixed-point array y in [1/4, 1] (relative error below
    6e-6); returns the pending secure array (await ``mpc.gather`` on it)."""
    with masked(MASKED_TRUNCATION):
        return _quarter_goldschmidt(y)


@dataclass
class Factor:
    """LDL' of a normalised Gram matrix of ``[X, y]`` (m = p + 1 rows), and its checks."""

    lower: np.ndarray  # raw shares of L below the diagonal, m x p (row p: the y row)
    weight: np.ndarray  # raw shares of 1 / d_j, p values (0 for a pivot below the floor)
    rss: object  # secure fixed point: the last pivot, the residual sum of squares
    determinant: object  # secure fixed point: det of X'X scaled to unit diagonal


async def factorise(matrix: np.ndarray, empty: np.ndarray, tolerance: float) -> Factor:
    """LDL' (no pivoting: the matrix is symmetric PSD) of the normalised Gram matrix of
    ``[X, y]``: raw shares, m x m, y last, entries in [-1, 1] and diagonal in [1/4, 1)
    except 0 for an all-zero column, which ``empty`` flags (raw fixed-point 0/1 shares,
    one per column of X).

    Pivots below ``tolerance / 8`` are dropped (1/d taken as 0), so every value stays
    bounded whatever the input; the determinant (product of the relative pivots
    ``d_j / a_jj``) is then below ``tolerance``. Callers check it before :func:`solve`.
    """
    a = np.asarray(matrix, dtype=object)
    m = a.shape[0]
    p = m - 1
    scale = quarter_reciprocal(fixed(np.diagonal(a)[:p] + np.asarray(empty)))  # overlaps
    floor = int(np.ceil(-np.log2(tolerance))) + 3  # accepted pivots are >= tolerance / 4
    random = await random_bits(p * RECIPROCAL_BITS)  # for all pivots at once
    lower = np.zeros((m, p), dtype=object)
    spread = np.zeros((m, p), dtype=object)  # U = L D on and below the diagonal
    weight = np.zeros(p, dtype=object)
    for j in range(p):
        column = _column(a, spread, lower, j)
        u = await compute(column) if j else column()
        w = await reciprocal(u[0:1], floor, random[j * RECIPROCAL_BITS:
                                                   (j + 1) * RECIPROCAL_BITS])
        below = await compute(lambda u=u, w=w: u[1:] * w)
        spread[j:, j] = await shares(u)
        lower[j + 1:, j] = await shares(below)
        weight[j] = (await shares(w))[0]
    rss = await compute(_column(a, spread, lower, p))
    relative = await compute(lambda: fixed(np.diagonal(spread)[:p].copy()) * scale)
    return Factor(lower, weight, rss, await product(relative))


async def product(values):
    """Secure fixed-point product of the entries of a 1-D fixed-point array (log depth)."""
    while values.shape[0] > 1:
        half = values.shape[0] // 2
        values = await compute(lambda v=values, h=half: mpc.np_concatenate(
            (v[:h] * v[h:2 * h], v[2 * h:])))
    return values


async def solve(factor: Factor) -> tuple[object, object]:
    """Secure fixed-point coefficients (L' b = l_y) and diag((X'X)^-1) of a factorised
    system whose determinant passed (so all values stay within 4 / tolerance)."""
    p = factor.lower.shape[1]
    inverse_lower = await _unit_lower_inverse(factor.lower[:p, :])
    return await _finish(inverse_lower, factor.lower[p, :], factor.weight)


def _column(a: np.ndarray, spread: np.ndarray, lower: np.ndarray, j: int):
    """u_ij = a_ij - sum_{k<j} U_ik L_jk for i >= j (u_jj = d_j), as a compute step."""
    def step():
        base = fixed(a[j:, j])
        if j == 0:
            return base
        return base - fixed(spread[j:, :j]) @ fixed(lower[j, :j])
    return step


async def _unit_lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Raw shares of V = L^-1 for unit lower triangular L (strict lower part given)."""
    p = lower.shape[0]
    one = 1 << FRAC_BITS
    v = np.zeros((p, p), dtype=object)
    np.fill_diagonal(v, one)
    for i in range(1, p):  # row i: V[i, :i] = -L[i, :i] V[:i, :i]
        row = await compute(lambda i=i: fixed(lower[i, :i]) @ fixed(v[:i, :i]))
        v[i, :i] = -np.asarray(await shares(row), dtype=object)
    return v


async def _finish(v: np.ndarray, last: np.ndarray, weight: np.ndarray):
    """coef = V' l_y and diag((X'X)^-1)_j = sum_k w_k V_kj^2 (V lower triangular)."""
    p = v.shape[0]
    rows, cols = np.tril_indices(p, -1)

    def step():
        coef = fixed(v).transpose() @ fixed(last)
        scaled = fixed(v[rows, cols]) * fixed(weight[rows])  # w_k V_kj, k > j
        return coef, scaled

    if p == 1:  # no pairs k > j
        return await compute(lambda: fixed(v).transpose() @ fixed(last)), fixed(weight)
    coef, scaled = await compute(step)
    full = np.zeros((p, p), dtype=object)
    full[rows, cols] = await shares(scaled)

    def diagonal():  # w_j + sum_{k>j} (w_k V_kj) V_kj, one truncation per j
        stacked = fixed(full.transpose().reshape(p, 1, p)) @ fixed(v.transpose().reshape(p, p, 1))
        return stacked.reshape(p) + fixed(weight)

    return coef, await compute(diagonal)
