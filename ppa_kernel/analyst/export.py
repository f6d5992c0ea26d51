"""Released results for output checkers: a SACRO-style folder, like ACRO's ``finalise``.

::

    export(folder, {"effect": effect, "ages": ages})   # or result.ppa.export(folder)

    folder/
        results.json                 # per output: uid, status, type, properties, files,
                                     #   outcome per cell, plan and hash, summary, comments
        effect.csv                   # each table (counts as integers)
        effect.png                   # its figure, where a figure makes sense
        chi2.table.csv               # a table a result carries in its attrs (chi2's crosstab)
        checksums/effect.csv.txt     # SHA-256 (hex) of each file above

An output's status is ``pass`` when every cell was released, ``review`` when disclosure
control suppressed some (the checker looks) and ``fail`` for a mock (design mode: synthetic
data, its files named ``-MOCK``) or a table without a valid release stamp (raw or edited).
The folder is written as a hidden sibling and renamed at the end, so a failure leaves
nothing half-written; an existing folder is never written into.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppa_kernel.contract import VERSION
from ppa_kernel.contract.errors import ExportError, PlanError

from .plotting import COUNT_STATS, FIGSIZE, plot
from .results import MOCK_RELEASE_KEY, RELEASE_KEY, is_mock, reason_text, released_plan

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
CHECKSUMS = "checksums"
MOCK_SUMMARY = "MOCK (synthetic data, not a release)"
RELEASED, MOCK_CELL, NOT_RELEASED = "released", "mock", "not released"
"""Outcome of a cell that was not suppressed: in a release, a mock, or neither."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""An output's name, which names its files (no dots, so no name can clash with another's)."""
MODEL_TYPES = {"ols": "regression", "logit": "regression", "ttest": "hypothesis test",
               "chi2": "hypothesis test", "corr": "correlation", "km": "survival table",
               "quantile": "quantiles"}
_RUN_ATTRS = {"suppressed", "reasons", "statistics", "plan_hash", "plan", "multiplicity",
              "phases", "peak_rss_mb", "input_widths", "reused_widths", RELEASE_KEY,
              MOCK_RELEASE_KEY, "run_id", "mock", "approvers", "receipt"}
"""Result attrs described elsewhere in an output's record (the others are model details)."""
DPI = 120

Results = pd.DataFrame | Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame]
Comments = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


def export(folder: str | os.PathLike, results: Results, *, comments: Comments = None) -> Path:
    """Write ``results`` (name -> table, a list named ``output_0``, ``output_1``, ... by
    position, or one table) and their checks to a new ``folder``; return its path.

    ``comments`` for the output checker: text or a list of texts for every output, or a
    mapping from output names to them.
    """
    named = _named(results)
    notes = _comments(comments, list(named))
    target = _target(folder)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    work = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    work.mkdir()  # a hidden sibling, renamed when complete
    try:
        records = {name: _write_output(work, name, frame, notes.get(name, []), now)
                   for name, frame in named.items()}
        document = {"version": f"ppa-workbench {VERSION}",
                    "mock": any(r["properties"]["mock"] for r in records.values()),
                    "timestamp": now, "results": records}
        (work / RESULTS_FILE).write_text(json.dumps(_jsonable(document), indent=2,
                                                    allow_nan=False) + "\n", encoding="utf-8")
        _write_checksums(work)
        if target.exists():  # made while we wrote: still never replace it
            raise _exists(target)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %d outputs to %s", len(records), target)
    return target


# ------------------------------------------------------------------------------ arguments
def _named(results: Results) -> dict[str, pd.DataFrame]:
    if isinstance(results, pd.DataFrame):
        results = [results]
    if isinstance(results, Mapping):
        named = dict(results)
    elif isinstance(results, Sequence) and not isinstance(results, str):
        named = {f"output_{i}": frame for i, frame in enumerate(results)}
    else:
        raise ExportError(f"cannot export {type(results).__name__} results",
                          hint="pass a dict of name -> released table, or a list of tables")
    if not named:
        raise ExportError("nothing to export", hint="pass at least one released table")
    seen: dict[str, str] = {}
    for name, frame in named.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ExportError(f"{name!r} cannot name an output's files",
                              hint="use letters, digits, '_' and '-' (at most 64, no dots)")
        if name.lower() in seen:
            raise ExportError(f"outputs {seen[name.lower()]!r} and {name!r} would share files",
                              hint="names must differ in more than upper and lower case")
        seen[name.lower()] = name
        if not isinstance(frame, pd.DataFrame):
            raise ExportError(f"output {name!r} is a {type(frame).__name__}, not a table",
                              hint="export the DataFrames that secure runs returned")
    return named


def _comments(comments: Comments, names: list[str]) -> dict[str, list[str]]:
    def texts(value: Any, what: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ExportError(f"comments {what} must be text or a list of texts",
                          hint="e.g. comments='cohort: age >= 40'")

    if comments is None:
        return {}
    if isinstance(comments, Mapping):
        unknown = [n for n in comments if n not in names]
        if unknown:
            raise ExportError(f"comments for unknown outputs {unknown}",
                              hint=f"the outputs are {', '.join(names)}")
        return {name: texts(value, f"for {name!r}") for name, value in comments.items()}
    shared = texts(comments, "")
    return {name: list(shared) for name in names}


def _target(folder: str | os.PathLike) -> Path:
    target = Path(folder).expanduser().absolute()
    if target.exists() or target.is_symlink():
        raise _exists(target)
    if not target.parent.is_dir():
        raise ExportError(f"{target.parent} does not exist; not creating it",
                          hint="create the parent folder first, or export somewhere else")
    return target


def _exists(target: Path) -> ExportError:
    return ExportError(f"{target} exists; not writing into it",
                       hint="export to a new folder (an output checker gets one folder "
                            "per request), or move the old one away")


# -------------------------------------------------------------------------------- outputs
def _write_output(folder: Path, name: str, frame: pd.DataFrame, comments: list[str],
                  now: str) -> dict:
    """Write one output's files; return its record for ``results.json``."""
    attrs = frame.attrs
    mock = is_mock(frame)  # fail safe: anything marked mock is one
    plan, problem = _release(frame, mock)
    reasons = _cell_reasons(frame, plan)
    suppressed = reasons.notna()
    counts = Counter(reasons.to_numpy().reshape(-1)[suppressed.to_numpy().reshape(-1)])
    status = "fail" if mock or problem else "review" if counts else "pass"
    kept = MOCK_CELL if mock else NOT_RELEASED if problem else RELEASED
    outcome = reasons.astype(object).where(suppressed, kept)
    sdc = _sdc(suppressed, reasons)
    suffix = "-MOCK" if mock else ""
    files = [{"name": _write_csv(folder / f"{name}{suffix}.csv", frame, plan, mock),
              "sdc": sdc}]
    for key, extra in attrs.items():  # released tables beside the result (chi2's crosstab)
        if isinstance(extra, pd.DataFrame) and key not in ("suppressed", "reasons"):
            why = _cell_reasons(extra, None)
            files.append({"name": _write_csv(folder / f"{name}.{key}{suffix}.csv", extra,
                                             None, mock, integral_as_int=True),
                          "sdc": _sdc(why.notna(), why)})
    if not problem and _write_figure(folder / f"{name}{suffix}.png", frame, plan):
        files.append({"name": f"{name}{suffix}.png", "sdc": sdc})
    return {"uid": name, "status": status, "type": output_type(plan),
            "properties": _properties(frame, plan, suppressed, counts, mock),
            "files": files,
            "outcome": _split(outcome),
            "plan": plan, "plan_hash": attrs.get("plan_hash"),
            "summary": _summary(status, mock, problem, counts, suppressed.size),
            "timestamp": now, "comments": comments}


def _release(frame: pd.DataFrame, mock: bool) -> tuple[dict | None, str | None]:
    """(plan, None) for a released (or intact mock) table; (its plan if any, what is
    wrong) otherwise."""
    try:
        return released_plan(frame, allow_mock=mock), None
    except PlanError:
        plan = frame.attrs.get("plan") if isinstance(frame.attrs.get("plan"), dict) else None
        if not frame.attrs.get(RELEASE_KEY) or plan is None:
            return plan, "not a released result (no release stamp)"
        return plan, "the table differs from what the parties released"


def output_type(plan: dict | None) -> str:
    """The kind of output, in ACRO's words where it has them (table, histogram, regression)."""
    if plan is None:
        return "table"
    if plan.get("model") is not None:
        return MODEL_TYPES.get(plan["model"]["kind"], plan["model"]["kind"])
    groups = plan.get("groupby") or []
    return "histogram" if len(groups) == 1 and groups[0].get("bins") is not None else "table"


def _crosstab(frame: pd.DataFrame, plan: dict | None) -> bool:
    return (bool(plan) and plan.get("model") is None and len(plan.get("groupby") or []) == 2
            and not isinstance(frame.index, pd.MultiIndex))


def _method(frame: pd.DataFrame, plan: dict) -> str | None:
    """How the result was made: the model's kind, crosstab, histogram or groupby."""
    if not plan:
        return None
    if plan.get("model") is not None:
        return plan["model"]["kind"]
    return "crosstab" if _crosstab(frame, plan) else \
        "histogram" if output_type(plan) == "histogram" else "groupby"


def _cell_reasons(frame: pd.DataFrame, plan: dict | None) -> pd.DataFrame:
    """Per cell of ``frame``, why it was suppressed (as a reader sees it) or None."""
    mask = frame.attrs.get("suppressed")
    if isinstance(mask, pd.DataFrame):
        mask = mask.reindex_like(frame).astype("boolean").fillna(False).astype(bool)
    else:
        mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    known = frame.attrs.get("reasons")
    if isinstance(known, pd.DataFrame) and _crosstab(frame, plan) and known.shape[1] == 1:
        known = known.iloc[:, 0].unstack(level=1)  # long cells -> the crosstab's shape
    if isinstance(known, pd.DataFrame):
        known = known.reindex_like(frame)
    else:
        known = pd.DataFrame(None, index=frame.index, columns=frame.columns, dtype=object)
    fallback = frame.attrs.get("refused") or "disclosure control"
    k = (plan or {}).get("min_cell_size")
    texts = [[reason_text(r if isinstance(r, str) and r else fallback, k) if gone else None
              for r, gone in zip(row, gones, strict=True)]
             for row, gones in zip(known.to_numpy(), mask.to_numpy(), strict=True)]
    return pd.DataFrame(texts, index=frame.index, columns=frame.columns, dtype=object)


def _sdc(suppressed: pd.DataFrame, reasons: pd.DataFrame) -> dict:
    """ACRO's per-file ``sdc``: suppressed-cell counts and [row, column] positions by reason."""
    cells: dict[str, list[list[int]]] = {}
    for i, j in zip(*np.nonzero(suppressed.to_numpy()), strict=True):
        cells.setdefault(reasons.iat[i, j], []).append([int(i), int(j)])
    return {"summary": {"suppressed": bool(cells), **{r: len(c) for r, c in cells.items()}},
            "cells": cells}


def _split(table: pd.DataFrame) -> dict:
    """A table as JSON of the same shape: index, columns (with their names) and rows."""
    return {"index_names": list(table.index.names), "columns_name": table.columns.name,
            "index": list(table.index), "columns": list(table.columns),
            "data": table.to_numpy().tolist()}


def _summary(status: str, mock: bool, problem: str | None, counts: Counter, cells: int) -> str:
    head = MOCK_SUMMARY if mock else status
    if problem:
        return f"{head}; {problem}"
    if not counts:
        return f"{head}; all {cells} cells released"
    why = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    return f"{head}; {sum(counts.values())} of {cells} cells suppressed ({why})"


def _properties(frame: pd.DataFrame, plan: dict | None, suppressed: pd.DataFrame,
                counts: Counter, mock: bool) -> dict:
    attrs = frame.attrs
    stamp = attrs.get(MOCK_RELEASE_KEY if mock else RELEASE_KEY) or {}
    plan = plan or {}
    model = plan.get("model")
    properties = {
        "approvers": attrs.get("approvers"), "receipt": attrs.get("receipt"),
        "method": _method(frame, plan),
        "plan_hash": attrs.get("plan_hash"), "run_id": stamp.get("run_id"),
        "values_digest": stamp.get("digest"), "mock": mock,
        "statistics": attrs.get("statistics") or ({"model": model["kind"]} if model else {}),
        "parties": plan.get("parties"), "linked": plan.get("link"),
        "groupby": [e["name"] for e in plan.get("groupby") or []],
        "min_cell_size": plan.get("min_cell_size"), "disclosure": plan.get("disclosure"),
        "cells": int(suppressed.size), "suppressed_cells": int(sum(counts.values())),
        "suppression_reasons": dict(counts),
        "linkage_multiplicity": attrs.get("multiplicity"),
    }
    if model:
        properties["min_residual_df"] = plan.get("min_residual_df")
        properties["details"] = {key: value for key, value in attrs.items()
                                 if key not in _RUN_ATTRS and not isinstance(value, pd.DataFrame)}
    return properties


# ---------------------------------------------------------------------------------- files
def _write_csv(path: Path, table: pd.DataFrame, plan: dict | None, mock: bool, *,
               integral_as_int: bool = False) -> str:
    """Write a table as CSV (counts as integers; a mock's first line says so)."""
    shown = table.copy()
    shown.attrs = {}
    if _crosstab(table, plan):
        counts = list(shown.columns)
    elif plan is not None and plan.get("model") is not None:
        counts = [c for c in shown.columns if str(c) == "n" or str(c).startswith("n[")]
    elif plan is not None:
        counts = [c for c, stat in table.attrs.get("statistics", {}).items()
                  if stat in COUNT_STATS and c in shown.columns]
    else:
        counts = list(shown.columns) if integral_as_int else []
    for column in counts:
        values = shown[column]
        if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            shown[column] = values.astype("Int64")
    with path.open("w", encoding="utf-8", newline="") as handle:
        if mock:
            handle.write(f"# {MOCK_SUMMARY}\n")
        shown.to_csv(handle)
    return path.name


def _write_figure(path: Path, frame: pd.DataFrame, plan: dict | None) -> bool:
    """Draw a grouped table or histogram (not models or single rows); False if none."""
    if plan is None or plan.get("model") is not None or not plan.get("groupby"):
        return False
    from matplotlib.figure import Figure  # no pyplot: nothing shows up in the notebook

    figure = Figure(figsize=FIGSIZE, layout="constrained")
    try:
        plot(frame, ax=figure.subplots())
    except PlanError as exc:  # e.g. three group variables
        logger.debug("no figure for %s: %s", path.stem, exc)
        return False
    figure.savefig(path, dpi=DPI)
    return True


def _write_checksums(folder: Path) -> None:
    """``checksums/<file>.txt``: the SHA-256 hex digest of each file of ``folder``."""
    sums = folder / CHECKSUMS
    sums.mkdir()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            (sums / f"{path.name}.txt").write_text(digest, encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars as Python ones, NaN as null, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


__all__ = ["export", "output_type"]
