"""The notebook's connection: which consortium ``%%secure`` cells run against.

One :class:`Session` per IPython shell. ``%ppa demo`` starts the local three-party demo
(the same one as ``ppa demo``) in a temporary folder; ``%ppa connect`` attaches to
running party kernels; ``%ppa mock`` replaces the connection with a mock of it (design
mode: synthetic data, see :mod:`ppa_kernel.analyst.mock`). Kernels the session started
stop with ``%ppa stop``, when the extension is unloaded, when the notebook kernel exits,
and -- should it be killed -- within about a second on their own (they watch their
parent process).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ppa_kernel.analyst.client import Consortium
from ppa_kernel.analyst.results import mark_mock
from ppa_kernel.contract.errors import PPAError

logger = logging.getLogger(__name__)

DEMO_ROWS = 4200
DEMO_SEED = 7


class NotConnected(PPAError):
    """No consortium yet: the analyst has to start the demo or connect first."""


class Session:
    """The consortium this notebook talks to, and what it started."""

    def __init__(self) -> None:
        self.consortium: Consortium | None = None
        self.source = ""
        self.progress = "auto"
        self._demo_folder: Path | None = None
        self._mock_of = ""
        atexit.register(self.stop)

    @property
    def connected(self) -> bool:
        return self.consortium is not None

    def require(self) -> Consortium:
        """The current consortium, or a NotConnected error saying how to get one."""
        if self.consortium is None:
            raise NotConnected("not connected to a consortium",
                               hint="run %ppa demo, or %ppa connect consortium.toml")
        return self.consortium

    def start_demo(self, n_core: int = DEMO_ROWS, seed: int = DEMO_SEED) -> Consortium:
        """Start the local demo consortium on synthetic data (replacing any connection)."""
        from ppa_kernel.analyst.demo import start_demo

        self.stop()
        folder = Path(tempfile.mkdtemp(prefix="ppa-notebook-demo-"))
        try:
            consortium = start_demo(folder, n_core=n_core, seed=seed)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.consortium, self._demo_folder = consortium, folder
        self.source = f"local demo ({n_core} linked people, seed {seed})"
        return consortium

    def connect(self, path: str | Path, **kwargs: Any) -> Consortium:
        """Connect to the running party kernels a consortium file lists."""
        consortium = Consortium.from_file(path, **kwargs)
        self.stop()
        self.consortium, self.source = consortium, str(path)
        return consortium

    def start_mock(self, source: Any = None, rows: int | None = None, seed: int = 0,
                   label: str | None = None) -> Consortium:
        """Replace the connection with a mock of ``source`` (default: the current one)."""
        current = self.consortium
        source = self.require() if source is None else source
        if label is None:  # a mock of the current mock is a mock of what it mocks
            label = self._mock_of if current is not None and current.is_mock else self.source
        consortium = Consortium.mock(source, rows=rows, seed=seed)
        self.stop()
        self.consortium, self._mock_of = consortium, label or "a consortium"
        self.source = f"mock of {self._mock_of} (synthetic data, seed {seed})"
        return consortium

    def stop(self) -> bool:
        """Disconnect; stop the kernels this session started. True if anything was open."""
        consortium, folder = self.consortium, self._demo_folder
        self.consortium, self._demo_folder, self.source = None, None, ""
        if consortium is not None:
            consortium.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return consortium is not None

    def status(self) -> pd.DataFrame:
        """Each party: reachable, rows, policy summary (a mock: a ``mock`` column, and the
        table marked mock)."""
        consortium = self.require()
        frame = consortium.status()
        if consortium.is_mock:
            frame.insert(0, "mock", True)
            mark_mock(frame)
        return frame

    def catalog(self) -> pd.DataFrame:
        """The approved variables of every party."""
        return self.require().catalog_frame()
