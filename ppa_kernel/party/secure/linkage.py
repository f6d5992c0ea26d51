"""Secure record linkage: oblivious shuffle plus PRF tags, computed once, replayed per query.

Linking (:func:`link`): every party inputs its link keys (hashed locally to 120-bit
integers); the stacked keys are shuffled obliviously (:mod:`.shuffle`) and tagged with a
short keyed Legendre PRF (:mod:`.prf`) of about log2(n) + 2 bits, which puts equal keys
in one bucket and few distinct keys together. Within each bucket, public zero tests of
key differences (open (x_a - x_b) * r for a fresh secret random r: zero if and only if
the keys are equal, otherwise uniformly random) split it into people. This costs about
a quarter of a full 64-bit PRF tag per row, with the same result.

Leakage of linking, to every party: each party's row count (``linkage.party_sizes``),
short PRF tags of the shuffled rows (``linkage.prf_masked``) and, for rows whose tags
collide, whether their keys are equal (``linkage.equality_masked``); hence the
multiplicity pattern -- how many people occur at 1, 2, ... parties. Nobody learns which
shuffled row came from which party or which person, nor who is in the intersection.

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
from typing import Any

import numpy as np

from ppa_kernel.contract.errors import PartyFailed
from ppa_kernel.contract.limits import link_tag_bits

from .openings import reveal
from .prf import CHUNK_ROWS as PRF_CHUNK_ROWS
from .prf import legendre_tags
from .runtime import link_type, mpc, random_field_array, shares, wrap, zero_sharing
from .shuffle import Subset, derive_seeds, shuffle_rows, subsets

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
    """What one party keeps of a data epoch's linkage: sizes, its secret seeds, the public
    grouping, the epoch's public token and a fingerprint of this party's data."""

    epoch: int  # public token all parties agreed on when they linked
    sizes: list[int]
    seeds: dict[Subset, str]
    groups: np.ndarray  # group index of each shuffled row (public)
    fingerprint: str  # hash of this party's own data, to detect a changed epoch

    @property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.groups)

    def multiplicity(self) -> dict[int, int]:
        """How many people occur at exactly k parties."""
        counts = np.bincount(self.group_sizes)
        return {k: int(c) for k, c in enumerate(counts) if k and c}

    def save(self, folder: Path) -> None:
        """Write the linkage (files 0600 in a 0700 folder); the seeds are secret."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        meta = {"epoch": self.epoch, "sizes": self.sizes,
                "seeds": {",".join(map(str, s)): v for s, v in self.seeds.items()},
                "fingerprint": self.fingerprint}
        fd = os.open(folder / "groups.npy", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, self.groups, allow_pickle=False)
        fd = os.open(folder / "linkage.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:  # written last: its presence marks a complete save
            json.dump(meta, fh)

    @classmethod
    def load(cls, folder: Path) -> Linkage | None:
        """The stored linkage, or None when there is none (or it is unreadable)."""
        path = folder / "linkage.json"
        try:
            meta = json.loads(path.read_text())
            seeds = {tuple(int(i) for i in k.split(",")): v for k, v in meta["seeds"].items()}
            groups = np.load(folder / "groups.npy", allow_pickle=False)
            return cls(int(meta["epoch"]), meta["sizes"], seeds, groups, meta["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def fingerprint(hashed_keys: np.ndarray, data: bytes = b"") -> str:
    """Digest of a party's own hashed keys in row order (and of its other data)."""
    h = hashlib.sha256()
    for k in hashed_keys.tolist():
        h.update(int(k).to_bytes(KEY_BITS // 8, "big"))
    h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


async def exchange_sizes(own_rows: int) -> list[int]:
    """Every party's row count. Opens ``linkage.party_sizes`` to every party."""
    secint = mpc.SecInt(32)
    inputs = mpc.input(secint(own_rows))
    return [int(v) for v in await reveal("linkage.party_sizes", inputs)]


class Steps:
    """Counts the steps of a phase under way and reports each to ``progress.step`` (the
    worker's :class:`~ppa_kernel.party.worker.Phases`; None: no reports). The total is
    fixed in advance from public sizes, so the reports reveal nothing data-dependent."""

    def __init__(self, progress: Any, phase: str, total: int) -> None:
        self.progress, self.phase, self.total, self.done = progress, phase, max(total, 1), 0
        if progress is not None:
            progress.step(phase, 0, self.total)

    def __call__(self, steps: int = 1) -> None:
        self.done += steps
        if self.progress is not None:
            self.progress.step(self.phase, self.done, self.total)


def _subset_count() -> int:
    return len(subsets(len(mpc.parties), mpc.threshold))


async def link(hashed_keys: np.ndarray, epoch: int, data_fingerprint: str,
               progress=None) -> Linkage:
    """Link all parties' rows. Opens party sizes and PRF tags (see module docstring).

    ``progress`` hears of the ``shuffle`` and ``tags`` phases' ends and of ``linkage``
    steps: each party's keys input, each subset's shuffle, each PRF batch (as many steps
    as tag bits: it costs about that many times more), the grouping (whose rounds depend
    on tag collisions and are not counted).
    """
    sizes = await exchange_sizes(len(hashed_keys))
    n = sum(sizes)
    bits = link_tag_bits(n)
    batches = -(-n // PRF_CHUNK_ROWS)
    step = Steps(progress, "linkage", len(sizes) + _subset_count() + batches * bits + 1)
    stacked = None
    for party in range(len(sizes)):  # every party's keys in one column, party after party
        mine = hashed_keys.reshape(-1, 1) if mpc.pid == party else None
        rows = await _stack_one(mine, sizes, party, 1, link_type())
        stacked = rows if stacked is None else stacked + rows
        step()
    seeds = derive_seeds(epoch.to_bytes(8, "big"))
    shuffled = await shuffle_rows(stacked, seeds, step)
    if progress:
        progress("shuffle")
    x_share = (await shares(shuffled)).reshape(-1)
    tags = await legendre_tags(link_type(), x_share, bits, progress=lambda _: step(bits))
    groups = await resolve_groups(link_type(), x_share, tags)
    step()
    if progress:
        progress("tags")
    linkage = Linkage(epoch, sizes, seeds, groups, data_fingerprint)
    if linkage.group_sizes.max(initial=0) > len(sizes):  # owners reject duplicate keys
        raise PartyFailed("a link key occurs more often than there are parties")
    return linkage


async def resolve_groups(sectype, x_share: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """Group ids of the shuffled rows: equal tags first, then zero tests within buckets.

    Each round tests every unresolved row against its bucket's first row, for all buckets
    at once. Opens ``linkage.equality_masked`` (see the module docstring).
    """
    n = len(tags)
    groups = np.full(n, -1, dtype=np.int64)
    _, bucket = np.unique(tags, return_inverse=True)
    bucket = bucket.reshape(-1)
    next_id = 0
    open_rows = np.arange(n)
    while len(open_rows):
        order = open_rows[np.argsort(bucket[open_rows], kind="stable")]
        first = np.r_[True, bucket[order][1:] != bucket[order][:-1]]
        pivots = order[first]
        groups[pivots] = np.arange(next_id, next_id + len(pivots))
        next_id += len(pivots)
        others = order[~first]
        if not len(others):
            break
        pivot_of = pivots[np.searchsorted(bucket[pivots], bucket[others])]
        equal = await _equal_public(sectype, x_share, others, pivot_of)
        groups[others[equal]] = groups[pivot_of[equal]]
        open_rows = others[~equal]
    _, dense = np.unique(groups, return_inverse=True)
    return dense.reshape(-1).astype(np.int64)


async def _equal_public(sectype, x_share: np.ndarray, rows: np.ndarray,
                        pivots: np.ndarray) -> np.ndarray:
    """Whether secret keys at ``rows`` equal those at ``pivots`` (opens masked differences)."""
    field = sectype.field
    p = field.modulus
    diff = (x_share[rows] - x_share[pivots]) % p
    r = await shares(random_field_array(sectype, len(rows)))
    masked = field.array((diff * r + zero_sharing(field, len(rows)).value) % p, check=False)
    opened = await reveal("linkage.equality_masked", masked, threshold=2 * mpc.threshold)
    return np.asarray(opened.value == 0, dtype=bool).reshape(-1)


CHUNK_ELEMENTS = 1_000_000
"""Upper bound on rows x columns moved through one shuffle, bounding worker memory."""


async def linked_table(linkage: Linkage, block: np.ndarray, widths: list[int], sectype,
                       progress=None):
    """One row per linked person (group), columns of all parties' blocks. Opens nothing.

    Each party's columns are brought in separately, in chunks of at most
    ``CHUNK_ELEMENTS`` stacked values: input by their owner, shuffled by the stored
    permutations, and summed per person by the stored public grouping. ``progress``
    hears of ``input`` steps: each chunk's input and each subset's shuffle of it.
    """
    n_rows = sum(linkage.sizes)
    order = np.argsort(linkage.groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(linkage.groups[order]) != 0])
    step = max(1, CHUNK_ELEMENTS // max(n_rows, 1))
    chunks = sum(-(-width // step) for width in widths)
    done = Steps(progress, "input", chunks * (1 + _subset_count()))
    parts = []
    for party, width in enumerate(widths):
        for first in range(0, width, step):
            cols = min(step, width - first)
            mine = block[:, first:first + cols] if mpc.pid == party else None
            stacked = await _stack_one(mine, linkage.sizes, party, cols, sectype)
            done()
            shuffled = await shares(await shuffle_rows(stacked, linkage.seeds, done))
            parts.append(np.add.reduceat(shuffled[order], starts, axis=0))
    if not parts:
        return wrap(sectype, np.zeros((len(starts), 0), dtype=object))
    return wrap(sectype, np.concatenate(parts, axis=1))


async def _stack_one(block: np.ndarray | None, sizes: list[int], owner: int, width: int,
                     sectype):
    """Secure N x width array: ``owner``'s rows hold its block, other rows zero."""
    field = sectype.field
    n = sizes[owner]
    value = block if block is not None else np.zeros((n, width), dtype=object)
    received = mpc.input(sectype.array(field.array(np.asarray(value, dtype=object))),
                         senders=owner)
    out = np.zeros((sum(sizes), width), dtype=object)
    start = sum(sizes[:owner])
    out[start:start + n] = await shares(received)
    return wrap(sectype, out)
