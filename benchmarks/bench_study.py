"""Benchmark: the headline study at three real local parties, against plaintext pandas.

    python benchmarks/bench_study.py                    # demo scale and 100,000 rows per party
    python benchmarks/bench_study.py --scales demo      # demo scale only
    python benchmarks/bench_study.py --scales 20k --profile /tmp/prof  # where time goes
    python benchmarks/bench_study.py --large            # also 1m and registry (an hour)

For each scale it starts three party kernels, runs the headline study twice (the first
run links the parties and replays its columns, the second reuses both) and then another
analysis on the same epoch (new columns only), and prints wall time per phase,
the peak memory of each party's MPC worker, and the time plaintext pandas needs for the
same study on the same data in this process (the ratio is the price of privacy).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from ppa_kernel import Consortium
from ppa_kernel.analyst.demo import headline_query
from ppa_kernel.analyst.synthetic import generate, party_rows
from ppa_kernel.contract.limits import link_tag_bits

SCALES = {
    "demo": {"n_core": 4200},
    "20k": {"n_core": 12_000, "insurer_extra": 0.67, "bureau_extra": 0.67,
            "hospital_extra": 0.67},
    "100k": {"n_core": 60_000, "insurer_extra": 0.67, "bureau_extra": 0.67,
             "hospital_extra": 0.67},
    "1m": {"n_core": 600_000, "insurer_extra": 0.67, "bureau_extra": 0.67,
           "hospital_extra": 0.67},
    "registry": {"n_core": 4_500, "hospital_extra": 500 / 4_500,
                 "insurer_extra": 995_500 / 4_500, "bureau_extra": 2_995_500 / 4_500},
}
DEFAULT_SCALES = ("demo", "100k")
LARGE = ("1m", "registry")
"""Scales run only with ``--large`` or when named: tens of minutes and many GB each."""
PHASES = ("connect", "input", "shuffle", "tags", "computation", "disclosure", "release")


def plaintext_study(data: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    """The headline study in pandas on the joined plain tables, and its wall time."""
    started = time.perf_counter()
    joined = (data["insurer"].merge(data["hospital"], on="pseudonym")
              .merge(data["bureau"], on="pseudonym"))
    joined["cost_change"] = joined.cost_2021 - joined.cost_2020
    table = joined.groupby(["income_band", "app_user"])["cost_change"].agg(
        ["count", "mean", "std"])
    return table, time.perf_counter() - started


WORKER_BASE_MB, WORKER_KB_PER_ROW, WORKER_KB_PER_PERSON = 270, 0.95, 1.0
"""A worker's peak memory, measured (1m and registry, 2026-12-03 and -04): a base, plus
this much per stacked row (all parties', linkage and replay) and per joined person (the
query on limb shares; 4.3 KB on MPyC objects before)."""


def memory_needed_mb(params: dict) -> float:
    """Estimated peak memory of the three workers together at a scale (MB)."""
    rows = sum(party_rows(**params).values())
    people = params["n_core"]  # the people at every party: the headline study's join
    return 3 * (WORKER_BASE_MB + (WORKER_KB_PER_ROW * rows + WORKER_KB_PER_PERSON * people)
                / 1024)


def run_scale(name: str, params: dict) -> dict:
    data = generate(seed=7, **params)
    sizes = {p: len(d) for p, d in data.items()}
    plain, plain_seconds = plaintext_study(data)
    with tempfile.TemporaryDirectory(prefix=f"ppa-bench-{name}-") as folder:
        started = time.perf_counter()
        with Consortium.local(data, link="pseudonym", workdir=folder) as c:
            ready = time.perf_counter()
            runs = []
            queries = [("first query (links)", headline_query(c)),
                       ("repeat query", headline_query(c)),
                       ("another analysis", another_analysis(c))]
            for label, query in queries:
                t0 = time.perf_counter()
                table = query.collect(timeout=4 * 3600)
                runs.append({"label": label, "seconds": time.perf_counter() - t0,
                             "run_id": table.attrs["run_id"],
                             "phases": table.attrs["phases"],
                             "peak_rss_mb": table.attrs["peak_rss_mb"],
                             "input_widths": table.attrs["input_widths"],
                             "reused_widths": table.attrs["reused_widths"]})
                if label == "first query (links)":
                    mpc_mean = table["mean"].to_numpy()
            columns = runs[0]["input_widths"]  # replayed columns per party
    error = float(abs(mpc_mean - plain["mean"].to_numpy()).max())
    return {"scale": name, "rows": sizes, "linked": int(plain["count"].sum()),
            "start_kernels_s": ready - started, "runs": runs, "plaintext_s": plain_seconds,
            "max_abs_error_mean": error, "columns": columns,
            "per_element_us": per_element(sizes, columns, runs),
            "peak_worker_mb": {p: max(r["peak_rss_mb"][p] for r in runs)
                               for p in runs[0]["peak_rss_mb"]}}


def another_analysis(c: Consortium):
    """A later analysis on the same epoch with columns the headline study does not use (a
    hospital measure, the bureau's education groups): they are replayed, once."""
    t = c.link()
    return t.groupby("education").agg(n=("outpatient_visits", "count"),
                                      mean=("outpatient_visits", "mean"))


def per_element(sizes: dict[str, int], columns: dict[str, int], runs: list[dict]) -> dict:
    """Microseconds per row and tag bit (first query's tags phase) and per row and
    replayed column (first query's input phase), as the insurer's worker timed them."""
    rows = sum(sizes.values())
    cells = sum(sizes[p] * k for p, k in columns.items())
    tags = runs[0]["phases"]["insurer"].get("tags", 0.0)
    replay = runs[0]["phases"]["insurer"].get("input", 0.0)
    bits = link_tag_bits(rows)
    return {"tag_bits": bits, "tag_us_per_row_bit": 1e6 * tags / (rows * bits),
            "input_us_per_row_column": 1e6 * replay / max(cells, 1)}


def report(result: dict) -> str:
    lines = [f"scale {result['scale']}: rows per party {result['rows']}, "
             f"{result['linked']} linked people",
             f"  start three kernels: {result['start_kernels_s']:.1f} s"]
    for run in result["runs"]:
        phases = run["phases"]["insurer"]
        parts = ", ".join(f"{p} {phases[p]:.2f}" for p in PHASES if p in phases)
        lines.append(f"  {run['label']}: {run['seconds']:.2f} s end to end  [{parts}]  "
                     f"columns replayed {sum(run['input_widths'].values())}, "
                     f"reused {sum(run['reused_widths'].values())}, "
                     f"peak {max(run['peak_rss_mb'].values()):,.0f} MB")
    ratio = result["runs"][1]["seconds"] / max(result["plaintext_s"], 1e-9)
    lines.append(f"  plaintext pandas, same study: {result['plaintext_s'] * 1000:.1f} ms "
                 f"(repeat query / plaintext = {ratio:,.0f}x)")
    cost = result["per_element_us"]
    lines.append(f"  per element: tags {cost['tag_us_per_row_bit']:.2f} us per row and tag bit "
                 f"({cost['tag_bits']} bits), replayed input "
                 f"{cost['input_us_per_row_column']:.2f} us per row and column "
                 f"(replayed columns {result['columns']})")
    lines.append(f"  peak worker memory (MB): {result['peak_worker_mb']}")
    lines.append(f"  max |MPC mean - pandas mean|: {result['max_abs_error_mean']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", choices=list(SCALES),
                        default=list(DEFAULT_SCALES))
    parser.add_argument("--large", action="store_true",
                        help="also run 1m and registry (each takes tens of minutes)")
    parser.add_argument("--force", action="store_true",
                        help="run a scale even if its workers may not fit in memory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="profile every MPC worker (cProfile files in DIR) and print "
                             "the insurer's hottest functions per run")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    args = parser.parse_args(argv)
    if args.profile:  # read by the party kernels' workers, which inherit the environment
        os.environ["PPA_PROFILE_DIR"] = str(args.profile.resolve())
    names = args.scales + [s for s in LARGE if args.large and s not in args.scales]
    available = psutil.virtual_memory().available / 2**20
    too_big = [n for n in names if memory_needed_mb(SCALES[n]) > 0.9 * available]
    if too_big and not args.force:
        for n in too_big:
            print(f"scale {n}: the three workers would need about "
                  f"{memory_needed_mb(SCALES[n]) / 1024:.1f} GB, this machine has "
                  f"{available / 1024:.1f} GB available (--force runs it anyway)")
        return 2
    results = []
    for name in names:
        result = run_scale(name, SCALES[name])
        print(report(result), flush=True)
        results.append(result)
        if args.profile:
            for run in result["runs"]:
                path = args.profile / f"insurer-{run['run_id']}.prof"
                print(f"--- insurer, run {run['run_id']}: top {args.top} by own time")
                pstats.Stats(str(path)).sort_stats("tottime").print_stats(args.top)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
