"""Run receipts: what an analyst's client keeps of each run to check the parties' audit
logs later.

A receipt is one JSON line ``{"run_id", "plan_hash", "released_digest", "time",
"parties": {name: {"seq", "head"}}}``: for every party, the sequence number and hash of
its ``run_completed`` audit record. A party that later truncates its log, or rebuilds its
chain, can no longer show that record with that hash (``ppa audit compare --receipts``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .errors import ReceiptError
from .expr import canonical_json

logger = logging.getLogger(__name__)

MAX_RECEIPT_LINE = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def released_digest(stats: dict) -> str:
    """SHA-256 (hex) of a run's released statistics in canonical JSON: the same at every
    party for one run (the client checks that they agree), so logs and receipts compare it."""
    return hashlib.sha256(canonical_json(stats).encode()).hexdigest()


def receipt(run_id: str, plan_hash: str, digest: str, time: str,
            parties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A receipt record (see the module docstring)."""
    return {"run_id": run_id, "plan_hash": plan_hash, "released_digest": digest,
            "time": time, "parties": {name: {"seq": int(p["seq"]), "head": str(p["head"])}
                                      for name, p in parties.items()}}


def append_receipt(path: Path, record: dict[str, Any]) -> None:
    """Add one receipt to a receipts file (created 0600 with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(canonical_json(record) + "\n")


def read_receipts(path: Path) -> list[dict[str, Any]]:
    """Every receipt in a receipts file, checked for shape (ReceiptError otherwise)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if len(line) > MAX_RECEIPT_LINE:
                raise ReceiptError(f"{path}: line {number} is too long")
            try:
                record = json.loads(line)
                parties = record["parties"]
                ok = (isinstance(record["run_id"], str) and isinstance(parties, dict)
                      and all(isinstance(p.get("seq"), int) and isinstance(p.get("head"), str)
                              and _HEX64.fullmatch(p["head"]) is not None
                              for p in parties.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = False
            if not ok:
                raise ReceiptError(f"{path}: line {number} is not a receipt")
            out.append(record)
    return out
