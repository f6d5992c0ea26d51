"""Released statistics to pandas: the table an analyst sees.

Parties return integer sufficient statistics per cell (counts, sums, sums of squares at
a known fixed-point scale). Means and variances are computed here exactly from them.
Counts (``count``, ``size``, histogram and crosstab cells) are pandas nullable ``Int64``
columns, so they print as integers; means, sums and the rest are floats. Suppressed cells
are missing (``<NA>`` in counts, NaN elsewhere) in the table and True in
``df.attrs["suppressed"]``; why each
was suppressed (minimum size, dominance, p-ratio, differencing) is in
``df.attrs["reasons"]`` (None where released). When every cell is suppressed,
``df.attrs["notice"]`` says so (an empty cohort, or one below the minimum size k) and the
notebook display shows it above the table.

A table a run released carries a stamp (``df.attrs["release"]``: run, plan hash, values
digest). A result of a mock consortium (design mode, :mod:`.mock`) never does: it has
``df.attrs["mock"] = True`` and its own stamp under ``"mock_release"`` whose digest is
taken in another domain, so code that looks for a release stamp finds none, and a mock
stamp moved under ``"release"`` does not verify (:func:`released_plan`).
"""

from __future__ import annotations

import hashlib
import html
from fractions import Fraction

import numpy as np
import pandas as pd

from ppa_kernel.contract.errors import PlanError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.models import model_kind
from ppa_kernel.contract.models.base import UNGROUPED, as_counts
from ppa_kernel.contract.models.chi2 import crosstab_table
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.program import SCALE_BITS, cell_levels

SUPPRESSED = "suppressed"
COUNT_STATS = ("count", "size")
RELEASE_KEY = "release"
MOCK_KEY = "mock"
"""``df.attrs["mock"] is True`` on every result of a mock consortium (and its parts)."""
MOCK_RELEASE_KEY = "mock_release"
NOTICE_KEY = "notice"
"""``df.attrs["notice"]``: a sentence shown above the table (every cell suppressed)."""
MOCK_CAPTION = "MOCK \u2014 synthetic data, not a release"
_MOCK_DOMAIN = "ppa-mock-result\n"


def _cell_value(stat: str, count: int | None, total: int | None, sumsq: int | None,
               scale: int) -> float:
    if count is None:
        return float("nan")
    if stat in COUNT_STATS:
        return float(count)
    unit = Fraction(1, 1 << (SCALE_BITS * scale))
    if stat == "sum":
        return float(total * unit)
    if count == 0:
        return float("nan")
    if stat == "mean":
        return float(Fraction(total, count) * unit)
    if count < 2:
        return float("nan")
    var = Fraction(count * sumsq - total * total, count * (count - 1)) * unit * unit
    return float(var) if stat == "var" else float(np.sqrt(float(var)))


def to_frame(plan: dict, stats: dict) -> pd.DataFrame:
    """The released table for one plan, indexed by its groups."""
    cells = cell_levels(plan)
    names = [e["name"] for e in plan["groupby"]]
    data, mask, reasons = {}, {}, {}
    for agg in plan["aggregates"]:
        key = "size" if agg["stat"] == "size" else canonical_json(agg["expr"])
        counts = stats["counts"][key]
        sums = stats["sums"].get(key, [None] * len(counts))
        sumsqs = stats["sumsqs"].get(key, [None] * len(counts))
        scale = stats["scales"].get(key, 0)
        data[agg["name"]] = [_cell_value(agg["stat"], c, s, q, scale)
                             for c, s, q in zip(counts, sums, sumsqs)]
        mask[agg["name"]] = [c is None for c in counts]
        known = (stats.get("reasons") or {}).get(key)  # absent: the minimum size only
        why = known or ["minimum size"] * len(counts)
        reasons[agg["name"]] = [(w or "disclosure control") if c is None else None
                                for c, w in zip(counts, why)]
    if names:
        index = pd.MultiIndex.from_tuples([tuple(c[n] for n in names) for c in cells],
                                          names=names)
        if len(names) == 1:
            index = index.get_level_values(0)
    else:
        index = ungrouped_index()
    frame = pd.DataFrame(data, index=index)
    frame.attrs["suppressed"] = pd.DataFrame(mask, index=index)
    frame.attrs["reasons"] = pd.DataFrame(reasons, index=index, dtype=object)
    frame.attrs["statistics"] = {agg["name"]: agg["stat"] for agg in plan["aggregates"]}
    frame.attrs["plan_hash"] = plan_hash(plan)
    frame.attrs["plan"] = plan
    if plan.get("model") is not None:
        table = model_kind(plan).table(plan, stats, frame)
        table.attrs.update({k: v for k, v in frame.attrs.items()
                            if k not in ("suppressed", "reasons")},
                           statistics={})
        return table
    return integer_counts(frame)


def ungrouped_index() -> pd.Index:
    """The index of an ungrouped result: one row labelled :data:`UNGROUPED`."""
    return pd.Index([UNGROUPED])


def integer_counts(frame: pd.DataFrame, columns: list | None = None) -> pd.DataFrame:
    """``frame`` with its count columns (by ``attrs["statistics"]``, or ``columns``) as
    nullable ``Int64``: released counts print as integers, suppressed ones as ``<NA>``."""
    if columns is None:
        columns = [name for name, stat in frame.attrs.get("statistics", {}).items()
                   if stat in COUNT_STATS and name in frame.columns]
    for name in columns:
        if pd.api.types.is_float_dtype(frame[name]):
            frame[name] = as_counts(frame[name])
    return frame


LAYOUTS = ("table", "crosstab")
"""How a released table is shaped: one row per cell, or a two-way table of counts."""


def check_layout(layout: object) -> None:
    """PlanError unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise PlanError(f"unknown layout {layout!r}", hint=f"use one of {', '.join(LAYOUTS)}")


def released_table(plan: dict, stats: dict, run_id: str, *, layout: str = "table",
                   attrs: dict | None = None, mock: bool = False) -> pd.DataFrame:
    """The one way a run's statistics become the analyst's table: shaped from the plan
    (:func:`layout_table`), given the run's ``attrs``, and stamped once (a ``mock``
    consortium's run: as a mock result, :func:`stamp_mock`)."""
    frame = layout_table(to_frame(plan, stats), plan, layout)
    frame.attrs.update(attrs or {})
    notice = empty_notice(frame)
    if notice:
        frame.attrs[NOTICE_KEY] = notice
    return stamp_mock(frame, run_id) if mock else stamp_release(frame, run_id)


def empty_notice(frame: pd.DataFrame) -> str | None:
    """A sentence when every cell of a result is suppressed (None otherwise): the cohort
    is empty or smaller than the minimum cell size k of the plan."""
    mask = _suppressed_mask(frame)
    if not mask.size or not mask.to_numpy().all():
        return None
    k = (frame.attrs.get("plan") or {}).get("min_cell_size")
    reasons = suppression_reasons(frame) - {"minimum size"}
    if reasons:
        return f"Every cell is suppressed ({', '.join(sorted(reasons))})."
    size = f"has fewer than k={k} rows (the minimum cell size)" if k else \
        "is below the minimum cell size"
    return f"Every cell is suppressed: this cohort is empty or {size}."


def layout_table(frame: pd.DataFrame, plan: dict, layout: str = "table") -> pd.DataFrame:
    """A table of :func:`to_frame` in a layout: as it is (``table``), or the counts of a
    two-way grouping as rows = index levels x columns = column levels (``crosstab``,
    like :func:`pandas.crosstab`; its ``suppressed`` mask takes the same shape)."""
    check_layout(layout)
    if layout == "table":
        return frame
    table = crosstab_table(plan, frame)
    table.attrs = {**frame.attrs, "suppressed": table.attrs["suppressed"]}
    if plan["aggregates"][0]["stat"] in COUNT_STATS:
        integer_counts(table, list(table.columns))
    return table


def _values_digest(frame: pd.DataFrame, domain: str = "") -> str:
    """SHA-256 of a table's index, columns and values (NaN included), after ``domain``."""
    body = frame.to_json(orient="split", double_precision=15, default_handler=str)
    return hashlib.sha256((domain + body).encode()).hexdigest()


def stamp_release(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Mark ``frame`` as the table a run released: its run, plan hash and a values digest.

    The stamp guards the analyst against mistakes (plotting a raw or edited table as if
    the parties had released it); it is not a security boundary -- the analyst's own
    kernel could forge it, and needs no forging to see what was released anyway.
    """
    frame.attrs[RELEASE_KEY] = {"run_id": run_id, "plan_hash": frame.attrs.get("plan_hash"),
                                "digest": _values_digest(frame)}
    frame.attrs["run_id"] = run_id
    return frame


def stamp_mock(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Mark a table a mock consortium returned as a mock result, never a release: no
    release stamp, ``attrs["mock"]`` (here and on the tables in its attrs) and a stamp
    under :data:`MOCK_RELEASE_KEY` whose digest is taken in the mock domain."""
    frame.attrs.pop(RELEASE_KEY, None)
    mark_mock(frame)
    frame.attrs[MOCK_RELEASE_KEY] = {"run_id": run_id, "plan_hash": frame.attrs.get("plan_hash"),
                                     "digest": _values_digest(frame, _MOCK_DOMAIN), "mock": True}
    frame.attrs["run_id"] = run_id
    return frame


def mark_mock(frame: pd.DataFrame, _seen: set[int] | None = None) -> pd.DataFrame:
    """Set ``attrs["mock"] = True`` on ``frame`` and on every table in its attrs (a
    model's counts table or matrix, the suppression masks)."""
    seen = _seen if _seen is not None else set()
    if id(frame) not in seen:
        seen.add(id(frame))
        frame.attrs[MOCK_KEY] = True
        for value in list(frame.attrs.values()):
            if isinstance(value, pd.DataFrame):
                mark_mock(value, seen)
    return frame


def is_mock(frame: object) -> bool:
    """Whether ``frame`` comes from a mock consortium (by its mark or its mock stamp)."""
    attrs = getattr(frame, "attrs", None) or {}
    stamp = attrs.get(RELEASE_KEY)
    return bool(attrs.get(MOCK_KEY)) or MOCK_RELEASE_KEY in attrs or \
        (isinstance(stamp, dict) and bool(stamp.get("mock")))


def released_plan(frame: object, *, allow_mock: bool = False) -> dict:
    """The plan of a released result; PlanError for anything else (raw or edited tables).

    A mock result (:func:`is_mock`) is refused as not a release, unless ``allow_mock``
    (plots of a mock result, which then say so); its own stamp must verify.
    """
    attrs = getattr(frame, "attrs", None) or {}
    mock = is_mock(frame)
    if mock and not allow_mock:
        raise PlanError("this is a mock result (design mode, synthetic data), not a release",
                        hint="run the same code against the real consortium once its owners "
                             "approve")
    stamp = attrs.get(MOCK_RELEASE_KEY if mock else RELEASE_KEY)
    if not isinstance(frame, pd.DataFrame) or not isinstance(stamp, dict) or \
            "plan" not in attrs:
        raise PlanError("only released results can be plotted",
                        hint="pass the table a secure run returned (e.g. %%secure -o NAME)")
    if _values_digest(frame, _MOCK_DOMAIN if mock else "") != stamp.get("digest"):
        raise PlanError("this table differs from what the parties released",
                        hint="plot the released table itself; choose columns with y=...")
    return attrs["plan"]


def _suppressed_mask(frame: pd.DataFrame) -> pd.DataFrame:
    mask = frame.attrs.get("suppressed")
    if not isinstance(mask, pd.DataFrame):
        return pd.DataFrame(False, index=frame.index, columns=frame.columns)
    return mask.reindex_like(frame).fillna(False).astype(bool)


def _shown(frame: pd.DataFrame, digits: int) -> pd.DataFrame:
    """Values as displayed: rounded, counts as integers."""
    shown = frame.round(digits).astype(object)
    for name, stat in frame.attrs.get("statistics", {}).items():
        if stat in COUNT_STATS and name in shown:
            shown[name] = pd.Series([v if pd.isna(v) else int(v) for v in frame[name]],
                                    index=frame.index, dtype=object)
    return shown


def suppression_reasons(frame: pd.DataFrame) -> set[str]:
    """The reasons for which cells of a released table were suppressed."""
    reasons = frame.attrs.get("reasons")
    if not isinstance(reasons, pd.DataFrame):
        return {"minimum size"} if _suppressed_mask(frame).to_numpy().any() else set()
    return {r for r in reasons.to_numpy().reshape(-1).tolist() if r}


def reason_text(reason: str, k: int | None) -> str:
    """A suppression reason as a reader sees it (the minimum size with its k)."""
    return f"fewer than {k} rows" if reason == "minimum size" and k else reason


def _markers(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell, ``suppressed`` or ``suppressed (reason)`` for reasons beyond minimum size."""
    mask = _suppressed_mask(frame)
    reasons = frame.attrs.get("reasons")
    if not isinstance(reasons, pd.DataFrame):
        return mask.map(lambda gone: SUPPRESSED if gone else "")
    reasons = reasons.reindex_like(frame)
    return pd.DataFrame([[SUPPRESSED if r in (None, "minimum size") or pd.isna(r) else
                          f"{SUPPRESSED} ({r})" for r in row] for row in reasons.to_numpy()],
                        index=frame.index, columns=frame.columns)


def format_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """Text rendering with suppressed cells marked (with their reason beyond size); a
    mock result's first line is :data:`MOCK_CAPTION`."""
    text = _shown(frame, digits).mask(_suppressed_mask(frame), _markers(frame)).to_string()
    if frame.attrs.get(NOTICE_KEY):
        text = f"{frame.attrs[NOTICE_KEY]}\n{text}"
    return f"{MOCK_CAPTION}\n{text}" if is_mock(frame) else text


def mock_banner_html() -> str:
    """The banner above a mock result's HTML table (class ``ppa-mock``)."""
    return ('<div class="ppa-mock" style="font-weight:bold;color:#a40000;'
            'border:2px dashed #a40000;padding:2px 6px;display:inline-block">'
            f"{html.escape(MOCK_CAPTION)}</div>")


def format_html(frame: pd.DataFrame, digits: int = 2) -> str:
    """HTML rendering: suppressed cells marked (class ``ppa-suppressed``), with a caption."""
    k = (frame.attrs.get("plan") or {}).get("min_cell_size")
    why = ", ".join(reason_text(r, k) for r in sorted(suppression_reasons(frame))) or \
        "disclosure control"
    markers = _markers(frame).map(
        lambda text: f'<span class="ppa-suppressed" title="{html.escape(text)}" '
                     f'style="color:#888;font-style:italic">{html.escape(text)}</span>')
    shown = _shown(frame, digits).map(lambda v: html.escape(str(v)))
    shown = shown.mask(_suppressed_mask(frame), markers)
    shown.index = _escaped_index(frame.index)
    shown.columns = [html.escape(str(c)) for c in frame.columns]
    body = shown.to_html(escape=False, classes="ppa-released", border=0, na_rep="NaN")
    mock = is_mock(frame)
    stamp = frame.attrs.get(MOCK_RELEASE_KEY if mock else RELEASE_KEY) or {}
    if mock:
        caption = [html.escape(MOCK_CAPTION)]
        if stamp:
            caption.append(f"mock run {html.escape(str(stamp['run_id']))}")
    else:
        caption = [f"released by run {html.escape(str(stamp['run_id']))}" if stamp else
                   "not a released result"]
    if frame.attrs.get("plan_hash"):
        caption.append(f"plan {html.escape(frame.attrs['plan_hash'][:12])}")
    if _suppressed_mask(frame).to_numpy().any():
        caption.append(f"{SUPPRESSED}: {why}")
    banner = mock_banner_html() if mock else ""
    if frame.attrs.get(NOTICE_KEY):
        banner += (f'<div class="ppa-notice" style="font-weight:bold">'
                   f"{html.escape(frame.attrs[NOTICE_KEY])}</div>")
    return f'{banner}{body}<div class="ppa-caption"><small>{"; ".join(caption)}</small></div>'


def _escaped_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples(
            [tuple(html.escape(str(v)) for v in row) for row in index], names=index.names)
    return pd.Index([html.escape(str(v)) for v in index], name=index.name)
