"""Bounds on everything that crosses a boundary: data values, plan sizes, thresholds.

Both sides import these numbers (the client to build plans that pass, the parties to
refuse those that do not); they are part of the contract and documented in the README.
This module imports nothing from the rest of the package.
"""

from __future__ import annotations

SCALE_BITS = 16
"""Numbers are encoded as round(x * 2**SCALE_BITS) inside MPC."""

COMPARE_BITS = 64
"""Secure comparisons assume the compared encoded value satisfies |v| < 2**(COMPARE_BITS-1)."""

VALUE_LIMIT = 2.0 ** 46
"""Largest magnitude (exclusive) of a value in a party's numeric column, about 7.0e13:
encoded it stays below 2**62, so a difference of two values still compares correctly."""

FIELD_BITS = 256
"""Bit length of the value field; sums must stay below 2**(FIELD_BITS - 2) in magnitude."""

MAX_ROWS = 1 << 30
"""Most rows one party may hold (bounds every sum over rows)."""

MAX_THRESHOLD = 1_000_000
"""Largest minimum cell size or residual degrees of freedom a plan may ask for."""

MAX_PLAN_BYTES = 256 * 1024
"""Largest canonical JSON text of a plan."""

MAX_COLUMNS = 256
MAX_GROUPBY = 8
MAX_LEVELS = 1000
"""Most levels (or bins) of one grouping column."""

MAX_CELLS = 10_000
"""Most cells (the product of the grouping columns' levels) a plan may release."""

MAX_AGGREGATES = 64
MAX_EXPR_DEPTH = 32
MAX_EXPR_NODES = 2000
"""Most nodes of all expressions in one plan together."""

MAX_LIST = 1000
"""Most values in an ``isin`` list or any other list a plan carries."""

MAX_NAME = 200
"""Longest name (column, aggregate, group, level text) a plan may carry."""

MAX_CONSTANT = 1e15
"""Largest magnitude of a numeric constant in a plan."""

DEFAULT_QUANTILE_RESOLUTION = 1000
"""A policy without ``quantile_resolution``: quantiles no finer than the published range /
this many steps (owners publish the resulting ``min_precision``)."""

DEFAULT_INTEGER_LEVELS = 12
"""A policy without ``integer_levels``: a whole-number column whose published range holds at
most this many whole numbers is published with them as its levels (groupable, still a
number)."""

MAX_INTEGER_LEVELS = 100
"""Highest ``integer_levels`` a policy may set."""

MAX_CATEGORICAL_INT_LEVELS = 12
"""Most distinct values of an integer column an owner declares categorical (``[data]
categorical``)."""

DEFAULT_RUN_TIMEOUT = 600.0
"""Seconds a run may take when the analyst gives no timeout (client and kernel alike)."""

MAX_RUN_TIMEOUT = 86_400.0
"""Longest run (and queue wait) a kernel accepts: a day; a run asking more is refused."""


def link_tag_bits(rows: int) -> int:
    """PRF tag bits the linkage opens per row for ``rows`` rows at all parties together:
    about log2(rows) - 3 (at least 4, at most 64), so each tag holds about 8 rows and
    public zero tests, which cost about a quarter of a tag bit, split the rest (measured
    and simulated in docs/design.md, "Linkage")."""
    return max(4, min(64, (max(rows, 2) - 1).bit_length() - 3))  # ceil(log2(rows)) - 3
