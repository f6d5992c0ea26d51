"""Secure record linkage: oblivious shuffle plus PRF tags, computed once, replayed per query.

Linking (:func:`link`): every party inputs its link keys (hashed locally to 120-bit
integers); the stacked keys are shuffled obliviously (:mod:`.shuffle`) and tagged with
the keyed Legendre PRF (:mod:`.prf`); rows with equal tags belong to one person.

Leakage of linking, to every party: each party's row count (``linkage.party_sizes``) and
the PRF tags of the shuffled rows (``linkage.prf_masked``), hence the multiplicity
pattern -- how many people occur at 1, 2, ... parties. Nobody learns which shuffled row
came from which party or which person, nor who is in the intersection.

Replaying (:func:`linked_table`): later queries input new columns in the original row
order; the stored permutation seeds move them into the linked order and the stored,
public grouping sums each person's rows. Nothing is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, PartyFailed
from .openings import reveal
from .prf import legendre_tags
from .runtime import link_type, mpc, shares, wrap
from .shuffle import Subset, derive_seeds, shuffle_rows

logger = logging.getLogger(__name__)

KEY_BITS = 120


def hash_keys(keys, salt: str) -> np.ndarray:
    """Link keys hashed (salted SHA-256, 120 bits) to integers, as an object array."""
    prefix = salt.encode()
    out = [int.from_bytes(hashlib.sha256(prefix + str(k).encode()).digest()[:KEY_BITS // 8])
           for k in keys]
    return np.array(out, dtype=object)


@dataclass
class Linkage:
    """What one party keeps of a linkage: sizes, its secret seeds, the public grouping."""

    linkage_id: str
    sizes: list[int]
    seeds: dict[Subset, str]
    groups: np.ndarray  # group index of each shuffled row (public)
    fingerprint: str  # hash of this party's own keys, to detect changed data

    @property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.groups)

    def multiplicity(self) -> dict[int, int]:
        """How many people occur at exactly k parties."""
        counts = np.bincount(self.group_sizes)
        return {k: int(c) for k, c in enumerate(counts) if k and c}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"linkage_id": self.linkage_id, "sizes": self.sizes,
                "seeds": {",".join(map(str, s)): v for s, v in self.seeds.items()},
                "fingerprint": self.fingerprint}
        path = folder / "linkage.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(meta, fh)
        np.save(folder / "groups.npy", self.groups)

    @classmethod
    def load(cls, folder: Path) -> Linkage | None:
        path = folder / "linkage.json"
        if not path.exists():
            return None
        meta = json.loads(path.read_text())
        seeds = {tuple(int(i) for i in k.split(",")): v for k, v in meta["seeds"].items()}
        return cls(meta["linkage_id"], meta["sizes"], seeds,
                   np.load(folder / "groups.npy"), meta["fingerprint"])


def fingerprint(hashed_keys: np.ndarray) -> str:
    """Digest of a party's own hashed keys in row order."""
    h = hashlib.sha256()
    for k in hashed_keys.tolist():
        h.update(int(k).to_bytes(KEY_BITS // 8, "big"))
    return h.hexdigest()


async def exchange_sizes(own_rows: int) -> list[int]:
    """Every party's row count. Opens ``linkage.party_sizes`` to every party."""
    secint = mpc.SecInt(32)
    inputs = mpc.input(secint(own_rows))
    return [int(v) for v in await reveal("linkage.party_sizes", inputs)]


async def link(hashed_keys: np.ndarray, linkage_id: str, progress=None) -> Linkage:
    """Link all parties' rows. Opens party sizes and PRF tags (see module docstring)."""
    sizes = await exchange_sizes(len(hashed_keys))
    stacked = await stack_blocks(hashed_keys.reshape(-1, 1), sizes, 1, link_type())
    seeds = derive_seeds(linkage_id.encode())
    shuffled = await shuffle_rows(stacked, seeds)
    if progress:
        progress("shuffle")
    column = shuffled.reshape(shuffled.shape[0])
    groups = await legendre_tags(column)
    if progress:
        progress("tags")
    linkage = Linkage(linkage_id, sizes, seeds, groups,
                      fingerprint(hashed_keys))
    if linkage.group_sizes.max(initial=0) > len(sizes):
        raise PartyFailed("PRF tags collided across distinct keys; link again")
    return linkage


async def stack_blocks(block: np.ndarray, sizes: list[int], widths: list[int] | int, sectype):
    """Secure N x C array of every party's rows, in party order.

    With a list of ``widths`` party i's n_i x c_i block sits at its own rows and columns,
    zeros elsewhere; with one int width all parties fill the same columns. Each party
    inputs only its own block. Opens nothing.
    """
    field = sectype.field
    shared = isinstance(widths, int)
    widths = [widths] * len(sizes) if shared else widths
    total_rows, total_cols = sum(sizes), (widths[0] if shared else sum(widths))
    out = np.zeros((total_rows, total_cols), dtype=object)
    row = col = 0
    for party, (n, c) in enumerate(zip(sizes, widths)):
        if mpc.pid == party:
            value = field.array(np.asarray(block, dtype=object).reshape(n, c))
        else:
            value = field.array(np.zeros((n, c), dtype=object), check=False)
        if n and c:
            received = mpc.input(sectype.array(value), senders=party)
            out[row:row + n, col:col + c] = await shares(received)
        row, col = row + n, (col if shared else col + c)
    return wrap(sectype, out)


async def linked_table(linkage: Linkage, block: np.ndarray, widths: list[int], sectype):
    """One row per linked person (group), columns of all parties' blocks. Opens nothing."""
    stacked = await stack_blocks(block, linkage.sizes, widths, sectype)
    shuffled = await shuffle_rows(stacked, linkage.seeds)
    values = await shares(shuffled)
    order = np.argsort(linkage.groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(linkage.groups[order]) != 0])
    if values.shape[1] == 0:
        return wrap(sectype, np.zeros((len(starts), 0), dtype=object))
    summed = np.add.reduceat(values[order], starts, axis=0)
    return wrap(sectype, summed)


def check_own_data(linkage: Linkage, hashed_keys: np.ndarray, party: str) -> None:
    """Refuse to replay a linkage over data that changed since linking."""
    if fingerprint(hashed_keys) != linkage.fingerprint:
        raise DataError("data changed since the consortium linked it", party=party,
                        hint="start a new session (link again)")
