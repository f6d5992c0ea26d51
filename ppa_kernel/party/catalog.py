"""A party's data as its kernel serves it: loaded once, described, and published as a
catalog of the columns its policy approves; and the check that a plan's claims about
those columns match what was published."""

from __future__ import annotations

import math

import pandas as pd

from ppa_kernel.contract.bounds import coarse
from ppa_kernel.contract.config import PartyConfig
from ppa_kernel.contract.errors import DataError, PlanError, PolicyRefused
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.limits import MAX_CATEGORICAL_INT_LEVELS, MAX_INTEGER_LEVELS

from .datasource import DataSourceError, describe_columns, load_table
from .policy import Policy, published_min_precision


def load_party_data(config: PartyConfig) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The party's table sorted by link key, and its column descriptions (a compute-only
    party: an empty table of link keys, and no columns)."""
    data = config.data
    if data is None:
        return pd.DataFrame({config.link_column: pd.Series([], dtype=object)}), {}
    try:
        frame = load_table(data["source"], table=data.get("table"), query=data.get("query"),
                           link=data["link"])
        described = describe_columns(frame, data["link"],
                                     categorical=set(data.get("categorical", [])))
    except DataSourceError as exc:
        raise DataError(str(exc), party=config.name) from None
    if frame.empty:
        raise DataError(f"{data['source']} has no rows", party=config.name,
                        hint="a party needs at least one record to take part")
    frame = frame.sort_values(data["link"], kind="stable").reset_index(drop=True)
    for column, meta in described.items():
        if meta["kind"] == "numeric":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif meta["kind"] == "bool":
            frame[column] = frame[column].astype("boolean")
    return frame, described


def check_policy_columns(party: str, policy: Policy, described: dict[str, dict],
                         link: str | None = None) -> None:
    """Refuse a policy (at start and on reload) whose ``[policy.columns]`` names a column
    the data does not have (an owner's typo would silently approve nothing), or whose
    ``[policy.quantile_precision]`` names no numeric column."""
    problems = [f"'policy.columns.{name}' names no column of the data"
                for name in sorted(policy.columns or {}) if name not in described
                and name != link]
    problems += [f"'policy.quantile_precision.{name}' names "
                 + ("no column of the data" if name not in described else
                    f"a {described[name]['kind']} column (numeric only)")
                 for name in sorted(policy.quantile_precision)
                 if described.get(name, {}).get("kind") != "numeric"]
    if problems:
        numeric = sorted(c for c, m in described.items() if m["kind"] == "numeric")
        hint = f"numeric columns: {', '.join(numeric) or 'none'}"
        if any(p.startswith("'policy.columns.") for p in problems):
            names = [*([link] if link else []), *described]
            hint = f"columns: {', '.join(names) or 'none'}; {hint}"
        raise PolicyRefused("invalid policy: " + "; ".join(problems), party=party, hint=hint)


MISSING_SHARE_STEP = 0.05
"""The published share of missing values is rounded to this (5 percentage points)."""


def coarse_share(missing: int, rows: int) -> float:
    """The share of missing values rounded to the nearest :data:`MISSING_SHARE_STEP`
    (exact counts are disclosive); 0.0 may still mean a few are missing."""
    if rows <= 0:
        return 0.0
    return round(round(missing / rows / MISSING_SHARE_STEP) * MISSING_SHARE_STEP, 2)


def integer_levels(meta: dict, limit: int) -> list[int] | None:
    """The levels of a numeric column of whole numbers (described ``meta``) whose coarse
    published range holds at most ``limit`` of them: every whole number of that range, so
    they tell no more than the range does; None for any other column."""
    if meta.get("kind") != "numeric" or not meta.get("whole") or meta.get("min") is None \
            or meta.get("max") is None:
        return None
    low, high = math.floor(coarse(meta["min"], False)), math.ceil(coarse(meta["max"], True))
    if high - low + 1 > limit:
        return None
    return list(range(low, high + 1))


def build_catalog(policy: Policy, described: dict[str, dict],
                  rows: int | None = None) -> dict[str, dict]:
    """What the party publishes per approved column: kind, levels (of a small whole-number
    range too: :func:`integer_levels`), coarse range, whether values are missing and (given
    the table's ``rows``) their share rounded to 5 percentage points, the minimum quantile
    precision and the approved uses."""
    rules = policy.columns
    out = {}
    for column, meta in described.items():
        if rules is not None and column not in rules:
            continue
        entry = {key: value for key, value in meta.items() if key != "whole"}
        entry["missing"] = bool(meta.get("missing"))  # whether; the share only coarsely
        if rows:
            entry["missing_share"] = coarse_share(int(meta.get("missing") or 0), rows)
        if entry["kind"] == "numeric":
            entry["min"], entry["max"] = coarse(meta["min"], False), coarse(meta["max"], True)
            entry["min_precision"] = published_min_precision(
                policy.min_precision(column, entry["min"], entry["max"]))
            levels = integer_levels(meta, policy.integer_levels)
            if levels is not None:
                entry["levels"] = levels
        entry["uses"] = sorted(rules[column].uses) if rules is not None else \
            ["filter", "group", "measure"]
        out[column] = entry
    return out


def check_claims(plan: dict, catalog: dict[str, dict], party: str) -> None:
    """Refuse a plan whose kind, range, missingness or group levels of one of ``party``'s
    columns differ from what it published."""
    for name, meta in plan["columns"].items():
        if meta["party"] == party:
            _check_column(name, meta, catalog, party)
    for entry in plan["groupby"]:
        if plan["columns"][entry["expr"]["col"]]["party"] == party:
            _check_levels(entry, catalog, party)


def _check_column(name: str, meta: dict, catalog: dict[str, dict], party: str) -> None:
    column = meta["column"]
    if column not in catalog:
        raise PlanError(f"unknown column {name!r}", party=party,
                        hint=f"{party} offers {', '.join(sorted(catalog))}")
    entry = catalog[column]
    if entry["kind"] != meta["kind"]:
        raise PlanError(f"column {name!r} is {entry['kind']}, "
                        f"not {meta['kind']}", party=party)
    if meta.get("missing", True) is False and entry["missing"]:
        raise PlanError(f"the plan says {name} has no missing values, but it has",
                        party=party, hint="refresh the catalog and rebuild the plan")
    if entry["kind"] == "numeric":
        published = [entry.get("min"), entry.get("max")]
        if None in published:
            published = [0.0, 0.0]  # no values: every row is missing
        if meta.get("range") is None or [float(b) for b in meta["range"]] != published:
            raise PlanError(f"column {name!r} must carry its published range "
                            f"{published[0]:g} .. {published[1]:g}", party=party,
                            hint="refresh the catalog and rebuild the plan")


def _check_levels(entry: dict, catalog: dict[str, dict], party: str) -> None:
    """A group on one of the party's columns uses exactly its published levels (or bins of
    a numeric column); extra levels would only cost inputs. A numeric column has levels
    only if this party published them, from its own data and policy."""
    column = entry["expr"]["col"].split(".", 1)[1]
    meta = catalog[column]
    if entry.get("bins") is not None:
        if meta["kind"] != "numeric":
            raise PlanError(f"group {entry['name']!r}: only numeric columns are binned",
                            party=party)
        return
    published = meta.get("levels")
    if meta["kind"] == "numeric" and published is None:
        raise PlanError(f"group {entry['name']!r}: {party} publishes no levels for numeric "
                        f"{column!r}", party=party, hint=declaration_hint(column))
    if published is None or sorted(map(canonical_json, entry["levels"])) != \
            sorted(map(canonical_json, published)):
        raise PlanError(f"group {entry['name']!r} must use the published levels of its "
                        "column", party=party,
                        hint="refresh the catalog and rebuild the plan")


def declaration_hint(column: str) -> str:
    """How a numeric column without levels becomes groupable (for refusals)."""
    return (f"group it in bins (histogram); or its owner declares it: [policy] "
            f"integer_levels = N when its range holds N whole numbers (at most "
            f"{MAX_INTEGER_LEVELS}), or [data] categorical = [\"{column}\"] for at most "
            f"{MAX_CATEGORICAL_INT_LEVELS} distinct whole numbers")
