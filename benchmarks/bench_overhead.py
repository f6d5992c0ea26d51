"""Benchmark: the fixed cost of one run (a count at a small consortium), with each party
kernel keeping a spare MPC worker (the default) and without (``spare_worker = false``).

    python benchmarks/bench_overhead.py              # 8 repeats each, 160 people
    python benchmarks/bench_overhead.py --repeats 20 --people 1000

Both consortia run in this process, one after the other, on the same data; the linkage
is made by a first, unmeasured run. Between runs the benchmark waits ``--pause`` seconds
(an analyst's think time), so the spare is ready, as it is between interactive queries.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate


def repeat_seconds(data: dict, spare: bool, repeats: int, pause: float) -> list[float]:
    """Wall time of ``repeats`` runs of one count, after a first run that links."""
    with tempfile.TemporaryDirectory(prefix="ppa-bench-overhead-") as folder, \
            Consortium.local(data, link="pseudonym", workdir=folder,
                             party_options={"spare_worker": spare}) as c:
        plan = c.link().agg(n=("age", "count")).plan()
        c.run(plan, progress=False)
        seconds = []
        for _ in range(repeats):
            time.sleep(pause)
            t0 = time.perf_counter()
            c.run(plan, progress=False)
            seconds.append(time.perf_counter() - t0)
        return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--people", type=int, default=160, help="people at all parties")
    parser.add_argument("--pause", type=float, default=1.5, help="seconds between runs")
    args = parser.parse_args(argv)
    data = generate(n_core=args.people, seed=7)
    medians = {}
    for spare in (False, True):
        seconds = repeat_seconds(data, spare, args.repeats, args.pause)
        medians[spare] = statistics.median(seconds)
        label = "spare worker" if spare else "worker per run"
        print(f"{label:>15}: median {medians[spare]:.3f} s per run "
              f"(min {min(seconds):.3f}, max {max(seconds):.3f}, {args.repeats} runs)")
    print(f"spare / per run: {medians[True] / medians[False]:.2f}x "
          f"({medians[False] - medians[True]:.2f} s saved per run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
