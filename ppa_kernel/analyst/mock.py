"""Design mode: a local consortium on synthetic data shaped like a real one's catalog.

An analyst writes and debugs a whole notebook against a *mock* before asking the owners
to approve anything::

    snapshot = real.catalog_snapshot()             # JSON-able: names, catalogs, policies
    with Consortium.mock(snapshot, rows=500) as c:  # or a live Consortium, or a JSON file
        c.link().groupby("region").agg(n=("age", "count")).collect()

Per data party the mock draws a table with the published columns: levels of categorical
and bool columns, values in the published (coarse) numeric range (whole numbers where the
range is, unless the column publishes no levels although its range is small enough for
them: the real values are then not whole, nor are the mock's), missing values at the
published share, and a link column whose first rows are shared by every party (a partial
overlap). Each party gets the real policy, rebuilt from its published summary, so the
same plans are refused; approval is automatic (there is no reviewer). The catalog comes
out as published, so a plan built against the mock hashes the same as against the real
consortium. A mock is a :class:`~.client.Consortium` whose
``is_mock`` is True: every result it returns is marked mock (:func:`.results.stamp_mock`),
never a release, whatever code looks at it.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppa_kernel.contract import VERSION
from ppa_kernel.contract.bounds import coarse
from ppa_kernel.contract.config import ConfigError
from ppa_kernel.contract.limits import DEFAULT_INTEGER_LEVELS
from ppa_kernel.contract.plan import DISCLOSURE_POLICY_KEYS

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "ppa-catalog-snapshot/1"
DEFAULT_ROWS = 2000
"""Rows of the largest mock party by default (the others in proportion)."""
MIN_ROWS = 100
"""Fewest rows of a mock party (unless it published fewer)."""
SHARED = 0.8
"""Share of the smallest data party's rows whose pseudonyms every data party holds."""
LINK = "pseudonym"
DEFAULT_MISSING_SHARE = 0.05
"""Missing share of a column that has missing values but publishes no share."""
MANY_LEVELS = 60
"""Distinct values of a text column published without levels (more than a kernel lists)."""
_POLICY_KEYS = ("min_cell_size", "statistics", "min_residual_df", "quantile_resolution",
                "integer_levels")


# ---------------------------------------------------------------------------- snapshots
def _round_rows(rows: int) -> int:
    """A row count to two significant digits."""
    if rows < 100:
        return int(rows)
    step = 10 ** (int(math.log10(rows)) - 1)
    return int(round(rows / step) * step)


def catalog_snapshot(consortium: Any) -> dict:
    """Everything a mock needs of a connected consortium, JSON-able: party names in MPC
    order and per party its catalog, policy summary, rows (two significant digits) and
    whether it holds data. A mock's is the snapshot it was made from."""
    if getattr(consortium, "is_mock", False):
        return copy.deepcopy(consortium.mock_snapshot)
    parties = {}
    for name in consortium.names:
        info = consortium.parties[name]
        parties[name] = {"catalog": copy.deepcopy(info["catalog"]),
                         "policy": copy.deepcopy(info["policy"]),
                         "rows": _round_rows(int(info["rows"])),
                         "holds_data": bool(info.get("holds_data", True))}
    return {"format": SNAPSHOT_FORMAT, "ppa_version": VERSION,
            "consortium": consortium.config.name, "names": list(consortium.names),
            "taken": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "parties": parties}


def save_snapshot(snapshot: Any, path: str | Path) -> Path:
    """Write a snapshot (or a consortium's) as JSON; return the path."""
    if not isinstance(snapshot, Mapping):
        snapshot = catalog_snapshot(snapshot)
    path = Path(path)
    path.write_text(json.dumps(check_snapshot(snapshot), indent=2) + "\n")
    return path


def load_snapshot(source: Any) -> dict:
    """A snapshot from a snapshot dict, a JSON snapshot file or a live consortium."""
    if isinstance(source, Mapping):
        return check_snapshot(copy.deepcopy(dict(source)))
    if not isinstance(source, str | Path):
        return check_snapshot(catalog_snapshot(source))
    path = Path(source)
    if path.suffix == ".toml":
        raise ConfigError(f"{path} is a consortium file, not a catalog snapshot",
                          hint="connect to it (Consortium.from_file, %ppa connect), then mock "
                               "the live consortium")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no catalog snapshot at {path}",
                          hint="write one with ppa_kernel.analyst.mock.save_snapshot(c, path)"
                          ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the catalog snapshot {path}: {exc}") from None
    return check_snapshot(data)


def check_snapshot(data: Any) -> dict:
    """``data`` if it is a catalog snapshot (ConfigError saying what is wrong if not)."""
    hint = "make one with Consortium.catalog_snapshot()"
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise ConfigError(f"not a catalog snapshot (format {SNAPSHOT_FORMAT!r} expected)",
                          hint=hint)
    names, parties = data.get("names"), data.get("parties")
    if not isinstance(names, list) or not isinstance(parties, dict) or \
            sorted(names) != sorted(parties):
        raise ConfigError("catalog snapshot: 'names' and 'parties' do not match", hint=hint)
    for name in names:
        info = parties[name]
        if not isinstance(info, dict) or not isinstance(info.get("catalog"), dict) or \
                not isinstance(info.get("policy"), dict) or \
                not isinstance(info.get("rows"), int):
            raise ConfigError(f"catalog snapshot: party {name!r} needs catalog, policy and "
                              "rows", hint=hint)
    return data


# ----------------------------------------------------------------------------- policies
def mock_policy(summary: Mapping[str, Any]) -> dict:
    """The ``[policy]`` table of a party rebuilt from its published summary, approving
    automatically (a mock has no reviewer); its kernel checks it on start."""
    policy: dict[str, Any] = {key: copy.deepcopy(summary[key]) for key in _POLICY_KEYS
                              if key in summary}
    if summary.get("columns") is not None:
        policy["columns"] = {column: sorted(uses) for column, uses in summary["columns"].items()}
    if summary.get("quantile_precision"):
        policy["quantile_precision"] = dict(summary["quantile_precision"])
    for rule, key in DISCLOSURE_POLICY_KEYS.items():
        if rule in (summary.get("disclosure") or {}):
            policy[key] = summary["disclosure"][rule]
    policy["approval"] = "auto"
    return policy


# --------------------------------------------------------------------------------- data
def mock_sizes(snapshot: Mapping, rows: int | None = None) -> dict[str, int]:
    """Rows per data party: the published counts, scaled so the largest has at most
    ``rows`` (default :data:`DEFAULT_ROWS`), each at least :data:`MIN_ROWS` (or all it has)."""
    cap = DEFAULT_ROWS if rows is None else int(rows)
    if cap < 1:
        raise ConfigError(f"rows must be at least 1, not {rows!r}")
    published = {name: max(1, int(info["rows"])) for name, info in snapshot["parties"].items()
                 if info.get("holds_data", True)}
    scale = min(1.0, cap / max(published.values())) if published else 1.0
    return {name: max(min(n, MIN_ROWS, cap), round(n * scale)) for name, n in published.items()}


def mock_data(snapshot: Mapping, rows: int | None = None,
              seed: int = 0) -> tuple[dict[str, pd.DataFrame | None], dict[str, list[str]]]:
    """Synthetic tables per party in MPC order (None: compute-only) with their link column
    (:func:`link_column`), and per party the integer columns to read as categorical."""
    rng = np.random.default_rng(seed)
    sizes = mock_sizes(snapshot, rows)
    keys = _link_keys(sizes)
    link = link_column(snapshot)
    tables: dict[str, pd.DataFrame | None] = {}
    categorical: dict[str, list[str]] = {}
    for name in snapshot["names"]:
        if name not in sizes:
            tables[name] = None
            continue
        n = sizes[name]
        columns = {link: keys[name]}
        limit = snapshot["parties"][name]["policy"].get("integer_levels",
                                                        DEFAULT_INTEGER_LEVELS)
        for column, entry in snapshot["parties"][name]["catalog"].items():
            columns[column] = _column(column, entry, n, rng, limit)
            if entry["kind"] == "categorical" and entry.get("levels") and \
                    all(isinstance(v, int) and not isinstance(v, bool) for v in entry["levels"]):
                categorical.setdefault(name, []).append(column)
        tables[name] = pd.DataFrame(columns)
    return tables, categorical


def link_column(snapshot: Mapping) -> str:
    """The mock's link column: :data:`LINK`, underscored until no catalog has it."""
    taken = {column for info in snapshot["parties"].values() for column in info["catalog"]}
    link = LINK
    while link in taken:
        link = f"_{link}"
    return link


def _link_keys(sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Pseudonyms per party: the first :data:`SHARED` of the smallest party's count are
    every party's, the rest each party's own."""
    if not sizes:
        return {}
    shared = max(1, round(SHARED * min(sizes.values())))
    keys, start = {}, shared
    for name, n in sizes.items():
        own = np.arange(start, start + n - shared)
        start += n - shared
        keys[name] = np.array([f"m{i:08d}" for i in (*range(shared), *own)], dtype=object)
    return keys


def _column(name: str, entry: Mapping[str, Any], n: int, rng: np.random.Generator,
            integer_levels: int = DEFAULT_INTEGER_LEVELS) -> Any:
    """One column of ``n`` values as ``entry`` describes it (see :func:`mock_data`), for a
    party whose policy publishes levels of whole-number ranges up to ``integer_levels``."""
    kind = entry["kind"]
    if kind == "numeric":
        low, high = entry.get("min"), entry.get("max")
        if low is None or high is None:
            return np.full(n, np.nan)
        whole = float(low).is_integer() and float(high).is_integer() and (
            entry.get("levels") is not None or high - low + 1 > integer_levels)
        required, draw = _numeric(float(low), float(high), whole)
    elif kind == "bool":
        required, draw = [False, True], lambda k, g: g.random(k) < 0.5
    else:
        levels = entry.get("levels")
        if levels is None:
            levels = [f"{name}-{i:03d}" for i in range(MANY_LEVELS)]
        if not levels:
            return np.full(n, None, dtype=object)
        if len({type(v) for v in levels}) > 1:
            logger.warning("mock column %r mixes level types; its levels become text", name)
            levels = [str(v) for v in levels]
        required = list(levels)
        draw = lambda k, g: [levels[i] for i in g.integers(0, len(levels), k)]  # noqa: E731
    missing = _missing_count(entry, n, len(required))
    present = n - missing
    values = list(required[:present]) + list(draw(max(0, present - len(required)), rng))
    filled = np.full(n, None, dtype=object)
    present_at = np.ones(n, dtype=bool)
    present_at[rng.choice(n, size=missing, replace=False)] = False
    shuffled = np.empty(len(values), dtype=object)
    shuffled[:] = [values[i] for i in rng.permutation(len(values))]
    filled[present_at] = shuffled
    if kind == "bool":
        return pd.array(filled, dtype="boolean") if missing else filled.astype(bool)
    if kind == "numeric" or isinstance(required[0], int):
        return filled.astype(float) if missing else np.array(filled.tolist())
    return filled


def _missing_count(entry: Mapping[str, Any], n: int, required: int) -> int:
    """How many values to leave missing: the published share of ``n``, at least one if
    the column has any, leaving room for the ``required`` values."""
    if not entry.get("missing"):
        return 0
    share = entry.get("missing_share", DEFAULT_MISSING_SHARE)
    return min(max(1, round(float(share) * n)), max(0, n - required))


def _numeric(low: float, high: float, integer: bool):
    """(values the column must hold, a sampler) so that a kernel publishes ``low`` and
    ``high`` again: whole numbers if ``integer`` (both bounds are whole), else uniform in
    between."""
    lowest, highest = _attaining(low, high, False, integer), _attaining(high, low, True, integer)
    if integer:
        lowest, highest = int(lowest), int(highest)

        def draw(k: int, g: np.random.Generator) -> np.ndarray:
            return g.integers(lowest, highest + 1, k)
    else:
        def draw(k: int, g: np.random.Generator) -> np.ndarray:
            return g.uniform(lowest, highest, k)
    return [lowest, highest], draw


def _attaining(bound: float, other: float, up: bool, integer: bool) -> float:
    """A value between ``bound`` and ``other`` that a kernel publishes as ``bound`` (its
    coarse rounding, :func:`~ppa_kernel.contract.bounds.coarse`, is not always exact)."""
    inward = -1.0 if up else 1.0
    if integer:
        candidates = [bound + inward * i for i in range(100)]
    else:
        step = 10 ** (math.floor(math.log10(abs(bound))) - 1) if bound else 1e-9
        candidates = [bound + inward * step * f for f in (0, 1e-9, 1e-6, 1e-3, 0.25, 0.5, 0.9)]
    for value in candidates:
        if (value - other) * inward <= 0 and coarse(value, up) == bound:
            return value
    logger.debug("no value rounds to %g; the mock's range may differ slightly", bound)
    return bound


# ------------------------------------------------------------------------------ launching
def start_mock(launch: Callable[..., Any], source: Any, rows: int | None = None,
               seed: int = 0, **local_kwargs: Any) -> Any:
    """Start a mock of ``source`` (see :func:`load_snapshot`) with ``launch``
    (:meth:`~.client.Consortium.local`) and ``local_kwargs`` (``workdir``,
    ``startup_timeout``, ...); ``rows`` caps the largest party's rows. Closing the mock
    also removes its folder, unless ``workdir`` was given."""
    snapshot = load_snapshot(source)
    parties = snapshot["parties"]
    policies = {name: mock_policy(parties[name]["policy"]) for name in snapshot["names"]}
    real = ", ".join(f"{name} {parties[name]['policy'].get('approval', 'auto')}"
                     for name in snapshot["names"])
    logger.info("design mode: every mock party approves automatically (there is no reviewer); "
                "the real approval modes are %s", real)
    tables, categorical = mock_data(snapshot, rows=rows, seed=seed)
    own = None
    if local_kwargs.get("workdir") is None:
        own = Path(tempfile.mkdtemp(prefix="ppa-mock-"))
        local_kwargs["workdir"] = own
    try:
        consortium = launch(tables, link=link_column(snapshot), policies=policies,
                            categorical=categorical, **local_kwargs)
    except BaseException:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
        raise
    consortium.is_mock, consortium.mock_snapshot = True, snapshot
    if own is not None:
        stop = consortium._on_close

        def close() -> None:
            if stop is not None:
                stop()
            shutil.rmtree(own, ignore_errors=True)

        consortium._on_close = close
    sizes = ", ".join(f"{name} {len(t)}" for name, t in tables.items() if t is not None)
    logger.info("mock of %s started on synthetic data (%s rows, seed %d)",
                snapshot.get("consortium", "a consortium"), sizes, seed)
    return consortium


__all__ = ["catalog_snapshot", "check_snapshot", "load_snapshot", "mock_data", "save_snapshot",
           "start_mock"]
