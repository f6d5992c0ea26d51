"""MPC runners of the plan models (see :mod:`ppa_kernel.contract.models` for what each opens)."""

from __future__ import annotations

import importlib

from ..query import QueryState

RUNNERS = {"ttest": "run_ttest", "chi2": "run_chi2", "corr": "run_corr", "km": "run_km",
           "ols": "run_ols", "logit": "run_logit", "quantile": "run_quantile"}
"""Model kind -> runner function in the module of the same name (imported when used)."""


async def run_model(state: QueryState) -> dict:
    """Run the plan's model on the query's secret totals; return its opened outputs."""
    kind = state.program.plan["model"]["kind"]
    module = importlib.import_module(f"{__name__}.{kind}")
    return await getattr(module, RUNNERS[kind])(state)
