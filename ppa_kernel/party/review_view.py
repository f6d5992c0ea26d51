"""A plan in plain language, for a party's reviewers: who takes part, which people
(cohort), which columns and how, which statistics, exactly what will be opened, the
disclosure rules that apply, what linkage leaks, plans like it already released here
(differencing), and an estimated cost. The command line and the web page both show it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ppa_kernel.contract.errors import PPAError
from ppa_kernel.contract.expr import expr_columns
from ppa_kernel.contract.program import compile_plan

from .approvals import plan_numbers

_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
            "ge": ">=", "eq": "==", "ne": "!=", "and": "and", "or": "or"}
TAG_BIT_SECONDS = 10e-6
"""Measured cost of one tag bit of one row (README, "scale"): for the linkage estimate."""
REPLAY_SECONDS = 30e-6
"""Measured cost of one replayed column of one row."""
TAG_BITS = 64
MAX_SIMILAR = 10


def printable(text: str) -> str:
    """``text`` with each control or format character (terminal escapes, line breaks,
    bidirectional overrides) written as its escape, e.g. ``\\x1b``: names an analyst chose
    cannot move, erase, restyle or reorder what a reviewer reads."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    return value


def expr_text(expr: dict | None) -> str:
    """An expression as a reader writes it: ``insurer.age >= 40 and hospital.app``."""
    if expr is None:
        return ""
    if "col" in expr:
        return str(expr["col"])
    if "const" in expr:
        return repr(expr["const"])
    op, args = expr["op"], expr["args"]
    if op == "neg":
        return f"-{_wrapped(args[0])}"
    if op == "not":
        return f"not {_wrapped(args[0])}"
    if op == "isin":
        return f"{_wrapped(args[0])} in {list(expr.get('values', []))!r}"
    return f"{_wrapped(args[0])} {_SYMBOLS.get(op, op)} {_wrapped(args[1])}"


def _wrapped(expr: dict) -> str:
    text = expr_text(expr)
    return f"({text})" if "op" in expr and expr["op"] not in ("neg",) else text


def describe_plan(plan: dict, party: str, rows: int,
                  released: list[dict[str, Any]]) -> dict[str, Any]:
    """The reviewer's view of ``plan`` at ``party`` (which holds ``rows`` rows);
    ``released`` lists earlier released plans here (``{"run_id", "time", "analyst",
    "plan"}``) for the similar-plans section."""
    program = compile_plan(plan)
    columns = [{"name": name, "party": meta["party"], "column": meta["column"],
                "uses": sorted(program.uses.get(name, ())), "yours": meta["party"] == party}
               for name, meta in sorted(plan["columns"].items())]
    groups = [e["name"] + (f" (bins {e['bins']})" if e.get("bins") else "")
              for e in plan["groupby"]]
    statistics = [_aggregate_text(a) for a in plan["aggregates"]]
    model = plan.get("model")
    if model is not None:
        statistics.append(f"model: {model['kind']}")
    rules = plan["disclosure"]
    disclosure = [
        f"no released cell describes fewer than {plan['min_cell_size']} people",
        f"dominance: a sum or mean is suppressed when its {rules['dominance_n']} largest "
        f"contributions exceed {rules['dominance_k']}% of the total",
        f"p-ratio: suppressed when the rest is below {rules['p_ratio']}% of the largest",
        "differencing: " + (f"suppressed when its rows differ from an earlier release by 1 "
                            f"to {plan['min_cell_size'] - 1} people" if rules["differencing"]
                            else "OFF (two overlapping queries could reveal one person)")]
    if plan.get("min_residual_df"):
        disclosure.append(f"regressions need at least {plan['min_residual_df']} residual "
                          "degrees of freedom")
    linked = plan["link"]
    linkage = ("the parties learn how many rows each party holds and how many rows share a "
               "link key (the multiplicity pattern), never which rows; nobody learns whose "
               f"rows match. Linked: {', '.join(linked)}") if len(linked) > 1 else \
        f"no linkage: {linked[0]}'s rows only"
    width = max(1, len(program.features.get(party, [])))
    seconds = rows * (TAG_BITS * TAG_BIT_SECONDS + width * REPLAY_SECONDS)
    return _printable({
        "parties": ", ".join(plan["parties"]),
        "linked": ", ".join(linked),
        "cohort": expr_text(plan.get("filter")) or "everyone linked",
        "groups": groups or ["none (one cell)"],
        "columns": columns,
        "statistics": statistics,
        "opened": sorted(program.openings()),
        "disclosure": disclosure,
        "linkage": linkage,
        "similar": similar_plans(plan, released),
        "cost": f"about {max(1, round(seconds))} s of computation at {party} on this "
                f"party's {rows} rows (first query of a data epoch; later ones reuse the "
                "linkage and cost less)",
    }) | {"numbers": plan_numbers(plan)}  # JSON pointers into the plan, kept as they are


def _aggregate_text(aggregate: dict) -> str:
    stat, expr = aggregate["stat"], aggregate.get("expr")
    if stat == "size":
        return f"{aggregate['name']}: number of rows"
    return f"{aggregate['name']}: {stat} of {expr_text(expr)}" if expr else \
        f"{aggregate['name']}: {stat}"


def similar_plans(plan: dict, released: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier releases on the same linkage whose groups or cohort share columns with this
    plan: the ones a reviewer weighs for differencing (newest first)."""
    mine = _footprint(plan)
    found = []
    for entry in reversed(released):
        other = entry.get("plan")
        if not isinstance(other, dict) or other.get("link") != plan["link"]:
            continue
        theirs = _footprint(other)
        shared = sorted((mine["groups"] & theirs["groups"]) | (mine["cohort"] & theirs["cohort"]))
        if shared or (not mine["cohort"] and not theirs["cohort"]):
            found.append({"run_id": entry.get("run_id"), "time": entry.get("time"),
                          "analyst": entry.get("analyst"),
                          "cohort": expr_text(other.get("filter")) or "everyone linked",
                          "groups": [g["name"] for g in other.get("groupby", [])],
                          "shared": shared})
        if len(found) >= MAX_SIMILAR:
            break
    return found


def _footprint(plan: dict) -> dict[str, set[str]]:
    groups: set[str] = set()
    for entry in plan.get("groupby", []):
        groups |= expr_columns(entry.get("expr"))
    return {"groups": groups, "cohort": expr_columns(plan.get("filter"))}


def released_plans(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From an audit log's records: each completed run's plan, analyst and time."""
    accepted = {r.get("run_id"): r for r in records if r.get("event") == "plan_accepted"}
    out = []
    for record in records:
        if record.get("event") == "run_completed" and record.get("run_id") in accepted:
            asked = accepted[record["run_id"]]
            out.append({"run_id": record["run_id"], "time": record.get("time"),
                        "analyst": asked.get("analyst"), "plan": asked.get("plan")})
    return out


def when(stamp: Any) -> str:
    """A time stamp as local date and time ("-" if there is none)."""
    if not isinstance(stamp, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def format_params(params: dict[str, list[float]]) -> str:
    """A pin's parameters as a reader writes them (empty: the pin is exact)."""
    return ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in params.items())


def parse_ranges(texts: Iterable[str]) -> dict[str, list[float]]:
    """``PATH=LOW:HIGH`` texts (the command line's ``--param``, the page's lines) as
    {pointer: [low, high]}; blank texts are skipped."""
    out = {}
    for text in texts:
        text = text.strip()
        if not text:
            continue
        pointer, _, bounds = text.rpartition("=")
        low, _, high = bounds.partition(":")
        try:
            out[pointer] = [float(low), float(high)]
        except ValueError:
            raise PPAError(f"malformed parameter range {text[:80]!r}",
                           hint="write PATH=LOW:HIGH, e.g. /filter/args/1/const=30:60") from None
    return out


def format_listing(reply: dict[str, Any]) -> str:
    """``ppa review list`` as text: the plans to review, then the pins."""
    lines = [f"approval mode: {reply.get('mode')}"]
    items = [i for i in reply.get("items", []) if not i.get("pin")]
    pins = [i for i in reply.get("items", []) if i.get("pin")]
    if not items:
        lines.append("no plans to review")
    for item in items:
        decided = f" by {item['reviewer']}" if item.get("reviewer") else ""
        reason = f": {item['reason']}" if item.get("reason") else ""
        lines.append(f"{item['id']}  {item['status']:<9} {when(item['asked'])}  from "
                     f"{item['analyst']}  plan {item['plan_hash'][:12]}{decided}{reason}")
    for pin in pins:
        state = "expired" if pin.get("expired") else f"until {when(pin['expires'])}"
        params = format_params(pin["params"])
        lines.append(f"pin {pin['id']}  plan {pin['plan_hash'][:12]}  by {pin['reviewer']}  "
                     f"{state}" + (f"  varying {params}" if params else "  exactly"))
    return "\n".join(map(printable, lines))


def format_review(reply: dict[str, Any]) -> str:
    """``ppa review show`` as text: the plan in plain language."""
    item, view = reply["item"], reply["view"]
    lines = [f"plan {item['id']} from {item['analyst']} ({item['status']}), hash "
             f"{item['plan_hash']}", "",
             f"parties:     {view['parties']} (linked: {view['linked']})",
             f"cohort:      {view['cohort']}",
             f"groups:      {', '.join(view['groups'])}",
             "columns:"]
    lines += [f"  {c['name']:<28} {', '.join(c['uses'])}" + ("  (yours)" if c["yours"] else "")
              for c in view["columns"]]
    lines.append("statistics:")
    lines += [f"  {s}" for s in view["statistics"]]
    lines.append("opened (exactly these names, nothing else):")
    lines += [f"  {name}" for name in view["opened"]]
    lines.append("disclosure rules:")
    lines += [f"  {rule}" for rule in view["disclosure"]]
    lines += [f"linkage:     {view['linkage']}", f"cost:        {view['cost']}"]
    lines.append("similar plans released here:" if view["similar"] else
                 "similar plans released here: none")
    lines += [f"  {s['run_id']} {s['time']} by {s['analyst']}: cohort {s['cohort']}, groups "
              f"{', '.join(s['groups']) or 'none'}" for s in view["similar"]]
    if view["numbers"]:
        lines.append("numbers a pin may let vary (--param PATH=LOW:HIGH):")
        lines += [f"  {path} = {value:g}" for path, value in view["numbers"].items()]
    return "\n".join(map(printable, lines))
