"""Secure record linkage: oblivious shuffle plus PRF tags, computed once, replayed per query.

Linking (:func:`link`): every party inputs its link keys (hashed locally to 120-bit
integers); the stacked keys are shuffled obliviously (:mod:`.shuffle`) and tagged with a
short keyed Legendre PRF (:mod:`.prf`) of about log2(n) - 3 bits
(:func:`~ppa_kernel.contract.limits.link_tag_bits`), which puts equal keys in one bucket
and about eight rows together. Within each bucket, public zero tests of key differences
(open (x_a - x_b) * r for a fresh secret random r: zero if and only if the keys are
equal, otherwise uniformly random) split it into people. This costs a fraction of a full
64-bit PRF tag per row, with the same result. Shares are limb arrays (:mod:`.limbs`).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppa_kernel.contract.errors import PartyFailed
from ppa_kernel.contract.limits import link_tag_bits

from . import limb_shares
from .limbs import LINK, VALUE, LimbField
from .openings import reveal, reveal_limbs
from .prf import CHUNK_ROWS as PRF_CHUNK_ROWS
from .prf import legendre_tags
from .runtime import link_type, mpc, wrap
from .shuffle import Subset, derive_seeds, owner_prefix, permute_plain, shuffle_rows, subsets

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
    keys = LINK.from_ints(hashed_keys).reshape(LINK.limbs, -1, 1)
    stacked = LINK.zeros(0).reshape(LINK.limbs, 0, 1)
    for party in range(len(sizes)):  # every party's keys in one column, party after party
        mine = keys if mpc.pid == party else None
        rows = await _stack_one(LINK, mine, sizes, party, 1)
        stacked = rows if party == 0 else LINK.add(stacked, rows)
        step()
    seeds = derive_seeds(epoch.to_bytes(8, "big"))
    scaled, scale = await shuffle_rows(LINK, stacked, seeds, step)
    x = LINK.combine([(pow(scale, -1, LINK.modulus), scaled.reshape(LINK.limbs, n))], n)
    if progress:
        progress("shuffle")
    tags = await legendre_tags(link_type(), x, bits, progress=lambda _: step(bits))
    groups = await resolve_groups(x, tags)
    step()
    if progress:
        progress("tags")
    linkage = Linkage(epoch, sizes, seeds, groups, data_fingerprint)
    if linkage.group_sizes.max(initial=0) > len(sizes):  # owners reject duplicate keys
        raise PartyFailed("a link key occurs more often than there are parties")
    return linkage


async def resolve_groups(x: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """Group ids of the shuffled rows (``x``: this party's limb shares of their keys):
    equal tags first, then zero tests within buckets.

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
        equal = await _equal_public(x, others, pivot_of)
        groups[others[equal]] = groups[pivot_of[equal]]
        open_rows = others[~equal]
    _, dense = np.unique(groups, return_inverse=True)
    return dense.reshape(-1).astype(np.int64)


async def _equal_public(x: np.ndarray, rows: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """Whether secret keys at ``rows`` equal those at ``pivots`` (opens masked differences)."""
    count = len(rows)
    diff = LINK.combine([(1, x[:, rows]), (-1, x[:, pivots])], count)
    r = limb_shares.random_shares(LINK, count)
    masked = LINK.add(LINK.mul(diff, r), limb_shares.zero_shares(LINK, count))
    opened = await reveal_limbs("linkage.equality_masked", LINK, masked,
                                threshold=2 * mpc.threshold)
    return ~opened.any(axis=0)


CHUNK_ELEMENTS = 500_000
"""Upper bound on rows x columns moved through one shuffle, bounding worker memory."""


async def linked_table(linkage: Linkage, block: np.ndarray, widths: list[int], sectype,
                       **options):
    """:func:`linked_limbs` as a secure array of ``sectype`` (people x columns)."""
    table = await linked_limbs(linkage, block, widths, sectype, **options)
    _, groups, total = table.shape
    if not groups or not total:
        return wrap(sectype, np.zeros((groups, total), dtype=object))
    values = VALUE.to_ints(table.reshape(VALUE.limbs, -1))
    return wrap(sectype, np.array(values, dtype=object).reshape(groups, total), reduced=True)


async def linked_limbs(linkage: Linkage, block: np.ndarray, widths: list[int], sectype,
                       progress=None, keep: np.ndarray | None = None,
                       stored: Mapping[int, np.ndarray] | None = None,
                       on_replayed: Callable[[int, np.ndarray], None] | None = None
                       ) -> np.ndarray:
    """This party's shares of one row per linked person (group; only the groups ``keep``
    lists, in its order, when given), columns of all parties' blocks, as canonical
    ``(L, people, columns)`` uint32 limbs. Opens nothing.

    Each party's columns are brought in separately, in chunks of at most
    ``CHUNK_ELEMENTS`` stacked values: input by their owner (already permuted by the
    leading subsets' permutations the owner knows, :func:`~.shuffle.owner_prefix`),
    shuffled by the remaining stored permutations, and summed per person by the stored
    public grouping. ``progress`` hears of ``input`` steps: each chunk's input and each
    subset's shuffle of it.

    ``stored`` maps table columns (party by party) to this party's shares of them from
    an earlier run, ``(L, people)`` uint32 limbs (:mod:`.replay_cache`): those are not
    replayed. ``on_replayed(column, shares)`` hears of every column that was.
    """
    field = VALUE
    if sectype.field.modulus != field.modulus:
        raise ValueError("the linked table needs the value field GF(2^256 - 189)")
    m, t = len(mpc.parties), mpc.threshold
    n_rows = sum(linkage.sizes)
    order = np.argsort(linkage.groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(linkage.groups[order]) != 0])
    kept = np.arange(len(starts)) if keep is None else np.asarray(keep, dtype=np.int64)
    columns = dict(stored or {})
    if any(c.shape != (field.limbs, len(kept)) for c in columns.values()):
        raise ValueError("a stored column does not fit the linked table")
    offsets = np.cumsum([0, *widths]).tolist()
    replay = [[j for j in range(width) if offsets[party] + j not in columns]
              for party, width in enumerate(widths)]
    step = max(1, CHUNK_ELEMENTS // max(n_rows, 1))
    prefixes = [owner_prefix(party, m, t) for party in range(len(widths))]
    done = Steps(progress, "input", sum(-(-len(cols) // step) * (1 + _subset_count() - len(pre))
                                        for cols, pre in zip(replay, prefixes, strict=True)))
    own = None
    if block.size:
        own = field.from_ints(np.asarray(block, dtype=object) % field.modulus)
        own = own.reshape(field.limbs, *block.shape)
    for party, cols in enumerate(replay):
        for first in range(0, len(cols), step):
            chunk = cols[first:first + step]
            mine = None
            if mpc.pid == party:
                mine = _stacked_plain(own[:, :, chunk], linkage.sizes, party)
                mine = permute_plain(mine, linkage.seeds, prefixes[party])
            stacked = await _input_stacked(field, mine, party, n_rows, len(chunk))
            done()
            shuffled, scale = await shuffle_rows(field, stacked, linkage.seeds, done,
                                                 skip=len(prefixes[party]))
            sums = np.zeros((field.limbs, 0, len(chunk)), dtype=np.uint32)
            if len(kept):
                sums = np.add.reduceat(shuffled[:, order], starts, axis=1)[:, kept]
                flat = sums.reshape(field.limbs, -1)
                unscaled = field.combine([(pow(scale, -1, field.modulus), flat)], flat.shape[1])
                sums = field.freeze(unscaled).astype(np.uint32).reshape(sums.shape)
            for i, j in enumerate(chunk):
                columns[offsets[party] + j] = sums[:, :, i]
                if on_replayed is not None:
                    on_replayed(offsets[party] + j, sums[:, :, i])
    groups, total = len(kept), sum(widths)
    table = np.empty((field.limbs, groups, total), dtype=np.uint32)
    for c in range(total):
        table[:, :, c] = columns.pop(c)
    return table


def _stacked_plain(block: np.ndarray, sizes: list[int], owner: int) -> np.ndarray:
    """``(L, N, width)`` limbs (values or shares): ``owner``'s rows hold ``block``
    (``(L, rows, width)``), the other parties' rows zero."""
    out = np.zeros((block.shape[0], sum(sizes), block.shape[2]), dtype=np.uint64)
    start = sum(sizes[:owner])
    out[:, start:start + sizes[owner]] = block
    return out


async def _input_stacked(field: LimbField, stacked: np.ndarray | None, owner: int, rows: int,
                         width: int) -> np.ndarray:
    """Shares, ``(L, rows, width)``, of the stacked array ``owner`` holds (None elsewhere)."""
    values = None if stacked is None else stacked.reshape(field.limbs, rows * width)
    received = await limb_shares.inputs_from(field, values, [owner], rows * width)
    return received.reshape(field.limbs, rows, width)


async def _stack_one(field: LimbField, block: np.ndarray | None, sizes: list[int], owner: int,
                     width: int) -> np.ndarray:
    """Limb shares, shape ``(L, N, width)``: ``owner``'s rows hold its block (given
    there as ``(L, rows, width)``), other rows zero."""
    own = await _input_stacked(field, block, owner, sizes[owner], width)
    return _stacked_plain(own, sizes, owner)
