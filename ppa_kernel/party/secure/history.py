"""The row sets already released in one data epoch, as this party's secret shares.

For the differencing rule (:mod:`.disclosure`) every party keeps, per released cell,
its Shamir shares of the cell's 0/1 row indicator over the epoch's linked people, and of
the cell's size. Shares reveal nothing on their own; files are 0600 in a 0700 folder.
Each entry also records the public *definition* of its row set (cohort, cell, presence
of the measure), so that repeating a query adds nothing.

Storage: ``history/index.json`` (definitions, joined-party counts, file names) and one
``.npy`` file per entry holding a uint8 array (rows + 1, 32): the share of the size, then
one share per row, as 32-byte big-endian integers (no pickle).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .limbs import VALUE as F

logger = logging.getLogger(__name__)

SHARE_BYTES = 32


@dataclass
class RowSet:
    """One released row set: its definition, where it lives and this party's shares."""

    definition: str
    joined: int  # the set is zero outside the people seen at >= joined parties
    size: int  # share of |set|
    shares: np.ndarray  # (L, people) limbs: a share per person seen at >= joined parties


def _to_bytes(size: int, shares: np.ndarray) -> np.ndarray:
    head = np.frombuffer(int(size).to_bytes(SHARE_BYTES, "big"), dtype=np.uint8)
    return np.vstack([head.reshape(1, SHARE_BYTES), F.to_fixed_bytes(shares)])


def _from_bytes(array: np.ndarray) -> tuple[int, np.ndarray]:
    if array.ndim != 2 or array.shape[1] != SHARE_BYTES or not len(array):
        raise ValueError("a history entry is not rows of 32-byte shares")
    limbs = F.from_fixed_bytes(array[1:]).astype(np.uint32)  # every limb below 2^27
    return int.from_bytes(array[0].tobytes(), "big"), limbs


class History:
    """The released row sets of one epoch, kept under ``folder / "history"``."""

    def __init__(self, folder: Path):
        self.folder = folder / "history"
        self.entries: list[dict] = []
        index = self.folder / "index.json"
        if index.exists():
            self.entries = json.loads(index.read_text())

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def definitions(self) -> set[str]:
        return {e["definition"] for e in self.entries}

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` entries (the ones every party recorded)."""
        if count < len(self.entries):
            logger.warning("dropping %d history entries another party did not record",
                           len(self.entries) - count)
            for entry in self.entries[count:]:
                (self.folder / entry["file"]).unlink(missing_ok=True)
            self.entries = self.entries[:count]
            self._write_index()

    def load(self) -> list[RowSet]:
        """Every entry with this party's shares."""
        out = []
        for entry in self.entries:
            array = np.load(self.folder / entry["file"], allow_pickle=False)
            size, shares = _from_bytes(array)
            out.append(RowSet(entry["definition"], entry["joined"], size, shares))
        return out

    def append(self, sets: list[RowSet]) -> None:
        """Record released row sets (before their values are opened)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for row_set in sets:
            name = f"{len(self.entries):06d}.npy"
            payload = _to_bytes(row_set.size, row_set.shares)
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, payload, allow_pickle=False)
            self.entries.append({"definition": row_set.definition, "joined": row_set.joined,
                                 "file": name})
        self._write_index()

    def _write_index(self) -> None:
        path = self.folder / "index.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.entries, fh)
        os.replace(tmp, path)
