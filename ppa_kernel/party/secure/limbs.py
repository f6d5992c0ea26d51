"""Arithmetic modulo primes p = 2^k - c on numpy arrays of 26-bit limbs.

An array of n field elements is an ``(L, n)`` ``uint64`` array ``a`` (L = ceil(k / 26))
with value ``sum(a[i] << 26 * i)``; results keep every limb below 2^27 (only
:meth:`LimbField.freeze` makes them canonical: limbs below 2^26, value below p).
Products of limbs stay below 2^54 and a column of L of them below 2^58, so nothing
overflows 64 bits; 2^(26 L) = c 2^(26 L - k) (mod p) folds the high half back, as
Poly1305 does for 2^130 - 5. This replaces one Python integer per element (MPyC's
``dtype=object`` field arrays) by a handful of vectorised words.

:data:`LINK` is the link field GF(2^130 - 5), :data:`VALUE` the value field
GF(2^256 - 189). Pure numpy and no MPyC: the protocols are in :mod:`.limb_shares`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat

import gmpy2
import numpy as np

BITS = 26
MASK = np.uint64((1 << BITS) - 1)
_26 = np.uint64(BITS)
SMALL = 1 << 24
"""Coefficients below this (in absolute value) multiply limb by limb, without a product."""


PIECE = BITS // 2
_PIECE, _PIECE_MASK = np.uint64(PIECE), np.uint64((1 << PIECE) - 1)
DOT_BUDGET = 1 << 26
"""Bytes of float64 pieces per block of rows, and of partial sums per tile of columns,
in :meth:`LimbField.dot` (bounds its temporaries whatever the widths)."""


class MalformedShares(ValueError):
    """Bytes from a peer that are not the expected count of canonical field elements."""


class LimbField:
    """GF(2^k - c) on limb arrays (see the module docstring); c below 2^12."""

    def __init__(self, k: int, c: int) -> None:
        self.k, self.c, self.modulus = k, c, (1 << k) - c
        self.limbs = -(-k // BITS)
        self.top_bits = k - BITS * (self.limbs - 1)  # bits of the top limb below 2^k
        self.fold = np.uint64(c << (BITS * self.limbs - k))  # 2^(26 L) mod p
        self.words = -(-k // 64)  # 64-bit words that hold a value below 2^k
        self.wire_bytes = 4 * self.limbs
        self._offset = self._make_offset()

    def __repr__(self) -> str:
        return f"LimbField(2^{self.k} - {self.c})"

    def _make_offset(self) -> np.ndarray:
        """A multiple of p as limbs each in [2^28, 2^32): subtracting a limb below 2^28
        from it never wraps."""
        value = self.modulus << (BITS * (self.limbs - 1) + 30 - self.k)
        digits = [(value >> (BITS * i)) & ((1 << BITS) - 1) for i in range(self.limbs - 1)]
        digits.append(value >> (BITS * (self.limbs - 1)))
        for i in range(self.limbs - 1):  # borrow 4 from the limb above: + 2^28 here
            digits[i] += 1 << 28
            digits[i + 1] -= 4
        if not all(1 << 28 <= d < 1 << 32 for d in digits):
            raise AssertionError("limb offset out of range")
        return np.array(digits, dtype=np.uint64).reshape(self.limbs, 1)

    # -- arithmetic --------------------------------------------------------------------

    def _carry(self, d: np.ndarray) -> np.ndarray:
        """Propagate carries (in place): limbs below 2^26 but limb 1 (below 2^27)."""
        last = self.limbs - 1
        for i in range(last):
            d[i + 1] += d[i] >> _26
            d[i] &= MASK
        d[0] += (d[last] >> _26) * self.fold
        d[last] &= MASK
        d[1] += d[0] >> _26
        d[0] &= MASK
        return d

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros((self.limbs, n), dtype=np.uint64)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b (mod p); either may broadcast along elements."""
        return self._carry(np.add(a, b, dtype=np.uint64))

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a * b (mod p); either may broadcast along elements (a ``(L, 1)`` constant)."""
        a, b = np.broadcast_arrays(a, b)
        size = self.limbs
        columns = np.zeros((2 * size, *a.shape[1:]), dtype=np.uint64)
        for i in range(size):  # schoolbook: column i + j gathers a_i b_j
            columns[i:i + size] += a[i] * b
        for i in range(2 * size - 1):
            columns[i + 1] += columns[i] >> _26
            columns[i] &= MASK
        low = columns[:size]
        low += columns[size:] * self.fold  # each high limb is worth fold times a low one
        return self._carry(low)

    def constant(self, value: int) -> np.ndarray:
        """A field constant as a ``(L, 1)`` array, to multiply or add with broadcasting."""
        return self.from_ints([value % self.modulus])

    def combine(self, terms: Sequence[tuple[int, np.ndarray]], n: int) -> np.ndarray:
        """``sum(c * a for c, a in terms)`` mod p, for integer coefficients and limb arrays.

        A coefficient that is small up to sign (|c| < 2^24 after reducing mod p) scales
        the limbs directly (a negative one scales ``K p - a``), so this costs about one
        carry pass; a large one costs a :meth:`mul`."""
        p = self.modulus
        acc = None
        for c, a in terms:
            c %= p
            if c > p // 2:
                c -= p
            if c == 1 and acc is not None and a.shape == acc.shape:
                acc += a
                continue
            if abs(c) >= SMALL:
                term = self.mul(a, self.constant(c))
            elif c >= 0:
                term = a * np.uint64(c)
            else:
                term = (self._offset - a) * np.uint64(-c)
            if acc is None:  # the first term is a fresh array unless it broadcasts
                acc = term if term.shape == (self.limbs, n) else np.broadcast_to(
                    term, (self.limbs, n)).copy()
            else:
                acc += term
        if acc is None:
            return self.zeros(n)
        return self._carry(acc)

    def total(self, a: np.ndarray) -> np.ndarray:
        """The sum of all elements of an ``(L, n)`` array as ``(L, 1)``, or of the rows of
        an ``(L, n, k)`` array as ``(L, k)`` (fewer than 2^30 rows)."""
        if a.shape[1] >= 1 << 30:
            raise ValueError("too many elements to sum at once")
        return self._carry(a.sum(axis=1, dtype=np.uint64, keepdims=a.ndim == 2))

    def dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``sum_r a[:, r, i] b[:, r, j]`` mod p for ``(L, n, p)`` and ``(L, n, q)`` limb
        arrays, as ``(L, p, q)``.

        Exact float64 matrix products (BLAS) of the canonical values' 13-bit pieces: a
        product of two pieces is below 2^26, so fewer than 2^27 rows sum exactly below
        2^53; the pieces' partial sums then combine as Python integers (p q of them)."""
        n, left, right = a.shape[1], a.shape[2], b.shape[2]
        if b.shape[1] != n:
            raise ValueError("a dot product needs both arrays over the same rows")
        if n >= 1 << 27:
            raise ValueError("too many rows for one exact dot product")
        pieces = 2 * self.limbs
        tile = max(1, DOT_BUDGET // (8 * pieces * pieces * max(left, 1)))  # columns of b
        out = self.zeros(left * right).reshape(self.limbs, left, right)
        for first in range(0, right, tile):
            part = b[:, :, first:first + tile]
            out[:, :, first:first + tile] = self._dot_tile(a, part)
        return out

    def _dot_tile(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n, left, right = a.shape[1], a.shape[2], b.shape[2]
        pieces = 2 * self.limbs
        rows = max(1, DOT_BUDGET // (8 * pieces * max(left + right, 1)))
        acc = np.zeros((pieces * left, pieces * right))  # float64: exact below 2^53
        for start in range(0, n, rows):
            block = slice(start, start + rows)
            acc += self._pieces(a[:, block]).T @ self._pieces(b[:, block])
        acc = acc.astype(np.int64).reshape(pieces, left, pieces, right).transpose(1, 3, 0, 2)
        diagonals = np.zeros((left, right, 2 * pieces - 1), dtype=np.int64)
        for s in range(pieces):  # piece s of a times piece u of b weighs 2^(13 (s + u))
            diagonals[:, :, s:s + pieces] += acc[:, :, s, :]  # below 20 * 2^53
        values = [sum(int(d) << (PIECE * k) for k, d in enumerate(row))
                  for row in diagonals.reshape(left * right, -1).tolist()]
        out = self.from_ints([v % self.modulus for v in values]) if values else \
            self.zeros(0)
        return out.reshape(self.limbs, left, right)

    def _pieces(self, a: np.ndarray) -> np.ndarray:
        """``(m, 2L p)`` float64 13-bit pieces of the canonical values of an ``(L, m, p)``
        array: column ``s p + i`` holds piece s (weight 2^(13 s)) of element i."""
        _, m, width = a.shape
        d = self.freeze(a.reshape(self.limbs, m * width)).reshape(self.limbs, m, width)
        out = np.empty((m, 2 * self.limbs, width), dtype=np.float64)
        out[:, 0::2] = np.moveaxis(d & _PIECE_MASK, 0, 1)
        out[:, 1::2] = np.moveaxis(d >> _PIECE, 0, 1)
        return out.reshape(m, 2 * self.limbs * width)

    def _propagate(self, d: np.ndarray) -> None:
        """Carry limb i's excess into limb i + 1 (in place), without folding the top."""
        for i in range(self.limbs - 1):
            d[i + 1] += d[i] >> _26
            d[i] &= MASK

    def freeze(self, a: np.ndarray) -> np.ndarray:
        """The canonical form of ``a``: every limb below 2^26, value below p."""
        d = a.astype(np.uint64, copy=True)
        last, shift = self.limbs - 1, np.uint64(self.top_bits)
        top_mask, c = np.uint64((1 << self.top_bits) - 1), np.uint64(self.c)
        while True:  # two passes, unless a carry runs through every limb again
            self._propagate(d)
            high = d[last] >> shift
            if not high.any():
                break
            d[last] &= top_mask
            d[0] += high * c  # 2^k = c (mod p)
        candidates = np.flatnonzero(d[last] == top_mask)  # value >= p needs a full top
        if len(candidates):  # rare: subtract p = add c - 2^k where d + c reaches 2^k
            g = d[:, candidates]
            g[0] += c
            self._propagate(g)
            over = (g[last] >> shift).astype(bool)
            g[last] &= top_mask
            d[:, candidates[over]] = g[:, over]
        return d

    # -- conversions -------------------------------------------------------------------

    RANDOM_EXTRA = 3
    """Limbs beyond L drawn for a random element: 78 bits more than p has."""

    def random_bytes(self, n: int) -> int:
        """Bytes :meth:`from_random` needs for n elements."""
        return 4 * (self.limbs + self.RANDOM_EXTRA) * n

    def from_random(self, data: bytes, n: int) -> np.ndarray:
        """n elements from uniformly random bytes: 26 random bits per limb, L + 3 limbs,
        reduced mod p; within 2^-78 of uniform."""
        drawn = np.frombuffer(data, dtype="<u4", count=(self.limbs + self.RANDOM_EXTRA) * n)
        pieces = drawn.reshape(self.limbs + self.RANDOM_EXTRA, n) & np.uint32(MASK)
        d = pieces[:self.limbs].astype(np.uint64)
        d[:self.RANDOM_EXTRA] += pieces[self.limbs:] * self.fold  # 2^(26 L) = fold (mod p)
        return self._carry(d)

    def bounded_bytes(self, n: int, bits: int) -> int:
        """Bytes :meth:`from_random_bits` needs for n elements below 2^bits."""
        return 4 * -(-bits // BITS) * n

    def from_random_bits(self, data: bytes, n: int, bits: int) -> np.ndarray:
        """n integers uniform in [0, 2^bits) (bits < k) from uniformly random bytes."""
        if not 0 < bits < self.k:
            raise ValueError(f"bounded random values need 0 < bits < {self.k}")
        count = -(-bits // BITS)
        drawn = np.frombuffer(data, dtype="<u4", count=count * n).reshape(count, n)
        d = self.zeros(n)
        d[:count] = drawn & np.uint32(MASK)
        d[count - 1] &= np.uint64((1 << (bits - BITS * (count - 1))) - 1)
        return d

    def shift_right(self, a: np.ndarray, f: int) -> np.ndarray:
        """The canonical values of ``a`` shifted right by ``f`` bits (public values)."""
        d = self.freeze(a)
        q, r = divmod(f, BITS)
        out = self.zeros(d.shape[1])
        for j in range(self.limbs - q):
            piece = d[j + q] >> np.uint64(r)
            if r and j + q + 1 < self.limbs:
                piece |= (d[j + q + 1] << np.uint64(BITS - r)) & MASK
            out[j] = piece
        return out

    def divide_exact(self, a: np.ndarray, divisor: int) -> np.ndarray:
        """The canonical values of ``a`` divided by a small ``divisor`` (below 2^30) that
        divides each of them (public values)."""
        if not 0 < divisor < 1 << 30:
            raise ValueError("the divisor must be in [1, 2^30)")
        d = self.freeze(a)
        out = self.zeros(d.shape[1])
        rest = np.zeros(d.shape[1], dtype=np.uint64)
        big = np.uint64(divisor)
        for j in range(self.limbs - 1, -1, -1):  # long division, limb by limb from the top
            current = (rest << _26) | d[j]
            out[j] = current // big
            rest = current % big
        if rest.any():
            raise ValueError(f"a value is not a multiple of {divisor}")
        return out

    def low_bits(self, a: np.ndarray, length: int) -> np.ndarray:
        """The ``length`` low bits (least significant first) of the canonical values of
        ``a`` (public values), as an ``(n, length)`` array of 0 and 1."""
        d = self.freeze(a)
        out = np.empty((d.shape[1], length), dtype=np.uint64)
        for i in range(length):
            q, r = divmod(i, BITS)
            out[:, i] = (d[q] >> np.uint64(r)) & np.uint64(1)
        return out

    def from_words(self, words: np.ndarray) -> np.ndarray:
        """Integers given as ``(n, W)`` little-endian 64-bit words, reduced mod p."""
        count = -(-64 * words.shape[1] // BITS)
        w = np.concatenate((words.T.astype(np.uint64), np.zeros((1, len(words)), np.uint64)))
        pieces = np.empty((count, len(words)), dtype=np.uint64)
        for j in range(count):
            q, r = divmod(BITS * j, 64)
            piece = w[q] >> np.uint64(r)
            if r > 64 - BITS:
                piece |= w[q + 1] << np.uint64(64 - r)
            pieces[j] = piece & MASK
        d = pieces[:self.limbs].copy()
        high = pieces[self.limbs:]
        if len(high) > self.limbs:
            raise ValueError("too many words to reduce")
        d[:len(high)] += high * self.fold
        return self._carry(d)

    def from_ints(self, values: Sequence[int] | np.ndarray) -> np.ndarray:
        """Python integers in [0, 2^k) (e.g. MPyC field values) as limbs, reduced mod p."""
        flat = np.asarray(values, dtype=object).reshape(-1).tolist()
        width = 8 * self.words
        raw = b"".join(map(int.to_bytes, flat, repeat(width), repeat("little")))
        return self.from_words(np.frombuffer(raw, dtype="<u8").reshape(-1, self.words))

    def _to_words(self, a: np.ndarray) -> np.ndarray:
        """``(n, W)`` little-endian 64-bit words of the canonical values of ``a``."""
        d = self.freeze(a)
        count = -(-BITS * self.limbs // 64)
        words = np.zeros((d.shape[1], count), dtype=np.uint64)
        for j in range(self.limbs):
            q, r = divmod(BITS * j, 64)
            words[:, q] |= d[j] << np.uint64(r)
            if r > 64 - BITS and q + 1 < count:
                words[:, q + 1] |= d[j] >> np.uint64(64 - r)
        return words

    def to_fixed_bytes(self, a: np.ndarray) -> np.ndarray:
        """The canonical values of ``a`` as an ``(n, 8 W)`` uint8 array of big-endian
        integers (a storage form that needs no Python integer per element)."""
        words = self._to_words(a)[:, :self.words]
        return np.ascontiguousarray(words[:, ::-1]).astype(">u8").view(np.uint8).reshape(
            a.shape[1], 8 * self.words)

    def from_fixed_bytes(self, array: np.ndarray) -> np.ndarray:
        """Limbs of :meth:`to_fixed_bytes` output (reduced mod p)."""
        if array.ndim != 2 or array.shape[1] != 8 * self.words:
            raise ValueError(f"expected rows of {8 * self.words} bytes")
        words = np.ascontiguousarray(array).view(">u8")[:, ::-1].astype(np.uint64)
        return self.from_words(words)

    def to_ints(self, a: np.ndarray) -> list[int]:
        """The canonical values of ``a`` as Python integers."""
        words = self._to_words(a)
        raw = words[:, ::-1].astype(">u8").tobytes()
        return split_ints(raw, 0, a.shape[1], 8 * words.shape[1])

    def legendre(self, a: np.ndarray) -> np.ndarray:
        """Legendre symbol (-1, 0 or 1) of every element of ``a``, as int8."""
        p = gmpy2.mpz(self.modulus)
        return np.fromiter(map(gmpy2.legendre, self.to_ints(a), repeat(p)), dtype=np.int8,
                           count=a.shape[1])

    def to_bytes(self, a: np.ndarray) -> bytes:
        """The wire form of ``a``: canonical limbs as little-endian 32-bit words, limb-major."""
        return self.freeze(a).astype("<u4").tobytes()

    def from_bytes(self, data: bytes, count: int) -> np.ndarray:
        """Parse :meth:`to_bytes` output of exactly ``count`` elements, each canonical."""
        if len(data) != self.wire_bytes * count:
            raise MalformedShares(f"expected {count} field elements "
                                  f"({self.wire_bytes * count} bytes), got {len(data)} bytes")
        d = np.frombuffer(data, dtype="<u4").reshape(self.limbs, count).astype(np.uint64)
        if count and not self._canonical(d):
            raise MalformedShares("a field element is not in canonical form (limb or value "
                                  "out of range)")
        return d

    def canonical(self, d: np.ndarray) -> bool:
        """Whether the ``(L, n)`` limbs ``d`` are canonical: limbs below 2^26, values
        below p (what a stored or received array must be before arithmetic)."""
        return d.ndim == 2 and d.shape[0] == self.limbs and (
            not d.shape[1] or self._canonical(d.astype(np.uint64)))

    def _canonical(self, d: np.ndarray) -> bool:
        """Whether every element has limbs below 2^26 and value below p = 2^k - c."""
        last = self.limbs - 1
        if (d[:last] >> _26).any() or (d[last] >> np.uint64(self.top_bits)).any():
            return False
        at_top = d[last] == np.uint64((1 << self.top_bits) - 1)  # value >= p needs all
        for i in range(last - 1, 0, -1):  # middle limbs full and the low one >= 2^26 - c
            at_top &= d[i] == MASK
        return not (at_top & (d[0] >= np.uint64((1 << BITS) - self.c))).any()

    def lagrange_at_zero(self, points: Sequence[int]) -> list[int]:
        """Coefficients that recombine shares at ``points`` into the secret (at 0), mod p."""
        p, out = self.modulus, []
        for j, xj in enumerate(points):
            num = math.prod(xk for k, xk in enumerate(points) if k != j)
            den = math.prod(xk - xj for k, xk in enumerate(points) if k != j)
            out.append(num * pow(den % p, -1, p) % p)
        return out


def split_ints(data: bytes, start: int, count: int, width: int) -> list[int]:
    """``count`` big-endian integers of ``width`` bytes each, from ``data[start:]``."""
    view = memoryview(data)
    stops = range(start + width, start + (count + 1) * width, width)
    pieces = map(view.__getitem__, map(slice, range(start, start + count * width, width), stops))
    return list(map(int.from_bytes, pieces, repeat("big")))


LINK = LimbField(130, 5)
"""The link field GF(2^130 - 5): prime, above 2^128 (link keys and Legendre tags)."""

VALUE = LimbField(256, 189)
"""The value field GF(2^256 - 189): the largest prime below 2^256, 3 mod 4 (analyses)."""
