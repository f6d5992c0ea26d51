"""Benchmark: the per-row MPC primitives on MPyC's share arrays and on limb shares, in one
run of three local parties (MPyC's own launcher), with their ratio.

    python benchmarks/bench_primitives.py            # 100,000 elements, three parties
    python benchmarks/bench_primitives.py --rows 20000 # fewer (-M5: five parties)

Each primitive runs on the same secret inputs in both forms; party 0 prints µs per
element (wall time: three workers share this machine's cores) and old / new. The
logistic function's row is per row (about 40 truncated products and a 9-bit
decomposition each).
"""

from __future__ import annotations

import sys
import time

if __name__ == "__main__" and not any(arg.startswith("-M") for arg in sys.argv[1:]):
    sys.argv[1:1] = ["-M3"]  # three parties unless told (before MPyC reads the arguments)

import numpy as np

from ppa_kernel.party.secure import limb_fixed
from ppa_kernel.party.secure.fixed import truncate_product
from ppa_kernel.party.secure.limb_fixed import Shares
from ppa_kernel.party.secure.linalg import bits
from ppa_kernel.party.secure.logistic import LimbOps, ObjectOps, logistic
from ppa_kernel.party.secure.openings import MASKED_COMPARISON, masked
from ppa_kernel.party.secure.runtime import (
    allow_disconnects,
    mpc,
    mpyc_random_bits,
    random_field_array,
    shares,
    value_type,
    wrap,
)

ROWS = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 100_000
"""Elements per primitive (MPyC leaves the arguments it does not know in sys.argv)."""


async def _timed(step) -> float:
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


async def _mpyc_bits(n: int):
    with mpyc_random_bits(), masked(MASKED_COMPARISON):
        return await mpc.np_random_bits(value_type().field, n)


async def main() -> None:
    await mpc.start()
    sectype, n = value_type(), ROWS
    field = sectype.field
    a = np.asarray(random_field_array(field, n).value, dtype=object)
    b = np.asarray(random_field_array(field, n).value, dtype=object)
    small = np.asarray(random_field_array(field, n, 1 << 60).value, dtype=object)
    exponent = np.asarray(random_field_array(field, n, 1 << 8).value, dtype=object)
    la, lb, ls, le = (Shares.of(x) for x in (a, b, small, exponent))
    u = (small - (3 << 60)) % field.modulus  # raw fixed point in about [-48, 16)
    cases = {
        "product": (lambda: shares(wrap(sectype, a) * wrap(sectype, b)),
                    lambda: limb_fixed.multiply([(la, lb)])),
        "random bit": (lambda: _mpyc_bits(n), lambda: limb_fixed.random_bits(n)),
        "truncated product": (lambda: truncate_product(small * small % field.modulus, 56, 128),
                              lambda: limb_fixed.truncate(ls * ls, 56, 128)),
        "9-bit decomposition": (lambda: _object_bits(exponent), lambda: limb_fixed.bits(le, 9)),
        "logistic function (per row)": (lambda: _object_logistic(u),
                                        lambda: logistic(u, LimbOps)),
    }
    report = []
    for name, (old, new) in cases.items():
        before, after = await _timed(old), await _timed(new)
        report.append((name, before / n * 1e6, after / n * 1e6))
    allow_disconnects()
    await mpc.shutdown()
    if mpc.pid == 0:
        print(f"{n} elements, {len(mpc.parties)} parties; µs per element (wall time)")
        print(f"{'primitive':30} {'MPyC objects':>13} {'limb shares':>12} {'ratio':>7}")
        for name, before, after in report:
            print(f"{name:30} {before:13.2f} {after:12.2f} {before / after:7.1f}")


async def _object_bits(values: np.ndarray):
    with mpyc_random_bits():
        return await bits(values, 9)


async def _object_logistic(u: np.ndarray):
    with mpyc_random_bits():
        return await logistic(u, ObjectOps)


if __name__ == "__main__":
    mpc.run(main())
