"""Statistical models in plans: what each asks the parties to compute and to open.

A plan may carry ``"model": {"kind": KIND, ...}`` beside (or instead of) its aggregates.
Each kind is registered once (:mod:`.registry`); its module here holds the plan side
(validation, extra inputs, the names of the values it opens, the analyst's result table
and the builder a secure frame calls), and its runner lives in
:mod:`ppa_kernel.party.secure.models` (MPC side). Kinds open only their named outputs;
see each kind's docstring for exactly what.
"""

from .base import MASKED_TRUNCATION, Frame, ModelKind, output_name, require_keys
from .registry import MODEL_KINDS, MODELS, Statistic, model_kind, statistic, validate_model

__all__ = [
           "MASKED_TRUNCATION",
           "MODELS",
           "MODEL_KINDS",
           "Frame",
           "ModelKind",
           "Statistic",
           "model_kind",
           "output_name",
           "require_keys",
           "statistic",
           "validate_model",
]
