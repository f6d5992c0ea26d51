"""The IPython extension: %ppa and %%secure in a real IPython shell against real parties."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from oracle import assert_matches, expected, join

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell

from ppa_kernel.analyst.results import format_html
from ppa_kernel.notebook.cell import cell_query

PARTIES = ["insurer", "hospital", "bureau"]
HEADLINE = """
t = link(insurer, hospital, bureau)
t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
t.groupby(["income_band", "app_user"]).agg(n=("cost_change", "count"),
                                           mean=("cost_change", "mean"))
"""


def run(shell, text: str):
    return shell.run_cell(text)


def test_secure_cell_releases_the_oracle_table_and_binds_it(shell, consortium, demo_data,
                                                           capsys):
    result = run(shell, "%%secure -o effect --progress text\n" + HEADLINE)
    assert result.success, result.error_in_exec
    got = shell.user_ns["effect"]
    assert result.result is got
    plain = join(demo_data, PARTIES)
    levels = consortium.catalog["bureau"]["income_band"]["levels"]
    change = lambda r: r.cost_2021 - r.cost_2020  # noqa: E731
    want, mask = expected(plain, ["income_band", "app_user"], [levels, [False, True]],
                          {"n": (change, "count"), "mean": (change, "mean")})
    assert_matches(got, want, mask)
    printed = capsys.readouterr().out
    assert "linkage" in printed and "secure run finished" in printed  # text progress
    html = shell.display_formatter.format(got)[0]["text/html"]
    assert html == format_html(got)
    if mask.to_numpy().any():
        assert "ppa-suppressed" in html


def test_default_name_and_a_single_party_frame(shell, demo_data):
    assert run(shell, "%%secure\ninsurer[insurer.age >= 40].agg(n=('cost_2021', 'count'))"
               ).success
    got = shell.user_ns["_secure"]
    ins = demo_data["insurer"]
    assert got["n"].iloc[0] == ins.loc[ins.age >= 40, "cost_2021"].notna().sum()


def test_show_plan_prints_the_plan_and_hash_the_parties_audit(shell, consortium, capsys):
    assert run(shell, "%%secure --show-plan --dry-run\n" + HEADLINE).success
    out = capsys.readouterr().out
    query = cell_query(HEADLINE, consortium)
    plan = consortium.prepare(query.plan())
    from ppa_kernel.contract.plan import plan_hash

    assert f"plan {plan_hash(plan)}" in out
    assert json.dumps(plan, indent=2) in out
    assert "dry run" in out and "nothing was computed" in out


def test_dry_run_computes_nothing(shell, consortium):
    shell.user_ns.pop("dry", None)
    audit = consortium.local_parties.folder / "state" / "insurer"
    before = _audit_events(audit)
    assert run(shell, "%%secure -o dry --dry-run\n" + HEADLINE).success
    assert "dry" not in shell.user_ns
    new = _audit_events(audit)[len(before):]
    assert [e["event"] for e in new] == ["plan_checked"]


STATISTICS = {
    "ttest": 't.ttest("cost_change", by="app_user", strata="income_band")',
    "chi2": 't.chi2("education", "app_user")',
    "corr": 't.corr(["cost_2020", "cost_2021", "age"])',
    "ols": 't.ols("cost_change ~ app_user * income_band + age")',
    "logit": 't.logit("readmitted ~ app_user + age")',
    "km": 't.kaplan_meier("followup_days", "readmitted", by="app_user")',
    "quantile": 't.quantiles("cost_2021", by="income_band")',
}


@pytest.mark.parametrize("kind", list(STATISTICS))
def test_every_statistic_compiles_in_a_secure_cell(shell, kind, capsys):
    """Each statistic is secure-frame code: the cell builds its plan and every party's
    policy accepts it (a dry run computes nothing)."""
    body = [*HEADLINE.strip().splitlines()[:2], STATISTICS[kind]]
    assert run(shell, "%%secure --dry-run --show-plan\n" + "\n".join(body)).success
    assert f'"kind": "{kind}"' in capsys.readouterr().out


def test_logistic_regression_in_a_secure_cell(shell, demo_data):
    import statsmodels.formula.api as smf

    body = "t = link(insurer, hospital, bureau)\nt.logit('readmitted ~ app_user + age')"
    assert run(shell, "%%secure -o fit\n" + body).success
    got = shell.user_ns["fit"]
    plain = join(demo_data, PARTIES)
    want = smf.logit("readmitted ~ app_user + age",
                     data=plain.assign(readmitted=plain.readmitted.astype(int))).fit(disp=0)
    pd.testing.assert_series_equal(got["coef"], want.params, check_names=False, rtol=1e-6)
    pd.testing.assert_series_equal(got["std err"], want.bse, check_names=False, rtol=1e-6)


def _audit_events(folder) -> list[dict]:
    files = sorted(folder.glob("**/*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line]


@pytest.mark.parametrize(("body", "needle"), [
    ("t = link()\nt.agg(n=('no_such_column', 'count'))", "unknown column 'no_such_column'"),
    ("t = link()\nt.groupby('income_band')", "no aggregate"),
    ("t = link()", "must end with a query"),
    ("t = link(\n", "syntax error"),
    ("link('nowhere').count()", "unknown parties"),
])
def test_user_mistakes_are_one_clear_line_without_traceback(shell, capsys, body, needle):
    result = run(shell, "%%secure\n" + body)
    assert not result.success
    out = capsys.readouterr()
    text = out.out + out.err
    assert needle in text
    assert "Traceback" not in text


@pytest.mark.parametrize(("body", "line", "needles"), [
    ("t = link(insurer, hospitel)\nt.count()", 2,
     ["name 'hospitel' is not defined", "did you mean hospital?"]),
    ("t = link(insurer, hospital)\nt[t.agee >= 40].count()", 3,
     ["no column or method 'agee'", "did you mean age?"]),
    ("t = link(insurer, hospital)\nt.groupby('sex').agg(m=('cost_2021', 'mean')).mena()", 3,
     ["Query has no attribute 'mena'"]),
    ("t = link()\nt.groupbye('sex').size()", 3, ["did you mean groupby?"]),
    ("t = link()\ng = t.groupby('sex')\ng.mena('age')", 4, ["did you mean mean?"]),
    ("t = link()\nt[cost_2021 > 0].count()", 3,
     ["name 'cost_2021' is not defined", "cost_2021 is a column of insurer"]),
    ("t = link(insurer)\nt[t.app_user].count()", 3,
     ["'app_user' belongs to hospital", "include hospital in link"]),
    ("t = link()\nt.groupby()", 3, ["TypeError", "missing 1 required positional argument"]),
    ("bands = {}\nt = link()\nt.groupby(bands['x']).size()", 4, ["KeyError: 'x'"]),
    ("t = link('hospitel')\nt.count()", 2, ["unknown parties", "did you mean hospital?"]),
    ("t = link()\n\nt.agg(n=('agee', 'count'))", 4, ["unknown column 'agee'", "age"]),
])
def test_cell_mistakes_name_their_line_and_a_suggestion(shell, capsys, body, line, needles):
    """Slips in the cell's own code are one line, no traceback, naming the cell's line
    (the %%secure line is line 1) and, where one is close, the name meant."""
    result = run(shell, "%%secure\n" + body)
    assert not result.success
    text = "".join(capsys.readouterr())
    lines = [t for t in text.splitlines() if t.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith(f"analyst: PlanError: line {line}: "), lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in text and "NameError" not in text


def test_a_bug_inside_a_called_function_keeps_its_traceback(shell, capsys):
    """Only the cell's own slips are shortened: an error raised inside a function the
    cell calls shows its traceback, down to the function's line."""
    run(shell, "def cohort(t):\n    return t[t.age >= undefined_limit]")
    capsys.readouterr()
    result = run(shell, "%%secure\nt = link()\ncohort(t).count()")
    assert not result.success
    assert isinstance(result.error_in_exec, NameError)
    text = "".join(capsys.readouterr())
    assert "Traceback" in text and "undefined_limit" in text
    assert "cohort(t).count()" in text  # the cell's own line, shown in the traceback


@pytest.mark.parametrize(("cell", "needle"), [
    ("%%secure --bogus\nt", "unrecognized arguments: --bogus"),
    ("%%secure -o 1x\nt", "-o needs a variable name"),
    ("%%secure --timeout -1\nt", "--timeout must be a positive"),
    ("%ppa connect", "usage: %ppa connect"),
    ("%ppa status extra", "takes no argument"),
    ("%ppa frobnicate", "invalid choice"),
])
def test_usage_errors_are_one_line(shell, capsys, cell, needle):
    result = run(shell, cell)
    assert not result.success
    text = "".join(capsys.readouterr())
    assert "UsageError" in text and needle in text
    assert "Traceback" not in text


def test_errors_from_several_parties_are_shown_per_party():
    from ppa_kernel.contract.errors import ConsortiumError, PolicyRefused
    from ppa_kernel.notebook.magics import error_lines

    error = ConsortiumError([
        PolicyRefused("column 'age' is not approved by insurer", party="insurer"),
        PolicyRefused("statistic 'var' is not allowed by bureau", party="bureau",
                      hint="ask the bureau"),
    ])
    lines = error_lines(error)
    assert lines[0] == "secure run failed:"
    assert lines[1].strip().startswith("insurer: PolicyRefused: column 'age'")
    assert lines[2].strip().startswith("bureau: PolicyRefused: statistic 'var'")
    assert "hint: ask the bureau" in lines[2]


def test_status_and_catalog(shell, consortium):
    status = shell.run_line_magic("ppa", "status")
    assert list(status.index) == PARTIES
    assert status["reachable"].all()
    assert status.loc["insurer", "rows"] == consortium.parties["insurer"]["rows"]
    catalog = shell.run_line_magic("ppa", "catalog")
    assert set(catalog["party"]) == set(PARTIES)
    assert {"column", "kind", "levels or range", "uses"} <= set(catalog.columns)


def test_not_connected_says_what_to_do(capsys):
    ip = InteractiveShell.instance()
    session = ip._ppa_session
    saved, session.consortium = session.consortium, None
    try:
        result = ip.run_cell("%%secure\nt = link()\nt.count()")
        assert not result.success
        text = "".join(capsys.readouterr())
        assert "%ppa demo" in text
    finally:
        session.consortium = saved


def test_plain_dataframes_keep_pandas_display(shell):
    frame = pd.DataFrame({"a": [1, 2]})
    html = shell.display_formatter.format(frame)[0]["text/html"]
    assert html == frame._repr_html_()
