"""The analyst's notebook front-end: the IPython extension, its session and its displays.

``%load_ext ppa_kernel`` registers the ``%ppa`` line magic and the ``%%secure`` cell
magic (:mod:`.magics`); they share one :class:`~.session.Session` per IPython shell.
"""
