"""Columns of the linked table kept per data epoch, so a later query replays only new ones.

Bringing one party's feature into the linked table (:func:`.linkage.linked_table`) inputs
and shuffles a column over *every* party's rows, then sums it per person: at registry
scale that is minutes per query. While the epoch lasts the result does not change, so
each party keeps its own shares of each replayed column under

* the column's public *identity*: its owner, the feature as the plan defines it (for
  one-hot columns also the owner's group definitions) and the least group size of the
  join, which fixes which people the column holds (:func:`.query.joined_rows`); and
* a *token*, a random number all parties agreed on in the run that replayed it.

A query uses a stored column only if every party holds it under the same token (the
tokens are opened in ``linkage.ready``), so shares from different runs are never mixed
and a party that lost an entry, or never wrote it, makes all parties replay that column.
The owner also keeps a digest of the column's plaintext content and reports no entry
when its data gives another column (a plan definition that names the same identity
differently). The epoch's data fingerprint already wipes all entries when any data
changes.

At rest an entry is this party's Shamir shares only (files 0600 in the epoch's 0700
folder): nothing without ``t`` other parties' entries, like the released-row history
beside it. Layout: ``columns/<sha256 of identity>.npy`` (uint32 limbs, no pickle) and
``.json`` (identity, token, people, owner's content digest), the JSON written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ppa_kernel.contract.config import DEFAULT_REPLAY_CACHE_GB
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.program import Feature, Program

from .limbs import VALUE

logger = logging.getLogger(__name__)

TOKEN_BITS = 60
"""Bits of an entry's token (a sum of every party's random nonce, modulo 2^60)."""

CAPACITY_BYTES = DEFAULT_REPLAY_CACHE_GB << 30
"""Most bytes of stored columns per epoch unless the party file says otherwise
(``replay_cache_gb``); beyond it the least recently used go (an analyst who asks for
ever new expressions costs replays, never the owner's disk)."""


def column_identity(program: Program, feature: Feature, joined: int) -> str:
    """The public name of a linked-table column: owner, feature, join size (and the
    owner's group definitions for a one-hot column, whose key names only the groups)."""
    ident = {"party": feature.party, "kind": feature.kind, "key": feature.key,
             "level": feature.level, "joined": joined}
    if feature.kind == "onehot":
        ident["groups"] = program.group_entries.get(feature.party, [])
    return canonical_json(ident)


def table_columns(program: Program, party: str,
                  block: np.ndarray) -> list[tuple[str, str | None]]:
    """(identity, content digest) of every linked-table column in table order (party by
    party); the digest only for ``party``'s own columns (``block``, its input rows)."""
    joined, out, own = len(program.link), [], 0
    for owner in program.parties:
        for feature in program.features.get(owner, []):
            content = None
            if owner == party:
                content, own = content_digest(block[:, own]), own + 1
            out.append((column_identity(program, feature, joined), content))
    return out


def content_digest(column: np.ndarray) -> str:
    """SHA-256 of an owner's plaintext column (an object array of ints)."""
    try:
        raw = np.asarray(column, dtype=np.int64).tobytes()
    except OverflowError:
        raw = repr(column.tolist()).encode()
    return hashlib.sha256(raw).hexdigest()


class ColumnCache:
    """This party's stored linked-table columns of one epoch (``folder / "columns"``)."""

    def __init__(self, folder: Path, capacity: int = CAPACITY_BYTES):
        self.folder = folder / "columns"
        self.capacity = capacity
        self.loaded: dict[str, np.ndarray] = {}

    def _paths(self, identity: str) -> tuple[Path, Path]:
        name = hashlib.sha256(identity.encode()).hexdigest()
        return self.folder / f"{name}.json", self.folder / f"{name}.npy"

    def token(self, identity: str, content: str | None = None) -> int:
        """The token of the stored column (0: none, unreadable, or another content at
        its owner, who passes ``content``). A readable column is kept in memory for
        :meth:`shares`, so what this party reports it can also use."""
        meta_path, data_path = self._paths(identity)
        try:
            meta = json.loads(meta_path.read_text())
            token, people = int(meta["token"]), int(meta["people"])
            if meta["identity"] != identity or not 0 < token < 1 << TOKEN_BITS:
                return 0
            if content is not None and meta.get("content") != content:
                return 0
            shares = np.load(data_path, allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        if shares.dtype != np.uint32 or shares.shape != (VALUE.limbs, people):
            logger.warning("dropped a stored column of the wrong shape %s", shares.shape)
            return 0
        if not VALUE.canonical(shares):  # the query's limb arithmetic needs limbs < 2^26
            logger.warning("dropped a stored column that is not canonical field elements")
            return 0
        self.loaded[identity] = shares
        os.utime(meta_path)  # recently used: evicted last
        return token

    def shares(self, identity: str) -> np.ndarray:
        """The column :meth:`token` found: ``(L, people)`` uint32 limbs of this party's
        shares of each kept person's value."""
        return self.loaded[identity]

    def drop(self, identity: str) -> None:
        """Forget a stored column."""
        for path in self._paths(identity):
            path.unlink(missing_ok=True)
        self.loaded.pop(identity, None)

    def store(self, identity: str, content: str | None, *, token: int,
              shares: np.ndarray) -> None:
        """Keep a replayed column under ``token`` (files 0600 in a 0700 folder)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        meta_path, data_path = self._paths(identity)
        meta_path.unlink(missing_ok=True)  # no entry claims the old token while writing
        column = np.ascontiguousarray(shares, dtype=np.uint32).reshape(VALUE.limbs, -1)
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, column, allow_pickle=False)
        meta = {"identity": identity, "token": token, "people": column.shape[1],
                "content": content}
        fd = os.open(meta_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(meta, fh)
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently used columns until the rest fit :attr:`capacity`
        (a column without its description goes first: it is unusable)."""
        entries = []
        for data_path in self.folder.glob("*.npy"):
            meta_path = data_path.with_suffix(".json")
            try:
                used = meta_path.stat().st_mtime if meta_path.exists() else 0.0
                entries.append((used, data_path.stat().st_size, data_path, meta_path))
            except OSError:
                continue
        total = sum(size for _, size, _, _ in entries)
        for _, size, data_path, meta_path in sorted(entries, key=lambda e: e[0]):
            if total <= self.capacity:
                break
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
            total -= size
            logger.info("evicted a stored column (%d bytes) to stay within %d", size,
                        self.capacity)
