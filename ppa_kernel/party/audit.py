"""Append-only, hash-chained audit log: one JSON-lines file per party.

Each line is one record ``{"seq", "time", "event", **fields, "prev", "hash"}``:
``seq`` counts from 1, ``time`` is UTC ISO-8601, ``prev`` is the previous record's hash
(``"0" * 64`` for the first) and ``hash`` is the SHA-256 (hex) of the record's canonical
JSON without ``hash``. Editing, deleting or reordering lines breaks the chain, which
:meth:`AuditLog.verify` detects. Removing lines from the *end* cannot be detected from the
file alone; keep the last hash elsewhere to detect that.

The log assumes one writer (one :class:`AuditLog` in one process) per file. The file is
readable and writable by its owner only (mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ppa_kernel.contract.errors import PPAError

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
FILE_MODE = 0o600
"""Permissions of the log file: owner only."""
_RESERVED = ("seq", "time", "event", "prev", "hash")


class AuditError(PPAError):
    """The audit log is malformed or its hash chain is broken at record ``seq``."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message)


def _canonical(obj: Any) -> str:
    """Canonical JSON text; TypeError for anything that is not plain JSON."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:  # NaN or infinity
        raise TypeError(f"audit values must be plain JSON: {exc}") from None


def record_hash(record: dict) -> str:
    """SHA-256 (hex) of a record's canonical JSON without its ``hash``; TypeError or
    ValueError for a record that is not plain JSON (NaN, infinity, a lone surrogate)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def link_problem(record: dict, number: int, prev: str) -> str | None:
    """Why ``record``, the ``number``-th of its log after a record hashed ``prev``, breaks
    the chain (None if it does not): the one rule ``verify`` and ``ppa audit compare`` use."""
    seq = record.get("seq")
    if type(seq) is not int or seq != number:  # True == 1, but it is no seq
        shown = repr(seq)
        shown = shown if len(shown) <= 40 else shown[:39] + "…"
        return f"record {number} has seq {shown} (missing or reordered records)"
    if record.get("prev") != prev:
        return f"record {number} does not follow the previous record (chain broken)"
    try:
        digest = record_hash(record)
    except (TypeError, ValueError, RecursionError):
        return f"record {number} is not plain JSON"
    if record.get("hash") != digest:
        return f"record {number} was altered (hash mismatch)"
    return None


class AuditLog:
    """A party's append-only, hash-chained JSON-lines audit log."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            os.chmod(self.path, FILE_MODE)
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = GENESIS
        last = self._last_line()
        if last is not None:
            record = self._parse(last, None)
            if not isinstance(record.get("seq"), int) or not isinstance(record.get("hash"), str):
                raise AuditError(f"{self.path}: last record lacks seq or hash")
            self._seq, self._prev = record["seq"], record["hash"]
            logger.debug("continuing audit log %s after seq %d", self.path, self._seq)

    def append(self, event: str, **fields: Any) -> dict:
        """Write one record and return it; nothing is written if a value is not JSON."""
        clash = [k for k in fields if k in _RESERVED]
        if clash:
            raise ValueError(f"reserved audit field(s): {', '.join(clash)}")
        with self._lock:
            record = {"seq": self._seq + 1,
                      "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                      "event": event, **fields, "prev": self._prev}
            record["hash"] = record_hash(record)
            line = _canonical(record) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
            self._seq, self._prev = record["seq"], record["hash"]
        return record

    @property
    def head(self) -> str:
        """The hash of the last record (the chain's head; ``GENESIS`` when empty)."""
        return self._prev

    def records(self) -> list[dict]:
        """All records, in file order."""
        with self._lock:
            return [self._parse(line, n) for n, line in enumerate(self._lines(), 1)]

    def verify(self) -> int:
        """Re-check the whole chain; return the number of records or raise AuditError."""
        with self._lock:
            prev = GENESIS
            count = 0
            for count, line in enumerate(self._lines(), 1):
                record = self._parse(line, count)
                problem = link_problem(record, count, prev)
                if problem is not None:
                    raise AuditError(f"{self.path}: {problem}", count)
                prev = record["hash"]
            return count

    def _lines(self) -> list[str]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        if not text:
            return []
        if not text.endswith("\n"):
            raise AuditError(f"{self.path}: last record is incomplete (no final newline)")
        return text[:-1].split("\n")

    def _last_line(self) -> str | None:
        lines = self._lines()
        return lines[-1] if lines else None

    def _parse(self, line: str, seq: int | None) -> dict:
        where = f"record {seq}" if seq is not None else "last record"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # also numbers too long, nesting too deep
            raise AuditError(f"{self.path}: {where} is not valid JSON", seq) from None
        if not isinstance(record, dict):
            raise AuditError(f"{self.path}: {where} is not a JSON object", seq)
        return record
