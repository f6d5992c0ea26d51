"""A data owner's policy: which of your columns analysts may use, and how.

Your party kernel checks every analysis plan against this policy before it touches
your data; a plan that breaks any rule is refused and the refusal lists every problem.
Write the policy as a ``[policy]`` table in your party's TOML file (the README's
"Writing a policy (for data owners)" is the full guide; ``ppa init`` writes a commented
one and ``ppa policy check FILE`` says what yours allows)::

    [policy]
    min_cell_size = 10                                 # smallest group a result may describe
    statistics = ["count", "sum", "mean", "var", "std"]
    approval = "auto"

    [policy.columns]                                   # one line per column you approve
    age = ["filter", "group", "measure"]
    cost_2021 = ["measure", "filter"]

Keys (all optional; any other key is an error, so typos are caught):

``min_cell_size``
    Whole number, at least 1 (default 10). No result cell may describe fewer rows than
    this. An analyst may ask for a *higher* threshold, never a lower one.
``statistics``
    The statistics analysts may compute, from ``count sum mean var std histogram
    crosstab`` and the models ``ttest chi2 corr ols logit km quantile`` (default: all).
    A histogram (row counts by bins) and a crosstab (row counts by two group variables)
    also need ``count``; a list without them refuses them.
``min_residual_df``
    Whole number, at least 1 (default 10). A regression is refused when its residual
    degrees of freedom (rows minus coefficients) fall below this.
``quantile_resolution``
    Whole number, at least 1 (default 1000). A released quantile (median, quartiles,
    ...) is rounded to a precision p, its step; p may not be finer than a column's
    *minimum precision*. For a numeric column without its own setting (below) that is
    its published range divided by this number: (published max - published min) /
    quantile_resolution, the range being the one the catalog shows (rounded outward to
    two significant digits). E.g. ``cost_2021`` published as 38 .. 19000 with the
    default 1000 allows steps of 18.962 or coarser.
``integer_levels``
    Whole number from 0 to 100 (default 12). A numeric column whose values are all whole
    numbers and whose published range holds at most this many of them (a 0/1 flag, a
    score 1..5) is published with them as its levels: analysts may group by it as by a
    category, and it stays a number (means, sums). The levels are every whole number of
    the published range, not the values present, so they disclose nothing the range does
    not; a level few people hold is a cell that the minimum cell size suppresses. 0: no
    numeric column gets levels (group only in bins, or declare it ``[data] categorical``).
``dominance_n``, ``dominance_k``
    Whole numbers (defaults 2 and 90, ACRO's): a released sum or mean of a column that
    is never negative is suppressed when its n largest contributions could make up more
    than k percent of the cell's total (checked inside MPC with a sound bound).
``p_ratio``
    Whole number of percent (default 10): such a cell is also suppressed when the total
    less its two largest contributions could be below p percent of the largest (so a
    contributor could estimate another's value to within p percent).
``differencing``
    true or false (default true): suppress a cell whose rows differ from a cell released
    earlier on the same data by at least one and fewer than ``min_cell_size`` rows
    (subtracting the two would describe those few people). Switch it off only for test
    data: without it, two overlapping queries can reveal one person.
``differencing_history``
    Whole number (default 1000): how many released row sets the parties keep per data
    epoch for the differencing rule. When it is full, releases are refused until the
    owners start a new epoch.
``approval``
    How plans are approved (default ``"auto"``; see :mod:`.approvals`): ``"auto"`` --
    this policy's rules decide; ``"manual"`` -- each plan that passes them also waits
    until one of your reviewers approves or rejects it; ``"pinned"`` -- only plans a
    reviewer pinned in advance run (by hash, or as a template whose numbers may vary
    within ranges). ``"automatic"`` is the old name of ``"auto"``.
``approval_wait``
    Seconds a plan waits for a reviewer in manual mode before it expires (default
    86400, at most 30 days).
``approval_valid``
    Seconds a reviewer's pin stays valid: the default and the longest a reviewer may
    give (default 604800, a week; at most ten years).
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
``[policy.quantile_precision]``
    A column's own minimum precision, in the column's units, instead of the one from
    ``quantile_resolution``: ``cost_2021 = 100`` releases quantiles of ``cost_2021`` only
    as multiples of 100 or coarser. Positive numbers; each name must be one of your
    numeric columns (and listed in ``[policy.columns]`` when that table is given).

    A quantile plan is refused when its precision is finer than the minimum of any of
    your numeric columns its measure reads (for an expression such as ``cost_2021 /
    1000`` the minimum stays in the column's units), and, when the measure is exactly
    one of your columns, when the plan's range does not contain the column's published
    range (clamping to a narrower range would resolve the values more finely). Plain
    keys such as ``quantile_resolution`` go above the sub-tables, as TOML requires::

        [policy]
        quantile_resolution = 500
        [policy.columns]
        cost_2021 = ["measure"]
        [policy.quantile_precision]
        cost_2021 = 100

Leaving out the whole ``[policy]`` table gives all defaults (every column approved).
"""

from __future__ import annotations

import decimal
import logging
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ppa_kernel.contract.errors import PPAError
from ppa_kernel.contract.limits import (
    DEFAULT_INTEGER_LEVELS,
    DEFAULT_QUANTILE_RESOLUTION,
    MAX_INTEGER_LEVELS,
)
from ppa_kernel.contract.models import MODEL_KINDS
from ppa_kernel.contract.plan import AGGREGATES, DISCLOSURE_POLICY_KEYS

logger = logging.getLogger(__name__)

USES = ("group", "filter", "measure", "link")
STATISTICS = (*(s for s in AGGREGATES if s != "size"), "histogram", "crosstab",
              *MODEL_KINDS)
"""What a policy may allow: the plain aggregates, histograms, crosstabs and every model --
the one list the plan check (:meth:`Program.statistics` names) and the status display use."""
APPROVALS = ("auto", "manual", "pinned")
_APPROVAL_ALIASES = {"automatic": "auto"}
APPROVAL_TIMES = {"approval_wait": (86400.0, 30 * 86400.0),
                  "approval_valid": (604800.0, 10 * 365 * 86400.0)}
"""Policy key -> (default, highest) seconds."""
_KEYS = ("min_cell_size", "statistics", "approval", "approval_wait", "approval_valid",
         "columns", "min_residual_df",
         "quantile_resolution", "quantile_precision", "integer_levels", "dominance_n",
         "dominance_k", "p_ratio", "differencing_history", "differencing")
DISCLOSURE_KEYS = {rule: (DISCLOSURE_POLICY_KEYS[rule], *limits) for rule, limits in {
    "dominance_n": (2, 1, 10), "dominance_k": (90, 1, 100), "p_ratio": (10, 0, 100),
    "history_limit": (1000, 1, 100_000), "differencing": (True, False, True)}.items()}
"""Plan ``disclosure`` key -> (policy key, default, lowest, highest)."""
_DEFAULT_STATISTICS = frozenset(STATISTICS)


class PolicyError(PPAError):
    """A policy is malformed, or refuses a plan; ``reasons`` lists every problem (the
    kernel reports it as :class:`~ppa_kernel.contract.errors.PolicyRefused`)."""

    def __init__(self, party: str, reasons: list[str], hint: str | None = None) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons), party=party, hint=hint)

    def __str__(self) -> str:
        return f"[{self.party}] " + "; ".join(self.reasons)


@dataclass(frozen=True)
class ColumnRule:
    """The uses a data owner approves for one column."""

    uses: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses", frozenset(self.uses))


@dataclass(frozen=True)
class QuantileRequest:
    """A quantile plan as one party's policy sees it.

    ``columns`` maps each of the party's own numeric columns that the measure reads to
    its published (min, max); ``measure`` is the column the measure is exactly, if it
    is one of the party's (else None); ``range`` is the plan's claimed [low, high].
    """

    precision: float
    range: tuple[float, float]
    columns: Mapping[str, tuple[float | None, float | None]]
    measure: str | None = None


@dataclass(frozen=True)
class Policy:
    """One party's rules for plans; ``columns=None`` approves every column for every use."""

    party: str
    columns: dict[str, ColumnRule] | None = field(hash=False)
    min_cell_size: int = 10
    statistics: frozenset[str] = _DEFAULT_STATISTICS
    approval: str = "auto"
    approval_wait: float = APPROVAL_TIMES["approval_wait"][0]
    approval_valid: float = APPROVAL_TIMES["approval_valid"][0]
    min_residual_df: int = 10
    quantile_resolution: int = DEFAULT_QUANTILE_RESOLUTION
    quantile_precision: dict[str, float] = field(default_factory=dict, hash=False)
    integer_levels: int = DEFAULT_INTEGER_LEVELS
    dominance_n: int = 2
    dominance_k: int = 90
    p_ratio: int = 10
    differencing_history: int = 1000
    differencing: bool = True

    def __post_init__(self) -> None:
        if self.columns is not None:
            object.__setattr__(self, "columns", dict(self.columns))
        object.__setattr__(self, "statistics", frozenset(self.statistics))
        object.__setattr__(self, "quantile_precision", dict(self.quantile_precision))
        reasons = _value_problems(self.min_cell_size, self.statistics, self.approval,
                                  self.columns)
        reasons += _quantile_problems(self.quantile_resolution, self.quantile_precision,
                                      self.columns)
        for key, (_default, high) in APPROVAL_TIMES.items():
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or \
                    not 0 < value <= high:
                reasons.append(f"'policy.{key}' must be a number of seconds above 0 and at "
                               f"most {high:g}, got {value!r}")
        if not isinstance(self.integer_levels, int) or isinstance(self.integer_levels, bool) \
                or not 0 <= self.integer_levels <= MAX_INTEGER_LEVELS:
            reasons.append("'policy.integer_levels' must be a whole number from 0 to "
                           f"{MAX_INTEGER_LEVELS}, got {self.integer_levels!r}")
        if (not isinstance(self.min_residual_df, int) or isinstance(self.min_residual_df, bool)
                or self.min_residual_df < 1):
            reasons.append("'policy.min_residual_df' must be a whole number of at least 1, "
                           f"got {self.min_residual_df!r}")
        for key, _default, low, high in DISCLOSURE_KEYS.values():
            value = getattr(self, key)
            if isinstance(low, bool):
                if not isinstance(value, bool):
                    reasons.append(f"'policy.{key}' must be true or false, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or \
                    not low <= value <= high:
                reasons.append(f"'policy.{key}' must be a whole number from {low} to {high}, "
                               f"got {value!r}")
        if reasons:
            raise PolicyError(self.party, reasons)

    @property
    def disclosure(self) -> dict[str, int]:
        """The plan ``disclosure`` rules this policy asks for at the least."""
        return {rule: getattr(self, key) for rule, (key, *_) in DISCLOSURE_KEYS.items()}

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
                kwargs["approval"] = _APPROVAL_ALIASES.get(value, value)
            else:
                reasons.append(f"'policy.approval' must be a string, got {value!r}")
        if "quantile_resolution" in data:
            kwargs["quantile_resolution"] = data["quantile_resolution"]  # checked below
        if "integer_levels" in data:
            kwargs["integer_levels"] = data["integer_levels"]  # checked when built
        for key in APPROVAL_TIMES:
            if key in data:
                kwargs[key] = data[key]  # checked when the policy is built
        for key, *_ in DISCLOSURE_KEYS.values():
            if key in data:
                kwargs[key] = data[key]  # checked when the policy is built
        if "quantile_precision" in data:
            value = data["quantile_precision"]
            if isinstance(value, Mapping):
                kwargs["quantile_precision"] = dict(value)
            else:
                reasons.append("'policy.quantile_precision' must be a table of "
                               "column = minimum precision")
        columns: dict[str, ColumnRule] | None = None
        if "columns" in data:
            columns, problems = _parse_columns(data["columns"])
            reasons += problems
        reasons += _value_problems(kwargs.get("min_cell_size", 10),
                                   kwargs.get("statistics", _DEFAULT_STATISTICS),
                                   kwargs.get("approval", "auto"), columns)
        reasons += _quantile_problems(
            kwargs.get("quantile_resolution", DEFAULT_QUANTILE_RESOLUTION),
            kwargs.get("quantile_precision", {}), columns)
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

    def min_precision(self, column: str, low: float | None, high: float | None) -> Fraction:
        """The finest quantile precision allowed for ``column`` with published range
        [low, high], exactly (decimals read as they print); 0 when no range is known."""
        if column in self.quantile_precision:
            return _decimal(self.quantile_precision[column])
        if low is None or high is None:
            return Fraction(0)
        return (_decimal(high) - _decimal(low)) / self.quantile_resolution

    def check(self, uses: Mapping[str, Iterable[str]], statistics: Iterable[str],
              min_cell_size: int | None, min_residual_df: int | None = None,
              quantile: QuantileRequest | None = None,
              disclosure: Mapping[str, int] | None = None) -> None:
        """Raise :class:`PolicyError` listing every way a plan breaks this policy.

        ``uses`` maps this party's column names to the uses the plan makes of them;
        an unknown use name is a caller bug and raises ValueError. ``quantile`` is given
        for a quantile plan (see :class:`QuantileRequest`).
        """
        reasons: list[str] = []
        hints: list[str] = []
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
                           f"(policy.statistics allows: {allowed})")
        if min_cell_size is not None and min_cell_size < self.min_cell_size:
            reasons.append(f"min_cell_size {min_cell_size} is below {self.party}'s minimum "
                           f"of {self.min_cell_size}")
        if min_residual_df is not None and min_residual_df < self.min_residual_df:
            reasons.append(f"min_residual_df {min_residual_df} is below {self.party}'s "
                           f"minimum of {self.min_residual_df}")
        if quantile is not None:
            self._check_quantile(quantile, reasons, hints)
        if disclosure is not None:
            self._check_disclosure(disclosure, reasons)
        if reasons:
            logger.info("policy of %s refused a plan: %s", self.party, "; ".join(reasons))
            raise PolicyError(self.party, reasons, "; ".join(hints) or None)

    def _check_quantile(self, request: QuantileRequest, reasons: list[str],
                        hints: list[str]) -> None:
        """Add the reasons (and hints) why a quantile plan breaks the precision rules."""
        precision = _decimal(request.precision)
        finest = Fraction(0)
        for column in sorted(request.columns):
            low, high = request.columns[column]
            minimum = self.min_precision(column, low, high)
            finest = max(finest, minimum)
            if precision < minimum:
                source = ("its own setting in [policy.quantile_precision]"
                          if column in self.quantile_precision else
                          f"published range {_show(low)} .. {_show(high)} / "
                          f"quantile_resolution "
                          f"{self.quantile_resolution}")
                reasons.append(f"quantile precision {_show(request.precision)} is finer than "
                               f"{self.party}'s minimum of {_show_up(minimum)} for "
                               f"{column!r} ({source})")
        if precision < finest:
            hints.append(f"ask for precision={_show_up(finest)} or coarser, or leave "
                         "precision unset (the default meets every owner's minimum)")
        if request.measure is not None:
            low, high = request.columns.get(request.measure, (None, None))
            claimed_low, claimed_high = request.range
            if low is not None and high is not None and \
                    (claimed_low > low or claimed_high < high):
                reasons.append(f"quantile range [{_show(claimed_low)}, {_show(claimed_high)}] "
                               f"does not contain {self.party}'s published range "
                               f"{_show(low)} .. {_show(high)} of {request.measure!r}")
                hints.append("leave the range as the builder sets it: the catalog's "
                             "published range")

    def _check_disclosure(self, rules: Mapping[str, int], reasons: list[str]) -> None:
        """Add a reason for each of the plan's disclosure rules laxer than this policy's."""
        own = self.disclosure
        laxer = {"dominance_n": rules["dominance_n"] < own["dominance_n"],
                 "dominance_k": rules["dominance_k"] > own["dominance_k"],
                 "p_ratio": rules["p_ratio"] < own["p_ratio"],
                 "history_limit": rules["history_limit"] > own["history_limit"],
                 "differencing": own["differencing"] and not rules["differencing"]}
        for rule, lax in laxer.items():
            if lax:
                reasons.append(f"disclosure rule {rule} = {rules[rule]} is laxer than "
                               f"{self.party}'s {DISCLOSURE_KEYS[rule][0]} = {own[rule]}")

    def summary(self) -> dict:
        """A JSON-friendly description of the policy."""
        columns = None if self.columns is None else {
            name: sorted(rule.uses) for name, rule in sorted(self.columns.items())}
        return {"party": self.party, "columns": columns, "min_cell_size": self.min_cell_size,
                "statistics": sorted(self.statistics), "approval": self.approval,
                "approval_wait": self.approval_wait, "approval_valid": self.approval_valid,
                "min_residual_df": self.min_residual_df,
                "quantile_resolution": self.quantile_resolution,
                "quantile_precision": dict(sorted(self.quantile_precision.items())),
                "integer_levels": self.integer_levels, "disclosure": self.disclosure}


def _decimal(value: float) -> Fraction:
    """A number as the decimal it prints as (0.1 -> 1/10), exactly."""
    return Fraction(repr(float(value)))


def _show(value: float) -> str:
    """A number as it prints, without a trailing ``.0`` (19000.0 -> 19000)."""
    return f"{decimal.Decimal(repr(float(value))).normalize():f}"


def _show_up(value: Fraction) -> str:
    """A minimum for a message: exact when short, else rounded *up* to 8 digits (so a
    value copied from the message is allowed)."""
    context = decimal.Context(prec=8, rounding=decimal.ROUND_CEILING)
    shown = context.divide(decimal.Decimal(value.numerator), decimal.Decimal(value.denominator))
    return f"{shown.normalize():f}"


def published_min_precision(value: Fraction) -> float:
    """A minimum precision as a float whose printed decimal is at least the exact value
    (rounded up to 12 significant digits), for the catalog."""
    context = decimal.Context(prec=12, rounding=decimal.ROUND_CEILING)
    return float(context.divide(decimal.Decimal(value.numerator),
                                decimal.Decimal(value.denominator)))


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


def _quantile_problems(resolution: Any, precisions: Mapping[str, Any],
                       columns: dict[str, ColumnRule] | None) -> list[str]:
    """Problems with ``quantile_resolution`` and ``[policy.quantile_precision]``."""
    problems = []
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        problems.append("'policy.quantile_resolution' must be a whole number of at least 1, "
                        f"got {resolution!r}")
    for name, value in precisions.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or \
                not math.isfinite(value) or value <= 0:
            problems.append(f"'policy.quantile_precision.{name}' must be a positive number, "
                            f"got {value!r}")
        elif columns is not None and name not in columns:
            problems.append(f"'policy.quantile_precision.{name}' names a column that "
                            "[policy.columns] does not list")
    return problems


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
    if approval not in APPROVALS:
        problems.append(f"'policy.approval' has unknown value {approval!r} "
                        f"(use one of: {', '.join(APPROVALS)})")
    for name, rule in (columns or {}).items():
        for use in sorted(rule.uses - set(USES)):
            problems.append(f"'policy.columns.{name}' has unknown use {use!r} "
                            f"(known: {', '.join(USES)})")
    return problems
