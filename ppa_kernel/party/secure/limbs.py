"""Arithmetic modulo the link field's prime p = 2^130 - 5, on numpy arrays of 26-bit limbs.

An array of n field elements is a ``(5, n)`` ``uint64`` array ``a`` with value
``sum(a[i] << 26 * i)``; results keep every limb below 2^27 (only :func:`freeze` makes
them canonical: limbs below 2^26 and value below p). Products of limbs stay below
2^54 and a column of 25 of them below 2^59, so nothing overflows 64 bits; 2^130 = 5
(mod p) folds the high half back, as Poly1305 does. This replaces one Python integer
per element (MPyC's ``dtype=object`` field arrays) by a handful of vectorised words.

Pure numpy and no MPyC: the protocols on these arrays are in :mod:`.limb_shares`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat

import gmpy2
import numpy as np

P = (1 << 130) - 5
"""The link field's modulus: prime, above 2^128, and 5 below a power of two."""

LIMBS, BITS = 5, 26
MASK = np.uint64((1 << BITS) - 1)
_26, _12, _14, _24, _40, _52 = (np.uint64(k) for k in (26, 12, 14, 24, 40, 52))
_FIVE = np.uint64(5)
WIRE_BYTES = 4 * LIMBS
"""Bytes per element on the wire: five little-endian 32-bit limbs, canonical."""


def _carry(d: np.ndarray) -> np.ndarray:
    """Propagate carries (in place): limbs below 2^26 but limb 1 (below 2^27)."""
    for i in range(LIMBS - 1):
        d[i + 1] += d[i] >> _26
        d[i] &= MASK
    d[0] += (d[LIMBS - 1] >> _26) * _FIVE
    d[LIMBS - 1] &= MASK
    d[1] += d[0] >> _26
    d[0] &= MASK
    return d


def _offset() -> np.ndarray:
    """32 p as limbs each in [2^28, 2^32): subtracting a limb below 2^28 never wraps."""
    value = 32 * P
    digits = [(value >> (BITS * i)) & ((1 << BITS) - 1) for i in range(LIMBS - 1)]
    digits.append(value >> (BITS * (LIMBS - 1)))
    for i in range(LIMBS - 1):  # borrow 4 from the limb above: + 2^28 here
        digits[i] += 1 << 28
        digits[i + 1] -= 4
    if not all(1 << 28 <= d < 1 << 32 for d in digits):
        raise AssertionError("limb offset out of range")
    return np.array(digits, dtype=np.uint64).reshape(LIMBS, 1)


_OFFSET = _offset()
SMALL = 1 << 24
"""Coefficients below this (in absolute value) multiply limb by limb, without a product."""


def combine(terms: Sequence[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    """``sum(c * a for c, a in terms)`` mod p, for integer coefficients and limb arrays.

    A coefficient that is small up to sign (|c| < 2^24 after reducing mod p) scales the
    limbs directly (a negative one scales ``32 p - a``), so this costs about one carry
    pass; a large one costs a :func:`mul`."""
    acc = np.zeros((LIMBS, n), dtype=np.uint64)
    for c, a in terms:
        c %= P
        if c > P // 2:
            c -= P
        if abs(c) >= SMALL:
            acc += mul(a, constant(c))
        elif c >= 0:
            acc += a * np.uint64(c)
        else:
            acc += (_OFFSET - a) * np.uint64(-c)
    return _carry(acc)


def zeros(n: int) -> np.ndarray:
    return np.zeros((LIMBS, n), dtype=np.uint64)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b (mod p); either may broadcast along elements."""
    return _carry(np.add(a, b, dtype=np.uint64))


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b (mod p); either may broadcast along elements (a ``(5, 1)`` constant)."""
    a, b = np.broadcast_arrays(a, b)
    wrapped = np.concatenate((b[1:] * _FIVE, b))  # wrapped[4 + j] = b_j, wrapped[j] = 5 b_(j+1)
    d = a[0] * wrapped[4:9]
    for i in range(1, LIMBS):
        d += a[i] * wrapped[4 - i:9 - i]
    return _carry(d)


def constant(value: int) -> np.ndarray:
    """A field constant as a ``(5, 1)`` array, to multiply or add with broadcasting."""
    return from_ints([value % P])


def freeze(a: np.ndarray) -> np.ndarray:
    """The canonical form of ``a``: every limb below 2^26, value below p."""
    d = a.astype(np.uint64, copy=True)
    while (d >> _26).any():  # at most a few passes: each fold adds 5 per 2^130 carried
        _carry(d)
    g = d.copy()  # d - p = d + 5 - 2^130: the answer when d + 5 reaches 2^130
    g[0] += _FIVE
    for i in range(LIMBS - 1):
        g[i + 1] += g[i] >> _26
        g[i] &= MASK
    over = (g[LIMBS - 1] >> _26).astype(bool)
    g[LIMBS - 1] &= MASK
    return np.where(over, g, d)


def from_words(w0: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """The 192-bit integers ``w0 + w1 2^64 + w2 2^128`` (uint64 words) reduced mod p."""
    d = np.empty((LIMBS, len(w0)), dtype=np.uint64)
    d[0] = w0 & MASK
    d[1] = (w0 >> _26) & MASK
    d[2] = ((w0 >> _52) | (w1 << _12)) & MASK
    d[3] = (w1 >> _14) & MASK
    d[4] = ((w1 >> _40) | (w2 << _24)) & MASK
    high = w2 >> np.uint64(2)  # bits 130..191, each 2^130 worth 5
    d[0] += (high & MASK) * _FIVE
    d[1] += ((high >> _26) & MASK) * _FIVE
    d[2] += (high >> _52) * _FIVE
    return _carry(d)


def _words(a: np.ndarray) -> np.ndarray:
    """``(n, 3)`` little-endian 64-bit words of the canonical values of ``a``."""
    d = freeze(a)
    words = np.empty((d.shape[1], 3), dtype="<u8")
    words[:, 0] = d[0] | (d[1] << _26) | (d[2] << _52)
    words[:, 1] = (d[2] >> _12) | (d[3] << _14) | (d[4] << _40)
    words[:, 2] = d[4] >> _24
    return words


def from_ints(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Non-negative Python integers below 2^192 (e.g. MPyC field values) as limbs mod p."""
    flat = np.asarray(values, dtype=object).reshape(-1).tolist()
    raw = b"".join(map(int.to_bytes, flat, repeat(24), repeat("little")))
    words = np.frombuffer(raw, dtype="<u8").reshape(-1, 3)
    return from_words(words[:, 0], words[:, 1], words[:, 2])


def to_ints(a: np.ndarray) -> list[int]:
    """The canonical values of ``a`` as Python integers."""
    return split_ints(_words(a)[:, ::-1].astype(">u8").tobytes(), 0, a.shape[1], 24)


def split_ints(data: bytes, start: int, count: int, width: int) -> list[int]:
    """``count`` big-endian integers of ``width`` bytes each, from ``data[start:]``."""
    view = memoryview(data)
    stops = range(start + width, start + (count + 1) * width, width)
    pieces = map(view.__getitem__, map(slice, range(start, start + count * width, width), stops))
    return list(map(int.from_bytes, pieces, repeat("big")))


def legendre(a: np.ndarray) -> np.ndarray:
    """Legendre symbol (-1, 0 or 1) of every element of ``a``, as int8."""
    p = gmpy2.mpz(P)
    return np.fromiter(map(gmpy2.legendre, to_ints(a), repeat(p)), dtype=np.int8,
                       count=a.shape[1])


def to_bytes(a: np.ndarray) -> bytes:
    """The wire form of ``a``: canonical limbs as little-endian 32-bit words, limb-major."""
    return freeze(a).astype("<u4").tobytes()


class MalformedShares(ValueError):
    """Bytes from a peer that are not the expected count of canonical field elements."""


def from_bytes(data: bytes, count: int) -> np.ndarray:
    """Parse :func:`to_bytes` output of exactly ``count`` elements, each canonical."""
    if len(data) != WIRE_BYTES * count:
        raise MalformedShares(f"expected {count} field elements ({WIRE_BYTES * count} bytes), "
                              f"got {len(data)} bytes")
    d = np.frombuffer(data, dtype="<u4").reshape(LIMBS, count).astype(np.uint64)
    if count and (int((d >> _26).max()) or not np.array_equal(freeze(d), d)):
        raise MalformedShares("a field element is not in canonical form (limb or value "
                              "out of range)")
    return d


def lagrange_at_zero(points: Sequence[int]) -> list[int]:
    """Coefficients that recombine shares at ``points`` into the secret (at 0), mod p."""
    out = []
    for j, xj in enumerate(points):
        num = math.prod(xk for k, xk in enumerate(points) if k != j)
        den = math.prod(xk - xj for k, xk in enumerate(points) if k != j)
        out.append(num * pow(den % P, -1, P) % P)
    return out
