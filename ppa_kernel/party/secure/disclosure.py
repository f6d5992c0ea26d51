"""Disclosure rules evaluated inside MPC, before anything is opened.

* **Minimum cell size** (in :mod:`.query`): a cell describes at least k rows.
* **Dominance (n, k%) and p-ratio (p%)**, for released sums of non-negative magnitudes.
  The exact rules need each cell's largest contributions x1 >= x2 >= ... (one secure
  comparison per row and rank). We use a sound bound from the cell's sum T and sum of
  squares S2, one comparison per cell: any n values satisfy x1 + ... + xn <= sqrt(n S2)
  and (1 + p) x1 + x2 <= sqrt(((1 + p)^2 + 1) S2). So a cell passes dominance when
  (k T)^2 >= n S2 and p-ratio when T^2 >= ((1 + p)^2 + 1) S2; whenever it passes, the
  exact rule passes too. It suppresses more than the exact rule for small, skewed cells
  (measured in the README).
* **Differencing**: a cell's row set s is compared with every row set h released
  earlier in the same data epoch (:mod:`.history`): |s Δ h| = |s| + |h| - 2 s·h, and
  the cell is suppressed when 0 < |s Δ h| < k. Dot products of secret 0/1 vectors cost a
  resharing; each pair then costs one product and one comparison.

Openings: none here; the caller opens the combined pass bits and reasons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ppa_kernel.contract.errors import PartyFailed, PlanError

from . import limb_fixed
from .history import RowSet
from .limb_fixed import Shares
from .limbs import VALUE
from .openings import compare
from .runtime import mpc, shares, wrap

logger = logging.getLogger(__name__)

REASONS = {1: "minimum size", 2: "dominance", 3: "p-ratio", 4: "differencing"}
"""Suppression reasons by the code opened for a suppressed cell."""

MAX_COMPARE_BITS = 220
"""Longest comparison over the 256-bit field (leaves room for MPyC's 30-bit mask)."""


@dataclass(frozen=True)
class Rules:
    """A plan's disclosure rules (each at least as strict as every party's policy)."""

    min_cell: int
    dominance_n: int = 2
    dominance_k: int = 90
    p_ratio: int = 10
    history_limit: int = 1000
    differencing: bool = True

    @classmethod
    def from_plan(cls, plan: dict) -> Rules:
        return cls(plan["min_cell_size"], **(plan.get("disclosure") or {}))


def _bits(bound: int) -> int:
    return max(8, int(bound).bit_length() + 2)


async def dominance_fails(sectype, sums: np.ndarray, sumsqs: np.ndarray, rules: Rules,
                          largest_sum: int):
    """Secure fail bits (dominance, p-ratio) per cell of one measure's sums and squares.

    ``largest_sum`` bounds |T| (the measure's encoded bound times the rows).
    """
    t = wrap(sectype, sums)
    t2 = await shares(t * t)
    hundred2 = 100 * 100
    dom = rules.dominance_k ** 2 * t2 - hundred2 * rules.dominance_n * sumsqs
    pr = hundred2 * t2 - ((100 + rules.p_ratio) ** 2 + hundred2) * sumsqs
    bits = _bits(2 * hundred2 * rules.dominance_n * largest_sum ** 2)
    if bits > MAX_COMPARE_BITS:
        raise PlanError("the dominance rule cannot be checked for a measure this large",
                        hint="rescale the measure, e.g. divide it by a constant")
    fails = await compare(mpc.np_sgn, wrap(sectype, np.vstack([dom, pr])), l=bits, LT=True)
    fails = await shares(fails)
    return fails[0], fails[1]


@dataclass(frozen=True)
class Kept:
    """The epoch's released row sets on one query's rows (aligned once per run)."""

    limbs: np.ndarray  # (L, people, sets) uint32 limbs: shares of the 0/1 indicators
    sizes: np.ndarray  # this party's shares of each set's size
    people: int  # a bound on every set's size (for the comparisons' bit length)

    @classmethod
    def align(cls, history: list[RowSet], rows: np.ndarray,
              group_sizes: np.ndarray) -> Kept | None:
        """The stored sets' shares on ``rows`` (people seen at enough parties). Empties
        ``history`` as it goes (each set is held once, not twice, at the peak)."""
        if not history:
            return None
        sizes = np.array([h.size for h in history], dtype=object)
        out = np.zeros((VALUE.limbs, len(rows), len(history)), dtype=np.uint32)
        for j in range(len(history)):
            row_set = history[j]
            history[j] = None
            stored_rows = np.flatnonzero(group_sizes >= row_set.joined)
            if row_set.shares.shape[1] != len(stored_rows):
                raise PartyFailed(f"a kept row set holds {row_set.shares.shape[1]} rows, "
                                  f"this epoch's linkage {len(stored_rows)}",
                                  hint="the data owners must start a new epoch")
            common = np.intersect1d(rows, stored_rows, assume_unique=True)
            out[:, np.searchsorted(rows, common), j] = \
                row_set.shares[:, np.searchsorted(stored_rows, common)]
        return cls(out, sizes, int(group_sizes.sum()))


async def differencing_flags(sectype, candidates: Shares, sizes: np.ndarray,
                             kept: Kept | None, min_cell: int) -> np.ndarray:
    """Shares of one bit per candidate row set (columns of ``candidates``): 1 when it
    differs from some kept set by at least one and fewer than ``min_cell`` rows.

    ``candidates`` are shares (rows x sets) of 0/1 indicators, ``sizes`` their sizes.
    """
    count = candidates.shape[1]
    if kept is None or not count:
        return np.zeros(count, dtype=object)
    dots = (await limb_fixed.dot(candidates, Shares(kept.limbs))).objects()
    diff = sizes.reshape(-1, 1) + kept.sizes.reshape(1, -1) - 2 * dots
    near = await shares(wrap(sectype, diff) * wrap(sectype, diff - min_cell))
    people = kept.people + min_cell
    inside = await compare(mpc.np_sgn, wrap(sectype, near), l=_bits(people * people), LT=True)
    hits = (await shares(inside)).sum(axis=1)
    none = await compare(mpc.np_sgn, wrap(sectype, hits - 1), l=_bits(kept.limbs.shape[2]),
                         LT=True)
    return (1 - await shares(none)) % sectype.field.modulus
