"""MPC runners of the plan models (see :mod:`ppa_kernel.contract.models` for what each opens).

The runner of kind ``K`` is ``run_K(state)`` in this package's module ``K``; the kinds come
from the one registry (:data:`ppa_kernel.contract.models.MODELS`).
"""

from __future__ import annotations

import importlib

from ppa_kernel.contract.models import statistic

from ..query import QueryState


async def run_model(state: QueryState) -> dict:
    """Run the plan's model on the query's secret totals; return its opened outputs."""
    kind = statistic(state.program.plan["model"]["kind"]).kind
    module = importlib.import_module(f"{__name__}.{kind}")
    return await getattr(module, f"run_{kind}")(state)
