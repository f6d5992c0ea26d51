"""A data owner's policy: which of your columns analysts may use, and how.

Your party kernel checks every analysis plan against this policy before it touches
your data; a plan that breaks any rule is refused and the refusal lists every problem.
Write the policy as a ``[policy]`` table in your party's TOML file::

    [policy]
    min_cell_size = 10                                 # smallest group a result may describe
    statistics = ["count", "sum", "mean", "var", "std"]
    approval = "automatic"

    [policy.columns]                                   # one line per column you approve
    age = ["filter", "group", "measure"]
    cost_2021 = ["measure", "filter"]

Keys (all optional; any other key is an error, so typos are caught):

``min_cell_size``
    Whole number, at least 1 (default 10). No result cell may describe fewer rows than
    this. An analyst may ask for a *higher* threshold, never a lower one.
``statistics``
    The statistics analysts may compute, from ``count sum mean var std histogram
    crosstab`` and the models ``ttest chi2 corr ols logit km quantile`` (default: all
    but histogram and crosstab).
``min_residual_df``
    Whole number, at least 1 (default 10). A regression is refused when its residual
    degrees of freedom (rows minus coefficients) fall below this.
``approval``
    How plans are approved. Only ``"automatic"`` (check against this policy, then run)
    is supported; ``"manual"`` and ``"pinned"`` are not yet available.
``[policy.columns]``
    For each column you approve, the list of ways it may be used:

    * ``"link"``    -- match your rows with the other parties' rows on this column;
    * ``"filter"``  -- keep or drop rows by a condition on this column;
    * ``"group"``   -- split results by this column's values;
    * ``"measure"`` -- compute statistics (sums, means, ...) of this column's values.

    A column that is not listed may not be used at all. An empty table
    (``[policy.columns]`` with no lines) approves no column. Leaving the table out
    entirely approves **every column for every use**: convenient for demos, not for real
    data. Column names containing dots or spaces must be quoted: ``"cost.2021" = [...]``.

Leaving out the whole ``[policy]`` table gives all defaults (every column approved).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

USES = ("group", "filter", "measure", "link")
MODELS = ("ttest", "chi2", "corr", "ols", "logit", "km", "quantile")
STATISTICS = ("count", "sum", "mean", "var", "std", "histogram", "crosstab", *MODELS)
APPROVALS = ("automatic",)
_NOT_YET = ("manual", "pinned")
_KEYS = ("min_cell_size", "statistics", "approval", "columns", "min_residual_df")
_DEFAULT_STATISTICS = frozenset({"count", "sum", "mean", "var", "std", *MODELS})


class PolicyError(Exception):
    """A policy is malformed, or refuses a plan; ``reasons`` lists every problem."""

    def __init__(self, party: str, reasons: list[str]) -> None:
        self.party = party
        self.reasons = list(reasons)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"[{self.party}] " + "; ".join(self.reasons)


@dataclass(frozen=True)
class ColumnRule:
    """The uses a data owner approves for one column."""

    uses: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses", frozenset(self.uses))


@dataclass(frozen=True)
class Policy:
    """One party's rules for plans; ``columns=None`` approves every column for every use."""

    party: str
    columns: dict[str, ColumnRule] | None = field(hash=False)
    min_cell_size: int = 10
    statistics: frozenset[str] = _DEFAULT_STATISTICS
    approval: str = "automatic"
    min_residual_df: int = 10

    def __post_init__(self) -> None:
        if self.columns is not None:
            object.__setattr__(self, "columns", dict(self.columns))
        object.__setattr__(self, "statistics", frozenset(self.statistics))
        reasons = _value_problems(self.min_cell_size, self.statistics, self.approval,
                                  self.columns)
        if (not isinstance(self.min_residual_df, int) or isinstance(self.min_residual_df, bool)
                or self.min_residual_df < 1):
            reasons.append("'policy.min_residual_df' must be a whole number of at least 1, "
                           f"got {self.min_residual_df!r}")
        if reasons:
            raise PolicyError(self.party, reasons)

    @classmethod
    def from_dict(cls, party: str, data: Mapping[str, Any] | None) -> Policy:
        """Build a policy from the parsed ``[policy]`` table (None: all defaults)."""
        if data is None:
            logger.info("no [policy] table for %s: every column approved", party)
            return cls(party, None)
        if not isinstance(data, Mapping):
            raise PolicyError(party, ["[policy] must be a table"])
        reasons = [f"unknown key 'policy.{key}' (expected one of: {', '.join(_KEYS)})"
                   for key in data if key not in _KEYS]
        kwargs: dict[str, Any] = {}
        if "min_cell_size" in data:
            value = data["min_cell_size"]
            if isinstance(value, int) and not isinstance(value, bool):
                kwargs["min_cell_size"] = value
            else:
                reasons.append(f"'policy.min_cell_size' must be a whole number, got {value!r}")
        if "statistics" in data:
            value = data["statistics"]
            if _is_str_list(value):
                kwargs["statistics"] = frozenset(value)
            else:
                reasons.append("'policy.statistics' must be a list of names")
        if "min_residual_df" in data:
            value = data["min_residual_df"]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                kwargs["min_residual_df"] = value
            else:
                reasons.append("'policy.min_residual_df' must be a whole number of at least "
                               f"1, got {value!r}")
        if "approval" in data:
            value = data["approval"]
            if isinstance(value, str):
                kwargs["approval"] = value
            else:
                reasons.append(f"'policy.approval' must be a string, got {value!r}")
        columns: dict[str, ColumnRule] | None = None
        if "columns" in data:
            columns, problems = _parse_columns(data["columns"])
            reasons += problems
        reasons += _value_problems(kwargs.get("min_cell_size", 10),
                                   kwargs.get("statistics", _DEFAULT_STATISTICS),
                                   kwargs.get("approval", "automatic"), columns)
        if reasons:
            raise PolicyError(party, reasons)
        if columns is None:
            logger.info("policy of %s has no [policy.columns]: every column approved", party)
        return cls(party, columns, **kwargs)

    @classmethod
    def allow_all(cls, party: str, min_cell_size: int = 10) -> Policy:
        """A demo policy approving every column for every use (default statistics)."""
        return cls(party, None, min_cell_size=min_cell_size)

    def effective_min_cell(self, requested: int | None) -> int:
        """The threshold a run uses: the stricter of the policy's and the plan's."""
        return self.min_cell_size if requested is None else max(self.min_cell_size, requested)

    def check(self, uses: Mapping[str, Iterable[str]], statistics: Iterable[str],
              min_cell_size: int | None, min_residual_df: int | None = None) -> None:
        """Raise :class:`PolicyError` listing every way a plan breaks this policy.

        ``uses`` maps this party's column names to the uses the plan makes of them;
        an unknown use name is a caller bug and raises ValueError.
        """
        reasons: list[str] = []
        for column in sorted(uses):
            wanted = set(uses[column])
            unknown = wanted - set(USES)
            if unknown:
                raise ValueError(f"unknown use(s) of {column!r}: {', '.join(sorted(unknown))}")
            if self.columns is None:
                continue
            rule = self.columns.get(column)
            if rule is None:
                reasons.append(f"column {column!r} is not approved by {self.party}")
                continue
            approved = ", ".join(sorted(rule.uses)) or "none"
            for use in sorted(wanted - rule.uses):
                reasons.append(f"{column!r} may not be used for {use!r} by {self.party} "
                               f"(approved: {approved})")
        allowed = ", ".join(sorted(self.statistics)) or "none"
        for stat in sorted(set(statistics) - self.statistics):
            reasons.append(f"statistic {stat!r} is not allowed by {self.party} "
                           f"(allowed: {allowed})")
        if min_cell_size is not None and min_cell_size < self.min_cell_size:
            reasons.append(f"min_cell_size {min_cell_size} is below {self.party}'s minimum "
                           f"of {self.min_cell_size}")
        if min_residual_df is not None and min_residual_df < self.min_residual_df:
            reasons.append(f"min_residual_df {min_residual_df} is below {self.party}'s "
                           f"minimum of {self.min_residual_df}")
        if reasons:
            logger.info("policy of %s refused a plan: %s", self.party, "; ".join(reasons))
            raise PolicyError(self.party, reasons)

    def summary(self) -> dict:
        """A JSON-friendly description of the policy."""
        columns = None if self.columns is None else {
            name: sorted(rule.uses) for name, rule in sorted(self.columns.items())}
        return {"party": self.party, "columns": columns, "min_cell_size": self.min_cell_size,
                "statistics": sorted(self.statistics), "approval": self.approval,
                "min_residual_df": self.min_residual_df}


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _parse_columns(value: Any) -> tuple[dict[str, ColumnRule] | None, list[str]]:
    """Parse ``[policy.columns]``; returns the rules that parsed and the problems."""
    if not isinstance(value, Mapping):
        return None, ["'policy.columns' must be a table of column = [uses]"]
    columns: dict[str, ColumnRule] = {}
    problems: list[str] = []
    for name, uses in value.items():
        if _is_str_list(uses):
            columns[name] = ColumnRule(frozenset(uses))
        else:
            problems.append(f"'policy.columns.{name}' must be a list of uses "
                            f"(from: {', '.join(USES)})")
    return columns, problems


def _value_problems(min_cell_size: Any, statistics: frozenset[str], approval: str,
                    columns: dict[str, ColumnRule] | None) -> list[str]:
    """Problems with the values of a policy's settings, each naming its key."""
    problems = []
    if (not isinstance(min_cell_size, int) or isinstance(min_cell_size, bool)
            or min_cell_size < 1):
        problems.append(f"'policy.min_cell_size' must be at least 1, got {min_cell_size!r}")
    for stat in sorted(set(statistics) - set(STATISTICS)):
        problems.append(f"'policy.statistics' has unknown statistic {stat!r} "
                        f"(known: {', '.join(STATISTICS)})")
    if approval in _NOT_YET:
        problems.append(f"'policy.approval' = {approval!r} is not yet supported "
                        "(use 'automatic')")
    elif approval not in APPROVALS:
        problems.append(f"'policy.approval' has unknown value {approval!r} (use 'automatic')")
    for name, rule in (columns or {}).items():
        for use in sorted(rule.uses - set(USES)):
            problems.append(f"'policy.columns.{name}' has unknown use {use!r} "
                            f"(known: {', '.join(USES)})")
    return problems
