"""``ppa policy check``: validate a party's policy and say in plain language what it allows.

:func:`check_policy_file` loads a party file as its kernel would, builds the policy, checks
its columns against the party's data when the data can be read, and gathers every problem;
:func:`render` turns the result into the text the command prints.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppa_kernel.contract.config import Analyst, ConfigError, PartyConfig, load_party
from ppa_kernel.contract.errors import PPAError

from .catalog import build_catalog, check_policy_columns, load_party_data
from .policy import STATISTICS, Policy, PolicyError

logger = logging.getLogger(__name__)

APPROVAL_TEXT = {
    "auto": "automatic: this policy's rules decide; every plan that passes them runs",
    "manual": "manual: each plan waits until one of this party's reviewers approves or "
              "rejects it",
    "pinned": "pinned: only plans whose hash, or whose template with parameter ranges, a "
              "reviewer pinned in advance run",
}
STATISTIC_NAMES = {"count": "count", "sum": "sum", "mean": "mean", "var": "variance",
                   "std": "standard deviation", "histogram": "histogram",
                   "crosstab": "cross-tabulation", "ttest": "Welch t-test",
                   "chi2": "chi-square test", "corr": "correlation",
                   "ols": "linear regression (ols)", "logit": "logistic regression (logit)",
                   "km": "Kaplan-Meier survival (km)", "quantile": "quantiles"}
USE_ORDER = ("link", "filter", "group", "measure")


def duration(seconds: float) -> str:
    """Seconds in words: ``86400`` -> ``1 day``, ``5400`` -> ``90 min``."""
    for unit, size in (("day", 86400), ("hour", 3600)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


@dataclass
class PolicyCheck:
    """What ``ppa policy check`` found in one party file."""

    path: Path
    party: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    policy: Policy | None = None
    table: dict[str, Any] | None = None  # the raw [policy] table, without analysts
    config: PartyConfig | None = None
    described: dict[str, dict] | None = None  # the data's columns, when it was read
    rows: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_policy_file(path: str | Path, *, read_data: bool = True) -> PolicyCheck:
    """Load ``path`` as its kernel would and collect every problem with its policy."""
    path = Path(path)
    result = PolicyCheck(path, path.stem)
    try:
        result.config = load_party(path)
    except ConfigError as exc:
        result.problems.append(_text(exc))
        result.table = _raw_policy(path, result)
    else:
        result.party = result.config.name
        result.table = result.config.policy
    try:
        result.policy = Policy.from_dict(result.party, result.table)
    except PolicyError as exc:
        result.problems += exc.reasons
    else:
        _check_shapes(result)
    config = result.config
    if config is None:
        return result
    if config.holds_data and read_data:
        _check_data(result, config)
    elif config.holds_data:
        result.warnings.append("the data was not read (--no-data): column names not checked")
    _check_people(result, config)
    return result


def _check_shapes(result: PolicyCheck) -> None:
    """Warn when an explicit statistics list allows counts but not the shapes built on
    them: binned and two-way groupings (and every chi2) are checked as ``histogram`` and
    ``crosstab``, so a list written before they were named now refuses those plans."""
    table = result.table or {}
    if "statistics" not in table or result.policy is None:
        return
    missing = [s for s in ("histogram", "crosstab") if s not in result.policy.statistics]
    if missing and "count" in result.policy.statistics:
        result.warnings.append(
            f"statistics allows count but not {' or '.join(missing)}: histograms (binned "
            "groupings), two-way groupings and chi2 are refused; add "
            f"{', '.join(repr(m) for m in missing)} to the list to allow them")


def _raw_policy(path: Path, result: PolicyCheck) -> dict[str, Any] | None:
    """The ``[policy]`` table read directly, when the party file does not load."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    result.party = str(data.get("party", {}).get("name", result.party))
    table = data.get("policy")
    if not isinstance(table, dict):
        return table
    table = dict(table)
    table.pop("analysts", None)
    return table


def _check_data(result: PolicyCheck, config: PartyConfig) -> None:
    """Check the policy's column names against the party's data, if it can be read."""
    try:
        frame, described = load_party_data(config)
    except PPAError as exc:
        result.warnings.append(f"the data could not be read, so column names were not "
                               f"checked: {exc.message}")
        return
    result.described, result.rows = described, len(frame)
    link = config.link_column
    columns = (result.table or {}).get("columns")
    if isinstance(columns, Mapping):
        for name, uses in columns.items():
            if name == link:
                if isinstance(uses, list) and set(uses) - {"link"}:
                    result.warnings.append(f"the link column {link!r} is approved for more "
                                           "than \"link\"; it should only match rows")
            elif name not in described:
                if result.policy is None:  # else check_policy_columns below, as the kernel
                    result.problems.append(
                        f"'policy.columns.{name}' names no column of the data (columns: "
                        f"{', '.join([link, *described])})")
            elif isinstance(uses, list) and "link" in uses:
                result.warnings.append(f"{name!r} is approved for \"link\", but the parties "
                                       f"link on {link!r} only ([data] link)")
    if result.policy is not None:
        try:
            check_policy_columns(config.name, result.policy, described, link)
        except PPAError as exc:
            result.problems.append(exc.message.removeprefix("invalid policy: ")
                                   + (f" ({exc.hint})" if exc.hint else ""))


def _check_people(result: PolicyCheck, config: PartyConfig) -> None:
    """The kernel needs an analyst; manual and pinned approval need a reviewer."""
    if not config.analysts:
        result.problems.append("no [policy.analysts.NAME] table: the kernel will not start "
                               "without an analyst to serve")
    mode = result.policy.approval if result.policy is not None else \
        str((result.table or {}).get("approval", "auto"))
    reviewers = [a for a in config.analysts.values() if a.role == "reviewer"]
    if mode in ("manual", "pinned") and not reviewers:
        result.problems.append(f"approval = {mode!r} but no analyst has role = \"reviewer\": "
                               "no plan could ever run")


def render(result: PolicyCheck) -> str:
    """The report ``ppa policy check`` prints."""
    if not result.ok:
        lines = [f"{result.path}: the policy of {result.party} is INVALID "
                 f"({len(result.problems)} problem{'s' if len(result.problems) > 1 else ''}):"]
        lines += [f"  - {problem}" for problem in result.problems]
        lines += [f"  warning: {warning}" for warning in result.warnings]
        return "\n".join(lines)
    assert result.policy is not None and result.config is not None
    policy, config = result.policy, result.config
    lines = [f"{result.path}: the policy of {result.party} is valid."]
    if result.rows is not None:
        lines.append(f"Checked against its data: {config.data['source']} "
                     f"({result.rows} rows, {len(result.described or {})} columns).")
    lines += [f"  warning: {warning}" for warning in result.warnings]
    lines += ["", "What a result may show:", *_results(policy)]
    lines += ["", "Disclosure rules (checked inside MPC before anything is opened):"]
    lines += _disclosure(policy)
    lines += ["", "Approval:", *_approval(policy)]
    lines += ["", "Columns:", *_columns(result)]
    lines += ["", "People this party serves:", *_people(config.analysts)]
    lines += ["", "To apply a change to the running kernel: ppa party reload "
                  f"{result.path} (the analysts, ports and data need a restart)."]
    return "\n".join(lines)


def _results(policy: Policy) -> list[str]:
    allowed = [STATISTIC_NAMES.get(s, s) for s in STATISTICS if s in policy.statistics]
    refused = [STATISTIC_NAMES.get(s, s) for s in STATISTICS if s not in policy.statistics]
    return [f"  - No released cell describes fewer than {policy.min_cell_size} rows "
            "(an analyst may ask for more, never for fewer).",
            f"  - Statistics allowed: {', '.join(allowed) or 'none'}.",
            f"  - Not allowed: {', '.join(refused) or 'none'}.",
            f"  - A regression needs at least {policy.min_residual_df} residual degrees of "
            "freedom (rows minus coefficients).",
            "  - Quantiles are rounded no finer than a column's published range / "
            f"{policy.quantile_resolution}"
            + (f" (own steps: {_pairs(policy.quantile_precision)})."
               if policy.quantile_precision else "."),
            (f"  - Whole-number columns whose published range spans at most "
             f"{policy.integer_levels} values are published with them as levels (groupable)."
             if policy.integer_levels else
             "  - No numeric column is published with levels (integer_levels = 0).")]


def _disclosure(policy: Policy) -> list[str]:
    lines = [f"  - Dominance: a sum or mean is suppressed when its {policy.dominance_n} largest "
             f"values could make up more than {policy.dominance_k}% of the cell's total.",
             "  - P-ratio: it is also suppressed when the others could estimate the largest "
             f"value to within {policy.p_ratio}%."]
    if policy.differencing:
        lines.append("  - Differencing: on; a cell a few rows (fewer than "
                     f"{policy.min_cell_size}) away from an earlier release is suppressed; "
                     f"{policy.differencing_history} released row sets are kept per data epoch.")
    else:
        lines.append("  - Differencing: OFF (for test data only: two overlapping queries can "
                     "reveal one person).")
    return lines


def _approval(policy: Policy) -> list[str]:
    mode, wait, valid = policy.approval, policy.approval_wait, policy.approval_valid
    lines = [f"  - {APPROVAL_TEXT.get(mode, mode)}."]
    if mode == "manual":
        lines.append(f"  - A plan no reviewer has answered within {duration(wait)} "
                     f"({wait:g} s) is refused as expired.")
    if mode == "pinned":
        lines.append(f"  - A pin stays valid for {duration(valid)} ({valid:g} s) at most; a "
                     "reviewer may give less.")
    if mode == "auto":
        lines.append(f"  - (approval_wait {duration(wait)}, approval_valid {duration(valid)}: "
                     "used only in manual or pinned mode)")
    return lines


def _columns(result: PolicyCheck) -> list[str]:
    policy, config, described = result.policy, result.config, result.described
    assert policy is not None and config is not None
    if not config.holds_data:
        return ["  - none: a compute-only party holds no data."]
    if policy.columns is None:
        names = ", ".join(described) if described else "whatever the data holds"
        return ["  - EVERY column, for every use (no [policy.columns] table; for demos only): "
                + names + "."]
    catalog = build_catalog(policy, described) if described is not None else {}
    rules = {name: [u for u in USE_ORDER if u in rule.uses]
             for name, rule in policy.columns.items()}
    width = max((len(name) for name in rules), default=0)
    lines = []
    for name, uses in rules.items():
        about = _column_about(name, config.link_column, catalog, described)
        lines.append(f"  - {name:<{width}}  {', '.join(uses) or 'no use'}{about}")
    if not rules:
        lines.append("  - none ([policy.columns] is empty: no column may be used).")
    if described is not None:
        left = [name for name in described if name not in rules]
        if left:
            lines.append(f"  Not approved (not listed): {', '.join(left)}.")
    return lines


def _column_about(name: str, link: str, catalog: Mapping[str, dict],
                  described: Mapping[str, dict] | None) -> str:
    if name == link:
        return "  (the link column)"
    entry = catalog.get(name)
    if entry is None:
        return ""
    about = f"  ({entry['kind']}"
    if entry["kind"] == "numeric" and entry.get("levels"):
        about += (f"; levels {entry['levels'][0]} .. {entry['levels'][-1]} "
                  "(whole numbers, integer_levels)")
    if entry["kind"] == "numeric" and entry.get("min_precision"):
        about += f"; quantiles in steps of at least {entry['min_precision']:g}"
    return about + ")"


def _people(analysts: Mapping[str, Analyst]) -> list[str]:
    if not analysts:
        return ["  - nobody (the kernel will not start)."]
    width = max(len(name) for name in analysts)
    lines = [f"  - {name:<{width}}  {a.role:<8}  {a.pin.fingerprint}"
             for name, a in analysts.items()]
    roles = [a.role for a in analysts.values()]
    lines.append(f"  {roles.count('analyst')} analyst(s) may send plans; "
                 f"{roles.count('reviewer')} reviewer(s) may approve or reject them.")
    return lines


def _pairs(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in sorted(values.items()))


def _text(exc: PPAError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")
