"""Truncated products, random bits and bit decompositions on limb shares of the value
field (:data:`.limbs.VALUE`): the per-row arithmetic of models without a Python integer
per element and step (MPyC's field arrays are ``dtype=object``).

The protocols are those of :func:`.fixed.truncate_product` and :func:`.linalg.bits`, with
the same openings, masks and leakage; :class:`Shares` gives limb shares numpy's
operators, so one algorithm (:func:`.logistic.logistic`) runs on either form and the
object form stays the reference the tests compare with. The models that use these
(logistic regression, quantiles) need MPyC's PRSS keys (:func:`require`).

- Bounded pseudorandom sharings (no communication): for every subset S of m - t parties
  with key k_S (MPyC's PRSS keys), w_S = PRF(k_S, input) is uniform in [0, 2^b) and
  party i holds ``sum_S w_S lambda_S(x_i)``, ``lambda_S(x) = prod_{j not in S}
  (x_j - x) / x_j``: degree t, 1 at 0 and 0 at the parties outside S, so the secret is
  exactly ``sum_S w_S``, as for MPyC's bounded ``_np_randoms``. The parties hold D = m!
  times these shares (small-integer weights, no 256-bit product per element) and open
  D times the masked value, which they divide by D.
- Random bits: a dealer (party 0) shares uniform bits, every subset without the dealer
  adds a PRSS bit, and the bits are XORed (x + y - 2xy; one product round for three
  parties). Any t parties either exclude the dealer, whose bits Shamir sharing hides, or
  include it and then miss the subset of the other m - t parties, whose bit the PRF
  hides: the XOR is uniform to them. Nothing is opened; MPyC instead opens squares of
  random numbers and takes a 256-bit modular square root per bit (26 µs per bit here).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
from collections.abc import Sequence

import numpy as np

from ppa_kernel.contract.errors import PartyFailed
from ppa_kernel.contract.models import MASKED_TRUNCATION

from . import limb_shares
from .limbs import VALUE
from .openings import MASKED_COMPARISON, reveal_limbs
from .runtime import (
    MPYC_RANDOM_BITS,
    Runtime,
    exchange,
    mpc,
    mpc_coro,
    prss_input,
    prss_keys,
    use_random_bits,
)

F = VALUE
PRF_LABEL = b"ppa-limb-fixed-v1"
DEALER = 0
"""The party that deals the random bits' first term."""


def available() -> bool:
    """Whether this runtime has the PRSS keys these protocols need (and few enough
    parties for D = m! to divide opened values: below 13)."""
    return not mpc.options.no_prss and scale() < 1 << 30


def require(what: str) -> None:
    """Fail ``what`` with a clear error, before anything is computed, where the limb
    protocols cannot run."""
    if not available():
        raise PartyFailed(f"{what} needs MPyC's pseudorandom secret sharing (no --no-prss) "
                          "and fewer than 13 parties")


class Shares:
    """This party's shares of an array of value-field elements as limbs ``(L, *shape)``:
    degree t, or up to 2t after a local product (then :func:`reshare` or :func:`truncate`).
    ``+``, ``-`` and ``*`` with public integers or integer arrays, and ``*`` of two share
    arrays (a local product), act as on MPyC's share arrays; ``[...]`` indexes elements."""

    __array_ufunc__ = None  # ndarray <op> Shares defers to the reflected method

    def __init__(self, limbs: np.ndarray) -> None:
        self.limbs = limbs

    @classmethod
    def of(cls, values) -> Shares:
        """Limb shares of MPyC shares (an array of integers of any shape; limb shares are
        returned as they are)."""
        if isinstance(values, Shares):
            return values
        values = np.asarray(values, dtype=object)
        flat = F.from_ints(values.reshape(-1) % F.modulus) if values.size else F.zeros(0)
        return cls(flat.reshape(F.limbs, *values.shape))

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> Shares:
        return cls(np.zeros((F.limbs, *shape), dtype=np.uint64))

    def objects(self) -> np.ndarray:
        """The shares as an object array of integers in range(p) (MPyC's form)."""
        return np.array(F.to_ints(self.flat()), dtype=object).reshape(self.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.limbs.shape[1:]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def flat(self) -> np.ndarray:
        """The limbs as a contiguous ``(L, size)`` array."""
        return np.ascontiguousarray(self.limbs.reshape(F.limbs, -1))

    def reshape(self, *shape) -> Shares:
        """``reshape(n, k)`` or ``reshape((n, k))``, as numpy's."""
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        return Shares(self.limbs.reshape(F.limbs, *shape))

    def copy(self) -> Shares:
        return Shares(self.limbs.copy())

    def __len__(self) -> int:
        return self.shape[0]

    @staticmethod
    def _index(key) -> tuple:
        return (slice(None), *(key if isinstance(key, tuple) else (key,)))

    def __getitem__(self, key) -> Shares:
        return Shares(self.limbs[self._index(key)])

    def __setitem__(self, key, value: Shares) -> None:
        self.limbs[self._index(key)] = value.limbs

    def _public(self, value) -> np.ndarray:
        """A public integer array as limbs that broadcast against these shares."""
        c = np.asarray(value, dtype=object) % F.modulus
        limbs = F.from_ints(c.reshape(-1))
        return limbs.reshape(F.limbs, *([1] * (len(self.shape) - c.ndim)), *c.shape)

    def linear(self, terms: Sequence[tuple[int, Shares]], constant: int = 0) -> Shares:
        """``sum(c * s for c, s in terms) + constant`` for shares of this shape."""
        if any(s.shape != self.shape for _, s in terms):
            raise ValueError("linear combinations need share arrays of one shape")
        out = F.combine([(c, s.flat()) for c, s in terms], self.size)
        if constant % F.modulus:
            out = F.add(out, F.constant(constant))
        return Shares(out.reshape(F.limbs, *self.shape))

    def __add__(self, other) -> Shares:
        if isinstance(other, Shares):
            return self.linear([(1, self), (1, other)])
        if isinstance(other, (int, np.integer)):
            return self.linear([(1, self)], int(other))
        return Shares(F.add(self.limbs, self._public(other)))

    __radd__ = __add__

    def __neg__(self) -> Shares:
        return self.linear([(-1, self)])

    def __sub__(self, other) -> Shares:
        return self + (-other)

    def __rsub__(self, other) -> Shares:
        return (-self) + other

    def __mul__(self, other) -> Shares:
        if isinstance(other, Shares):
            return Shares(F.mul(self.limbs, other.limbs))
        if isinstance(other, (int, np.integer)):
            return self.linear([(int(other), self)])
        return Shares(F.mul(self.limbs, self._public(other)))

    __rmul__ = __mul__


def stack(arrays: Sequence[Shares]) -> Shares:
    return Shares(np.stack([a.limbs for a in arrays], axis=1))


def concatenate(arrays: Sequence[Shares]) -> Shares:
    return Shares(np.concatenate([a.flat() for a in arrays], axis=1))


# -- pseudorandom sharings ------------------------------------------------------------------


def scale() -> int:
    """D = m!: D lambda_S(x_i) is an integer for every subset S and party i."""
    return math.factorial(len(mpc.parties))


def _scaled_basis(subset: tuple[int, ...]) -> int:
    """D lambda_S at this party's point: a small integer (the product of the points
    outside S divides D)."""
    points = limb_shares.points()
    outside = [points[j] for j in range(len(points)) if j not in subset]
    return math.prod(x - points[mpc.pid] for x in outside) * (scale() // math.prod(outside))


def _basis(subset: tuple[int, ...]) -> int:
    """lambda_S at this party's point, mod p (see the module docstring)."""
    return _scaled_basis(subset) * pow(scale(), -1, F.modulus) % F.modulus


def _subset_stream(key: bytes, uci: bytes, tag: bytes, size: int) -> bytes:
    """``size`` pseudorandom bytes of a subset's key for a common input and a tag."""
    seed = hashlib.sha256(PRF_LABEL + bytes(key) + uci + tag).digest()
    return limb_shares.key_stream(seed, size)


def _scaled_draws(n: int, bits: int) -> list[tuple[int, np.ndarray]]:
    """(D lambda_S(x_i), w_S) for this party's subsets: n PRF values in [0, 2^bits)."""
    uci, tag = prss_input(), b"scaled" + bits.to_bytes(2, "big")
    return [(_scaled_basis(subset), F.from_random_bits(
        _subset_stream(key, uci, tag, F.bounded_bytes(n, bits)), n, bits))
        for subset, key in prss_keys().items()]


def scaled_random(n: int, bits: int) -> Shares:
    """Shares of ``D * sum_S w_S`` for pseudorandom w_S uniform in [0, 2^bits), one per
    subset S of m - t parties (no communication; D = :func:`scale`). The scaled
    sharing needs only small-integer weights; callers open D times a value and divide."""
    return Shares(F.combine(_scaled_draws(n, bits), n))


def scaled_random_split(n: int, bits: int, high: int) -> tuple[Shares, Shares]:
    """:func:`scaled_random` and shares of ``D * sum_S (w_S >> high)``, of the same w_S."""
    draws = _scaled_draws(n, bits)
    upper = [(weight, F.shift_right(w, high)) for weight, w in draws]
    return Shares(F.combine(draws, n)), Shares(F.combine(upper, n))


def mask_spread(length: int, bound: int | None) -> tuple[int, int]:
    """(bits spanned by x - r_low, the public offset that makes it positive) for a bit
    decomposition of ``length`` bits of values below 2^bound in absolute value (None:
    0 <= x < 2^length); the offset is a multiple of 2^length."""
    if bound is None:
        return length, 1 << length
    if bound < length:
        raise ValueError("the bound must cover the decomposed bits")
    return bound + 1, 1 << (bound + 1)


def _check_room(bits: int) -> None:
    """D times a value of ``bits`` bits plus d masks must stay below p (no wrap)."""
    if scale() * (2 + math.comb(len(mpc.parties), mpc.threshold)) << bits >= F.modulus:
        raise ValueError(f"a masked opening of {bits} bits does not fit the field")


def _bit_limbs(bits: np.ndarray) -> np.ndarray:
    out = F.zeros(len(bits))
    out[0] = bits
    return out


def _random_bit_array(data: bytes, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n]


async def random_bits(n: int) -> Shares:
    """Shares of n secret uniformly random bits (see the module docstring)."""
    m, t, me = len(mpc.parties), mpc.threshold, mpc.pid
    uci, size = prss_input(), -(-n // 8)
    outgoing, dealt = {}, None
    if me == DEALER:
        secret = _bit_limbs(_random_bit_array(os.urandom(size), n))
        pieces = limb_shares.split(F, secret, t, m)
        outgoing = {pid: F.to_bytes(piece) for pid, piece in enumerate(pieces) if pid != me}
        dealt = pieces[me]
    received = await exchange(outgoing, [] if me == DEALER else [DEALER])
    if dealt is None:
        dealt = limb_shares.parse(F, received[DEALER], n, DEALER)
    terms = [Shares(dealt)]
    keys = prss_keys()
    for subset in itertools.combinations(range(m), m - t):
        if DEALER in subset:
            continue
        if me in subset:
            bits = _random_bit_array(_subset_stream(keys[subset], uci, b"bit", size), n)
            terms.append(Shares(F.constant(_basis(subset)) * bits.astype(np.uint64)))
        else:
            terms.append(Shares.zeros((n,)))
    while len(terms) > 1:  # XOR pairwise, one product round per level
        pairs = list(zip(terms[0::2], terms[1::2], strict=False))
        products = await multiply(pairs)
        xored = [x.linear([(1, x), (1, y), (-2, xy)]) for (x, y), xy in zip(pairs, products)]
        terms = xored + terms[2 * len(pairs):]
    return terms[0]


@mpc_coro
async def np_random_bits(self: Runtime, sftype: type, n: int, signed: bool = False):
    """MPyC's ``Runtime.np_random_bits`` (shape-(n,) random bits, or signs with
    ``signed``) by :func:`random_bits` for the value field; MPyC's own otherwise."""
    field = sftype.field if issubclass(sftype, self.SecureObject) else sftype
    if field.order != F.modulus or not available():
        return MPYC_RANDOM_BITS(self, sftype, n, signed)
    if issubclass(sftype, self.SecureObject):
        await self.returnType((sftype.array, True, (n,)))
    else:
        await self.returnType(asyncio.Future)
    drawn = await random_bits(n) if n else Shares.zeros((0,))
    values = (2 * drawn - 1) if signed else drawn
    f = getattr(sftype, "frac_length", 0)
    values = values * (1 << f) if f else values
    return field.array(values.objects(), check=False)


use_random_bits(np_random_bits)


# -- products, truncations, bits --------------------------------------------------------------


async def reshare(x: Shares) -> Shares:
    """Degree-t shares of the values of which ``x`` holds degree-2t shares (one round)."""
    return Shares((await limb_shares.reshare(F, x.flat())).reshape(F.limbs, *x.shape))


def _split(flat: Shares, like: Sequence[Shares]) -> list[Shares]:
    out, start = [], 0
    for x in like:
        out.append(Shares(flat.limbs[:, start:start + x.size].reshape(F.limbs, *x.shape)))
        start += x.size
    return out


MULTIPLY_SLICE = 1 << 20
"""Elements multiplied and reshared per round: bounds the temporaries of large products
(about 30 bytes per element and limb)."""


async def multiply(pairs: Sequence[tuple[Shares, Shares]]) -> list[Shares]:
    """Degree-t shares of the elementwise products of pairs of share arrays (numpy's
    broadcasting): one round, or rounds of :data:`MULTIPLY_SLICE` elements by rows."""
    shapes = [np.broadcast_shapes(a.shape, b.shape) for a, b in pairs]
    if sum(math.prod(shape) for shape in shapes) <= MULTIPLY_SLICE:
        local = [a * b for a, b in pairs]
        return _split(await reshare(concatenate(local)), local)
    return [await _multiply_by_rows(a, b, shape) for (a, b), shape in zip(pairs, shapes)]


async def _multiply_by_rows(a: Shares, b: Shares, shape: tuple[int, ...]) -> Shares:
    out = Shares.zeros(shape)
    step = max(1, MULTIPLY_SLICE // max(1, math.prod(shape[1:])))
    a, b = (Shares(np.broadcast_to(x.limbs, (F.limbs, *shape))) for x in (a, b))  # views
    for start in range(0, shape[0], step):
        rows = slice(start, start + step)
        out[rows] = await reshare(a[rows] * b[rows])
    return out


async def truncate(x: Shares, f: int, l: int) -> Shares:  # noqa: E741 (MPyC's name)
    """Degree-t shares of ``x / 2^f`` rounded up by at most d units, for shares of degree
    up to 2t of ``|x| < 2^(l-1)``: :func:`.fixed.truncate_product` with the same opening
    (``protocol.truncation_masked``): ``c = x + 2^(l-1) + r_low + 2^f r_high`` with one
    PRSS draw ``w_S = u_S + 2^f v_S`` per subset (r_low = sum u_S, r_high = sum v_S),
    opened as D c so the sharing's weights stay small integers."""
    n, k = x.size, mpc.options.sec_param
    _check_room(k + l)
    d = scale()
    masks, high = scaled_random_split(n, k + l, f)
    offset = 1 << (l - 1)
    hidden = F.combine([(d, x.flat()), (1, masks.limbs), (1, limb_shares.zero_shares(F, n))], n)
    opened = await reveal_limbs(MASKED_TRUNCATION, F, F.add(hidden, F.constant(d * offset)),
                                threshold=2 * mpc.threshold, divisor=d)
    public = F.shift_right(opened, f)  # c >> f
    out = F.combine([(-pow(d, -1, F.modulus), high.limbs)], n)  # - r_high
    out = F.add(F.add(out, public), F.constant(-(offset >> f)))
    return Shares(out.reshape(F.limbs, *x.shape))


async def bits(values: Shares, length: int, bound: int | None = None) -> Shares:
    """Shares of the bits (low to high, shape n x length) of secret integers: of x for
    0 <= x < 2^length, else of x mod 2^length: :func:`.linalg.bits`, same opening
    (``protocol.comparison_masked``: x minus random bits plus a pseudorandom multiple of
    2^length, 30 bits longer than the values). ``bound``: every |x| < 2^bound (default:
    0 <= x < 2^length), which the mask then hides too."""
    n, k = values.size, mpc.options.sec_param
    spread, offset = mask_spread(length, bound)
    _check_room(k + spread + 1)
    d = scale()
    values = values.reshape(n)
    low = (await random_bits(n * length)).reshape(n, length)
    r_low = values.linear([(1 << i, low[:, i]) for i in range(length)])
    masks = scaled_random(n, k + spread - length)  # D r_high
    hidden = values.linear([(d, values), (-d, r_low), (1 << length, masks)], d * offset)
    opened = await reveal_limbs(MASKED_COMPARISON, F, hidden.flat(), threshold=mpc.threshold,
                                divisor=d)
    a = F.low_bits(opened, length)  # bits of c; x mod 2^length = c + r_low
    generate = Shares(low.limbs * a)
    propagate = Shares(np.where(a.astype(bool), (1 - low).limbs, low.limbs))
    # ripple carry: bit_i = p_i XOR c_i, c_(i+1) = g_i + p_i c_i (g_i, p_i c_i disjoint),
    # one product per bit (length - 1 rounds) where linalg.bits' carry lookahead takes
    # about length log2(length) products in log2(length) rounds
    out = Shares.zeros((n, length))
    out[:, 0] = propagate[:, 0]
    carry = generate[:, 0]
    for i in range(1, length):
        p_i = propagate[:, i]
        (both,) = await multiply([(p_i, carry)])
        out[:, i] = p_i.linear([(1, p_i), (1, carry), (-2, both)])
        carry = generate[:, i] + both
    return out


def public_dot(a: Shares, matrix: np.ndarray) -> Shares:
    """Shares of ``a @ matrix`` for secret n x k shares and a public 0/1 k x q matrix:
    sums of columns, no product."""
    n = len(a)
    return Shares(np.stack([F.combine([(1, a[:, i].flat()) for i in np.flatnonzero(column)], n)
                            for column in np.asarray(matrix).T], axis=2))


def local_dot(a: Shares, b: Shares) -> Shares:
    """This party's degree-2t shares of ``a' b`` (p x q) for secret n x p and n x q
    arrays of degree t: local products summed over the rows (:meth:`.LimbField.dot`)."""
    return Shares(F.dot(a.limbs, b.limbs))


async def dot(a: Shares, b: Shares) -> Shares:
    """Degree-t shares of ``a' b`` (see :func:`local_dot`), one resharing."""
    return await reshare(local_dot(a, b))


def column_sums(a: Shares) -> Shares:
    """Shares of the sums over the rows of an n x k share array (no communication)."""
    return Shares(F.total(a.limbs))


async def column_products(a: Shares, b: Shares, pairs: Sequence[tuple[int, int]]) -> Shares:
    """Shares of ``sum_r a[r, i] b[r, j]`` for every (i, j) in ``pairs`` (secret n x p and
    n x q arrays): local products summed over the rows, one resharing."""
    if not pairs:
        return Shares.zeros((0,))
    full = local_dot(a, b)
    left, right = map(list, zip(*pairs, strict=True))
    return await reshare(Shares(full.limbs[:, left, right]))


async def out_of_range(values: Shares, digits: Shares) -> Shares:
    """Shares (1 element) of ``sum_i (v_i - bits(v_i))^2``: 0 exactly when every v_i is
    below 2^length (see :func:`.logistic.logistic`); one resharing, nothing opened."""
    n, length = digits.shape
    values = values.reshape(n)
    gap = values.linear([(1, values)] + [(-(1 << i), digits[:, i]) for i in range(length)])
    return await reshare(Shares(F.total((gap * gap).flat())))
