"""Benchmark: every statistic under MPC at three real local parties, against its oracle.

    python benchmarks/bench_statistics.py                   # demo scale and 100,000 linked
    python benchmarks/bench_statistics.py --scales demo     # demo scale only
    python benchmarks/bench_statistics.py --only ttest ols  # some statistics

For each scale it starts three party kernels, links once (a headline-study query), then
runs each statistic and the same analysis in plaintext (scipy / statsmodels / numpy) in
this process. It prints the MPC wall time, the plaintext time, their ratio, and the
largest relative difference between the released numbers and the oracle's -- the
fixed-point precision check at that scale (the issue asks for 4 significant digits).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ppa_kernel import Consortium
from ppa_kernel.analyst.demo import headline_study
from ppa_kernel.analyst.synthetic import generate

SCALES = {
    "demo": {"n_core": 4200},
    "100k": {"n_core": 100_000, "insurer_extra": 0.1, "bureau_extra": 0.1,
             "hospital_extra": 0.1},
}


@dataclass
class Case:
    """One statistic: the MPC query, the plaintext oracle, and the numbers to compare."""

    name: str
    secure: Callable[[Consortium], pd.DataFrame]
    plain: Callable[[pd.DataFrame], object]
    compare: Callable[[pd.DataFrame, object], tuple[np.ndarray, np.ndarray]]


def _ttest_secure(c: Consortium) -> pd.DataFrame:
    t = c.link()
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    return t.ttest("change", by="app_user", strata="income_band").collect(timeout=7200)


def _ttest_plain(joined: pd.DataFrame) -> pd.DataFrame:
    from scipy import stats

    change = joined.cost_2021 - joined.cost_2020
    rows = {}
    for band, part in joined.groupby("income_band"):
        a = change[part.index][part.app_user == False].dropna()  # noqa: E712
        b = change[part.index][part.app_user == True].dropna()  # noqa: E712
        test = stats.ttest_ind(a, b, equal_var=False)
        rows[band] = {"t": test.statistic, "df": test.df, "p": test.pvalue}
    return pd.DataFrame(rows).T


def _ttest_compare(got: pd.DataFrame, want: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    got = got.loc[want.index, ["t", "df"]]
    return got.to_numpy(dtype=float).ravel(), want[["t", "df"]].to_numpy(dtype=float).ravel()


def _chi2_secure(c: Consortium) -> pd.DataFrame:
    return c.link().chi2("education", "app_user").collect(timeout=7200)


def _chi2_plain(joined: pd.DataFrame) -> float:
    from scipy import stats

    return stats.chi2_contingency(pd.crosstab(joined.education, joined.app_user),
                                  correction=False).statistic


def _chi2_compare(got: pd.DataFrame, want: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([got.loc["all", "chi2"]], dtype=float), np.array([want])


CORR_COLUMNS = ["cost_2020", "cost_2021", "age", "outpatient_visits"]


def _corr_secure(c: Consortium) -> pd.DataFrame:
    return c.link().corr(CORR_COLUMNS).collect(timeout=7200)


def _corr_plain(joined: pd.DataFrame) -> pd.DataFrame:
    return joined[CORR_COLUMNS].dropna().corr()


def _corr_compare(got: pd.DataFrame, want: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    matrix = got.attrs["matrix"].loc[CORR_COLUMNS, CORR_COLUMNS]
    return matrix.to_numpy(dtype=float).ravel(), want.to_numpy(dtype=float).ravel()


OLS_FORMULA = "change ~ app_user * income_band + age"


def _ols_secure(c: Consortium) -> pd.DataFrame:
    t = c.link()
    return t.assign(change=t.cost_2021 - t.cost_2020).ols(OLS_FORMULA).collect(timeout=7200)


def _ols_plain(joined: pd.DataFrame):
    import statsmodels.formula.api as smf

    return smf.ols(OLS_FORMULA, data=joined.assign(
        change=joined.cost_2021 - joined.cost_2020)).fit()


def _ols_compare(got: pd.DataFrame, want) -> tuple[np.ndarray, np.ndarray]:
    mine = [*got.loc[want.params.index, "coef"], *got.loc[want.params.index, "std err"],
            got.attrs["r_squared"]]
    return np.array(mine, dtype=float), np.array([*want.params, *want.bse, want.rsquared])


LOGIT_FORMULA = "readmitted ~ app_user * income_band + age + cost_2020"


def _logit_secure(c: Consortium) -> pd.DataFrame:
    return c.link().logit(LOGIT_FORMULA).collect(timeout=7200)


def _logit_plain(joined: pd.DataFrame):
    import statsmodels.formula.api as smf

    data = joined.assign(readmitted=joined.readmitted.astype(int))
    return smf.logit(LOGIT_FORMULA, data=data).fit(disp=0, tol=1e-12)


def _logit_compare(got: pd.DataFrame, want) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and standard errors (so a coefficient near 0 is judged by itself)."""
    mine = [*got.loc[want.params.index, "coef"], *got.loc[want.params.index, "std err"]]
    return np.array(mine, dtype=float), np.array([*want.params, *want.bse])


def _quantile_secure(c: Consortium) -> pd.DataFrame:
    return c.link().quantiles("cost_2021", by="income_band").collect(timeout=7200)


def _quantile_plain(joined: pd.DataFrame) -> pd.DataFrame:
    return joined.groupby("income_band").cost_2021.apply(
        lambda x: pd.Series(np.quantile(x.dropna(), [0.25, 0.5, 0.75], method="inverted_cdf"),
                            index=["q0.25", "q0.5", "q0.75"])).unstack()


def _quantile_compare(got: pd.DataFrame, want: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Released values are rounded to the precision: compare after the same rounding."""
    step = got.attrs["precision"]
    mine = got.loc[want.index, ["q0.25", "q0.5", "q0.75"]].to_numpy(dtype=float)
    nearest = np.ceil(want.to_numpy(dtype=float) / step - 0.5) * step  # halves down
    return mine.ravel(), nearest.ravel()


KM_STEP = 30


def _km_secure(c: Consortium) -> pd.DataFrame:
    return c.link().kaplan_meier("followup_days", "readmitted", by="app_user",
                                 step=KM_STEP).collect(timeout=7200)


def _km_plain(joined: pd.DataFrame) -> dict:
    from statsmodels.duration.survfunc import SurvfuncRight, survdiff

    time = np.maximum(np.ceil(joined.followup_days / KM_STEP), 1) * KM_STEP
    event = joined.readmitted.astype(int)
    curves = {}
    for level in (False, True):
        part = joined.app_user == level
        curves[level] = SurvfuncRight(time[part].to_numpy(), event[part].to_numpy())
    chi2, _ = survdiff(time, event, joined.app_user)
    return {"curves": curves, "chi2": chi2}


def _km_compare(got: pd.DataFrame, want: dict) -> tuple[np.ndarray, np.ndarray]:
    mine, theirs = [got.attrs["logrank"]["chi2"]], [want["chi2"]]
    for level, fit in want["curves"].items():
        times = got.index[1:]
        at = np.searchsorted(fit.surv_times, times, side="right") - 1
        theirs += list(np.where(at >= 0, fit.surv_prob[np.maximum(at, 0)], 1.0))
        mine += list(got[level].to_numpy()[1:])
    return np.array(mine, dtype=float), np.array(theirs, dtype=float)


CASES = [Case("ttest", _ttest_secure, _ttest_plain, _ttest_compare),
         Case("chi2", _chi2_secure, _chi2_plain, _chi2_compare),
         Case("corr", _corr_secure, _corr_plain, _corr_compare),
         Case("ols", _ols_secure, _ols_plain, _ols_compare),
         Case("logit", _logit_secure, _logit_plain, _logit_compare),
         Case("km", _km_secure, _km_plain, _km_compare),
         Case("quantile", _quantile_secure, _quantile_plain, _quantile_compare)]


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| / |want| over the released (non-NaN) values."""
    keep = ~np.isnan(got) & ~np.isnan(want)
    if not keep.any():
        return float("nan")
    return float(np.max(np.abs(got[keep] - want[keep]) / np.maximum(np.abs(want[keep]),
                                                                     1e-12)))


def run_scale(name: str, params: dict, cases: list[Case]) -> dict:
    data = generate(seed=7, **params)
    joined = (data["insurer"].merge(data["hospital"], on="pseudonym")
              .merge(data["bureau"], on="pseudonym"))
    results = []
    with tempfile.TemporaryDirectory(prefix=f"ppa-bench-stats-{name}-") as folder, \
            Consortium.local(data, link="pseudonym", workdir=folder) as c:
        t0 = time.perf_counter()
        headline_study(c, timeout=7200)
        link_seconds = time.perf_counter() - t0
        for case in cases:
            t0 = time.perf_counter()
            got = case.secure(c)
            secure_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            want = case.plain(joined)
            plain_seconds = time.perf_counter() - t0
            error = max_relative_error(*case.compare(got, want))
            results.append({"statistic": case.name, "mpc_s": secure_seconds,
                            "plaintext_s": plain_seconds, "max_rel_error": error})
            print(f"  {name} {case.name}: {secure_seconds:.2f} s "
                  f"(plaintext {plain_seconds * 1000:.1f} ms), "
                  f"max relative error {error:.1e}", flush=True)
    return {"scale": name, "linked": len(joined), "link_s": link_seconds,
            "statistics": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only]
    results = []
    for name in args.scales:
        print(f"scale {name}:", flush=True)
        result = run_scale(name, SCALES[name], cases)
        print(f"  ({result['linked']} linked people; linkage + first query "
              f"{result['link_s']:.1f} s)", flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
