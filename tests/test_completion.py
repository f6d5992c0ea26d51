"""Tab completion of %ppa and %%secure cells through IPython's completer, as Jupyter asks it
(``shell.Completer.completions(cell, cursor)``, the whole cell at once)."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")

from IPython.core.completer import provisionalcompleter
from IPython.core.interactiveshell import InteractiveShell

from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.analyst.progress import MODES
from ppa_kernel.notebook.completion import (
    MATCHER_ID,
    CellScope,
    chain_before,
    complete_body,
    scan,
)

PARTIES = ["insurer", "hospital", "bureau"]
LINKED = "%%secure\nt = link(insurer, bureau)\n"


def complete(shell, text: str, cursor: int | None = None) -> list[tuple[str, str, str]]:
    """(text, type, replaced text) of each completion at ``cursor`` (default: the end)."""
    cursor = len(text) if cursor is None else cursor
    with provisionalcompleter():
        found = list(shell.Completer.completions(text, cursor))
    return [(c.text, c.type, text[c.start:c.end]) for c in found]


def texts(shell, text: str) -> list[str]:
    return [t for t, _, _ in complete(shell, text)]


def columns(consortium, *parties: str) -> set[str]:
    return {c for p in parties for c in consortium.catalog[p]}


def test_ppa_subcommands_options_and_modes(shell):
    assert texts(shell, "%ppa st") == ["status", "stop"]
    assert texts(shell, "%ppa ") == ["demo", "connect", "mock", "status", "catalog",
                                     "progress", "stop"]
    assert texts(shell, "%ppa progress ") == sorted(MODES)
    assert texts(shell, "%ppa demo --r") == ["--rows"]
    assert texts(shell, "if not consortium_file:\n    %ppa demo --se") == ["--seed"]
    replaced = {r for _, _, r in complete(shell, "%ppa st")}
    assert replaced == {"st"}


def test_secure_options_and_their_values(shell):
    assert texts(shell, "%%secure --") == ["--out", "--timeout", "--show-plan", "--dry-run",
                                          "--progress"]
    assert texts(shell, "%%secure -o effect --dry-run --") == ["--timeout", "--show-plan",
                                                               "--progress"]
    assert texts(shell, "%%secure --progress t") == ["text"]


def test_party_names_bare_and_as_link_arguments(shell):
    assert texts(shell, "%%secure\nt = link(") == PARTIES
    assert texts(shell, "%%secure\nt = link(insurer, ho") == ["hospital"]
    assert texts(shell, "%%secure\nt = link('b") == ["bureau"]
    assert "hospital" in texts(shell, "%%secure\nt = hosp")


def test_columns_and_methods_after_a_dot(shell, consortium):
    found = complete(shell, LINKED + "t.")
    names = [t for t, _, _ in found]
    kinds = {t: k for t, k, _ in found}
    want = columns(consortium, "insurer", "bureau") - {"pseudonym"}
    assert want <= set(names)
    assert columns(consortium, "hospital").isdisjoint(set(names) - want)
    assert {"groupby", "agg", "assign", "histogram"} <= set(names)
    assert kinds["age"] == "column" and kinds["groupby"] == "method"
    assert names.index("age") < names.index("groupby")  # columns first
    assert texts(shell, LINKED + "t[t.ag") == ["age", "agg"]
    assert {r for _, _, r in complete(shell, LINKED + "t[t.ag")} == {"ag"}
    assert "app_user" in texts(shell, "%%secure\nhospital.")  # a party's own frame


def test_column_strings_in_subscripts_and_method_arguments(shell, consortium):
    insurer_bureau = columns(consortium, "insurer", "bureau")
    for text in (LINKED + 't["', LINKED + 't.groupby(["', LINKED + 't.groupby(["sex", "',
                 LINKED + 't.groupby("sex").agg(n=("', LINKED + "t.histogram('"):
        got = set(texts(shell, text))
        assert insurer_bureau - {"pseudonym"} <= got, text
        assert not got & (columns(consortium, "hospital") - insurer_bureau), text
    assert texts(shell, LINKED + 't.groupby(["inc') == ["income_band"]
    assert texts(shell, LINKED + 't.ols("cost_2021 ~ incom') == ["income_band"]


def test_levels_in_comparisons_and_isin(shell, consortium):
    bands = [str(b) for b in consortium.catalog["bureau"]["income_band"]["levels"]]
    assert sorted(texts(shell, LINKED + 't[t.income_band == "')) == sorted(bands)
    assert sorted(texts(shell, LINKED + "t[t['income_band'] != '")) == sorted(bands)
    assert sorted(texts(shell, LINKED + 't[t.income_band.isin(["')) == sorted(bands)
    regions = texts(shell, LINKED + 't[t.region.isin(["North", "')
    assert sorted(regions) == sorted(consortium.catalog["insurer"]["region"]["levels"])
    assert "age" not in texts(shell, LINKED + 't[t.age == "')  # a value, never a column


def test_assigned_names_and_chains_are_followed(shell):
    body = ("%%secure\nt = link(insurer, hospital)\n"
            "t = t.assign(cost_change=t.cost_2021 - t.cost_2020)\nusers = t[t.app_user]\n")
    assert "cost_change" in texts(shell, body + "users.")
    assert "cost_change" in texts(shell, body + 'users.groupby("sex").agg(m=("cost_c')
    grouped = texts(shell, body + "users.groupby('sex').")
    assert "agg" in grouped and "size" in grouped and "cost_change" not in grouped
    assert set(texts(shell, body + 't["hospital.app_')) == {"hospital.app_user",
                                                           "hospital.app_use_intensity"}


def test_nothing_runs_while_completing(shell):
    """Completion reads the cell; it never runs it (the cell would raise here)."""
    shell.user_ns.pop("ran", None)
    text = "%%secure\nran = 1\nt = link(insurer, bureau)\nt = t.assign(x=1 / 0)\nt."
    assert "age" in texts(shell, text)
    assert "ran" not in shell.user_ns


def test_other_cells_complete_as_before(shell):
    shell.user_ns["some_value_name"] = 1
    assert "some_value_name" in texts(shell, "some_value_na")
    assert texts(shell, "x = link(") != PARTIES  # not a %%secure cell


SHARED = {"a": {"age": {"kind": "numeric", "min": 0, "max": 99},
                 "sex": {"kind": "categorical", "levels": ["f", "m"]}},
          "b": {"age": {"kind": "numeric", "min": 0, "max": 99}, "user": {"kind": "bool"}}}


class SharedAge:
    """A consortium's catalog side whose parties both have ``age``."""

    def __init__(self) -> None:
        self.names = self.data_parties = list(SHARED)
        self.catalog = SHARED

    def link(self, *parties: str) -> SecureFrame:
        return SecureFrame(SHARED, self.names, list(parties) or self.names)


def test_secure_frames_complete_keys_and_attributes():
    t = SharedAge().link().assign(change=lambda f: f["a.age"] - f["b.age"])
    keys = t._ipython_key_completions_()
    assert keys == ["change", "sex", "user", "a.age", "a.sex", "b.age", "b.user"]
    for key in keys:
        t[key]  # every offered key resolves
    assert {"change", "sex", "user"} <= set(dir(t)) and "age" not in dir(t)


def test_a_column_at_two_parties_is_offered_qualified():
    scope = CellScope(SharedAge(), {})
    assert complete_body('t = link()\nt["', scope).names == ["sex", "user", "a.age", "b.age"]
    assert complete_body('t = link()\nt["a.', scope).names == ["a.age", "a.sex"]
    assert "age" not in complete_body("t = link()\nt.", scope).names


def test_unloading_removes_the_matcher():
    ip = InteractiveShell.instance()
    ids = lambda: [getattr(m, "matcher_identifier", None)  # noqa: E731
                   for m in ip.Completer.custom_matchers]
    assert ids().count(MATCHER_ID) == 1
    ip.run_line_magic("unload_ext", "ppa_kernel")
    try:
        assert MATCHER_ID not in ids()
    finally:
        ip.run_line_magic("load_ext", "ppa_kernel")
    assert ids().count(MATCHER_ID) == 1


@pytest.mark.parametrize(("text", "chain"), [
    ("t.groupby(", "t.groupby"),
    ("x = t[t.a > 1].groupby(['a']).agg(", "t[t.a > 1].groupby(['a']).agg"),
    ("f(a, t.b", "t.b"),
    ("n=(", ""),
    ("'a(b'.upper(", "'a(b'.upper"),
])
def test_chain_before_an_open_bracket(text, chain):
    state = scan(text)
    assert chain_before(state, len(text) - 1 if text.endswith("(") else len(text)) == chain
