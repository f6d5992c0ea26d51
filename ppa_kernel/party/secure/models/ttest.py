"""Welch's t-test under MPC, from the released counts and sums and the secret sums of
squares; opens t² and df per passing stratum (see :mod:`ppa_kernel.contract.models.ttest`)."""

from __future__ import annotations

import itertools

import numpy as np

from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.models import output_name
from ppa_kernel.contract.program import SCALE_BITS, cell_levels

from ..fixed import compute, fixed_type, from_scaled
from ..openings import reveal
from ..query import QueryState


def _strata_cells(state: QueryState) -> list[tuple[int, int]]:
    """For every stratum (in plan order), the cell indices of the two compared levels."""
    plan = state.program.plan
    group = plan["groupby"][-1]
    strata = [e["name"] for e in plan["groupby"][:-1]]
    where = {tuple(c[n] for n in [*strata, group["name"]]): i
             for i, c in enumerate(cell_levels(state.program.plan))}
    combos = itertools.product(*(e["levels"] for e in plan["groupby"][:-1]))
    return [(where[(*combo, group["levels"][0])], where[(*combo, group["levels"][1])])
            for combo in combos]


async def run_ttest(state: QueryState) -> dict:
    """t² and Welch df for every stratum whose two cells were released (n >= 2 each)."""
    model = state.program.plan["model"]
    key = canonical_json(model["measure"])
    place, stats = state.layout[key], state.stats
    counts, sums = stats.counts[key], stats.sums[key]
    pairs = _strata_cells(state)
    ok = [k for k, (i, j) in enumerate(pairs)
          if counts[i] is not None and counts[j] is not None and min(counts[i], counts[j]) >= 2]
    out: dict[str, list] = {"t_squared": [None] * len(pairs), "df": [None] * len(pairs)}
    if not ok:
        return out
    cells = [c for k in ok for c in pairs[k]]  # first, second, first, second, ...
    n = np.array([counts[c] for c in cells], dtype=object)
    total = np.array([sums[c] for c in cells], dtype=object)
    # n Q - S^2 = n^2 (n - 1) * (variance / n), exact in the field (n and S are public)
    divisor = n * n * (n - 1)
    shifts = np.array([int(d).bit_length() - 1 for d in divisor])
    top = int(shifts.max())
    numer = (n * state.totals[cells, place["sumsq"]] - total * total) * \
        np.array([1 << (top - int(s)) for s in shifts], dtype=object)
    unit = 2 * SCALE_BITS * place["scale"]
    spread = await from_scaled(numer, unit + top)  # (variance / n) * divisor / 2^top
    factor = np.array([float(1 << int(s)) / float(d) for s, d in zip(shifts, divisor)])
    scale = float(1 << (SCALE_BITS * place["scale"]))
    means = np.array([float(t) / float(c) / scale for t, c in zip(total, n)])
    diff = means[0::2] - means[1::2]
    n1, n2 = n[0::2].astype(float), n[1::2].astype(float)
    fx = fixed_type()

    def welch():
        a = spread * factor  # variance / n per cell
        first, second = a[0::2], a[1::2]
        inverse = fx.array(np.ones(len(ok))) / (first + second)
        u, w = first * inverse, second * inverse
        df = fx.array(np.ones(len(ok))) / (u * u * (1 / (n1 - 1)) + w * w * (1 / (n2 - 1)))
        return [inverse * (diff * diff), df]

    t_squared, df = await compute(welch)
    opened_t = await reveal(output_name("ttest", "t_squared"), t_squared)
    opened_df = await reveal(output_name("ttest", "df"), df)
    for k, t2, d in zip(ok, np.asarray(opened_t).tolist(), np.asarray(opened_df).tolist()):
        out["t_squared"][k], out["df"][k] = float(t2), float(d)
    return out
