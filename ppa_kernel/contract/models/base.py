"""What every statistical model of a plan defines (:class:`ModelKind`), and the small
frame API the models' builders use (:class:`Frame`)."""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd

from ..errors import PlanError

MASKED_TRUNCATION = "protocol.truncation_masked"
"""Openings inside MPyC's fixed-point truncation: a + r with r 30 bits longer than a,
statistically hiding a (like the comparison protocol's masked openings)."""
UNGROUPED = "all"
"""The index label of the one row of an ungrouped result (an aggregate or a model)."""


def as_counts(values: Any) -> pd.Series:
    """``values`` as nullable ``Int64`` when every present value is a whole number (counts
    print as 548, suppressed ones as ``<NA>``); as floats otherwise."""
    series = pd.Series(values, dtype=float) if not isinstance(values, pd.Series) else values
    series = series.astype(float)
    if (series.dropna() % 1 == 0).all():
        return series.astype("Int64")
    return series


class ModelKind:
    """One kind of model: plan checks, inputs, openings, and the released result table."""

    kind = ""

    def validate(self, plan: dict) -> None:
        """Raise PlanError unless the plan's model is well formed."""

    def squared_measures(self, plan: dict) -> list[dict]:
        """Aggregate expressions whose sums of squares the model needs (never opened)."""
        return []

    def value_inputs(self, plan: dict) -> list[dict]:
        """Numeric expressions the runner evaluates per linked row (registered as inputs)."""
        return []

    def condition_inputs(self, plan: dict) -> list[dict]:
        """Truth-valued expressions the runner evaluates per linked row."""
        return []

    def openings(self, plan: dict) -> set[str]:
        """Names of the values the model opens, beyond the plan's aggregates."""
        return set()

    def table(self, plan: dict, stats: dict, released: pd.DataFrame) -> pd.DataFrame:
        """The analyst's result: ``released`` is the aggregates' table (may be empty)."""
        raise NotImplementedError


def output_name(kind: str, output: str) -> str:
    """The opening name of one model output, e.g. ``model.ttest.t_squared``."""
    return f"model.{kind}.{output}"


def require_keys(model: dict, required: set[str], optional: set[str] = frozenset()) -> None:
    """PlanError unless the model has exactly the required (and some optional) keys."""
    missing = required - set(model)
    unknown = set(model) - required - set(optional) - {"kind"}
    if missing or unknown:
        raise PlanError(f"{model['kind']} model: " + "; ".join(
            ([f"missing {', '.join(sorted(missing))}"] if missing else [])
            + ([f"unknown {', '.join(sorted(unknown))}"] if unknown else [])))


FrameColumn = Any
"""A column expression of the analyst's secure frame (it has ``expr``, ``kind``, ``name``)."""

FrameQuery = Any
"""The analyst's query a builder returns (``plan()``, ``collect()``)."""


class Frame(Protocol):
    """What a model's builder needs of a secure frame (the analyst's ``SecureFrame``)."""

    def column(self, key: Any) -> Any:
        """A column name or expression as a column of this frame (PlanError otherwise)."""

    def column_meta(self, name: str) -> dict:
        """The published description of a plain column ``party.column``."""

    def groupby(self, by: Any) -> Any:
        """The frame grouped by columns (its ``entries`` are the plan's groups)."""

    def filter(self, cond: Any) -> Any:
        """The frame restricted to rows where ``cond`` holds."""

    def model_query(self, model: dict, *, groups: list | None = None,
                    aggregates: list | None = None, inputs: list | None = None) -> Any:
        """A query running ``model`` on this frame."""
