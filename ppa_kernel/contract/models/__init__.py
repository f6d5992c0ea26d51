"""Statistical models in plans: what each asks the parties to compute and to open.

A plan may carry ``"model": {"kind": KIND, ...}`` beside (or instead of) its aggregates.
Each kind is a :class:`ModelKind` here (plan side: validation, extra inputs, the names
of the values it opens, and the analyst's result table with p-values) and a runner in
:mod:`ppa_kernel.party.secure.models` (MPC side). Kinds open only their named outputs; see
each kind's docstring for exactly what.
"""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd

from ..errors import PlanError

MASKED_TRUNCATION = "protocol.truncation_masked"
"""Openings inside MPyC's fixed-point truncation: a + r with r 30 bits longer than a,
statistically hiding a (like the comparison protocol's masked openings)."""


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


KINDS = {"ttest": "TTest", "chi2": "Chi2", "corr": "Corr", "km": "KaplanMeier",
         "ols": "OLS", "logit": "Logit", "quantile": "Quantile"}
"""Model kind -> its class in the module of the same name (imported when used)."""


def model_kind(plan: dict) -> ModelKind:
    """The kind object of a plan's model (PlanError for unknown kinds)."""
    model = plan.get("model")
    if not isinstance(model, dict):
        raise PlanError("'model' must be an object with a 'kind'")
    name = model.get("kind")
    if name not in KINDS:
        raise PlanError(f"unknown model kind {name!r}", hint=f"kinds are {', '.join(KINDS)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return getattr(module, KINDS[name])()


def validate_model(plan: dict) -> None:
    """Check the plan's model (called by :func:`ppa_kernel.contract.plan.validate_plan`)."""
    model_kind(plan).validate(plan)


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


def model_outputs(stats: dict) -> dict[str, Any]:
    """The opened model values a run returned."""
    return stats.get("model") or {}
