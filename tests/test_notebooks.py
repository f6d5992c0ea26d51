"""The notebooks run top to bottom under papermill; their released tables match pandas.

The quickstart starts its own demo consortium; the study and the query builder connect
to the test consortium. The study runs with two parameter sets: its defaults (every
analysis), and the spec the query builder notebook exported (read as papermill's ``-f``
reads it) with ``analyses: [ttest]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from oracle import assert_matches, expected, join

papermill = pytest.importorskip("papermill")

from ppa_kernel.analyst.synthetic import generate  # noqa: E402

pytestmark = pytest.mark.notebooks

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PARTIES = ["insurer", "hospital", "bureau"]
TIMEOUT = 300


def run_notebook(name: str, folder: Path, parameters: dict, *, spec: Path | None = None
                 ) -> Path:
    """Execute a notebook with papermill (in this process: no interpreter start and papermill
    import per notebook; the kernel is still a process of its own); fail with the cell's
    error. ``spec`` is a parameters file, as papermill's ``-f``; ``parameters`` override it."""
    out = folder / f"executed-{name}"
    values = yaml.safe_load(spec.read_text()) if spec is not None else {}
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in parameters.items()})
    with _without_forced_progress():
        papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=values,
                                   cwd=str(folder), kernel_name="python3",
                                   execution_timeout=TIMEOUT, progress_bar=False)
    return out


@contextlib.contextmanager
def _without_forced_progress() -> Iterator[None]:
    """No forced progress display in the kernel's environment (papermill must get text)."""
    forced = os.environ.pop("PPA_PROGRESS", None)
    try:
        yield
    finally:
        if forced is not None:
            os.environ["PPA_PROGRESS"] = forced


def read_released(path: Path, n_index: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    index = list(range(n_index))
    table = pd.read_csv(path, index_col=index)
    mask = pd.read_csv(path.with_name(path.stem + ".suppressed.csv")
                       if path.with_name(path.stem + ".suppressed.csv").exists()
                       else path.parent / "suppressed_cells.csv", index_col=index)
    return table, mask.astype(bool)


def check(table: pd.DataFrame, mask: pd.DataFrame, plain: pd.DataFrame, by: list[str],
          aggs: dict, min_cell: int, magnitudes: tuple = (),
          reasons: pd.DataFrame | None = None) -> None:
    """The written table equals the pandas oracle over the same cells."""
    levels = [list(dict.fromkeys(table.index.get_level_values(i))) for i in range(len(by))]
    levels = [[_level(v) for v in lv] for lv in levels]
    want, want_mask = expected(plain, by, levels, aggs, min_cell=min_cell,
                               magnitudes=magnitudes)
    if reasons is not None:  # differencing depends on the notebook's earlier releases
        earlier = reasons.eq("differencing").to_numpy()
        want_mask = want_mask | earlier
        want = want.mask(earlier)
    table.attrs["suppressed"] = mask
    table.index = want.index
    mask.index = want.index
    assert_matches(table, want, want_mask)
    assert (~want_mask).to_numpy().any(), "some cells must be released"


def _level(value):
    """CSV round trip: 'True'/'False' back to booleans."""
    return {"True": True, "False": False}.get(value, value) if isinstance(value, str) \
        else bool(value) if isinstance(value, np.bool_) else value


def change(rows: pd.DataFrame) -> pd.Series:
    return rows.cost_2021 - rows.cost_2020


def test_quickstart_starts_its_demo_and_releases_the_oracle_tables(tmp_path):
    out = tmp_path / "released"
    executed = run_notebook("01-quickstart.ipynb", tmp_path,
                            {"demo_rows": 300, "output_dir": out})
    outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
    printed = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
    assert "] linkage" in printed and "secure run finished" in printed  # text progress
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in outputs), "papermill output must not hold progress widgets"
    plain = join(generate(300, 7), PARTIES)
    table, mask = read_released(out / "effect.csv", 2)
    check(table, mask, plain, ["income_band", "app_user"],
          {"n": (change, "count"), "mean": (change, "mean"), "sd": (change, "std")}, 10)
    households, mask = read_released(out / "households.csv", 1)
    users = plain[plain.app_user]
    why = pd.read_csv(out / "households.reasons.csv", index_col=0)
    check(households, mask, users, ["household"],
          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")}, 10,
          magnitudes=("n", "mean"),  # costs are never negative: dominance applies
          reasons=why)
    assert mask.to_numpy().any(), "the demo shows a suppressed cell"
    ages, mask = read_released(out / "ages.csv", 1)
    edges = [18, 30, 40, 50, 60, 70, 80, 90]
    hospital_insurer = join(generate(300, 7), ["insurer", "hospital"])
    counts, _ = np.histogram(hospital_insurer.loc[hospital_insurer.app_user, "age"], edges)
    released = ~mask["count"].to_numpy()
    assert np.array_equal(ages["count"].to_numpy()[released], counts[released])
    assert (counts[~released] < 10).all()


def identity_of(consortium) -> str:
    """The test consortium's analyst identity, as the notebooks' parameter."""
    return str(consortium.local_parties.folder / "keys" / "analyst")


@pytest.fixture(scope="module")
def builder_run(consortium, tmp_path_factory):
    folder = tmp_path_factory.mktemp("builder")
    config = consortium.local_parties.folder / "consortium.toml"
    run_notebook("03-query-builder.ipynb", folder,
                 {"consortium_file": config, "identity": identity_of(consortium),
                  "output_dir": folder / "out"})
    return folder / "out"


def test_query_builder_notebook_runs_and_exports(builder_run, demo_data):
    table, mask = read_released(builder_run / "builder_table.csv", 1)
    plain = join(demo_data, PARTIES)
    check(table, mask, plain[plain.age >= 40], ["income_band"],
          {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")}, 10)
    assert (builder_run / "query.yaml").exists()


@pytest.mark.parametrize("parameter_set", ["defaults", "builder export"])
def test_study_notebook_parameter_sets(parameter_set, consortium, demo_data, builder_run,
                                       tmp_path):
    """The defaults run every analysis (each checked against pandas, scipy or statsmodels);
    the builder export runs its own query and, of the inference, the t-test only (the other
    analyses do not depend on the spec beyond what the defaults cover)."""
    config = consortium.local_parties.folder / "consortium.toml"
    out = tmp_path / "study"
    plain = join(demo_data, PARTIES)
    parameters = {"consortium_file": config, "identity": identity_of(consortium),
                  "output_dir": out}
    if parameter_set == "defaults":
        run_notebook("02-app-effect-study.ipynb", tmp_path, parameters)
        by, aggs, rows = ["income_band", "app_user"], \
            {"n": (change, "count"), "mean": (change, "mean")}, plain
    else:
        run_notebook("02-app-effect-study.ipynb", tmp_path,
                     {**parameters, "analyses": ["ttest"]}, spec=builder_run / "query.yaml")
        by, aggs, rows = ["income_band"], \
            {"n": ("cost_2021", "count"), "mean": ("cost_2021", "mean")}, \
            plain[plain.age >= 40]
    table, mask = read_released(out / "released_table.csv", len(by))
    check(table, mask, rows, by, aggs, 10)
    record = json.loads((out / "plan.json").read_text())
    assert record["plan"]["min_cell_size"] >= 10
    assert len(record["plan_hash"]) == 64
    assert (out / "figure.png").stat().st_size > 10_000
    check_export(out, record["plan_hash"])
    if parameter_set == "defaults":
        difference = pd.read_csv(out / "difference.csv", index_col=0)
        means = table["mean"].unstack("app_user")
        np.testing.assert_allclose(difference.iloc[:, 0].to_numpy(),
                                   (means[True] - means[False]).to_numpy())
        check_inference(out, plain)
    else:
        check_ttest(out, rows.assign(outcome=rows.cost_2021))
        assert sorted(p.name for p in out.glob("*.csv")) == \
            ["released_table.csv", "suppressed_cells.csv", "ttest.csv"], "only the t-test ran"


def check_export(out: Path, plan_hash: str) -> None:
    """The study's one folder for output checkers: results.json and verified checksums."""
    (folder,) = out.glob("checker-*")
    results = json.loads((folder / "results.json").read_text())["results"]
    assert results["released_table"]["plan_hash"] == plan_hash
    files = [p for p in folder.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"results.json", "released_table.csv"}
    assert len(list((folder / "checksums").iterdir())) == len(files)
    for path in files:
        digest = (folder / "checksums" / f"{path.name}.txt").read_text()
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), path.name


def check_inference(out: Path, plain: pd.DataFrame) -> None:
    """The study's t-tests and regressions equal scipy's and statsmodels' on the same rows."""
    import statsmodels.formula.api as smf

    plain = plain.assign(outcome=plain.cost_2021 - plain.cost_2020)
    check_ttest(out, plain)
    ols = pd.read_csv(out / "ols.csv", index_col=0)
    fit = smf.ols("outcome ~ app_user * income_band + age", data=plain).fit()
    np.testing.assert_allclose(ols.loc[fit.params.index, "coef"], fit.params,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ols.loc[fit.params.index, "std err"], fit.bse, rtol=1e-5)
    logit = pd.read_csv(out / "logit.csv", index_col=0)
    fit = smf.logit("readmitted ~ app_user * income_band + age",
                    data=plain.assign(readmitted=plain.readmitted.astype(int))).fit(disp=0)
    np.testing.assert_allclose(logit.loc[fit.params.index, "coef"], fit.params,
                               rtol=1e-5, atol=1e-5 * fit.bse.min())
    np.testing.assert_allclose(logit.loc[fit.params.index, "std err"], fit.bse, rtol=1e-5)
    for name in ("km", "corr", "chi2", "quantiles"):
        assert (out / f"{name}.csv").exists(), name


def check_ttest(out: Path, plain: pd.DataFrame) -> None:
    """The study's Welch t-tests (app users against non-users, per income band) equal
    scipy's on the same rows' ``outcome``."""
    from scipy import stats

    ttest = pd.read_csv(out / "ttest.csv", index_col=0)
    for band, row in ttest.dropna(subset=["t"]).iterrows():
        rows = plain[plain.income_band == band]
        users = rows.app_user.astype(bool)
        want = stats.ttest_ind(rows.outcome[~users].dropna(), rows.outcome[users].dropna(),
                               equal_var=False)
        np.testing.assert_allclose([row["t"], row["df"]], [want.statistic, want.df],
                                   rtol=1e-6)
    assert ttest["t"].notna().any()
