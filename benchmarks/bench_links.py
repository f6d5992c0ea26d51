"""Benchmark: the cost of the cross-organisation links, and a compute-only helper party.

    python benchmarks/bench_links.py                 # all three parts
    python benchmarks/bench_links.py --parts wan     # one part: loopback, wan or helper

- **loopback**: the demo study (three local parties, TLS on every link), first query
  (links) and repeat query.
- **wan**: the same with every link (analyst to kernels, worker to worker) through a
  delaying TCP proxy, 10 ms each way: a 20 ms round trip. Reported against loopback.
- **helper**: two data owners of 4,000 rows each with 2,700 common keys and a third,
  compute-only party (the shape of TNO's secure inner join with its helper, which took
  391 s with Paillier-2048 on this machine): linkage and one aggregate over the join,
  against pandas on the same data in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ppa_kernel import Consortium
from ppa_kernel.analyst.demo import headline_study
from ppa_kernel.analyst.local import LocalParties, write_local_config
from ppa_kernel.analyst.synthetic import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tcp_proxy import route_through_proxies

ONE_WAY_DELAY = 0.010
TNO_SECONDS = 391.0


def study_twice(c: Consortium) -> list[float]:
    """Seconds of the headline study's first (linking) and repeat query."""
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        headline_study(c, timeout=1800)
        seconds.append(time.perf_counter() - started)
    return seconds


def demo_study(delay: float | None) -> list[float]:
    """The demo study on loopback (``delay`` None) or through delaying proxies."""
    data = generate(n_core=4200, seed=7)
    with tempfile.TemporaryDirectory(prefix="ppa-bench-links-") as folder:
        if delay is None:
            with Consortium.local(data, link="pseudonym", workdir=folder) as c:
                return study_twice(c)
        write_local_config(Path(folder), data, "pseudonym")
        proxies = route_through_proxies(folder, delay=delay)
        try:
            parties = LocalParties(Path(folder), list(data))
            parties.wait_ready(60)
            with Consortium(parties.config, identity=parties.analyst,
                            on_close=parties.stop) as c:
                return study_twice(c)
        finally:
            for proxy in proxies:
                proxy.stop()


def helper_join() -> dict[str, float]:
    """Two owners x 4,000 rows, 2,700 common keys, and a compute-only helper."""
    rng = np.random.default_rng(5)
    common = [f"c{i}" for i in range(2700)]
    owners = {"owner_a": pd.DataFrame({"pseudonym": common + [f"a{i}" for i in range(1300)],
                                       "x": rng.integers(0, 1000, 4000).astype(float)}),
              "owner_b": pd.DataFrame({"pseudonym": common + [f"b{i}" for i in range(1300)],
                                       "y": rng.integers(0, 1000, 4000).astype(float)})}
    started = time.perf_counter()
    joined = owners["owner_a"].merge(owners["owner_b"], on="pseudonym")
    plain = {"n": len(joined), "x": joined.x.mean(), "y": joined.y.mean()}
    plain_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="ppa-bench-helper-") as folder, \
            Consortium.local({**owners, "helper": None}, link="pseudonym",
                             workdir=folder) as c:
        times, table = [], None
        for _ in range(2):
            started = time.perf_counter()
            table = c.link().agg(n=("x", "count"), x=("x", "mean"), y=("y", "mean")).collect()
            times.append(time.perf_counter() - started)
    assert table is not None and int(table["n"].iloc[0]) == plain["n"]
    error = max(abs(float(table[k].iloc[0]) - plain[k]) for k in ("x", "y"))
    return {"first": times[0], "repeat": times[1], "plain": plain_seconds,
            "linked": plain["n"], "error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["loopback", "wan", "helper"],
                        choices=["loopback", "wan", "helper"])
    args = parser.parse_args(argv)
    loopback = None
    if "loopback" in args.parts or "wan" in args.parts:
        loopback = demo_study(None)
        print(f"demo study, loopback (TLS on every link): first {loopback[0]:.2f} s, "
              f"repeat {loopback[1]:.2f} s", flush=True)
    if "wan" in args.parts:
        wan = demo_study(ONE_WAY_DELAY)
        print(f"demo study, 20 ms round trip on every link: first {wan[0]:.2f} s "
              f"({wan[0] / loopback[0]:.2f}x loopback), repeat {wan[1]:.2f} s "
              f"({wan[1] / loopback[1]:.2f}x loopback)", flush=True)
    if "helper" in args.parts:
        r = helper_join()
        print(f"2 owners x 4,000 rows, {r['linked']:,} common keys, compute-only helper: "
              f"first query (links) {r['first']:.2f} s, repeat {r['repeat']:.2f} s; "
              f"pandas {r['plain'] * 1000:.1f} ms (first / pandas = "
              f"{r['first'] / r['plain']:,.0f}x); TNO's Paillier-2048 join "
              f"{TNO_SECONDS:.0f} s = {TNO_SECONDS / r['first']:.0f}x ours; "
              f"max |MPC mean - pandas mean| {r['error']:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
