"""Benchmark: the disclosure rules checked inside MPC (dominance, p-ratio, differencing).

    python benchmarks/bench_disclosure.py                       # demo scale, history of 100
    python benchmarks/bench_disclosure.py --scale both          # demo and 100,000 linked
    python benchmarks/bench_disclosure.py --history 300         # a longer epoch history

For each scale it starts two local consortia of three party kernels, from this process:
one with the ``differencing`` policy off at every party (the baseline: minimum cell
size, dominance and p-ratio) and one with it on. In the second it first releases distinct
tables (cohorts ``t[t.age >= a]`` by region, sex, ...) until the epoch's history of
released row sets, read from ``state/<party>/epoch/history/index.json``, holds at least
``--history`` sets. It then runs the same queries in both -- the headline study (mean
cost change, no dominance: the measure can be negative) and mean 2021 costs by income
band and app use (a non-negative measure: dominance and p-ratio apply) -- alternating
between the two consortia, so load from other processes falls on both alike, and prints
the fastest wall time, the workers' "disclosure" phase and the ratios (on / off). The
first query of each consortium (which links the parties) is timed separately.

It also counts, in plaintext pandas on the joined data, how many cells the sound
dominance / p-ratio bound (from each cell's sum T and sum of squares S2, values encoded
as round(x * 2^16) as the parties do) suppresses beyond the exact rules (the two largest
contributions x1 >= x2), over the sums of every non-negative measure by each grouping
column and each pair of them, and asserts that the bound never passes a cell the exact
rules fail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ppa_kernel import Consortium
from ppa_kernel.analyst.demo import headline_study
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.program import SCALE_BITS

SCALES = {
    "demo": {},  # generate() defaults: n_core=4200
    "100k": {"n_core": 100_000, "insurer_extra": 0.1, "bureau_extra": 0.1,
             "hospital_extra": 0.1},
}
MEASURES = ("cost_2020", "cost_2021", "admissions_2020", "admissions_2021",
            "outpatient_visits", "app_use_intensity", "followup_days")
GROUPS = ("region", "sex", "diagnosis", "income_band", "household", "education", "app_user")
COHORT_AGES = (None, 30, 40, 50, 60, 70)
MIN_CELL = 10
DOMINANCE_N, DOMINANCE_K, P_RATIO = 2, 90, 10
TIMEOUT = 7200


# ----------------------------------------------------------------- MPC queries


def cost_2021_study(c: Consortium) -> pd.DataFrame:
    """Mean 2021 costs by income band and app use: a non-negative measure (dominance)."""
    t = c.link()
    return (t.groupby(["income_band", "app_user"])
             .agg(n=("cost_2021", "count"), mean=("cost_2021", "mean"))
             .collect(timeout=TIMEOUT))


TIMED = {"headline (cost change)": lambda c: headline_study(c, timeout=TIMEOUT),
         "cost_2021 (dominance)": cost_2021_study}


def history_queries():
    """Distinct count tables, each releasing new row sets into the epoch's history."""
    groupings = [[g] for g in GROUPS] + [list(p) for p in itertools.combinations(GROUPS, 2)]
    for by in groupings:
        for age in COHORT_AGES:
            yield by, age


def run_history_query(c: Consortium, by: list[str], age: int | None) -> pd.DataFrame:
    t = c.link()
    if age is not None:
        t = t[t.age >= age]
    return t.groupby(by).agg(n=("cost_2020", "count")).collect(timeout=TIMEOUT)


def history_sizes(folder: Path, parties) -> dict[str, int]:
    """Released row sets each party keeps for the current data epoch."""
    sizes = {}
    for party in parties:
        index = folder / "state" / party / "epoch" / "history" / "index.json"
        sizes[party] = len(json.loads(index.read_text())) if index.exists() else 0
    return sizes


PHASES = ("connect", "linkage", "input", "shuffle", "tags", "computation", "disclosure",
          "release")


def phase_seconds(table: pd.DataFrame) -> dict[str, float]:
    """Each phase at the slowest party (the parties run them in lockstep)."""
    phases = table.attrs["phases"].values()
    names = dict.fromkeys(name for p in phases for name in p)
    return {name: max(p.get(name, 0.0) for p in phases) for name in names}


def reason_counts(table: pd.DataFrame) -> dict[str, int]:
    """Suppressed cells by reason (per cell, not per statistic)."""
    reasons = table.attrs["reasons"].iloc[:, 0]
    return {str(k): int(v) for k, v in reasons.dropna().value_counts().items()}


def timed_queries(sides: dict[str, Consortium], repeat: int) -> dict[str, dict]:
    """Each timed query ``repeat`` times per consortium, alternating between them (so
    load from other processes falls on both alike): the fastest wall time and phases."""
    runs: dict = {side: {name: [] for name in TIMED} for side in sides}
    for round_ in range(repeat):
        for name, query in TIMED.items():
            for side, c in sides.items():
                t0 = time.perf_counter()
                table = query(c)
                wall = time.perf_counter() - t0
                runs[side][name].append((wall, phase_seconds(table), reason_counts(table),
                                         table))
                print(f"  run {round_ + 1} {side:<3} {name}: {wall:.2f} s (disclosure "
                      f"{runs[side][name][-1][1].get('disclosure', 0.0):.2f} s), suppressed "
                      f"{runs[side][name][-1][2] or 'none'}", flush=True)
    out: dict = {}
    for side, by_name in runs.items():
        out[side] = {}
        for name, samples in by_name.items():
            walls = [w for w, *_ in samples]
            disclosures = [p.get("disclosure", 0.0) for _, p, *_ in samples]
            fastest = samples[int(np.argmin(walls))]
            reasons: dict[str, int] = {}  # the most suppressed of any run, per reason
            for _, _, r, _ in samples:
                for key, count in r.items():
                    reasons[key] = max(reasons.get(key, 0), count)
            out[side][name] = {"wall_s": min(walls), "disclosure_s": min(disclosures),
                               "walls": walls, "disclosures": disclosures,
                               "phases": fastest[1], "reasons": reasons,
                               "table": samples[-1][3]}
    return out


def run_mpc(name: str, data: dict[str, pd.DataFrame], history: int, repeat: int) -> dict:
    """Baseline (differencing off) and differencing on after ``history`` released sets."""
    parties = list(data)
    result: dict = {}
    off_policy = {p: {"differencing": False} for p in parties}
    with tempfile.TemporaryDirectory(prefix=f"ppa-bench-disc-{name}-") as folder, \
            Consortium.local(data, link="pseudonym", policies=off_policy,
                             workdir=Path(folder) / "off") as off, \
            Consortium.local(data, link="pseudonym", workdir=Path(folder) / "on") as on:
        for side, c in (("off", off), ("on", on)):
            t0 = time.perf_counter()
            headline_study(c, timeout=TIMEOUT)
            result[f"link_{side}_s"] = time.perf_counter() - t0
            print(f"  {side}: linkage + first query {result[f'link_{side}_s']:.1f} s",
                  flush=True)
        workdir = Path(folder) / "on"
        t0 = time.perf_counter()
        queries = suppressed = 0
        for by, age in history_queries():
            if min(history_sizes(workdir, parties).values()) >= history:
                break
            table = run_history_query(on, by, age)
            queries += 1
            suppressed += reason_counts(table).get("differencing", 0)
            cohort = "everyone" if age is None else f"age >= {age}"
            print(f"    history query {queries} ({' x '.join(by)}, {cohort}): "
                  f"{min(history_sizes(workdir, parties).values())} row sets", flush=True)
        result["history_build_s"] = time.perf_counter() - t0
        result["history_queries"] = queries
        result["history_suppressed_differencing"] = suppressed
        result["history"] = history_sizes(workdir, parties)
        result.update(timed_queries({"off": off, "on": on}, repeat))
        result["history_after"] = history_sizes(workdir, parties)
        result["history_off"] = history_sizes(Path(folder) / "off", parties)
    return result


# ----------------------------------------------------------------- plaintext rules


def encoded(values: pd.Series) -> np.ndarray:
    """Fixed-point integers as the parties encode them (see ppa_kernel.party.owner.encode)."""
    return np.rint(values.to_numpy(dtype=float) * (1 << SCALE_BITS)).astype(np.int64)


def cell_rules(joined: pd.DataFrame, by: list[str], measure: str) -> pd.DataFrame:
    """Per cell (n >= MIN_CELL): exact and bound dominance / p-ratio failures."""
    part = joined.loc[joined[measure].notna(), [*by, measure]].copy()
    part["x"] = encoded(part[measure])
    part = part.sort_values([*by, "x"], ascending=[True] * len(by) + [False])
    groups = part.groupby(by, sort=False)["x"]
    part["rank"] = groups.cumcount()
    top = part[part["rank"] < 2].pivot_table(index=by, columns="rank", values="x",
                                             aggfunc="sum", fill_value=0)
    # Sums of squares exceed int64: Python integers, summed over each cell's block of rows
    # (rows are sorted by cell, so each cell is one block in the order of groups.size()).
    x = np.array([int(v) for v in part.x.to_numpy()], dtype=object)
    codes = groups.ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    size = groups.size()
    cells = pd.DataFrame({"n": size, "total": groups.sum(),
                          "sumsq": pd.Series(np.add.reduceat(x * x, starts), index=size.index)})
    cells["x1"] = top[0].reindex(cells.index, fill_value=0)
    cells["x2"] = (top[1] if 1 in top.columns else top[0] * 0).reindex(cells.index,
                                                                        fill_value=0)
    cells = cells[cells.n >= MIN_CELL]
    t = [int(v) for v in cells.total]
    s2 = cells.sumsq.tolist()
    x1 = cells.x1.to_numpy(dtype=np.int64)
    x2 = cells.x2.to_numpy(dtype=np.int64)
    total = cells.total.to_numpy(dtype=np.int64)
    k, n, p = DOMINANCE_K, DOMINANCE_N, P_RATIO
    out = pd.DataFrame(index=cells.index)
    out["exact_dominance"] = 100 * (x1 + x2) > k * total
    out["exact_p_ratio"] = 100 * (total - x1 - x2) < p * x1
    out["bound_dominance"] = [k * k * a * a < 10000 * n * b for a, b in zip(t, s2)]
    out["bound_p_ratio"] = [10000 * a * a < ((100 + p) ** 2 + 10000) * b for a, b in zip(t, s2)]
    return out


def plaintext_rules(joined: pd.DataFrame) -> dict:
    """Exact rules vs the sound bound over every (measure, grouping) table."""
    groupings = [[g] for g in GROUPS] + [list(p) for p in itertools.combinations(GROUPS, 2)]
    started = time.perf_counter()
    counts = dict.fromkeys(("tables", "cells", "exact_dominance", "exact_p_ratio", "exact",
                            "bound_dominance", "bound_p_ratio", "bound", "extra"), 0)
    unsound: list[str] = []
    for measure in MEASURES:
        for by in groupings:
            rules = cell_rules(joined, by, measure)
            exact = rules.exact_dominance | rules.exact_p_ratio
            bound = rules.bound_dominance | rules.bound_p_ratio
            counts["tables"] += 1
            counts["cells"] += len(rules)
            for key in ("exact_dominance", "exact_p_ratio", "bound_dominance", "bound_p_ratio"):
                counts[key] += int(rules[key].sum())
            counts["exact"] += int(exact.sum())
            counts["bound"] += int(bound.sum())
            counts["extra"] += int((bound & ~exact).sum())
            for cell in rules.index[exact & ~bound]:
                unsound.append(f"{measure} by {by} at {cell}")
    counts["unsound"] = unsound
    counts["seconds"] = time.perf_counter() - started
    return counts


def expected_reasons(joined: pd.DataFrame) -> pd.Series:
    """The reason the parties should give per cell of cost_2021_study (no differencing)."""
    by = ["income_band", "app_user"]
    rules = cell_rules(joined, by, "cost_2021")
    reason = pd.Series(None, index=rules.index, dtype=object)
    reason[rules.bound_p_ratio] = "p-ratio"
    reason[rules.bound_dominance] = "dominance"
    return reason


def check_mpc_reasons(joined: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Cells where the MPC's reasons differ from the plaintext bound's (n >= MIN_CELL)."""
    want = expected_reasons(joined)
    got = table.attrs["reasons"]["mean"]
    problems = []
    for cell, reason in got.items():
        key = tuple(cell)
        expected = want.get(key, "minimum size")
        if (reason or None) != (expected if isinstance(expected, str) else None):
            problems.append(f"{key}: MPC {reason!r}, plaintext bound {expected!r}")
    return problems


# ----------------------------------------------------------------- report


def run_scale(name: str, params: dict, history: int, repeat: int) -> dict:
    data = generate(seed=7, **params)
    joined = (data["insurer"].merge(data["hospital"], on="pseudonym")
              .merge(data["bureau"], on="pseudonym"))
    print(f"scale {name}: {len(joined)} linked people; plaintext rules ...", flush=True)
    plain = plaintext_rules(joined)
    print(f"  plaintext: {plain['tables']} tables, {plain['cells']} cells with n >= "
          f"{MIN_CELL} ({plain['seconds']:.1f} s)", flush=True)
    result = {"scale": name, "linked": len(joined), "plain": plain,
              **run_mpc(name, data, history, repeat)}
    result["reason_mismatches"] = check_mpc_reasons(
        joined, result["off"]["cost_2021 (dominance)"]["table"])
    result["baseline_differencing"] = {
        q: r["reasons"].get("differencing", 0) for q, r in result["off"].items()}
    return result


def report(result: dict, history: int) -> str:
    plain = result["plain"]
    hist = result["history"]
    lines = [f"scale {result['scale']}: {result['linked']} linked people, three parties",
             f"  linkage + first query: baseline {result['link_off_s']:.1f} s, "
             f"differencing on {result['link_on_s']:.1f} s",
             f"  history: {min(hist.values())} row sets (asked {history}; per party {hist}) "
             f"from {result['history_queries']} distinct queries in "
             f"{result['history_build_s']:.1f} s ({result['history_suppressed_differencing']} "
             f"cells suppressed for differencing on the way); after the timed queries "
             f"{min(result['history_after'].values())}",
             "",
             f"  {'query':<24}{'wall off':>10}{'wall on':>10}{'ratio':>8}"
             f"{'discl. off':>12}{'discl. on':>11}{'ratio':>8}{'added':>9}   suppressed (on)"]
    for name in TIMED:
        off, on = result["off"][name], result["on"][name]
        wall_ratio = on["wall_s"] / max(off["wall_s"], 1e-9)
        disc_ratio = on["disclosure_s"] / max(off["disclosure_s"], 1e-9)
        lines.append(f"  {name:<24}{off['wall_s']:>9.2f}s{on['wall_s']:>9.2f}s"
                     f"{wall_ratio:>7.2f}x{off['disclosure_s']:>11.2f}s"
                     f"{on['disclosure_s']:>10.2f}s{disc_ratio:>7.2f}x"
                     f"{on['disclosure_s'] - off['disclosure_s']:>8.2f}s   "
                     f"{on['reasons'] or 'none'}")
    lines.append("  (fastest of the runs, alternating between the two consortia)")
    lines.append("  phases of the fastest run (s, slowest party):")
    for name in TIMED:
        for side, label in (("off", "off"), ("on", "on ")):
            phases = result[side][name]["phases"]
            order = [p for p in PHASES if p in phases] + [p for p in phases if p not in PHASES]
            parts = ", ".join(f"{p} {phases[p]:.2f}" for p in order)
            lines.append(f"    {name:<24}{label} {parts}")
    lines += ["",
              f"  sound bound vs exact rules (plaintext, {plain['tables']} tables of sums, "
              f"{plain['cells']} cells with n >= {MIN_CELL}):",
              f"    {'':<22}{'dominance':>10}{'p-ratio':>10}{'either':>10}",
              f"    {'exact rule fails':<22}{plain['exact_dominance']:>10}"
              f"{plain['exact_p_ratio']:>10}{plain['exact']:>10}",
              f"    {'bound fails':<22}{plain['bound_dominance']:>10}"
              f"{plain['bound_p_ratio']:>10}{plain['bound']:>10}",
              f"    extra suppressions (bound fails, exact passes): {plain['extra']} "
              f"({plain['extra'] / max(plain['cells'], 1):.1%} of the cells)",
              f"    bound passing a cell the exact rules fail: {len(plain['unsound'])}"]
    diff = result["baseline_differencing"]
    lines.append(f"  checks: baseline cells suppressed for differencing {diff}, baseline "
                 f"history {result['history_off']}; "
                 f"MPC reasons vs plaintext bound (cost_2021 table): "
                 f"{'agree' if not result['reason_mismatches'] else result['reason_mismatches']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo", choices=[*SCALES, "both"])
    parser.add_argument("--history", type=int, default=100,
                        help="released row sets in the epoch before the timed queries")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each timed query (the fastest is reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    names = list(SCALES) if args.scale == "both" else [args.scale]
    started = time.perf_counter()
    results, failed = [], False
    for name in names:
        result = run_scale(name, SCALES[name], args.history, max(args.repeat, 1))
        print(report(result, args.history), flush=True)
        results.append(result)
        if result["plain"]["unsound"]:
            failed = True
            print("  UNSOUND: the bound passes cells the exact rules fail:\n    "
                  + "\n    ".join(result["plain"]["unsound"]), flush=True)
        if any(result["baseline_differencing"].values()) or any(
                result["history_off"].values()) or result["reason_mismatches"]:
            failed = True
    command = shlex.join(sys.orig_argv)
    print(f"\nsummary ({command}; {time.perf_counter() - started:.0f} s):")
    for r in results:
        for name in TIMED:
            off, on = r["off"][name], r["on"][name]
            print(f"  {r['scale']} {name}: differencing with {min(r['history'].values())} "
                  f"row sets costs {on['wall_s'] / max(off['wall_s'], 1e-9):.2f}x wall time, "
                  f"{on['disclosure_s'] / max(off['disclosure_s'], 1e-9):.2f}x disclosure "
                  f"phase ({off['disclosure_s']:.2f} -> {on['disclosure_s']:.2f} s)")
        p = r["plain"]
        print(f"  {r['scale']} bound: {p['bound']} of {p['cells']} cells fail vs {p['exact']} "
              f"under the exact rules ({p['extra']} extra, {len(p['unsound'])} unsound)")
    if args.json:
        for r in results:
            for side in ("off", "on"):
                for entry in r[side].values():
                    entry.pop("table", None)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    assert all(not r["plain"]["unsound"] for r in results), "the bound is not sound"
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
