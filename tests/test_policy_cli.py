"""Policies written for data owners: the commented policy `ppa init` writes, and
`ppa policy check`, which validates a party file's policy and says what it allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from ppa_kernel import cli
from ppa_kernel.analyst.local import write_local_config
from ppa_kernel.contract.identity import create_identity
from ppa_kernel.party.datasource import describe_columns
from ppa_kernel.party.policy import Policy, PolicyError
from ppa_kernel.party.policy_report import (
    check_policy_file,
    duration,
    render,
)
from ppa_kernel.party.policy_template import commented_policy

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS = ("min_cell_size", "statistics", "min_residual_df", "quantile_resolution",
            "integer_levels", "dominance_n", "dominance_k", "p_ratio", "differencing",
            "differencing_history")
APPROVAL = ("approval_wait", "approval_valid")


def frame(n: int = 60) -> pd.DataFrame:
    """A small table with every kind of column, and an identifier-like text column."""
    return pd.DataFrame({"pseudonym": [f"P{i:03d}" for i in range(n)],
                         "age": [20 + i % 50 for i in range(n)],
                         "sex": ["F", "M"] * (n // 2),
                         "smoker": [i % 3 == 0 for i in range(n)],
                         "cost": [100.0 + 7.5 * i for i in range(n)],
                         "email": [f"p{i}@example.org" for i in range(n)]})


@pytest.fixture(scope="module")
def described() -> dict[str, dict]:
    return describe_columns(frame(), "pseudonym")


def parsed(text: str) -> dict:
    return tomllib.loads(text)["policy"]


def policy_keys() -> list[str]:
    """The keys the policy parser accepts, as its unknown-key message lists them."""
    with pytest.raises(PolicyError) as info:
        Policy.from_dict("insurer", {"no_such_key": 1})
    return re.search(r"expected one of: ([^)]*)\)", info.value.reasons[0]).group(1).split(", ")


def readme_section() -> str:
    text = README.read_text()
    return text[text.index("## Writing a policy (for data owners)"):
                text.index("## How it works")]


# --- the commented policy --------------------------------------------------------------

def test_the_commented_policy_loads_with_every_key_at_its_default(described):
    text = commented_policy("insurer", "pseudonym", described)
    table = parsed(text)
    defaults = Policy("insurer", {})
    for key in SETTINGS:
        value = table[key]
        want = getattr(defaults, key)
        assert (set(value) == set(want)) if key == "statistics" else value == want, key
    policy = Policy.from_dict("insurer", table)
    assert policy.statistics == defaults.statistics
    for key in (*SETTINGS, "approval", *APPROVAL):  # each key has a one-line comment
        line = next(line for line in text.splitlines()
                    if line.lstrip("# ").startswith(f"{key} ="))
        assert "#" in line.lstrip("# ") or key == "statistics", line
    for mode in ("manual", "pinned"):
        assert f'# approval = "{mode}"' in text


def test_the_commented_policy_and_the_readme_name_every_key(described):
    text = commented_policy("insurer", "pseudonym", described)
    table = readme_section()
    for key in policy_keys():
        if key in ("columns", "quantile_precision"):
            assert f"[policy.{key}]" in text and f"`[policy.{key}]`" in table, key
        else:
            assert re.search(rf"^(# )?{key} = ", text, re.M), key
            assert re.search(rf"^\| (`\w+`, )?`{key}`", table, re.M), key
    for key in (*APPROVAL, "approval", "role", "ppa policy check", "ppa party reload",
                "kernel_started", "ppa review"):
        assert key in table, key


def test_the_readme_example_policy_loads():
    block = readme_section().split("```toml\n", 1)[1].split("```", 1)[0]
    table = parsed(block)
    assert set(table.pop("analysts")) == {"alice", "rob"}
    policy = Policy.from_dict("hospital", table)
    assert policy.columns["pseudonym"].uses == {"link"} and policy.min_residual_df == 20


def test_the_columns_get_uses_that_fit_their_kind(described):
    table = parsed(commented_policy("insurer", "pseudonym", described))
    assert table["columns"] == {"pseudonym": ["link"],
                                "age": ["filter", "group", "measure"],
                                "sex": ["filter", "group"],
                                "smoker": ["filter", "group", "measure"],
                                "cost": ["filter", "group", "measure"]}
    text = commented_policy("insurer", "pseudonym", described)
    assert '# email = ["filter"]' in text and "identifier" in text  # listed, not approved
    assert "# [policy.quantile_precision]" in text and "# [policy.analysts.rob]" in text


def test_the_approval_keys_are_live(described):
    table = parsed(commented_policy("insurer", "pseudonym", described))
    assert (table["approval"], table["approval_wait"], table["approval_valid"]) == \
        ("auto", 86400, 604800)
    assert '# approval = "manual"' in commented_policy("insurer", "pseudonym", described)


def test_a_compute_only_party_gets_an_empty_columns_table():
    table = parsed(commented_policy("helper", None, {}))
    assert table["columns"] == {} and Policy.from_dict("helper", table).columns == {}


def test_durations_in_words():
    assert [duration(s) for s in (86400, 604800, 7200, 5400, 45)] == \
        ["1 day", "7 days", "2 hours", "90 min", "45 s"]


# --- ppa policy check ------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory, described) -> Path:
    """Party files of a local consortium (no kernels), the insurer's with a reviewer."""
    folder = tmp_path_factory.mktemp("policies")
    data = frame()
    sources = {"insurer": data, "hospital": data[["pseudonym", "smoker"]],
               "bureau": data[["pseudonym", "sex"]]}
    policies = {"insurer": commented_policy("insurer", "pseudonym", described)}
    write_local_config(folder, sources, "pseudonym", policies)
    rob = create_identity(folder / "keys", "rob")
    with (folder / "insurer.toml").open("a") as fh:
        fh.write(f'\n[policy.analysts.rob]\nrole = "reviewer"\ncertificate = "keys/rob.crt"\n'
                 f'fingerprint = "{rob.fingerprint}"\n')
    return folder


def variant(folder: Path, name: str, old: str, new: str) -> Path:
    """A copy of the insurer's file (same folder, so its paths hold) with one edit."""
    text = (folder / "insurer.toml").read_text()
    assert old in text
    path = folder / f"{name}.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_valid_policy_is_described_in_plain_language(folder, capsys):
    assert cli.main(["policy", "check", str(folder / "insurer.toml")]) == 0
    out = capsys.readouterr().out
    rob = check_policy_file(folder / "insurer.toml").config.analysts["rob"]
    for phrase in ("the policy of insurer is valid", "(60 rows, 5 columns)",
                   "fewer than 10 rows", "Statistics allowed: count, sum, mean",
                   "histogram, cross-tabulation", "Not allowed: none",
                   "2 largest values could make up more than 90%", "within 10%",
                   "Differencing: on", "automatic: this policy's rules decide",
                   "approval_wait 1 day, approval_valid 7 days",
                   "sex        filter, group  (categorical)", "pseudonym  link  (the link column)",
                   "Not approved (not listed): email", f"rob      reviewer  {rob.pin.fingerprint}",
                   "1 reviewer(s)", "ppa party reload"):
        assert phrase in out, phrase


def test_a_policy_without_columns_approves_everything_and_says_so(folder, capsys):
    assert cli.main(["policy", "check", str(folder / "hospital.toml")]) == 0
    out = capsys.readouterr().out
    assert "EVERY column, for every use" in out and "smoker" in out


def test_an_invalid_policy_lists_every_problem_and_exits_1(folder, capsys):
    path = variant(folder, "broken", "min_cell_size = 10", "min_cel_size = 10")
    path.write_text(path.read_text()
                    .replace('statistics = ["count", ', 'statistics = ["count", "median", ', 1)
                    .replace("[policy.columns]\n", '[policy.columns]\nweight = ["measure"]\n'
                                                   'sex_code = ["fliter"]\n', 1))
    assert cli.main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    problems = ["unknown key 'policy.min_cel_size'", "unknown statistic 'median'",
                "'policy.columns.sex_code' has unknown use 'fliter'",
                "'policy.columns.weight' names no column of the data",
                "'policy.columns.sex_code' names no column of the data"]
    assert "INVALID (5 problems)" in err
    for phrase in problems:
        assert phrase in err, phrase


def test_a_quantile_precision_on_a_text_column_is_refused(folder):
    path = variant(folder, "precision", "\n[policy.analysts.rob]",
                   "\n[policy.quantile_precision]\nsex = 1\n[policy.analysts.rob]")
    assert check_policy_file(path).problems == [
        "'policy.quantile_precision.sex' names a categorical column (numeric only) "
        "(numeric columns: age, cost)"]


def test_manual_approval_without_a_reviewer_is_a_problem(folder):
    text = (folder / "insurer.toml").read_text()
    text = re.sub(r'^approval = "\w+"', 'approval = "manual"', text, count=1, flags=re.M)
    path = folder / "manual.toml"
    path.write_text(text[:text.index("\n[policy.analysts.rob]")])  # no reviewer left
    problems = check_policy_file(path).problems
    assert any("no plan could ever run" in p for p in problems), problems


def test_unreadable_data_is_a_warning_and_no_data_skips_it(folder, capsys):
    path = variant(folder, "nodata", "[policy.columns]\n", '[policy.columns]\nweight = []\n')
    result = check_policy_file(path, read_data=False)
    assert result.ok and "not read (--no-data)" in result.warnings[0]
    missing = variant(folder, "missing", "insurer.parquet", "gone.parquet")
    result = check_policy_file(missing)
    assert result.ok and "could not be read" in result.warnings[0]
    assert cli.main(["policy", "check", "--no-data", str(path)]) == 0
    assert "warning: the data was not read" in capsys.readouterr().out


def test_a_party_file_that_does_not_load_still_has_its_policy_checked(folder):
    path = variant(folder, "badrole", '\nrole = "reviewer"', '\nrole = "approver"')
    path.write_text(path.read_text().replace("[policy]\n", "[policy]\ncolour = 1\n", 1))
    result = check_policy_file(path)
    assert result.party == "insurer" and len(result.problems) == 2
    assert "unknown role 'approver'" in result.problems[0]
    assert "unknown key 'policy.colour'" in result.problems[1]
    assert "INVALID (2 problems)" in render(result)


def test_every_option_of_the_new_commands_has_help():
    parser = cli.parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    policy = next(a for a in commands["policy"]._actions if a.dest == "policy_command")
    for sub in (policy.choices["check"], commands["init"]):
        for action in sub._actions:
            assert action.help, (sub.prog, action.dest)
    assert policy.choices["check"].description


def test_a_statistics_list_without_the_shapes_is_warned_about(folder, capsys):
    text = (folder / "insurer.toml").read_text()
    written = re.search(r"^statistics = \[[^\]]*\]", text, re.M).group(0)
    path = variant(folder, "old_list", written, 'statistics = ["count", "sum", "mean"]')
    assert cli.main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: statistics allows count but not histogram or crosstab" in out
    assert "add 'histogram', 'crosstab'" in out
    # the full list (as `ppa init` writes it) draws no such warning
    assert cli.main(["policy", "check", str(folder / "insurer.toml")]) == 0
    assert "allows count but not" not in capsys.readouterr().out
