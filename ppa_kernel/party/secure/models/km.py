"""Kaplan-Meier curves and the log-rank test under MPC, from the secret counts of exits and
events per group and grid time; opens the at-risk pass bits, S at passing times and the
log-rank chi2 (see :mod:`ppa_kernel.contract.models.km`).

Cost: the divisions are by whole numbers at most 2**bits (bits = the bit length of the
number of linked rows, public), so they need no general fixed-point division: a few
denominators are multiplied together, one normalising bit decomposition of that product
(``bits`` per number) and four Newton steps on 40-bit integers give the reciprocal of the
product, and each denominator's reciprocal is its cofactor times that (exact integer
products). Everything else is secure integer arithmetic (exact) until a few fixed-point
products at the end.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.models.km import index_digits
from ppa_kernel.contract.program import Program, cell_levels

from ..fixed import compute, fixed_type, from_scaled
from ..openings import compare, reveal
from ..query import QueryState
from ..runtime import mpc, shares, wrap

logger = logging.getLogger(__name__)

KIND = "km"
NEWTON_BITS = 40
"""Fraction bits of the Newton iteration for reciprocals (relative error about 2**-40)."""
NEWTON_STEPS = 4
"""From the linear start (error < 2**-3.5) the error squares: 2**-56 after four steps."""


def _group_cells(program: Program) -> list[int]:
    """Worker cell index of every group, groups in plan order."""
    entries = program.plan["groupby"]
    where = {canonical_json([c[e["name"]] for e in entries]): i
             for i, c in enumerate(cell_levels(program.plan))}
    combos = itertools.product(*(e["levels"] for e in entries))
    return [where[canonical_json(list(c))] for c in combos]


async def _interval_flags(state: QueryState):
    """Secure rows x K 0/1 matrix: which grid interval each row ends in (from its digits)."""
    model, ev, sectype = state.program.plan["model"], state.evaluator, state.sectype
    count = len(model["times"])
    flags = None  # column c: the row's index has the digits of c (so far)
    for digit in index_digits(model["duration"], model["edges"]):
        bit = await shares(await ev.condition(digit))
        rows = len(bit)
        if flags is None:
            flags = wrap(sectype, np.column_stack([1 - bit, bit]))
            continue
        # codes c + width >= count do not exist: rows with low digits c have this bit 0
        take = min(flags.shape[1], count - flags.shape[1])
        with_bit = flags[:, :take] * wrap(sectype, np.repeat(bit.reshape(rows, 1), take, axis=1))
        flags = mpc.np_hstack((flags[:, :take] - with_bit, flags[:, take:], with_bit))
    if flags is None:  # a single interval
        rows = state.evaluator.rows
        return sectype.array(np.ones((rows, 1), dtype=object))
    return flags


async def _counts(state: QueryState) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the exits and the events per group (plan order) and grid time."""
    grid = await _interval_flags(state)
    event = await state.evaluator.condition(state.program.plan["model"]["event"])
    weights = state.weights  # rows x cells, cohort mask applied
    rows, cells = weights.shape
    spread = np.repeat((await shares(event)).reshape(rows, 1), cells, axis=1)
    both = np.column_stack([await shares(weights),
                            await shares(weights * wrap(state.sectype, spread))])
    totals = await shares(wrap(state.sectype, both.T) @ grid)  # exits; events
    order = _group_cells(state.program)
    return totals[:cells][order], totals[cells:][order]


async def _pass_bits(sectype, at_risk: np.ndarray, min_cell: int, bits: int) -> np.ndarray:
    """Open whether each (group, time) has at least ``min_cell`` rows at risk."""
    too_small = await compare(mpc.np_sgn, wrap(sectype, at_risk) - min_cell,
                              l=max(bits, min_cell.bit_length()) + 1, LT=True)
    opened = await reveal(output_name(KIND, "at_risk_pass"), 1 - too_small)
    return np.asarray(opened).astype(int).reshape(at_risk.shape) == 1


def _suffix_or(x):
    """OR of each bit with all higher ones (bits low to high along axis 1; log depth)."""
    width, span = x.shape[1], 1
    while span < width:
        low, high = x[:, :width - span], x[:, span:]
        x = mpc.np_hstack((low + high - low * high, x[:, width - span:]))
        span *= 2
    return x


def _cofactors(x) -> tuple:
    """Products of each row of x (m, t) and, per entry, of the row's other entries."""
    t = x.shape[1]
    prefix, suffix = [None] * t, [None] * t
    prefix[0], suffix[t - 1] = x[:, 0], x[:, t - 1]
    for j in range(1, t):
        prefix[j] = prefix[j - 1] * x[:, j]
        suffix[t - 1 - j] = suffix[t - j] * x[:, t - 1 - j]
    if t == 1:
        return prefix[0], None
    others = [suffix[1]] + [prefix[j - 1] * suffix[j + 1] for j in range(1, t - 1)] + \
        [prefix[t - 2]]
    return prefix[t - 1], mpc.np_column_stack(others)


async def _reciprocals(sectype, values: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Shares of R ~ 2**scale / v for whole numbers 1 <= v <= 2**bits; returns (R, scale).

    Groups of t values share one reciprocal of their product u < 2**width (width =
    t bits + 1 <= 64): bits of u give v' = 2**(width - 1 - msb(u)), so y = u v' / 2**width
    lies in [1/2, 1); Newton's x <- x (2 - y x) on NEWTON_BITS-bit integers from
    x = 2.914 - 2 y gives 1/y; then 1/u = x v' / 2**width and 1/v_i = cofactor_i / u.
    Relative error about 2**-38.
    """
    if bits > 63:
        raise ValueError("too many rows for the reciprocal's bit decomposition")
    f = NEWTON_BITS
    t = max(1, min(4, 63 // bits))
    width = t * bits + 1
    count = len(values)
    rows = -(-count // t)
    padded = np.concatenate([values, np.ones(rows * t - count, dtype=object)])
    x = wrap(sectype, padded.reshape(rows, t))
    product, cofactors = _cofactors(x)
    with_bits = await compare(mpc.np_to_bits, product, l=width)  # low to high
    top = await shares(_suffix_or(with_bits))
    lead = top - np.column_stack([top[:, 1:], np.zeros(rows, dtype=object)])  # msb, one-hot
    powers = np.array([1 << (width - 1 - i) for i in range(width)], dtype=object)
    norm = wrap(sectype, lead @ powers)  # 2**(width - 1 - msb)

    def newton():
        y = product * norm  # in [2**(width-1), 2**width)
        y = y * (1 << (f - width)) if f >= width else \
            mpc.np_trunc(y, f=width - f, l=width + 1)  # y * 2**f, y in [1/2, 1)
        z = round(2.9142135623731 * (1 << f)) - 2 * y
        for _ in range(NEWTON_STEPS):
            e = mpc.np_trunc(y * z, f=f, l=2 * f + 3)
            z = mpc.np_trunc(z * ((2 << f) - e), f=f, l=2 * f + 3)
        inverse = z * norm  # 2**(f + width) / product
        return inverse.reshape(rows, 1) if cofactors is None else \
            cofactors * inverse.reshape(rows, 1)

    result = await compute(newton)
    return (await shares(result)).reshape(-1)[:count], f + width


def _fixed(values: np.ndarray):
    """Fixed-point array of whole numbers times 2**-56 given as raw shares (local)."""
    fx = fixed_type()
    return fx.array(fx.field.array(np.asarray(values, dtype=object) % fx.field.modulus,
                                   check=False))


async def _survival(sectype, at_risk: np.ndarray, events: np.ndarray, passed: np.ndarray,
                    bits: int) -> list:
    """S per group and time where ``passed`` (None elsewhere), opened."""
    keep = passed.astype(int).astype(object)
    # Where not passing the factor is 1 (0 / (n + 1)); where passing n >= min_cell >= 1.
    inverse, scale = await _reciprocals(sectype, (at_risk + 1 - keep).ravel(), bits)
    ratio = await shares(wrap(sectype, (events * keep).ravel()) * wrap(sectype, inverse))
    hazard = (await from_scaled(ratio, scale)).reshape(at_risk.shape)  # d / n

    def km():
        factor = 1 - hazard
        curve = [factor[:, 0]]
        for k in range(1, factor.shape[1]):
            curve.append(curve[-1] * factor[:, k])
        return mpc.np_column_stack(curve)

    s = await compute(km)
    idx = np.flatnonzero(passed.ravel())
    opened = np.asarray(await reveal(output_name(KIND, "survival"),
                                     s.reshape(-1)[idx])).tolist()
    out: list = [None] * at_risk.size
    for i, v in zip(idx, opened):
        out[i] = float(v)
    return np.array(out, dtype=object).reshape(at_risk.shape).tolist()


def _quadratic_form(a, z):
    """z' a^-1 z for a symmetric positive definite a (forward elimination, no pivoting)."""
    total = None
    while True:
        inverse = 1 / a[0, 0]
        term = z[0] * z[0] * inverse
        total = term if total is None else total + term
        if a.shape[0] == 1:
            return total
        factor = a[1:, 0] * inverse
        a = a[1:, 1:] - factor[:, None] * a[0, 1:][None, :]
        z = z[1:] - factor * z[0]


async def _logrank(sectype, at_risk: np.ndarray, events: np.ndarray, bits: int) -> float:
    """The log-rank chi2 over the given groups (rows), opened."""
    groups, times = at_risk.shape
    n_all, d_all = at_risk.sum(axis=0), events.sum(axis=0)
    # [n = 0] and [n <= 1] per time make 1/n and 1/(n - 1) safe (their terms are 0 there)
    small = await compare(mpc.np_sgn, wrap(sectype, np.concatenate([n_all - 1, n_all - 2])),
                          l=bits + 2, LT=True)
    b = await shares(small)
    dens = np.concatenate([n_all + b[:times], n_all - 1 + b[:times] + b[times:]])
    inverse, scale = await _reciprocals(sectype, dens, bits)  # 2**scale / n_k, / (n_k - 1)
    n, d = wrap(sectype, at_risk), wrap(sectype, d_all)
    first, second = wrap(sectype, inverse[:times]), wrap(sectype, inverse[times:])
    weights = n * first  # 2**scale n_gk / n_k
    expected = (n * d) @ first  # 2**scale E_g
    spread = d * wrap(sectype, n_all - d_all) * second  # 2**scale d (n - d) / (n - 1)
    z_raw = events.sum(axis=1)[:-1] * (1 << scale) - (await shares(expected))[:-1]
    w = await from_scaled(await shares(weights), scale)  # n_gk / n_k
    w_t = _fixed((await shares(w)).T)
    c = await from_scaled(await shares(spread), scale)
    z = await from_scaled(z_raw, scale)  # O_g - E_g, all groups but the last

    def statistic():
        cw = w * c[None, :]
        v = cw.sum(axis=1)[:, None] * np.eye(groups, dtype=int) - cw @ w_t  # V_gh
        return _quadratic_form(v[:-1, :-1], z)

    chi2 = await compute(statistic)
    return float(await reveal(output_name(KIND, "chi2"), chi2))


async def run_km(state: QueryState) -> dict:
    """Pass bits, survival at passing (group, time) pairs, and the log-rank chi2."""
    plan = state.program.plan
    exits, events = await _counts(state)  # rows per group and time; events among them
    at_risk = np.cumsum(exits[:, ::-1], axis=1)[:, ::-1]  # rows with time >= t_k
    bits = max(1, state.evaluator.rows).bit_length()  # public: rows < 2**bits
    passed = await _pass_bits(state.sectype, at_risk, plan["min_cell_size"], bits)
    out: dict = {"at_risk_pass": passed.tolist(), "survival": [[None] * passed.shape[1]] *
                 passed.shape[0], "chi2": None, "logrank_groups": []}
    if passed.any():
        out["survival"] = await _survival(state.sectype, at_risk, events, passed, bits)
    tested = np.flatnonzero(passed[:, 0]).tolist()
    if len(tested) >= 2:
        out["chi2"] = await _logrank(state.sectype, at_risk[tested], events[tested], bits)
        out["logrank_groups"] = tested
    logger.debug("km: %d of %d groups released, log-rank over %d", int(passed[:, 0].sum()),
                 len(passed), len(tested))
    return out
