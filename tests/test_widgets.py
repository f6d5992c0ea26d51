"""Query specs and the query builder panel (no browser; real parties for the runs)."""

from __future__ import annotations

import copy
import dataclasses
import html
import importlib.util
import json
import re
import sys
import threading
import time

import ipywidgets as widgets
import pandas as pd
import pytest
import yaml
from oracle import assert_matches, expected, join
from test_expressions import CATALOG

import ppa_kernel
from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.progress import STAGES
from ppa_kernel.contract.errors import (
    ConsortiumError,
    ExportError,
    PlanError,
    PolicyRefused,
    PPAError,
)
from ppa_kernel.notebook import cell
from ppa_kernel.widgets import (
    QueryBuilder,
    QuerySpec,
    load_spec,
    run_spec,
    save_spec,
    spec_query,
    spec_to_code,
)
from ppa_kernel.widgets.panel import DEFAULT_EXPORT, RunCancelled
from ppa_kernel.widgets.spec import catalog_choices, combine_conditions, filter_condition

PARTIES = ["insurer", "hospital", "bureau"]
ALL_USES = ["filter", "group", "measure"]


class FakeConsortium:
    """The catalog side of a Consortium; runs go to ``runner`` (no parties)."""

    def __init__(self, catalog: dict, runner=None, min_cell: int = 10) -> None:
        self.names = list(catalog)
        self.catalog = catalog
        self.runner = runner
        self._min_cell = min_cell

    def min_cell_size(self) -> int:
        return self._min_cell

    def link(self, *parties: str) -> SecureFrame:
        return SecureFrame(self.catalog, self.names, list(parties) or self.names, self.runner)


class FailingRunner:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.timeouts: list = []

    def run(self, plan, *, timeout=None, progress=None):
        self.timeouts.append(timeout)
        raise self.error


class SlowRunner:
    """Reports party phases as the client does until released; a raising callback fails
    the run as the client's does (ConsortiumError); returns a one-cell table."""

    def __init__(self, phases=("policy check", "connect", "shuffle", "tags")) -> None:
        self.phases = list(phases)
        self.release = threading.Event()
        self.reported = threading.Event()

    def run(self, plan, *, timeout=None, progress=None):
        try:
            for phase in self.phases:
                for party in PARTIES:
                    progress(party, phase, 0.5)
            self.reported.set()
            while not self.release.wait(0.01):
                progress("insurer", "tags", 1.0)
        except PPAError as exc:
            raise ConsortiumError([exc]) from None
        table = pd.DataFrame({"n": [30]})
        table.attrs.update(plan=plan, statistics={"n": "size"},
                           suppressed=pd.DataFrame({"n": [False]}))
        return table


def with_uses(catalog: dict, uses: list[str] = ALL_USES) -> dict:
    out = copy.deepcopy(catalog)
    for columns in out.values():
        for meta in columns.values():
            meta["uses"] = list(uses)
    return out


@pytest.fixture
def fake() -> FakeConsortium:
    return FakeConsortium(with_uses(CATALOG))


def cell_plan(code: str, consortium) -> dict:
    first, body = code.split("\n", 1)
    assert first == "%%secure -o result"
    return cell.cell_query(body, consortium).plan()


# ----------------------------------------------------------------------------- specs
SPECS = [
    QuerySpec(),
    QuerySpec(outcome="cost_2021", statistic="sum"),
    QuerySpec(outcome="insurer.cost_2021", statistic="count", group_by=["region"]),
    QuerySpec(outcome="cost_2021 - cost_2020", statistic="mean",
              group_by=["income_band", "app_user"],
              cohort="insurer.age >= 40 and region in ['North', 'South']", min_cell_size=12),
    QuerySpec(parties=["insurer", "hospital"], outcome="visits / 2 + 1", statistic="std",
              cohort="not app_user or (visits > 2 and hospital.age < 80)"),
    QuerySpec(parties=["bureau"], group_by=["filter"], cohort="income_band != 'low'"),
    QuerySpec(outcome="-visits", statistic="var", cohort="app_user & ~(region == 'East')",
              min_cell_size=25),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_spec_code_builds_the_same_plan_as_spec_query(fake, spec):
    code = spec_to_code(spec)
    assert cell_plan(code, fake) == spec_query(spec, fake).plan()


def test_spec_query_plan(fake):
    spec = SPECS[3]
    t = fake.link()
    t = t.assign(change=t.cost_2021 - t.cost_2020)
    t = t[(t["insurer.age"] >= 40) & t.region.isin(["North", "South"])]
    want = (t.groupby(["income_band", "app_user"])
            .agg(n=("change", "count"), mean=("change", "mean")).with_min_cell_size(12))
    assert spec_query(spec, fake).plan() == want.plan()
    counted = spec_query(QuerySpec(group_by=["region"], statistic="mean"), fake).plan()
    assert counted["aggregates"] == [{"name": "n", "stat": "size", "expr": None}]
    only_count = spec_query(QuerySpec(outcome="visits", statistic="count"), fake).plan()
    assert [a["name"] for a in only_count["aggregates"]] == ["n"]


def test_spec_to_code_text():
    code = spec_to_code(SPECS[3], out="table")
    assert code.splitlines() == [
        "%%secure -o table",
        "t = link()",
        "t = t.assign(outcome=t.cost_2021 - t.cost_2020)",
        "t = t[(t['insurer.age'] >= 40) & t.region.isin(['North', 'South'])]",
        "(t.groupby(['income_band', 'app_user'])",
        " .agg(n=('outcome', 'count'), mean=('outcome', 'mean'))",
        " .with_min_cell_size(12))"]
    assert spec_to_code(QuerySpec(parties=["bureau"])).splitlines()[1:] == [
        "t = link('bureau')", "t.agg(n='size')"]
    with pytest.raises(PlanError, match="variable name"):
        spec_to_code(QuerySpec(), out="1x")


def test_unsafe_spec_text_is_refused_everywhere(fake):
    spec = QuerySpec(outcome="__import__('os').system('true')")
    with pytest.raises(PlanError, match="function calls"):
        spec_query(spec, fake)
    with pytest.raises(PlanError, match="function calls"):
        spec_to_code(spec)
    with pytest.raises(PlanError, match="subscripts"):
        spec_query(QuerySpec(cohort="visits[0] > 1"), fake)


def test_spec_dict_round_trip_and_papermill_values():
    for spec in SPECS:
        assert QuerySpec.from_dict(spec.to_dict()) == spec
        assert list(spec.to_dict()) == [f.name for f in dataclasses.fields(QuerySpec)]
    assert QuerySpec.from_dict({}) == QuerySpec()
    papermill = {"group_by": "income_band, app_user", "min_cell_size": "12",
                 "parties": ["insurer", "bureau"], "outcome": None}
    assert QuerySpec.from_dict(papermill) == QuerySpec(
        parties=["insurer", "bureau"], group_by=["income_band", "app_user"], min_cell_size=12)


@pytest.mark.parametrize(("data", "message"), [
    ({"outcome": "x", "groupby": ["a"], "timeout": 3},
     "unknown query spec key(s): groupby, timeout"),
    ({"statistic": "median"}, "unknown statistic 'median'"),
    ({"min_cell_size": 0}, "positive whole number"),
    ({"min_cell_size": True}, "positive whole number"),
    ({"group_by": [1, 2]}, "list of names"),
    ({"cohort": 3}, "must be text"),
    (["parties"], "must be a mapping"),
])
def test_spec_from_dict_refuses_bad_values(data, message):
    with pytest.raises(PlanError) as caught:
        QuerySpec.from_dict(data)
    assert message in str(caught.value)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_spec_files_round_trip(tmp_path, suffix):
    spec = SPECS[3]
    (tmp_path / "sub").mkdir()
    path = save_spec(spec, tmp_path / "sub" / f"query{suffix}")
    assert path.is_absolute() and path.exists()
    assert load_spec(path) == spec
    text = path.read_text()
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert data == spec.to_dict()  # the papermill parameters, by the same names


def test_spec_files_errors(tmp_path):
    with pytest.raises(PlanError, match=r"\.yaml, \.yml or \.json"):
        save_spec(QuerySpec(), tmp_path / "query.txt")
    (tmp_path / "bad.yaml").write_text("outcome: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")
    (tmp_path / "typo.yaml").write_text("outcome: cost_2021\nstatistics: mean\n")
    with pytest.raises(PlanError, match=r"unknown query spec key.*statistics"):
        load_spec(tmp_path / "typo.yaml")
    (tmp_path / "empty.yml").write_text("")
    assert load_spec(tmp_path / "empty.yml") == QuerySpec()
    with pytest.raises(ExportError, match=r"folder .*missing does not exist"):
        save_spec(QuerySpec(), tmp_path / "missing" / "query.yaml")
    assert not (tmp_path / "missing").exists()  # never created silently


# --------------------------------------------------------------------------- choices
POLICY_CATALOG = {
    "insurer": {
        "age": {"kind": "numeric", "min": 18.0, "max": 90.0, "uses": ["filter", "measure",
                                                                      "group"]},
        "cost": {"kind": "numeric", "min": 0.0, "max": 100.0, "uses": ["measure"]},
        "region": {"kind": "categorical", "levels": ["East", "North"], "uses": ["filter"]},
        "sex": {"kind": "categorical", "levels": ["F", "M"], "uses": ["group"]},
        "postcode": {"kind": "categorical", "levels": None, "uses": ALL_USES},
        "secret": {"kind": "numeric", "min": 0.0, "max": 1.0},  # no uses published
        "weird name": {"kind": "numeric", "min": 0.0, "max": 1.0, "uses": ALL_USES},
    },
    "hospital": {
        "age": {"kind": "numeric", "min": 0.0, "max": 99.0, "uses": ["filter"]},
        "app_user": {"kind": "bool", "levels": [False, True], "uses": ["group", "filter"]},
        "visits": {"kind": "numeric", "min": 0.0, "max": 50.0, "uses": []},
    },
}


def test_catalog_choices_follow_the_policies():
    choices = catalog_choices(POLICY_CATALOG, [])
    assert choices["filter"] == {
        "insurer.age": {"kind": "numeric", "min": 18.0, "max": 90.0},
        "region": {"kind": "categorical", "levels": ["East", "North"]},
        "hospital.age": {"kind": "numeric", "min": 0.0, "max": 99.0},
        "app_user": {"kind": "bool", "levels": [False, True]}}
    assert choices["group"] == {"sex": ["F", "M"], "app_user": [False, True]}
    assert choices["measure"] == ["insurer.age", "cost"]


def test_integer_codes_are_offered_as_groups_and_still_as_measures():
    catalog = copy.deepcopy(POLICY_CATALOG)
    catalog["hospital"]["daycare"] = {"kind": "numeric", "min": 0.0, "max": 1.0,
                                      "levels": [0, 1], "uses": ["group", "measure", "filter"]}
    choices = catalog_choices(catalog, ["hospital"])
    assert choices["group"]["daycare"] == [0, 1]
    assert "daycare" in choices["measure"]
    assert choices["filter"]["daycare"] == {"kind": "numeric", "min": 0.0, "max": 1.0}
    assert "age" not in choices["group"]  # numeric without published levels: not a group


def test_catalog_choices_qualify_only_ambiguous_names():
    insurer = catalog_choices(POLICY_CATALOG, ["insurer"])
    assert "age" in insurer["filter"] and insurer["measure"] == ["age", "cost"]
    hospital = catalog_choices(POLICY_CATALOG, ["hospital"])
    assert list(hospital["filter"]) == ["age", "app_user"] and hospital["measure"] == []
    with pytest.raises(PlanError, match="unknown parties nobody"):
        catalog_choices(POLICY_CATALOG, ["nobody"])


def test_filter_conditions():
    numeric = {"kind": "numeric", "min": 18.0, "max": 90.0}
    assert filter_condition("age", numeric, low=40.0, high=65.5) == "age >= 40 and age <= 65.5"
    assert filter_condition("age", numeric, low=None, high=65) == "age <= 65"
    levels = {"kind": "categorical", "levels": ["East", "North"]}
    assert filter_condition("region", levels, values=["North"]) == "region == 'North'"
    assert filter_condition("region", levels, values=("East", "North")) == \
        "region in ['East', 'North']"
    assert filter_condition("app_user", {"kind": "bool", "levels": [False, True]},
                            values=[True]) == "app_user == True"
    with pytest.raises(PlanError, match="at least one value"):
        filter_condition("region", levels, values=[])
    with pytest.raises(PlanError, match="not values"):
        filter_condition("region", levels, values=["West"])
    assert combine_conditions(["a > 1", "", "b or c", "not d"]) == "a > 1 and (b or c) and not d"
    assert combine_conditions(["b or c"]) == "b or c"
    assert combine_conditions([]) == ""


# ----------------------------------------------------------------------------- panel
def controls(builder: QueryBuilder) -> list[widgets.Widget]:
    found, todo = [], [builder.widget]
    while todo:
        widget = todo.pop()
        found.append(widget)
        todo.extend(getattr(widget, "children", ()))
    return found


def status_text(builder: QueryBuilder) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", builder.status.value))


def code_shown(builder: QueryBuilder) -> str:
    (pre,) = re.findall(r"<pre[^>]*>(.*?)</pre>", builder.code.value, flags=re.S)
    return html.unescape(pre)


def test_panel_labels_and_css_classes(fake):
    builder = QueryBuilder(fake)
    found = controls(builder)
    descriptions = {getattr(w, "description", "") for w in found}
    assert {"Parties", "Filter on", "Group by", "Outcome", "Statistic", "Run", "Cancel",
            "Show code", "Export", "Export to", "Min cell size", "or expression", "Add filter",
            "Clear filters"} <= descriptions
    classes = {c for w in found for c in w._dom_classes}
    assert {"ppa-query-builder", "ppa-parties", "ppa-filter-on", "ppa-group-by", "ppa-outcome",
            "ppa-statistic", "ppa-run", "ppa-cancel", "ppa-show-code", "ppa-export",
            "ppa-export-path", "ppa-status", "ppa-result", "ppa-code", "ppa-help",
            "ppa-group-order"} <= classes
    builder.filter_on.value = "region"  # a categorical filter shows its values
    assert found and builder.filter_values.description == "Values"
    for widget in found:  # every input control has a visible label
        if isinstance(widget, widgets.ValueWidget) and not isinstance(widget, widgets.HTML):
            assert widget.description, widget
    assert builder.min_cell_size.value == 10 and builder.export_path.value == DEFAULT_EXPORT


def test_panel_hints_are_visible_and_no_tooltip_is_null(fake):
    builder = QueryBuilder(fake)
    found = [*controls(builder), builder.filter_values, builder.filter_from,
             builder.filter_to]
    hints = [w.value for w in found if "ppa-help" in w._dom_classes]
    text = html.unescape(re.sub(r"<[^>]+>", "", " ".join(hints)))
    for words in ("Whose records are linked", "then Add filter", "the order you pick",
                  "rows counts the rows", "are suppressed", "in the background", "papermill"):
        assert words in text
    # ipywidgets renders a None tooltip as title="null" on the label
    assert [w for w in found if "tooltip" in w.traits() and w.tooltip is None] == []


def test_panel_empty_cohort_and_outcome_read_everyone_and_rows(fake):
    builder = QueryBuilder(fake)
    assert "everyone" in builder.filters.value
    assert (builder.outcome.label, builder.outcome.value) == ("rows", "")
    assert builder.statistic.disabled
    assert builder.spec().outcome == "" and builder.spec().cohort == ""
    builder.parties.value = ("insurer",)
    assert (builder.outcome.label, builder.outcome.value) == ("rows", "")
    builder.filter_on.value = "region"
    builder.filter_values.value = ("North",)
    builder.add_filter.click()
    builder.clear_filters.click()
    assert "everyone" in builder.filters.value and "everyone" in status_text(builder)


def test_panel_group_by_follows_the_pick_order(fake):
    builder = QueryBuilder(fake)
    assert list(builder.group_by.options) == ["region", "app_user", "income_band", "filter"]
    builder.group_by.value = ("income_band",)  # the front-end reports the options' order:
    builder.group_by.value = ("region", "income_band")  # then region is Ctrl-clicked
    assert builder.spec().group_by == ["income_band", "region"]
    assert "groupby(['income_band', 'region'])" in builder.show_code()
    groups = spec_query(builder.spec(), fake).plan()["groupby"]
    assert [g["name"] for g in groups] == ["income_band", "region"]
    order = html.unescape(re.sub(r"<[^>]+>", "", builder.group_order.value))
    assert "income_band → region" in order
    builder.group_by.value = ("region",)  # income_band unpicked, then picked again: last
    builder.group_by.value = ("region", "app_user", "income_band")
    assert builder.spec().group_by == ["region", "app_user", "income_band"]
    builder.set_spec(QuerySpec(group_by=["filter", "region"]))
    assert builder.spec().group_by == ["filter", "region"]


def test_panel_removing_a_party_removes_what_it_provided(fake):
    builder = QueryBuilder(fake)
    for name, values, low in (("hospital.age", (), 40.0), ("insurer.age", (), 30.0),
                              ("region", ("North",), None)):
        builder.filter_on.value = name
        if values:
            builder.filter_values.value = values
        else:
            builder.filter_from.value = low
        builder.add_filter.click()
    builder.group_by.value = ("region", "app_user")
    builder.outcome.value = "visits"
    builder.parties.value = ("insurer", "bureau")
    spec = builder.spec()
    assert spec.cohort == "age >= 30 and age <= 90 and region == 'North'"  # renamed, kept
    assert spec.group_by == ["region"] and spec.outcome == ""
    assert builder.outcome.label == "rows"
    note = status_text(builder)
    for removed in ("filter hospital.age >= 40 and hospital.age <= 99", "group by app_user",
                    "outcome visits"):
        assert removed in note
    spec_query(spec, fake)  # a plan, not a failing run
    builder.parties.value = ("insurer", "hospital")  # age is ambiguous again
    assert builder.spec().cohort.startswith("insurer.age >= 30 and insurer.age <= 90")
    builder.set_spec(QuerySpec(cohort="visits > 2", outcome="visits * 2"))
    builder.parties.value = ("insurer",)
    assert builder.spec().cohort == "" and builder.spec().outcome == ""
    assert "filter visits > 2" in status_text(builder)
    assert "outcome expression visits * 2" in status_text(builder)


def test_panel_controls_make_the_spec(fake):
    builder = QueryBuilder(fake)
    builder.parties.value = ("insurer", "bureau")
    assert "app_user" not in builder.group_by.options  # choices follow the parties
    assert "age" in builder.filter_on.options  # unique among insurer and bureau
    builder.filter_on.value = "region"
    assert builder.filter_values.label == () and builder.filter_values.value == ()
    assert [label for label, _ in builder.filter_values.options] == \
        ["Central", "East", "North", "South"]
    builder.filter_values.value = ("North", "South")
    builder.add_filter.click()
    builder.filter_on.value = "age"
    assert (builder.filter_from.value, builder.filter_to.value) == (18.0, 90.0)
    builder.filter_from.value = 40
    builder.add_filter.click()
    builder.group_by.value = ("income_band",)
    builder.outcome.value = "cost_2021"
    builder.statistic.value = "std"
    builder.min_cell_size.value = 15
    assert builder.spec() == QuerySpec(
        parties=["insurer", "bureau"], outcome="cost_2021", statistic="std",
        group_by=["income_band"], cohort="region in ['North', 'South'] and age >= 40 and "
                                         "age <= 90", min_cell_size=15)
    assert "age &gt;= 40" in builder.filters.value
    builder.outcome_expression.value = "cost_2021 - cost_2020"  # an expression wins
    assert builder.spec().outcome == "cost_2021 - cost_2020"
    builder.clear_filters.click()
    assert builder.spec().cohort == ""
    builder.outcome_expression.value = ""
    builder.outcome.value = ""
    assert builder.statistic.disabled and builder.spec().outcome == ""


def test_panel_set_spec_round_trip(fake):
    builder = QueryBuilder(fake)
    for spec in SPECS:
        spec = dataclasses.replace(spec, parties=spec.parties or list(fake.names),
                                   min_cell_size=spec.min_cell_size or 10)
        builder.set_spec(spec)
        assert builder.spec() == spec
    builder.set_spec(QuerySpec(parties=["bureau"], group_by=["bureau.filter"]))
    assert builder.spec().group_by == ["filter"]
    with pytest.raises(PlanError, match="cannot group by 'visits'"):
        builder.set_spec(QuerySpec(group_by=["visits"]))
    with pytest.raises(PlanError, match="unknown parties"):
        builder.set_spec(QuerySpec(parties=["nobody"]))


def test_panel_show_code_copy_and_insert(fake, monkeypatch):
    builder = QueryBuilder(fake)
    builder.set_spec(SPECS[3])
    builder.code_button.click()
    assert code_shown(builder) == spec_to_code(builder.spec())
    assert 'class="jupyter-button ppa-copy-code"' in builder.code.value
    assert "navigator.clipboard.writeText" in html.unescape(builder.code.value)
    layout = builder.widget.children
    assert layout.index(builder.code) < layout.index(builder.result_html) < \
        layout.index(builder.figure)  # the code shows above the table and plot
    inserted = []

    class Shell:
        def set_next_input(self, text, replace=True):
            inserted.append((text, replace))

    monkeypatch.setattr("IPython.get_ipython", lambda: Shell())
    assert builder.insert_code() == spec_to_code(builder.spec())
    assert inserted == [(spec_to_code(builder.spec()), False)]
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    with pytest.raises(PPAError, match="notebook kernel only"):
        builder.insert_code()


def test_panel_export_never_creates_folders_silently(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are in the kernel's working folder
    builder = QueryBuilder(fake)
    builder.set_spec(SPECS[3])
    assert builder.export_path.value == "ppa-exports/query.yaml"  # not beside the notebooks
    assert builder.create_button.layout.display == "none"
    builder.export_button.click()
    assert f"folder {tmp_path / 'ppa-exports'} does not exist" in status_text(builder)
    assert not (tmp_path / "ppa-exports").exists()
    assert builder.create_button.layout.display == ""  # offered, not done
    builder.create_button.click()
    assert load_spec(tmp_path / "ppa-exports" / "query.yaml") == builder.spec()
    assert "Exported to" in status_text(builder) and "-f" in status_text(builder)
    assert builder.create_button.layout.display == "none"
    builder.export_path.value = str(tmp_path / "a" / "b" / "q.json")
    with pytest.raises(ExportError, match="does not exist"):
        builder.export()
    assert not (tmp_path / "a").exists()
    assert builder.export(create_folder=True) == (tmp_path / "a" / "b" / "q.json").resolve()
    assert builder.export(tmp_path / "q.json") == (tmp_path / "q.json").resolve()


def test_panel_shows_errors_not_tracebacks(tmp_path):
    refusal = ConsortiumError([PolicyRefused("cost_2021 may not be grouped", party="bureau")])
    runner = FailingRunner(refusal)
    builder = QueryBuilder(FakeConsortium(with_uses(CATALOG), runner), timeout=42)
    builder.run_button.click()  # a click never raises
    builder.wait(10)
    assert "[bureau] cost_2021 may not be grouped" in status_text(builder)
    assert runner.timeouts == [42]  # runs never wait forever
    assert not builder.run_button.disabled and builder.result is None
    builder.outcome_expression.value = "cost_2021 - __import__('os')"
    for button in (builder.run_button, builder.code_button, builder.export_button):
        builder.status.value = ""
        button.click()  # a bad spec is refused at once, before any thread
        assert "not allowed in expressions: function calls" in status_text(builder)
        assert "Traceback" not in builder.status.value
    builder.outcome_expression.value = ""
    builder.export_path.value = str(tmp_path / "query.csv")
    builder.export_button.click()
    assert ".yaml, .yml or .json" in status_text(builder)
    assert not (tmp_path / "query.csv").exists()
    builder.filter_on.value = "region"
    builder.add_filter.click()  # no values chosen
    assert "choose at least one value of region" in status_text(builder)
    assert builder.spec().cohort == ""


def test_panel_unexpected_errors_are_shown_briefly(monkeypatch, fake):
    builder = QueryBuilder(fake)
    monkeypatch.setattr("ppa_kernel.widgets.panel.spec_to_code",
                        lambda spec: (_ for _ in ()).throw(KeyError("boom")))
    builder.code_button.click()
    assert "unexpected error (KeyError" in status_text(builder)


def test_panel_runs_in_the_background_with_shared_stage_names():
    runner = SlowRunner()
    builder = QueryBuilder(FakeConsortium(with_uses(CATALOG), runner))
    started = time.monotonic()
    builder.run_button.click()
    assert time.monotonic() - started < 1.0  # the click returns: the kernel is free
    assert runner.reported.wait(10) and builder.running
    assert builder.run_button.disabled and not builder.cancel_button.disabled
    line = status_text(builder)
    assert "Running under MPC" in line and "insurer input" in line  # after tags: input
    assert "shuffle" not in line and "tags" not in line  # the party's phases, mapped
    builder.run_button.click()  # Run is disabled in the page; a second start is refused
    assert builder.last_job.thread.is_alive()
    runner.release.set()
    builder.wait(10)
    assert builder.result is not None and "Released 1 of 1 cells" in status_text(builder)
    assert not builder.run_button.disabled and builder.cancel_button.disabled


def test_panel_cancel_discards_the_run():
    runner = SlowRunner()
    builder = QueryBuilder(FakeConsortium(with_uses(CATALOG), runner))
    job = builder.start()
    assert runner.reported.wait(10)
    builder.cancel_button.click()
    assert not builder.running and not builder.run_button.disabled
    assert "Run cancelled" in status_text(builder)
    builder.wait(10)  # the next progress report raised: the client stops the run
    assert isinstance(job.error, ConsortiumError) and job.result is None
    assert isinstance(job.error.errors[0], RunCancelled)
    assert builder.result is None and builder.result_html.value == ""
    assert "the parties stopped it" in status_text(builder)
    assert not builder.cancel()  # nothing runs any more


def test_query_builder_without_ipywidgets_names_the_extra(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "ppa_kernel.widgets.panel")
    with pytest.raises(PPAError) as caught:
        ppa_kernel.query_builder(fake)
    assert "needs ipywidgets" in str(caught.value)
    assert caught.value.hint.endswith("pip install 'ppa-workbench[notebook]'")
    with pytest.raises(PPAError, match="notebook extra"):
        ppa_kernel.widgets.QueryBuilder  # noqa: B018


# ------------------------------------------------------------------- real MPC runs
LINKED = ["insurer", "hospital", "bureau"]


@pytest.fixture(scope="module")
def panel_run(consortium):
    """One Run click at the real parties: change in cost by income band, for a cohort."""
    builder = QueryBuilder(consortium, timeout=120)
    builder.filter_on.value = "region"
    builder.filter_values.value = ("North", "South", "East")
    builder.add_filter.click()
    builder.filter_on.value = "age"
    builder.filter_from.value = 40
    builder.add_filter.click()
    builder.group_by.value = ("income_band",)
    builder.outcome_expression.value = "cost_2021 - cost_2020"
    builder.statistic.value = "mean"
    builder.statuses = []
    builder.status.observe(lambda change: builder.statuses.append(change["new"]), names="value")
    builder.run_button.click()
    builder.wait(150)
    return builder


def test_panel_run_reports_progress_by_the_shared_stage_names(panel_run):
    lines = [html.unescape(re.sub(r"<[^>]+>", "", s)) for s in panel_run.statuses]
    running = [line for line in lines if line.startswith("Running under MPC (")]
    assert running, lines
    for line in running:
        stages = re.findall(r"(?:insurer|hospital|bureau) ([a-z ]+?)(?:,| \.\.\.|;)", line)
        assert stages and set(stages) <= set(STAGES), line


def test_panel_cancel_stops_the_run_at_the_parties(consortium):
    builder = QueryBuilder(consortium, timeout=120)
    builder.group_by.value = ("income_band",)
    job = builder.start()
    assert builder.cancel()
    builder.wait(60)
    assert job.result is None and isinstance(job.error, ConsortiumError)
    assert any(isinstance(e, RunCancelled) for e in job.error.errors)
    assert "the parties stopped it" in status_text(builder)
    builder.outcome.value = "cost_2021"  # the parties run the next query as usual
    table = builder.run()
    assert table.index.name == "income_band" and builder.result is table


def test_panel_run_matches_pandas(panel_run, consortium, demo_data):
    builder = panel_run
    assert builder.spec().cohort == ("region in ['North', 'South', 'East'] and age >= 40 and "
                                     "age <= 90")
    result = builder.result
    assert result is not None, status_text(builder)
    plain = join(demo_data, LINKED)
    cohort = plain[plain.region.isin(["North", "South", "East"]) & (plain.age >= 40)
                   & (plain.age <= 90)]
    change = lambda r: r.cost_2021 - r.cost_2020  # noqa: E731
    want, mask = expected(cohort, ["income_band"],
                          [consortium.catalog["bureau"]["income_band"]["levels"]],
                          {"n": (change, "count"), "mean": (change, "mean")}, min_cell=10)
    assert_matches(result, want, mask)
    assert "Released" in status_text(builder)


def test_panel_run_shows_the_released_table(panel_run):
    builder = panel_run
    result, page = builder.result, builder.result_html.value
    mask = result.attrs["suppressed"]
    cells = re.findall(r"<td>(.*?)</td>", page, flags=re.S)
    shown = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]
    want = []
    for (_, row), (_, hidden) in zip(result.iterrows(), mask.iterrows(), strict=True):
        want.append("suppressed" if hidden["n"] else str(int(row["n"])))
        want.append("suppressed" if hidden["mean"] else str(round(row["mean"], 2)))
    assert shown == want
    assert page.count('class="ppa-suppressed"') == int(mask.to_numpy().sum())
    for level in result.index:
        assert f">{level}<" in page


@pytest.mark.skipif(importlib.util.find_spec("ppa_kernel.analyst.plotting") is None,
                    reason="ppa_kernel.analyst.plotting is not there yet")
def test_panel_run_shows_a_figure(panel_run):
    (output,) = panel_run.figure.outputs
    page = output["data"]["text/html"]
    assert page.startswith('<img src="data:image/png;base64,')
    assert 'alt="Chart of mean by income_band' in page


def test_run_spec_counts_rows(consortium, demo_data):
    spec = QuerySpec(parties=["insurer", "hospital"], group_by=["app_user"],
                     cohort="not (admissions_2020 > 0) or outpatient_visits >= 3",
                     min_cell_size=12)
    result = run_spec(spec, consortium, timeout=120, progress=False)
    plain = join(demo_data, ["insurer", "hospital"])
    keep = ~(plain.admissions_2020 > 0) | (plain.outpatient_visits >= 3)
    want, mask = expected(plain[keep], ["app_user"], [[False, True]], {"n": (None, "size")},
                          min_cell=12)
    assert_matches(result, want, mask)
    assert isinstance(result, pd.DataFrame) and result.attrs["plan"]["min_cell_size"] == 12
