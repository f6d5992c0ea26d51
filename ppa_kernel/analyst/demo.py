"""The local three-party demo: synthetic data, three kernels, the headline study, a plot."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from .client import Consortium
from .frame import Query
from .results import format_table
from .synthetic import write_demo_data

logger = logging.getLogger(__name__)

DEMO_PARTIES = ("insurer", "hospital", "bureau")


def headline_query(c: Consortium) -> Query:
    """The headline study as a query, not yet run (``.plan()`` shows what it asks)."""
    t = c.link()
    t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
    return (t.groupby(["income_band", "app_user"])
             .agg(n=("cost_change", "count"), mean=("cost_change", "mean"),
                  sd=("cost_change", "std")))


def headline_study(c: Consortium, *, timeout: float | None = None) -> pd.DataFrame:
    """Change in costs 2020 -> 2021 for app users vs non-users, by income band."""
    return headline_query(c).collect(timeout=timeout)


def household_detail(c: Consortium, *, timeout: float | None = None) -> pd.DataFrame:
    """Mean 2021 costs of app users by household type (small cells get suppressed)."""
    t = c.link()
    users = t[t.app_user]
    return (users.groupby("household")
                 .agg(n=("cost_2021", "count"), mean=("cost_2021", "mean"))
                 .collect(timeout=timeout))


def plot_effect(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of the mean cost change per income band; suppressed cells marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot

    ax = plot(table, "mean",
              title="Change in yearly costs 2020 to 2021 by income band and app use")
    ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    return path


def start_demo(folder: Path, *, n_core: int = 4200, seed: int = 7,
               **kwargs: object) -> Consortium:
    """Write the synthetic demo data under ``folder`` and start its three local kernels."""
    paths = write_demo_data(Path(folder) / "data", n_core=n_core, seed=seed, fmt="mixed")
    sources = {name: paths[name] for name in DEMO_PARTIES}
    return Consortium.local(sources, link="pseudonym", workdir=Path(folder) / "parties",
                            **kwargs)


def run_demo(out: Path, *, n_core: int = 4200, seed: int = 7, workdir: Path | None = None,
             timeout: float | None = None) -> dict:
    """Generate data, start three kernels, run the studies, save outputs, shut down."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with start_demo(workdir or out, n_core=n_core, seed=seed) as c:
        ready = time.perf_counter()
        table = headline_study(c, timeout=timeout)
        study = time.perf_counter()
        detail = household_detail(c, timeout=timeout)
        repeat = time.perf_counter()
    table.to_csv(out / "headline_study.csv")
    detail.to_csv(out / "household_detail.csv")
    figure = plot_effect(table, out / "headline_study.png")
    return {"table": table, "detail": detail, "figure": figure,
            "seconds": {"start kernels": ready - started, "headline study": study - ready,
                        "second query": repeat - study}}


def print_report(report: dict) -> None:
    """Print the demo's released tables and timings."""
    print("\nHeadline study: change in yearly costs 2020->2021 by income band and app use")
    print(format_table(report["table"]))
    print("\nApp users' 2021 costs by household type (cells under the minimum size suppressed)")
    print(format_table(report["detail"]))
    print(f"\nPlot saved to {report['figure']}")
    print("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items()))
