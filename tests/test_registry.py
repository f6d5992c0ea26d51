"""The one registry of statistical models drives every list that names them."""

from __future__ import annotations

import importlib
import inspect

import pytest

from ppa_kernel.analyst.frame import SecureFrame
from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.models import MODEL_KINDS, MODELS, ModelKind, model_kind
from ppa_kernel.party import policy


@pytest.mark.parametrize("entry", MODELS, ids=lambda e: e.kind)
def test_each_model_has_its_three_parts(entry):
    spec = entry.model()
    assert isinstance(spec, ModelKind) and spec.kind == entry.kind
    assert getattr(SecureFrame, entry.method) is entry.builder()  # t.<method>(...)
    runner = importlib.import_module(f"ppa_kernel.party.secure.models.{entry.kind}")
    assert inspect.iscoroutinefunction(getattr(runner, f"run_{entry.kind}"))


def test_policy_names_derive_from_the_registry():
    assert set(MODEL_KINDS) <= set(policy.STATISTICS)
    assert len(set(MODEL_KINDS)) == len(MODEL_KINDS)


def test_an_unknown_kind_names_the_registered_ones():
    with pytest.raises(PlanError, match="unknown model kind 'anova'") as info:
        model_kind({"model": {"kind": "anova"}})
    assert all(kind in info.value.hint for kind in MODEL_KINDS)
