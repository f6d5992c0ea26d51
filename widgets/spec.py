"""Query specs: the plain data behind the query builder panel and the study notebook.

A :class:`QuerySpec` names the parties to link, an outcome (a column or an expression),
a statistic, the groups, a cohort condition and a minimum cell size. Its fields are the
papermill parameters of ``02-app-effect-study.ipynb``, so a spec saved with
:func:`save_spec` runs there with ``papermill ... -f query.yaml``. Everything the panel
does goes through the functions here: :func:`spec_query` makes the secure-frame query,
:func:`spec_to_code` the equivalent ``%%secure`` cell, :func:`run_spec` runs it.
"""

from __future__ import annotations

import ast
import json
import keyword
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ppa_kernel.analyst.expressions import (
    expression_code,
    parse_expression,
    parse_tree,
    plain_column,
)
from ppa_kernel.analyst.frame import Query, SecureFrame
from ppa_kernel.contract.errors import ExportError, PlanError
from ppa_kernel.contract.plan import AGGREGATES

logger = logging.getLogger(__name__)

STATISTICS = tuple(s for s in AGGREGATES if s != "size")
"""The builder's statistics: the plan's aggregates of one outcome."""
OUTCOME = "outcome"
"""Name the outcome expression gets in the query when it is not a plain column."""
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class QuerySpec:
    """One analysis: statistic of an outcome per group, in a cohort of the linked parties."""

    parties: list[str] = field(default_factory=list)  # parties to link; empty = all
    outcome: str = ""  # expression text for the measure; "" = count rows only
    statistic: str = "mean"  # count, sum, mean, var, std
    group_by: list[str] = field(default_factory=list)
    cohort: str = ""  # condition expression text; "" = everyone
    min_cell_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON/YAML values (the papermill parameters)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpec:
        """A spec from a (partial) dict such as papermill parameters; unknown keys refused.

        Lists may also be given as comma-separated text (``"income_band, app_user"``) and
        ``min_cell_size`` as digits, as ``papermill -p`` passes them.
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"a query spec must be a mapping, not {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = [str(key) for key in data if key not in names]
        if unknown:
            raise PlanError(f"unknown query spec key(s): {', '.join(unknown)}",
                            hint=f"the keys are {', '.join(names)}")
        values: dict[str, Any] = {}
        for key in ("parties", "group_by"):
            if key in data:
                values[key] = _names(key, data[key])
        for key in ("outcome", "cohort"):
            if key in data:
                values[key] = _text(key, data[key])
        if "statistic" in data:
            values["statistic"] = _statistic_name(data["statistic"])
        if "min_cell_size" in data:
            values["min_cell_size"] = _cell_size(data["min_cell_size"])
        return cls(**values)


def _names(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, Mapping) \
            and all(isinstance(v, str) for v in value):
        return list(value)
    raise PlanError(f"{key} must be a list of names, not {value!r}")


def _text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PlanError(f"{key} must be text (an expression), not {value!r}")
    return value


def _statistic_name(value: Any) -> str:
    if value not in STATISTICS:
        raise PlanError(f"unknown statistic {value!r}", hint=f"use one of {', '.join(STATISTICS)}")
    return value


def _cell_size(value: Any) -> int | None:
    if value is None or value == "" or value == "None":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"min_cell_size must be a positive whole number, not {value!r}")
    return value


def check_spec(spec: QuerySpec) -> QuerySpec:
    """The spec with its values checked (and normalised) as :meth:`QuerySpec.from_dict` does."""
    return QuerySpec.from_dict(spec.to_dict())


# ------------------------------------------------------------------------------ files
def load_spec(path: str | Path) -> QuerySpec:
    """Read a spec from YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (*YAML_SUFFIXES, ".json"):
        raise PlanError(f"cannot read a query spec from {path.name}",
                        hint="use a .yaml, .yml or .json file")
    text = path.read_text(encoding="utf-8")
    data = _read_yaml(path, text) if suffix in YAML_SUFFIXES else _read_json(path, text)
    return QuerySpec.from_dict(data if data is not None else {})


def _read_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"{path.name} is not valid YAML: {exc}") from None


def _read_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path.name} is not valid JSON: {exc}") from None


def save_spec(spec: QuerySpec, path: str | Path) -> Path:
    """Write the spec as YAML or JSON (by suffix); return the absolute path written.

    The folder must exist: a typo in a path should not silently create folders.
    """
    path = Path(path).expanduser()
    data = check_spec(spec).to_dict()
    if path.suffix.lower() in YAML_SUFFIXES:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)
    elif path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        raise PlanError(f"cannot write a query spec to {path.name}",
                        hint="use a .yaml, .yml or .json file")
    if not path.parent.is_dir():
        raise ExportError(f"folder {path.parent.absolute()} does not exist",
                          hint="create it first, or export to an existing folder")
    path.write_text(text, encoding="utf-8")
    logger.info("query spec written to %s", path)
    return path.resolve()


# ---------------------------------------------------------------------------- queries
def _measure(spec: QuerySpec) -> tuple[str | None, bool]:
    """The name to aggregate (None: count rows) and whether it is an assigned expression."""
    text = spec.outcome.strip()
    if not text:
        return None, False
    column = plain_column(text)
    return (column, False) if column is not None else (OUTCOME, True)


def _aggregates(spec: QuerySpec, measure: str | None) -> dict[str, Any]:
    if measure is None:
        return {"n": "size"}
    aggregates: dict[str, Any] = {"n": (measure, "count")}
    if spec.statistic != "count":
        aggregates[spec.statistic] = (measure, spec.statistic)
    return aggregates


def spec_frame(spec: QuerySpec, consortium: Any) -> tuple[SecureFrame, str | None]:
    """The spec's cohort as a secure frame, and the name of its outcome column there."""
    spec = check_spec(spec)
    frame: SecureFrame = consortium.link(*spec.parties)
    measure, assigned = _measure(spec)
    if assigned:
        frame = frame.assign(**{OUTCOME: parse_expression(spec.outcome, frame)})
    if spec.cohort.strip():
        frame = frame[parse_expression(spec.cohort, frame)]
    return frame, measure


def spec_query(spec: QuerySpec, consortium: Any) -> Query:
    """The secure-frame query a spec describes, on ``consortium``'s parties."""
    spec = check_spec(spec)
    frame, measure = spec_frame(spec, consortium)
    grouped = frame.groupby(list(spec.group_by)) if spec.group_by else frame
    query = grouped.agg(**_aggregates(spec, measure))
    if spec.min_cell_size is not None:
        query = query.with_min_cell_size(spec.min_cell_size)
    return query


def spec_to_code(spec: QuerySpec, out: str = "result") -> str:
    """The ``%%secure -o OUT`` cell that builds the same plan as :func:`spec_query`."""
    if not out.isidentifier() or keyword.iskeyword(out):
        raise PlanError(f"{out!r} is not a valid variable name")
    spec = check_spec(spec)
    lines = [f"%%secure -o {out}", f"t = link({', '.join(map(repr, spec.parties))})"]
    measure, assigned = _measure(spec)
    if assigned:
        lines.append(f"t = t.assign({OUTCOME}={expression_code(spec.outcome, 't')})")
    if spec.cohort.strip():
        lines.append(f"t = t[{expression_code(spec.cohort, 't')}]")
    steps = ["t"]
    if spec.group_by:
        steps.append(f".groupby({list(spec.group_by)!r})")
    aggregates = ", ".join(f"{name}={value!r}"
                           for name, value in _aggregates(spec, measure).items())
    steps.append(f".agg({aggregates})")
    if spec.min_cell_size is not None:
        steps.append(f".with_min_cell_size({spec.min_cell_size})")
    one_line = "".join(steps)
    if len(one_line) <= 90 or len(steps) <= 2:
        lines.append(one_line)
    else:
        lines.append("(" + steps[0] + steps[1])
        lines.extend(" " + step for step in steps[2:])
        lines[-1] += ")"
    return "\n".join(lines) + "\n"


def run_spec(spec: QuerySpec, consortium: Any, *, timeout: float | None = None,
             progress: Any = None) -> pd.DataFrame:
    """Run the spec's query at the parties; return the released table."""
    query = spec_query(spec, consortium)
    logger.info("running query spec, plan %s", query.plan_hash()[:12])
    return query.collect(timeout=timeout, progress=progress)


def figure_column(result: pd.DataFrame) -> str:
    """The column a figure of a spec's result shows: its statistic, else the count."""
    statistics = result.attrs.get("statistics", {})
    for name, stat in statistics.items():
        if stat not in ("count", "size") and name in result.columns:
            return name
    return next(iter(statistics), result.columns[0])


def spec_figure(result: pd.DataFrame, *, title: str | None = None) -> Any:
    """A matplotlib Figure of a released result (via :func:`ppa_kernel.analyst.plotting.plot`)."""
    from matplotlib.figure import Figure

    from ppa_kernel.analyst.plotting import plot

    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    plot(result, y=figure_column(result), ax=figure.add_subplot(), title=title)
    return figure


# ---------------------------------------------------------------------------- choices
def _expressible(name: str) -> bool:
    """Whether a column name can be written in an expression."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")


def catalog_choices(catalog: Mapping[str, Mapping[str, Mapping]],
                    parties: Iterable[str] = ()) -> dict[str, Any]:
    """What the chosen parties' policies allow, by use, under the names a frame resolves.

    Returns ``{"filter": {name: {"kind", "levels"} | {"kind", "min", "max"}},
    "group": {name: levels}, "measure": [names]}``; a name is ``party.column`` only
    where the bare column name is at more than one of the chosen parties (empty: all).
    """
    choices: dict[str, Any] = {"filter": {}, "group": {}, "measure": []}
    for name, (party, column) in column_names(catalog, parties).items():
        _add_choice(choices, name, column, catalog[party][column])
    return choices


def column_names(catalog: Mapping[str, Mapping[str, Mapping]],
                 parties: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Each column of the chosen parties (empty: all) by the name a frame resolves:
    ``{name: (party, column)}``, the name ``party.column`` where the bare one is ambiguous."""
    chosen = list(parties) or list(catalog)
    unknown = [p for p in chosen if p not in catalog]
    if unknown:
        raise PlanError(f"unknown parties {', '.join(unknown)}",
                        hint=f"parties are {', '.join(catalog)}")
    counts: dict[str, int] = {}
    for party in chosen:
        for column in catalog[party]:
            counts[column] = counts.get(column, 0) + 1
    return {(column if counts[column] == 1 else f"{party}.{column}"): (party, column)
            for party in chosen for column in catalog[party]}


def _add_choice(choices: dict[str, Any], name: str, column: str, meta: Mapping) -> None:
    uses = set(meta.get("uses") or ())  # no published uses: approved for nothing
    kind = meta.get("kind")
    levels = [False, True] if kind == "bool" and not meta.get("levels") else meta.get("levels")
    # a numeric column with published levels is an integer code (``[policy] integer_levels``)
    if "group" in uses and kind in ("categorical", "bool", "numeric") and levels is not None:
        choices["group"][name] = list(levels)
    if not _expressible(column):
        return
    if "measure" in uses and kind == "numeric":
        choices["measure"].append(name)
    if "filter" in uses:
        if kind == "numeric":
            choices["filter"][name] = {"kind": kind, "min": meta.get("min"),
                                       "max": meta.get("max")}
        elif levels is not None:
            choices["filter"][name] = {"kind": kind, "levels": list(levels)}


def filter_condition(name: str, choice: Mapping[str, Any], *, values: Iterable[Any] = (),
                     low: float | None = None, high: float | None = None) -> str:
    """Condition text for one filter choice: ``region in ['North']``, ``age >= 40 and ...``."""
    if choice["kind"] == "numeric":
        parts = [f"{name} >= {_number(low)}" if low is not None else "",
                 f"{name} <= {_number(high)}" if high is not None else ""]
        parts = [p for p in parts if p]
        if not parts:
            raise PlanError(f"give a range for {name}")
        return " and ".join(parts)
    chosen = list(values)
    if not chosen:
        raise PlanError(f"choose at least one value of {name}")
    unknown = [v for v in chosen if v not in choice["levels"]]
    if unknown:
        raise PlanError(f"{unknown!r} are not values of {name}")
    if len(chosen) == 1:
        return f"{name} == {chosen[0]!r}"
    return f"{name} in {chosen!r}"


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def combine_conditions(conditions: Iterable[str]) -> str:
    """One cohort condition: the conditions joined with ``and`` (an ``or`` in parentheses)."""
    parts = [c.strip() for c in conditions if c and c.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " and ".join(f"({c})" if _needs_parentheses(c) else c for c in parts)


def _needs_parentheses(condition: str) -> bool:
    try:
        tree = parse_tree(condition)
    except PlanError:
        return True
    return isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.Or)
