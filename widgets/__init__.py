"""The query builder: a panel of standard widgets over plain query specs.

:class:`QuerySpec` and the functions of :mod:`.spec` hold the logic (and need no
ipywidgets); :class:`QueryBuilder` maps the panel's controls to a spec::

    from ppa_kernel.widgets import QueryBuilder
    QueryBuilder(consortium)          # or ppa_kernel.query_builder() after %ppa demo
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ppa_kernel.contract.errors import PPAError
from ppa_kernel.widgets.spec import (
    QuerySpec,
    catalog_choices,
    load_spec,
    run_spec,
    save_spec,
    spec_figure,
    spec_frame,
    spec_query,
    spec_to_code,
)

if TYPE_CHECKING:
    from ppa_kernel.widgets.panel import QueryBuilder

NOTEBOOK_EXTRA = "pip install 'ppa-workbench[notebook]'"
"""How to install the panel's dependencies (ipywidgets and the rest of the notebook extra)."""

__all__ = [
    "QueryBuilder",
    "QuerySpec",
    "catalog_choices",
    "load_spec",
    "query_builder",
    "run_spec",
    "save_spec",
    "spec_figure",
    "spec_frame",
    "spec_query",
    "spec_to_code",
]


def query_builder(consortium: Any = None, **kwargs: Any) -> QueryBuilder:
    """A query builder panel on ``consortium`` (default: the notebook's, after ``%ppa``)."""
    panel = _panel_class()
    if consortium is None:
        from ppa_kernel.notebook import current_consortium

        consortium = current_consortium()
    return panel(consortium, **kwargs)


def _panel_class() -> type[QueryBuilder]:
    """:class:`QueryBuilder`, or a one-line error naming the extra when ipywidgets is missing."""
    try:
        from ppa_kernel.widgets.panel import QueryBuilder
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ipywidgets":
            raise
        raise PPAError("the query builder needs ipywidgets, which is not installed",
                       hint=f"install the notebook extra: {NOTEBOOK_EXTRA}") from None
    return QueryBuilder


def __getattr__(name: str) -> Any:
    if name == "QueryBuilder":  # ipywidgets is imported only when the panel is used
        return _panel_class()
    if name == "build_query":  # its old name (notebook.cell has a different one)
        warnings.warn("ppa_kernel.widgets.build_query is now spec_query", DeprecationWarning,
                      stacklevel=2)
        return spec_query
    raise AttributeError(name)
