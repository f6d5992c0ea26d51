"""ppa-workbench: privacy-preserving analytics over secure multiparty computation.

Analysts build analysis plans with secure frames; party kernels check them against their
owners' policies and run them as MPyC programs; only aggregates that pass disclosure
control are released. Start with :class:`Consortium`.
"""

from ppa_kernel.contract import VERSION
from ppa_kernel.contract.errors import ConsortiumError, PlanError, PolicyRefused, PPAError

__version__ = VERSION

__all__ = [
    "Consortium",
    "ConsortiumError",
    "PPAError",
    "PlanError",
    "PolicyRefused",
    "__version__",
    "current_consortium",
    "format_table",
    "plot",
    "query_builder",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext ppa_kernel``: the ``%ppa`` and ``%%secure`` magics."""
    from ppa_kernel.notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext ppa_kernel``: stop what the session started, remove the magics' hooks."""
    from ppa_kernel.notebook.magics import unload

    unload(ipython)


def __getattr__(name: str):
    if name == "Consortium":
        from ppa_kernel.analyst.client import Consortium

        return Consortium
    if name == "current_consortium":
        from ppa_kernel.notebook import current_consortium

        return current_consortium
    if name == "plot":
        from ppa_kernel.analyst.plotting import plot

        return plot
    if name == "query_builder":
        from ppa_kernel.widgets import query_builder

        return query_builder
    if name == "format_table":
        from ppa_kernel.analyst.results import format_table

        return format_table
    raise AttributeError(name)
