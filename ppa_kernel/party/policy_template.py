"""A commented ``[policy]`` table for a party's file, written for the data owner who edits it.

:func:`commented_policy` lists every key with its default and a one-line comment, and one
line per column of the party's data with uses that fit its kind. ``ppa init`` writes one
per party; the README's "Writing a policy" section explains each key at length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from ppa_kernel.contract.bounds import coarse

from .policy import STATISTICS, Policy
from .policy_report import duration

_WIDTH = 36
"""Column at which a line's comment starts."""

KIND_USES = {"numeric": ["filter", "group", "measure"], "bool": ["filter", "group", "measure"],
             "categorical": ["filter", "group"]}
"""The uses a generated policy approves for a column of each kind: groups of a numeric
column are bins (or its whole numbers, see ``integer_levels``); the mean of a true/false
column is a share; text is never a measure."""



def commented_policy(party: str, link: str | None, described: Mapping[str, dict]) -> str:
    """The ``[policy]`` table for ``party``: every key at its default, and ``[policy.columns]``
    with the ``link`` column and the ``described`` columns (from
    :func:`~ppa_kernel.party.datasource.describe_columns`; both empty for a compute-only
    party). Ends with a note on the ``[policy.analysts.NAME]`` tables that follow it."""
    defaults = Policy(party, {})
    wait, valid = defaults.approval_wait, defaults.approval_valid
    statistics = [s for s in STATISTICS if s in defaults.statistics]
    others = [s for s in STATISTICS if s not in defaults.statistics]
    lines = [
        "",
        f"# Policy of {party}: what analysts may do with this party's data. The kernel checks",
        "# every plan against it and refuses one that breaks any rule, naming each problem.",
        "# After an edit, run `ppa policy check` on this file, then `ppa party reload` it (no",
        "# restart; the analysts' tables need one). Every key is explained in the README",
        '# ("Writing a policy"); an unknown key is an error, so typos are caught.',
        "[policy]",
        _line(f"min_cell_size = {defaults.min_cell_size}",
              "fewest rows a released cell may describe"),
        "# the statistics analysts may compute"
        + (f" (also possible: {', '.join(json.dumps(s) for s in others)})" if others else ""),
        *_wrapped("statistics = ", statistics),
        _line(f"min_residual_df = {defaults.min_residual_df}",
              "a regression needs this many rows more than coefficients"),
        _line(f"quantile_resolution = {defaults.quantile_resolution}",
              "quantiles no finer than a column's range / this"),
        _line(f"integer_levels = {defaults.integer_levels}",
              "group whole numbers spanning at most this many as they are"),
        _line(f"dominance_n = {defaults.dominance_n}",
              "suppress a sum or mean when its dominance_n largest values"),
        _line(f"dominance_k = {defaults.dominance_k}",
              "could make up more than dominance_k % of the cell's total"),
        _line(f"p_ratio = {defaults.p_ratio}",
              "or the others could be estimated to within p_ratio %"),
        _line(f"differencing = {str(defaults.differencing).lower()}",
              "suppress cells a few rows away from an earlier release"),
        _line(f"differencing_history = {defaults.differencing_history}",
              "released row sets kept per data epoch for that rule"),
        *_approval_lines(wait, valid),
        "",
        "[policy.columns]",
        "# One line per column analysts may use; a column not listed may not be used at all.",
        '# Uses: "link" matches rows across parties, "filter" keeps rows by a condition,',
        '# "group" splits results by its values (numbers in bins, small whole-number ranges',
        '# as they are), "measure" computes statistics.',
    ]
    columns = [] if link is None else [(f"{_key(link)} = [\"link\"]",
                                        "the link column: for matching only")]
    if link is None and not described:
        lines.append("# (a compute-only party holds no columns: the table stays empty)")
    for name, meta in described.items():
        uses = KIND_USES.get(meta["kind"])
        if uses is None or (meta["kind"] == "categorical" and meta.get("levels") is None):
            columns.append((f"# {_key(name)} = [\"filter\"]",
                            "many distinct values, like an identifier: not approved"))
        else:
            columns.append((f"{_key(name)} = {json.dumps(uses)}", _about(meta)))
    width = max([_WIDTH, *(len(text) + 2 for text, _ in columns)])
    lines += [_line(text, comment, width) for text, comment in columns]
    lines += _precision_example(described)
    lines += [
        "",
        "# Who this party serves: one [policy.analysts.NAME] table per person, named after the",
        "# certificate they made with `ppa identity new NAME`. role = \"analyst\" sends plans;",
        "# role = \"reviewer\" approves or rejects them (approval = \"manual\" or \"pinned\") with",
        "# `ppa review ...` or on this party's reviewer page. For example:",
        "# [policy.analysts.rob]",
        '# role = "reviewer"',
        '# certificate = "keys/rob.crt"',
        _line('# fingerprint = "sha256:..."', "see `ppa identity show keys/rob.crt`"),
        "",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _approval_lines(wait: float, valid: float) -> list[str]:
    """The approval keys: auto live, the other modes as commented alternatives."""
    return [
        _line('approval = "auto"', "this policy's rules decide; plans that pass run"),
        _line('# approval = "manual"', "each plan waits for one of the reviewers below"),
        _line('# approval = "pinned"', "only plans (or templates) a reviewer pinned run"),
        _line(f"approval_wait = {int(wait)}",
              f"manual: a plan expires after {duration(wait)} unreviewed"),
        _line(f"approval_valid = {int(valid)}", f"a pin holds {duration(valid)} by default"),
    ]


def _precision_example(described: Mapping[str, dict]) -> list[str]:
    """A commented ``[policy.quantile_precision]`` example on the first numeric column."""
    for name, meta in described.items():
        low, high = meta.get("min"), meta.get("max")
        if meta["kind"] == "numeric" and low is not None and high is not None and high > low:
            step = 10.0 ** round(math.log10((high - low) / 100))
            step_text = f"{step:g}" if step < 1 else str(int(step))
            return ["",
                    _line("# [policy.quantile_precision]",
                          "a column's own finest quantile step, in its units"),
                    _line(f"# {_key(name)} = {step_text}",
                          f"quantiles of {name} only as multiples of {step_text}")]
    return []


def _about(meta: dict) -> str:
    """What a column holds, for its comment."""
    if meta["kind"] == "numeric":
        low, high = coarse(meta.get("min"), False), coarse(meta.get("max"), True)
        return "number" if low is None else f"number, about {low:g} .. {high:g}"
    if meta["kind"] == "bool":
        return "true / false"
    levels = [str(level) for level in meta.get("levels") or []]
    shown = ", ".join(levels[:6]) + (", ..." if len(levels) > 6 else "")
    return f"categories: {shown}"


def _key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    return name if bare else json.dumps(name)


def _wrapped(head: str, items: list[str], limit: int = 92) -> list[str]:
    """A TOML array of strings over as many lines as it takes, continuation lines indented
    under its first item."""
    lines, line = [], head + "["
    for i, item in enumerate(items):
        piece = json.dumps(item) + ("," if i < len(items) - 1 else "]")
        if len(line) + len(piece) > limit and not line.endswith("["):
            lines.append(line.rstrip())
            line = " " * (len(head) + 1)
        line += piece + " "
    lines.append(line.rstrip() if items else head + "[]")
    return lines


def _line(text: str, comment: str, width: int = _WIDTH) -> str:
    """``text`` with ``# comment`` aligned after it at ``width``."""
    return f"{text:<{width - 1}} # {comment}" if len(text) < width - 1 else \
        f"{text}  # {comment}"
