"""``result.ppa``: the pandas accessor on released results (plot, plan, mask, export)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .export import export
from .plotting import _mask, plot
from .results import released_plan

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@pd.api.extensions.register_dataframe_accessor("ppa")
class PPAAccessor:
    """``result.ppa``: plot or export a released result; its plan and suppression mask."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def plot(self, y: str | None = None, *, kind: str = "auto", ax: Axes | None = None,
             title: str | None = None) -> Axes:
        """Same as :func:`plot` on this table."""
        return plot(self._frame, y, kind=kind, ax=ax, title=title)

    @property
    def plan(self) -> dict:
        """A copy of the plan that released this table (PlanError if not released)."""
        return copy.deepcopy(released_plan(self._frame, allow_mock=True))

    @property
    def suppressed(self) -> pd.DataFrame:
        """True where disclosure control suppressed the cell (PlanError if not released)."""
        released_plan(self._frame, allow_mock=True)
        return _mask(self._frame)

    def export(self, folder: str | os.PathLike, comments: str | list[str] | None = None
               ) -> Path:
        """Write this table for an output checker to a new ``folder`` (see
        :func:`.export.export`); return its path."""
        return export(folder, [self._frame], comments=comments)
