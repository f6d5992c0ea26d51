"""The single gate through which the worker opens secret values.

Every opening names what it opens. The worker keeps a ledger of every opening (name,
count of values); with recording switched on it also keeps the opened values, so tests
can prove a run opened exactly what its plan names. Once the worker sets
``LEDGER.allowed`` from the plan, an opening under any other name -- including an
``mpc.output`` made outside :func:`reveal` -- is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppa_kernel.contract.errors import PartyFailed

from . import limb_shares
from .limbs import LimbField
from .runtime import mpc

logger = logging.getLogger(__name__)

_current_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ppa_opening_name", default=None
)


@dataclass
class OpeningLedger:
    """Every opening of one worker run, in order."""

    record_values: bool = False
    allowed: set[str] | None = None  # names the plan permits; None before a plan is known
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str | None, values: Any) -> None:
        if self.record_values:
            flat = _flatten(values)
            self.entries.append({"name": name, "count": len(flat), "values": flat})
        else:
            self.entries.append({"name": name, "count": _count(values)})


LEDGER = OpeningLedger()
_original_output = mpc.output


def _count(values: Any) -> int:
    if hasattr(values, "value") and isinstance(values.value, np.ndarray):
        return int(values.value.size)
    if isinstance(values, np.ndarray):
        return int(values.size)
    if isinstance(values, (list, tuple)):
        return sum(_count(v) for v in values)
    return 1


def _flatten(values: Any) -> list:
    if isinstance(values, np.ndarray):
        return [_plain(v) for v in values.ravel().tolist()]
    if isinstance(values, (list, tuple)):
        out: list = []
        for v in values:
            out.extend(_flatten(v))
        return out
    if hasattr(values, "value"):
        return _flatten(values.value)
    return [_plain(values)]


def _plain(v: Any) -> Any:
    if hasattr(v, "value"):
        v = v.value
    return int(v) if isinstance(v, (int, np.integer)) else str(v)


class UnnamedOpening(PartyFailed):
    """An attempt to open a value the plan does not name; nothing was opened."""


def _refuse_unnamed(name: str | None) -> None:
    if LEDGER.allowed is not None and name not in LEDGER.allowed:
        logger.error("refused to open %r: the plan does not name it", name)  # never expected
        raise UnnamedOpening(f"refused to open {name!r}: the plan does not name it")


async def _recording_output(x, *args, **kwargs):
    name = _current_name.get()
    _refuse_unnamed(name)
    values = await _original_output(x, *args, **kwargs)
    LEDGER.add(name, values)
    return values


mpc.output = _recording_output


MASKED_COMPARISON = "protocol.comparison_masked"
"""Openings inside MPyC's comparison protocol: a + r for secret a and a random r that is
k = 30 bits longer, statistically hiding a; they reveal nothing about a."""


@contextlib.contextmanager
def masked(name: str) -> Iterator[None]:
    """Name the statistically masked openings of MPyC protocols started in this block.

    Only for protocols whose openings are masked (comparisons, truncations); a value
    the plan releases is opened with :func:`reveal`, never inside this block.
    """
    token = _current_name.set(name)
    try:
        yield
    finally:
        _current_name.reset(token)


async def compare(protocol, *args, **kwargs):
    """Run an MPyC comparison, naming the masked values its protocol opens."""
    with masked(MASKED_COMPARISON):
        result = protocol(*args, **kwargs)
        await mpc.gather(result)
    return result


async def reveal(name: str, x, *, threshold: int | None = None) -> Any:
    """Open ``x`` to every party and record the opening under ``name``.

    ``x`` is a secure object, or a field array of degree-``threshold`` shares.
    """
    token = _current_name.set(name)
    try:
        return await mpc.output(x, threshold=threshold)
    finally:
        _current_name.reset(token)


class InconsistentOpening(PartyFailed):
    """An opened value that the protocol guarantees to be a multiple of a public number
    is not: a value out of the protocol's range, or inconsistent shares from a peer."""


async def reveal_limbs(name: str, field: LimbField, x: np.ndarray, *,
                       threshold: int, divisor: int = 1) -> np.ndarray:
    """Open the limb shares ``x`` (:mod:`.limb_shares`, degree ``threshold``) to every
    party and record the opening under ``name``, like :func:`reveal`. ``divisor``: the
    shares are of ``divisor`` times the values opened (a public multiple, checked)."""
    _refuse_unnamed(name)
    values = await limb_shares.open_shares(field, x, threshold)
    if divisor != 1:
        try:
            values = field.divide_exact(values, divisor)
        except ValueError:
            logger.error("opening %r: a value is not a multiple of %d", name, divisor)
            raise InconsistentOpening(
                f"opening {name!r} is not a multiple of {divisor}: a value outside the "
                "protocol's range, or inconsistent shares from a peer") from None
    if LEDGER.record_values:
        LEDGER.add(name, field.to_ints(values))
    else:
        LEDGER.entries.append({"name": name, "count": int(values.shape[1])})
    return values


def as_floats(opened: Any) -> list[float]:
    """An opened secure array as a flat list of Python floats."""
    return [float(v) for v in np.asarray(opened).reshape(-1).tolist()]
