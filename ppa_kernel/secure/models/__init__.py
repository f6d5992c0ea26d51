"""MPC runners of the plan models (see :mod:`ppa_kernel.models` for what each opens)."""

from __future__ import annotations

from ..query import QueryState


async def run_model(state: QueryState) -> dict:
    """Run the plan's model on the query's secret totals; return its opened outputs."""
    from .ttest import run_ttest

    runners = {"ttest": run_ttest}
    return await runners[state.program.plan["model"]["kind"]](state)
