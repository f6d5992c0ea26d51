"""Whether this party runs a plan: the plan's own checks, the consortium's layout, the
party's published catalog and its policy. Runs in a worker thread (it may take a while
on a large plan); raises a :class:`~ppa_kernel.contract.errors.PPAError` on refusal."""

from __future__ import annotations

import logging

from ppa_kernel.contract.config import PartyConfig
from ppa_kernel.contract.errors import PlanError, PolicyRefused, PPAError
from ppa_kernel.contract.expr import expr_columns
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.program import compile_plan

from .catalog import check_claims
from .policy import Policy, PolicyError, QuantileRequest

logger = logging.getLogger(__name__)


def check_plan(request: dict, config: PartyConfig, policy: Policy,
               catalog: dict[str, dict]) -> tuple[dict, str]:
    """Validate the request's plan and check it against this party's files and policy;
    return the plan and its hash."""
    plan = request.get("plan")
    try:
        program = compile_plan(plan)  # validates, derives the layout and checks every bound
    except PPAError:
        raise
    except Exception as exc:  # a malformed plan must never become an internal error
        logger.warning("plan check failed unexpectedly: %r", exc)
        raise PlanError(f"malformed plan ({type(exc).__name__})") from None
    digest = plan_hash(plan)
    if request.get("plan_hash") != digest:
        raise PlanError("plan hash does not match the plan",
                        hint="the plan was altered in transit or built inconsistently")
    party = config.name
    check_layout(plan, [p.name for p in config.consortium.parties], party)
    if plan.get("min_cell_size") is None:
        raise PlanError("the plan must state its minimum cell size")
    if plan.get("disclosure") is None:
        raise PlanError("the plan must state its disclosure rules ('disclosure')",
                        hint="build plans through the client, which fills them in")
    try:
        policy.check(program.column_uses(party), program.statistics(),
                     plan.get("min_cell_size"), plan.get("min_residual_df"),
                     quantile_request(plan, catalog, party), plan["disclosure"])
    except PolicyError as exc:
        raise PolicyRefused("; ".join(exc.reasons), party=party, hint=exc.hint) from None
    check_claims(plan, catalog, party)
    return plan, digest


def check_layout(plan: dict, names: list[str], party: str) -> None:
    """Refuse a plan whose parties or link disagree with the consortium file: the MPC
    order and every party's input layout follow from it, never from the plan."""
    if plan["parties"] != names:
        raise PlanError("'parties' must list the consortium's parties in its order: "
                        + ", ".join(names), party=party,
                        hint="build plans from the consortium the parties run")
    if plan["link"] != [n for n in names if n in plan["link"]]:
        raise PlanError("'link' must list its parties in the consortium's order: "
                        + ", ".join(n for n in names if n in plan["link"]), party=party)


def quantile_request(plan: dict, catalog: dict[str, dict],
                     party: str) -> QuantileRequest | None:
    """For a quantile plan: its precision and range, with the published range of each of
    ``party``'s numeric columns its measure reads (see :class:`QuantileRequest`)."""
    model = plan.get("model")
    if model is None or model.get("kind") != "quantile":
        return None
    columns: dict[str, tuple[float | None, float | None]] = {}
    for name in expr_columns(model["measure"]):
        meta = plan["columns"][name]
        entry = catalog.get(meta["column"])
        if meta["party"] == party and entry is not None and entry["kind"] == "numeric":
            columns[meta["column"]] = (entry["min"], entry["max"])
    measure = model["measure"].get("col")
    own = measure is not None and plan["columns"][measure]["party"] == party
    return QuantileRequest(model["precision"], tuple(model["range"]), columns,
                           plan["columns"][measure]["column"] if own else None)
