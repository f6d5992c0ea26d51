"""The analyst's notebook front-end: the IPython extension, its session and its displays.

``%load_ext ppa_kernel`` registers the ``%ppa`` line magic and the ``%%secure`` cell
magic (:mod:`.magics`); they share one :class:`~.session.Session` per IPython shell.
"""

from __future__ import annotations

from typing import Any


def current_session() -> Any:
    """The :class:`~.session.Session` of the running IPython shell (after ``%load_ext``)."""
    from IPython import get_ipython

    from ppa_kernel.contract.errors import PPAError

    session = getattr(get_ipython(), "_ppa_session", None)
    if session is None:
        raise PPAError("the workbench extension is not loaded",
                       hint="run %load_ext ppa_kernel, then %ppa demo or %ppa connect FILE")
    return session


def current_consortium() -> Any:
    """The consortium ``%ppa demo`` or ``%ppa connect`` connected this notebook to."""
    return current_session().require()
