"""Exports for output checkers: results.json's fields, outcome against the suppression mask,
checksums, CSV round trips, refusals, mock results, and Consortium.export."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from ppa_kernel.analyst import export as export_module
from ppa_kernel.analyst.results import reason_text, stamp_mock
from ppa_kernel.contract.errors import ExportError

OUTPUT_FIELDS = {"uid", "status", "type", "properties", "files", "outcome", "plan", "plan_hash",
                 "summary", "timestamp", "comments"}
PROPERTIES = {"plan_hash", "run_id", "statistics", "min_cell_size", "disclosure", "parties",
              "mock", "cells", "suppressed_cells"}


@pytest.fixture(scope="module")
def released(consortium):
    """A grouped table and a crosstab with suppressed cells, a histogram and a regression."""
    t = consortium.link()
    table = (t.groupby(["region", "app_user"])
             .agg(n=("cost_2021", "count"), mean=("cost_2021", "mean"))
             .with_min_cell_size(20).collect(progress=False))
    regions = t.crosstab("region", "app_user").with_min_cell_size(20).collect(progress=False)
    ages = t.histogram("age", [18, 30, 45, 60, 75, 90]).collect(progress=False)
    fit = t.ols("cost_2021 ~ app_user + age").collect(progress=False)
    return {"effect": table, "regions": regions, "ages": ages, "fit": fit}


@pytest.fixture(scope="module")
def exported(consortium, released, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports") / "request-1"
    written = consortium.export(folder, released,
                                comments={"effect": "cost by region", "fit": ["a", "b"]})
    return written, json.loads((folder / "results.json").read_text())


def read_csv(path: Path, n_index: int) -> pd.DataFrame:
    return pd.read_csv(path, index_col=list(range(n_index)))


def expected_outcome(frame: pd.DataFrame) -> list[list[str]]:
    """'released' or the reason, as the result's own mask and reasons say."""
    mask, reasons = frame.attrs["suppressed"], frame.attrs.get("reasons")
    k = frame.attrs["plan"]["min_cell_size"]
    if reasons is not None and reasons.shape != frame.shape:  # a crosstab: reasons by cell
        assert set(reasons.iloc[:, 0].dropna()) == {"minimum size"}
        reasons = pd.DataFrame("minimum size", index=frame.index, columns=frame.columns)
    return [[reason_text(reasons.iat[i, j] if reasons is not None else "disclosure control", k)
             if mask.iat[i, j] else "released" for j in range(frame.shape[1])]
            for i in range(frame.shape[0])]


def test_results_json_has_every_field_per_output(exported, released):
    folder, document = exported
    assert document["mock"] is False and document["version"].startswith("ppa-workbench ")
    assert list(document["results"]) == ["effect", "regions", "ages", "fit"]
    for name, record in document["results"].items():
        frame = released[name]
        assert OUTPUT_FIELDS <= set(record), name
        assert record["uid"] == name
        assert PROPERTIES <= set(record["properties"]), name
        props = record["properties"]
        assert record["plan"] == frame.attrs["plan"]
        assert record["plan_hash"] == props["plan_hash"] == frame.attrs["plan_hash"]
        assert props["run_id"] == frame.attrs["run_id"] and props["mock"] is False
        assert props["min_cell_size"] == frame.attrs["plan"]["min_cell_size"]
        assert props["disclosure"] == frame.attrs["plan"]["disclosure"]
        assert props["parties"] == ["insurer", "hospital", "bureau"]
        datetime.fromisoformat(record["timestamp"])
        suppressed = int(frame.attrs["suppressed"].to_numpy().sum())
        assert record["status"] == ("review" if suppressed else "pass")
        assert props["cells"] == frame.size and props["suppressed_cells"] == suppressed
        for entry in record["files"]:
            assert (folder / entry["name"]).is_file()
            assert entry["sdc"]["summary"]["suppressed"] is bool(suppressed)
    effect, regions, ages, fit = (document["results"][n]
                                  for n in ("effect", "regions", "ages", "fit"))
    assert [effect["type"], regions["type"], ages["type"], fit["type"]] == \
        ["table", "table", "histogram", "regression"]
    assert regions["properties"]["method"] == "crosstab"
    assert [f["name"] for f in effect["files"]] == ["effect.csv", "effect.png"]
    assert [f["name"] for f in ages["files"]] == ["ages.csv", "ages.png"]
    assert [f["name"] for f in fit["files"]] == ["fit.csv"]  # no figure for a regression
    assert (folder / "effect.png").stat().st_size > 10_000
    assert effect["properties"]["statistics"] == {"n": "count", "mean": "mean"}
    assert fit["properties"]["details"]["formula"] == "cost_2021 ~ app_user + age"
    assert fit["properties"]["details"]["n"] == released["fit"].attrs["n"]
    assert "receipt" not in fit["properties"]["details"]  # run facts, not model details
    assert set(effect["properties"]["approvers"]) == {"insurer", "hospital", "bureau"}
    assert effect["properties"]["receipt"] == released["effect"].attrs["receipt"]
    assert effect["comments"] == ["cost by region"] and fit["comments"] == ["a", "b"]
    assert ages["comments"] == []


def test_outcome_marks_exactly_the_suppressed_cells(exported, released):
    _, document = exported
    effect = released["effect"]
    assert effect.attrs["suppressed"].to_numpy().any(), "the test needs suppressed cells"
    assert not effect.attrs["suppressed"].to_numpy().all()
    assert released["regions"].attrs["suppressed"].to_numpy().any()
    for name, frame in released.items():
        outcome = document["results"][name]["outcome"]
        assert outcome["columns"] == list(frame.columns)
        assert len(outcome["index"]) == len(frame.index)
        assert outcome["data"] == expected_outcome(frame), name
    record = document["results"]["effect"]
    counts = pd.Series(np.array(expected_outcome(effect)).reshape(-1)).value_counts()
    counts = counts.drop("released")
    why = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    assert record["summary"] == (f"review; {counts.sum()} of {effect.size} cells suppressed "
                                 f"({why})")
    assert "fewer than 20 rows" in counts
    cells = record["files"][0]["sdc"]["cells"]
    assert sorted(tuple(c) for cs in cells.values() for c in cs) == \
        sorted(zip(*np.nonzero(effect.attrs["suppressed"].to_numpy()), strict=True))
    assert document["results"]["fit"]["summary"].startswith("pass; all ")


def test_checksums_match_every_written_file(exported):
    folder, _ = exported
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert "results.json" in files and "effect.csv" in files
    sums = sorted(p.name for p in (folder / "checksums").iterdir())
    assert sums == [f"{name}.txt" for name in files]
    for name in files:
        digest = (folder / "checksums" / f"{name}.txt").read_text()
        assert digest == hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_csv_round_trips_the_released_values_with_integer_counts(exported, released):
    folder, _ = exported
    effect = released["effect"]
    back = read_csv(folder / "effect.csv", 2)
    assert list(back.columns) == list(effect.columns)
    np.testing.assert_array_equal(back.to_numpy(float), effect.to_numpy(float))  # NaN too
    assert [tuple(map(str, i)) for i in back.index] == [tuple(map(str, i)) for i in effect.index]
    counts = [line.split(",")[2] for line in (folder / "effect.csv").read_text().splitlines()[1:]]
    assert all(re.fullmatch(r"\d*", c) for c in counts), counts  # 548, never 548.0
    ages = read_csv(folder / "ages.csv", 1)
    np.testing.assert_array_equal(ages["count"].to_numpy(float),
                                  released["ages"]["count"].to_numpy(float))
    assert ".0" not in (folder / "ages.csv").read_text().split("\n", 1)[1].replace(", ", "")
    regions = read_csv(folder / "regions.csv", 1)
    np.testing.assert_array_equal(regions.to_numpy(float), released["regions"].to_numpy(float))
    assert "." not in (folder / "regions.csv").read_text()  # a crosstab's cells are counts
    fit = read_csv(folder / "fit.csv", 1)
    np.testing.assert_allclose(fit.to_numpy(float), released["fit"].to_numpy(float),
                               rtol=1e-15)


def test_refuses_an_existing_folder_and_a_missing_parent(released, tmp_path):
    table = released["effect"]
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists; not writing into it") as info:
        table.ppa.export(existing)
    assert info.value.hint and "new folder" in info.value.hint
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    missing = tmp_path / "no" / "such" / "export"
    with pytest.raises(ExportError, match="does not exist; not creating it") as info:
        table.ppa.export(missing)
    assert info.value.hint and not (tmp_path / "no").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_failure_midway_leaves_nothing(released, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_write_checksums", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_module.export(tmp_path / "out", released)
    assert list(tmp_path.iterdir()) == []


def test_anything_marked_mock_fails_even_with_a_real_stamp(released, tmp_path):
    marked = released["effect"].copy()
    marked.attrs["mock"] = True
    folder = marked.ppa.export(tmp_path / "marked")
    record = json.loads((folder / "results.json").read_text())["results"]["output_0"]
    assert record["status"] == "fail" and record["summary"].startswith("MOCK")


def test_a_mock_result_fails_and_says_so_everywhere(released, tmp_path):
    mock = stamp_mock(released["effect"].copy(), "0123456789abcdef")
    folder = mock.ppa.export(tmp_path / "mock", comments="design mode")
    document = json.loads((folder / "results.json").read_text())
    assert document["mock"] is True
    record = document["results"]["output_0"]
    assert record["status"] == "fail" and record["properties"]["mock"] is True
    assert record["properties"]["run_id"] == "0123456789abcdef"  # from the mock's own stamp
    assert record["summary"].startswith("MOCK (synthetic data, not a release)")
    assert record["comments"] == ["design mode"]
    names = [f["name"] for f in record["files"]]
    assert names == ["output_0-MOCK.csv", "output_0-MOCK.png"]
    lines = (folder / "output_0-MOCK.csv").read_text().splitlines()
    assert lines[0].startswith("# MOCK") and lines[1].startswith("region,app_user,")
    assert "released" not in {cell for row in record["outcome"]["data"] for cell in row}
    assert sorted(p.name for p in folder.iterdir()) == \
        ["checksums", "output_0-MOCK.csv", "output_0-MOCK.png", "results.json"]


def test_unreleased_or_edited_tables_fail(released, tmp_path):
    edited = released["effect"].copy()
    edited.iloc[0, 0] = 1.0
    raw = pd.DataFrame({"n": [5, 7]})
    folder = export_module.export(tmp_path / "bad", {"edited": edited, "raw": raw})
    results = json.loads((folder / "results.json").read_text())["results"]
    assert results["edited"]["status"] == results["raw"]["status"] == "fail"
    assert results["edited"]["summary"] == \
        "fail; the table differs from what the parties released"
    assert results["raw"]["summary"] == "fail; not a released result (no release stamp)"
    assert [f["name"] for f in results["edited"]["files"]] == ["edited.csv"]  # no figure
    assert results["raw"]["plan"] is None


def test_consortium_export_names_a_list_by_position(consortium, released, tmp_path):
    folder = consortium.export(tmp_path / "list", [released["ages"], released["fit"]])
    document = json.loads((folder / "results.json").read_text())
    assert list(document["results"]) == ["output_0", "output_1"]
    assert (folder / "output_0.csv").exists() and (folder / "output_1.csv").exists()
    assert document["results"]["output_1"]["type"] == "regression"


@pytest.mark.parametrize(("results", "comments", "match"), [
    ({"a b": None}, None, "cannot name"),
    ({"x.y": None}, None, "cannot name"),
    ({"a": None}, None, "not a table"),
    ({}, None, "nothing to export"),
    ("effect", None, "cannot export str"),
    ({"A": "t", "a": "t"}, None, "would share files"),
    ({"ok": "t"}, {"other": "note"}, "unknown outputs"),
    ({"ok": "t"}, 3, "text or a list"),
])
def test_bad_names_and_comments_are_refused(released, tmp_path, results, comments, match):
    if isinstance(results, dict):
        results = {k: released["ages"] if v == "t" else v for k, v in results.items()}
    with pytest.raises(ExportError, match=match):
        export_module.export(tmp_path / "out", results, comments=comments)
    assert list(tmp_path.iterdir()) == []
