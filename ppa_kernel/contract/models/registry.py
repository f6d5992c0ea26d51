"""The one registry of statistical models: add a kind here, write its plan-side module
(``ppa_kernel/contract/models/<kind>.py``) and its MPC runner
(``ppa_kernel/party/secure/models/<kind>.py``, ``async def run_<kind>(state)``).

Everything else is derived from :data:`MODELS`: the plan's model kinds, the statistic
names a policy may allow, the secure-frame methods that build each model, and the runner
each party's worker calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PlanError
from .base import ModelKind


@dataclass(frozen=True)
class Statistic:
    """One model: its plan kind (also its policy name), the :class:`ModelKind` subclass in
    the module of the same name, and the builder function that becomes a frame method."""

    kind: str
    spec: str
    method: str

    def module(self):
        """The plan-side module (imported when first used)."""
        return importlib.import_module(f"{__package__}.{self.kind}")

    def model(self) -> ModelKind:
        return getattr(self.module(), self.spec)()

    def builder(self) -> Callable:
        """``builder(frame, ...)``: the query that runs this model (a frame method)."""
        return getattr(self.module(), self.method)


MODELS = (
    Statistic("ttest", "TTest", "ttest"),
    Statistic("chi2", "Chi2", "chi2"),
    Statistic("corr", "Corr", "corr"),
    Statistic("ols", "OLS", "ols"),
    Statistic("logit", "Logit", "logit"),
    Statistic("km", "KaplanMeier", "kaplan_meier"),
    Statistic("quantile", "Quantile", "quantiles"),
)
MODEL_KINDS = tuple(s.kind for s in MODELS)
_BY_KIND = {s.kind: s for s in MODELS}


def statistic(kind: object) -> Statistic:
    """The registered statistic of a model kind (PlanError for unknown kinds)."""
    if not isinstance(kind, str) or kind not in _BY_KIND:
        raise PlanError(f"unknown model kind {kind!r}",
                        hint=f"kinds are {', '.join(MODEL_KINDS)}")
    return _BY_KIND[kind]


def model_kind(plan: dict) -> ModelKind:
    """The kind object of a plan's model (PlanError for unknown kinds)."""
    model = plan.get("model")
    if not isinstance(model, dict):
        raise PlanError("'model' must be an object with a 'kind'")
    return statistic(model.get("kind")).model()


def validate_model(plan: dict) -> None:
    """Check the plan's model (called by :func:`ppa_kernel.contract.plan.validate_plan`)."""
    model_kind(plan).validate(plan)
