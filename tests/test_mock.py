"""Design mode: a mock consortium built from a real one's catalog snapshot."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.mock import (
    DEFAULT_ROWS,
    MIN_ROWS,
    check_snapshot,
    mock_data,
    mock_sizes,
    save_snapshot,
)
from ppa_kernel.analyst.results import (
    MOCK_CAPTION,
    MOCK_KEY,
    MOCK_RELEASE_KEY,
    RELEASE_KEY,
    format_html,
    format_table,
    is_mock,
    layout_table,
    released_plan,
)
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.bounds import coarse
from ppa_kernel.contract.config import ConfigError
from ppa_kernel.contract.errors import ConsortiumError, PlanError
from ppa_kernel.contract.models.corr import corr
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.party.catalog import build_catalog
from ppa_kernel.party.datasource import describe_columns, load_table
from ppa_kernel.party.policy import STATISTICS, Policy

ROWS = 200
SEED = 4
AGE_MISSING = 0.2
WITH_CROSSTAB = sorted(set(STATISTICS) - {"histogram"})
POLICIES = {
    "insurer": {"min_cell_size": 5, "statistics": WITH_CROSSTAB, "differencing": False,
                "columns": {"age": ["filter", "group", "measure"], "sex": ["filter", "group"],
                            "region": ["group"], "cost_2020": ["measure"],
                            "cost_2021": ["measure"]},
                "quantile_precision": {"cost_2021": 100}},
    "hospital": {"min_cell_size": 5, "statistics": WITH_CROSSTAB, "differencing": False,
                 "dominance_k": 80},
    "bureau": {"min_cell_size": 7, "statistics": WITH_CROSSTAB, "differencing": False,
               "columns": {"income_band": ["filter", "group"], "education": ["group"]}},
}


@pytest.fixture(scope="module")
def real_data():
    data = generate(n_core=150, seed=5, insurer_extra=0.6, bureau_extra=0.9,
                    hospital_extra=0.2)
    insurer = data["insurer"]
    gone = np.random.default_rng(1).random(len(insurer)) < AGE_MISSING
    insurer.loc[gone, "age"] = np.nan
    return data


@pytest.fixture(scope="module")
def real(real_data, tmp_path_factory):
    with Consortium.local(real_data, link="pseudonym", policies=POLICIES,
                          workdir=tmp_path_factory.mktemp("real")) as c:
        yield c


@pytest.fixture(scope="module")
def snapshot_file(real, tmp_path_factory):
    return save_snapshot(real.catalog_snapshot(), tmp_path_factory.mktemp("snap") / "snap.json")


@pytest.fixture(scope="module")
def mock(snapshot_file):
    with Consortium.mock(snapshot_file, rows=ROWS, seed=SEED) as c:
        yield c


def _published(entry: dict) -> dict:
    """What a catalog entry says of a column, without its missing share (coarse anyway)."""
    return {k: v for k, v in entry.items() if k not in ("missing_share", "note")}


def test_snapshot_is_json_and_has_what_a_mock_needs(real, snapshot_file):
    snap = json.loads(snapshot_file.read_text())
    assert check_snapshot(snap) == snap
    assert snap["names"] == real.names
    for name in real.names:
        info = snap["parties"][name]
        assert info["catalog"] == real.catalog[name]
        assert info["policy"] == real.parties[name]["policy"]
        assert info["holds_data"] is True
        rows = real.parties[name]["rows"]
        assert info["rows"] == rows if rows < 100 else abs(info["rows"] - rows) <= rows / 20
    assert "household" not in snap["parties"]["bureau"]["catalog"]  # not approved, not there
    assert real.catalog["insurer"]["age"]["missing_share"] == pytest.approx(AGE_MISSING, abs=0.05)


def test_mock_catalog_is_the_published_one(real, mock, real_data):
    assert mock.is_mock and not real.is_mock
    assert mock.names == real.names
    for name in real.names:
        assert set(mock.catalog[name]) == set(real.catalog[name])
        for column, entry in real.catalog[name].items():
            assert _published(mock.catalog[name][column]) == _published(entry), column
    assert mock.catalog_snapshot()["parties"] == json.loads(
        json.dumps(real.catalog_snapshot()))["parties"]


def test_mock_data_stays_inside_the_catalog_at_the_published_missing_share(real, mock):
    snap = mock.catalog_snapshot()
    tables, categorical = mock_data(snap, rows=ROWS, seed=SEED)
    sizes = {name: info["rows"] for name, info in mock.parties.items()}
    assert {name: len(t) for name, t in tables.items()} == sizes
    assert max(sizes.values()) == ROWS and min(sizes.values()) >= MIN_ROWS
    links = [set(t["pseudonym"]) for t in tables.values()]
    shared = set.intersection(*links)
    assert 0 < len(shared) < min(map(len, links))  # linked, but not everyone
    for name, table in tables.items():
        for column, entry in real.catalog[name].items():
            values = table[column].dropna()
            if entry["kind"] == "numeric":
                assert values.min() >= entry["min"] and values.max() <= entry["max"]
            else:
                assert set(values) == set(entry["levels"])
            share = table[column].isna().mean()
            assert abs(share - entry["missing_share"]) <= 1 / len(table) + 1e-9, column
            assert (share > 0) == entry["missing"], column
    age = tables["insurer"]["age"]
    assert age.isna().mean() == pytest.approx(AGE_MISSING, abs=0.03)
    assert categorical == {}


def test_a_plan_refused_by_a_real_policy_is_refused_by_the_mock(real, mock):
    def refusal(c, build):
        with pytest.raises(ConsortiumError) as caught:
            c.check(build(c.link()).plan())
        return sorted((e.party, type(e).__name__, e.message) for e in caught.value.errors)

    for build in (lambda t: t[t.region == "North"].agg(n=("cost_2021", "count")),  # use
                  lambda t: t.histogram("cost_2021", 4),  # statistic
                  lambda t: t.agg(n=("education", "count"))):  # a group-only column
        want = refusal(real, build)
        assert want and refusal(mock, build) == want


def test_a_mock_plan_hashes_like_the_real_one(real, mock):
    def digest(c):
        t = c.link()
        return plan_hash(c.prepare(t[t.age >= 40].groupby("income_band")
                                   .agg(n=("cost_2021", "count")).plan()))
    assert digest(mock) == digest(real)


def test_a_mock_result_is_marked_and_never_a_release(mock):
    t = mock.link()
    got = t.groupby("sex").agg(n=("cost_2021", "count"), mean=("cost_2021", "mean")).collect()
    assert got.attrs[MOCK_KEY] is True and is_mock(got)
    assert RELEASE_KEY not in got.attrs and got.attrs[MOCK_RELEASE_KEY]["mock"] is True
    assert got["n"].sum() > 0
    assert got.attrs["suppressed"].attrs[MOCK_KEY] is True
    html = format_html(got)
    assert MOCK_CAPTION in html and 'class="ppa-mock"' in html and "released by run" not in html
    assert format_table(got).splitlines()[0] == MOCK_CAPTION
    with pytest.raises(PlanError, match="mock result"):
        released_plan(got)
    assert released_plan(got, allow_mock=True) == got.attrs["plan"]
    forged = got.copy()  # a mock stamp moved to where a release's goes, the mark dropped
    forged.attrs = {k: v for k, v in got.attrs.items() if k not in (MOCK_KEY, MOCK_RELEASE_KEY)}
    forged.attrs[RELEASE_KEY] = {**got.attrs[MOCK_RELEASE_KEY], "mock": False}
    assert not is_mock(forged)
    with pytest.raises(PlanError, match="differs"):
        released_plan(forged)
    assert is_mock(got.round(1)) and is_mock(got[["n"]])  # pandas keeps the mark


def test_crosstab_model_and_plot_of_a_mock_are_marked(mock):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppa_kernel.analyst.plotting import MOCK_GID

    t = mock.link()
    table = t.crosstab("education", "sex").collect()
    assert table.attrs[MOCK_KEY] is True and MOCK_CAPTION in format_html(table)
    assert layout_table(table, table.attrs["plan"]).attrs[MOCK_KEY] is True
    model = corr(t, ["cost_2020", "cost_2021"]).collect()
    assert model.attrs[MOCK_KEY] is True and model.attrs["matrix"].attrs[MOCK_KEY] is True
    assert MOCK_CAPTION in format_html(model)
    ax = table.ppa.plot()
    try:
        assert ax.get_title().endswith("[MOCK: synthetic data]")
        assert any(a.get_gid() == MOCK_GID and a.get_text() == "MOCK" for a in ax.texts)
    finally:
        plt.close(ax.figure)


def test_a_mock_of_a_live_consortium_forces_automatic_approval(real, caplog):
    with caplog.at_level(logging.INFO, logger="ppa_kernel.analyst.mock"), \
            Consortium.mock(real, rows=120, seed=1) as c:
        assert {n: _published_all(c.catalog[n]) for n in c.names} == \
            {n: _published_all(real.catalog[n]) for n in real.names}
        assert all(info["policy"]["approval"] == "auto" for info in c.parties.values())
        assert max(info["rows"] for info in c.parties.values()) == 120
        folder = c.local_parties.folder
        assert folder.exists()
    assert not folder.exists()  # the mock's own folder goes when it closes
    assert "approves automatically (there is no reviewer)" in caplog.text


def _published_all(catalog: dict) -> dict:
    return {column: _published(entry) for column, entry in catalog.items()}


def test_generated_tables_reproduce_an_awkward_catalog(tmp_path):
    """Levels, int categories, bools with gaps, no levels, all missing, inexact bounds."""
    low, high = coarse(0.123456, False), coarse(9.87654, True)
    catalog = {
        "ward": {"kind": "categorical", "levels": [1, 2, 3], "missing": True,
                 "missing_share": 0.1},
        "flag": {"kind": "bool", "levels": [False, True], "missing": True,
                 "missing_share": 0.0},
        "code": {"kind": "categorical", "levels": None, "missing": False},
        "empty": {"kind": "numeric", "min": None, "max": None, "missing": True,
                  "missing_share": 1.0},
        "dose": {"kind": "numeric", "min": low, "max": high, "missing": False},
        "days": {"kind": "numeric", "min": 1.0, "max": 730.0, "missing": False},
        "text": {"kind": "categorical", "levels": ["a", "b"], "missing": True,
                 "missing_share": 0.3},
    }
    for entry in catalog.values():
        entry["uses"] = ["filter", "group", "measure"]
    snap = {"format": "ppa-catalog-snapshot/1", "names": ["a", "b", "c"],
            "parties": {"a": {"catalog": catalog, "policy": {}, "rows": 5000},
                        "b": {"catalog": {}, "policy": {}, "rows": 50},
                        "c": {"catalog": {}, "policy": {}, "rows": 0, "holds_data": False}}}
    check_snapshot(snap)
    assert mock_sizes(snap) == {"a": DEFAULT_ROWS, "b": 50}
    tables, categorical = mock_data(snap, rows=400, seed=3)
    assert tables["c"] is None and categorical == {"a": ["ward"]}
    frame = tables["a"]
    assert len(frame) == 400 and frame["days"].dtype.kind == "i"
    assert frame["dose"].min() >= low and frame["dose"].max() <= high
    frame.to_parquet(tmp_path / "a.parquet")  # as Consortium.local stores it
    frame = load_table(tmp_path / "a.parquet", link="pseudonym")
    described = describe_columns(frame, "pseudonym", categorical={"ward"})
    got = build_catalog(Policy.allow_all("a"), described, rows=len(frame))
    for column, entry in catalog.items():
        want = {k: v for k, v in entry.items() if k != "missing_share"}
        assert {k: v for k, v in got[column].items()
                if k not in ("missing_share", "min_precision")} == want, column
        assert got[column]["missing_share"] == pytest.approx(entry.get("missing_share", 0.0),
                                                             abs=0.05), column


def test_bad_snapshots_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="not a catalog snapshot"):
        check_snapshot({"names": []})
    with pytest.raises(ConfigError, match="no catalog snapshot"):
        Consortium.mock(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="consortium file, not a catalog snapshot"):
        Consortium.mock(tmp_path / "consortium.toml")
    with pytest.raises(ConfigError, match="rows must be"):
        mock_sizes({"parties": {}}, rows=0)


# ------------------------------------------------------------------------------ %ppa mock
@pytest.fixture(scope="module")
def shell(real):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ppa_kernel")
    folder = real.local_parties.folder
    ip.run_line_magic("ppa", f"connect {folder / 'consortium.toml'} "
                             f"--identity {folder / 'keys' / 'analyst'}")
    yield ip
    ip.run_line_magic("unload_ext", "ppa_kernel")


def test_ppa_mock_replaces_the_session_and_marks_everything(shell, real, capsys):
    shell.user_ns["snap"] = real.catalog_snapshot()
    assert shell.run_cell("%ppa mock snap --rows 150 --seed 2").success
    out = capsys.readouterr().out
    assert MOCK_CAPTION in out and "design mode" in out
    session = shell._ppa_session
    assert session.consortium.is_mock and "mock of snap" in session.source
    status = shell.run_cell("%ppa status").result
    assert status["mock"].all()
    shown = shell.display_formatter.format(status)[0]
    assert MOCK_CAPTION in shown["text/html"] and MOCK_CAPTION in shown["text/plain"]
    cell = shell.run_cell("%%secure -o got --progress off\n"
                          "t = link(insurer, hospital, bureau)\n"
                          "t.groupby('income_band').agg(n=('cost_2021', 'count'))")
    assert cell.success, cell.error_in_exec
    got = shell.user_ns["got"]
    assert got.attrs[MOCK_KEY] is True
    assert MOCK_CAPTION in shell.display_formatter.format(got)[0]["text/html"]
    assert shell.run_cell("%ppa mock --rows 120").success  # a mock of the current one
    assert session.source.startswith("mock of snap") and "seed 0" in session.source
    assert max(i["rows"] for i in session.consortium.parties.values()) == 120
    assert shell.run_cell("%ppa stop").success
    assert not shell.run_cell("%ppa mock").success  # nothing to mock
