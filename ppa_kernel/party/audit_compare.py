"""Compare the parties' audit logs with each other and with the analyst's run receipts.

One log shows edits, deletions and reorderings (its chain breaks), but neither a cut tail
nor a chain rebuilt with every hash recomputed. Across parties both show: every completed
run has a ``run_completed`` record at every party (a run releases everywhere or nowhere)
with the same plan hash, analyst, opened names and released digest; and a receipt holds,
per party, the ``seq`` and ``hash`` of that record, which through the chain pins every
record before it.

:func:`compare` streams each log once, line by line, and keeps per run only its id and a
few digests (never a plan); lines longer than :data:`MAX_LINE` are refused. Logs are
hostile input: whatever a line holds becomes a line of the report, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppa_kernel.contract.errors import ReceiptError
from ppa_kernel.contract.protocol import MAX_REQUEST
from ppa_kernel.contract.receipts import read_receipts

from .audit import GENESIS, link_problem, record_hash

logger = logging.getLogger(__name__)

MAX_LINE = 8 * MAX_REQUEST
"""Longest audit record read (bytes, without its newline): well above the largest a kernel
writes (a plan is at most ``MAX_REQUEST``); a longer line is reported and skipped."""
MAX_PROBLEMS = 20
"""Problems listed per log; further ones are only counted."""
MAX_SHOWN = 50
"""Disagreeing runs and receipts the text report lists; further ones are only counted."""
COMPARED = ("plan_hash", "analyst", "opened", "released_digest")
"""The fields of a run's ``run_completed`` record that must agree at every party."""

_RUN_ID = re.compile(r"[0-9a-f]{8,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[\w.@-]{1,64}")
_SKIP = 1 << 20  # bytes read at a time while skipping an overlong line


@dataclass
class LogReport:
    """One log: its chain (verify's first break), party, size, head and problems."""

    source: str
    party: str
    records: int = 0
    head: str = GENESIS
    runs: int = 0
    broken_at: int | None = None
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems and not self.more_problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more_problems += 1


@dataclass
class RunReport:
    """One run id: the logs (by party) with its ``run_completed``, and what differs."""

    run_id: str
    completed: list[str]
    missing: list[str]
    differs: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> party -> value

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differs


@dataclass
class ReceiptReport:
    """One receipt: per party, ``(status, detail)``; status ``ok``, ``truncated``,
    ``altered``, ``mismatch`` or ``no log`` (not checked: that party's log was not given)."""

    source: str
    line: int
    run_id: str
    parties: dict[str, tuple[str, str]]

    @property
    def ok(self) -> bool:
        return all(status in ("ok", "no log") for status, _ in self.parties.values())


@dataclass
class CompareReport:
    """What :func:`compare` found; ``ok`` only when everything agrees."""

    logs: list[LogReport] = field(default_factory=list)
    runs: list[RunReport] = field(default_factory=list)
    receipts: list[ReceiptReport] = field(default_factory=list)
    receipts_skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.problems and bool(self.logs) and all(r.ok for r in self.logs)
                and all(r.ok for r in self.runs) and all(r.ok for r in self.receipts))


def _show(value: Any, limit: int = 40) -> str:
    """A hostile value, printable and short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _log_path(target: str | Path) -> Path:
    path = Path(target)
    return path / "audit.jsonl" if path.is_dir() else path


def _default_name(path: Path) -> str:
    """The party a log belongs to when no record names it: its state folder's name."""
    return path.parent.name if path.name == "audit.jsonl" and path.parent.name else path.stem


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """``(number, line)`` for each line, newline kept; ``None`` for one over MAX_LINE."""
    with open(path, "rb") as fh:
        number = 0
        while line := fh.readline(MAX_LINE + 1):
            number += 1
            if len(line) > MAX_LINE and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = fh.readline(_SKIP)
                yield number, None
            else:
                yield number, line


def _parse(line: bytes | None) -> tuple[dict | None, str | None]:
    """The record in one line, or why there is none (a phrase after "record N")."""
    if line is None:
        return None, f"is longer than {MAX_LINE} bytes"
    if not line.endswith(b"\n"):
        return None, "is incomplete (no final newline)"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except (ValueError, RecursionError):  # also numbers too long, nesting too deep
        return None, "is not valid JSON"
    if not isinstance(record, dict):
        return None, "is not a JSON object"
    return record, None


def _digest(record: dict) -> str | None:
    try:
        return record_hash(record)
    except (TypeError, ValueError, RecursionError):
        return None


def _run_fields(record: dict) -> tuple[str, tuple[str, ...]] | str:
    """A ``run_completed`` record's run id and compared fields, or what is wrong with it."""
    run_id, plan, analyst = record.get("run_id"), record.get("plan_hash"), record.get("analyst")
    opened, digest = record.get("opened"), record.get("released_digest")
    wrong = [name for name, good in (
        ("run_id", isinstance(run_id, str) and _RUN_ID.fullmatch(run_id)),
        ("plan_hash", isinstance(plan, str) and _HEX64.fullmatch(plan)),
        ("analyst", isinstance(analyst, str) and len(analyst) <= 200),
        ("approvers", isinstance(record.get("approvers"), list)),
        ("opened", isinstance(opened, list) and all(isinstance(o, str) for o in opened)),
        ("released_digest", isinstance(digest, str) and _HEX64.fullmatch(digest)),
    ) if not good]
    if wrong:
        return f"run_completed with a missing or malformed {', '.join(wrong)}"
    names = json.dumps(sorted(opened), ensure_ascii=False)
    opened_key = f"{len(opened)} names, {hashlib.sha256(names.encode()).hexdigest()[:12]}"
    return run_id, (plan, analyst, opened_key, digest)


def _scan(path: Path, index: int, runs: dict[str, dict[int, tuple[str, ...]]],
          wanted: dict[int, set[str]]) -> tuple[LogReport, dict[int, tuple]]:
    """Read one log: its report; its runs into ``runs``; and, for each seq in ``wanted``,
    ``(hash, run_id, released_digest)`` of its record (hash None if it does not hold)."""
    report = LogReport(str(path), _default_name(path))
    at: dict[int, tuple] = {}
    named: str | None = None
    prev = GENESIS
    seen: dict[str, int] = {}  # run id -> record number of its run_completed
    try:
        for number, line in _lines(path):
            report.records = number
            record, why = _parse(line)
            if record is None:
                report.head = "?"
                _break(report, number, f"record {number} {why}")
                continue
            stored, digest = record.get("hash"), _digest(record)
            report.head = stored if isinstance(stored, str) and _HEX64.fullmatch(stored) else "?"
            seq = record.get("seq")
            if report.error is None:
                problem = link_problem(record, number, prev)
                if problem is not None:
                    _break(report, number, problem)
                prev = stored
            event = record.get("event")
            if event == "kernel_started":
                party = record.get("party")
                if not (isinstance(party, str) and _NAME.fullmatch(party)):
                    report.problem(f"record {number}: kernel_started names party {_show(party)}")
                elif named is None:
                    named = report.party = party
                elif party != named:
                    report.problem(f"record {number}: kernel_started names party {party!r}, "
                                   f"earlier records {named!r}")
            run_id = released = None
            if event == "run_completed":
                fields = _run_fields(record)
                if isinstance(fields, str):
                    report.problem(f"record {number}: {fields}")
                else:
                    run_id, values = fields
                    released = values[-1]
                    if run_id in seen:
                        report.problem(f"record {number}: run {run_id} completed again "
                                       f"(first at record {seen[run_id]})")
                    else:
                        seen[run_id] = number
                        runs.setdefault(run_id, {})[index] = values
                        report.runs += 1
            if type(seq) is int and seq in wanted:
                held = stored if stored == digest else None
                if seq not in at or (at[seq][0] not in wanted[seq] and held in wanted[seq]):
                    at[seq] = (held, run_id, released)
    except OSError as exc:
        _break(report, report.records + 1, f"cannot read: {exc.strerror or exc}")
    return report, at


def _break(report: LogReport, number: int, text: str) -> None:
    """Record the chain's first break; after it, unreadable records are problems."""
    if report.error is None:
        report.broken_at, report.error = number, text
    else:
        report.problem(text)


def _check_receipt(receipt: dict, logs: list[LogReport], ats: list[dict[int, tuple]],
                   by_party: dict[str, int]) -> dict[str, tuple[str, str]]:
    out = {}
    for name, held in receipt["parties"].items():
        seq, head = held["seq"], held["head"]
        if name not in by_party:
            out[name] = ("no log", "no log of this party was given")
            continue
        log = logs[by_party[name]]
        found = ats[by_party[name]].get(seq)
        if found is None and (type(seq) is not int or seq > log.records or seq < 1):
            out[name] = ("truncated", f"the log ends at record {log.records}, the receipt "
                                      f"holds record {_show(seq)} (truncated)")
        elif found is None:
            out[name] = ("altered", f"no record has seq {seq} (removed, rebuilt or altered)")
        elif found[0] != head:
            out[name] = ("altered", f"record {seq} is not the one the receipt holds "
                                    "(rebuilt or altered)")
        elif found[1] != receipt["run_id"] or found[2] != receipt.get("released_digest"):
            out[name] = ("mismatch", f"record {seq} has the receipt's hash but another run "
                                     "or release than the receipt")
        else:
            out[name] = ("ok", f"record {seq} matches")
    return out


def compare(paths: Sequence[str | Path], receipts: Sequence[str | Path] = ()) -> CompareReport:
    """Compare audit logs (files or state folders) with each other and with receipts files."""
    report = CompareReport()
    loaded: list[tuple[str, int, dict]] = []
    for source in receipts:
        try:
            loaded += [(str(source), n, r) for n, r in enumerate(read_receipts(Path(source)), 1)]
        except ReceiptError as exc:
            report.problems.append(exc.message)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            report.problems.append(f"{source}: cannot read these receipts: {reason}")
    wanted: dict[int, set[str]] = {}
    for _, _, r in loaded:
        for held in r["parties"].values():
            wanted.setdefault(held["seq"], set()).add(held["head"])

    runs: dict[str, dict[int, tuple[str, ...]]] = {}
    ats: list[dict[int, tuple]] = []
    for target in paths:
        path = _log_path(target)
        if not path.is_file():
            report.problems.append(f"{path}: no audit log")
            continue
        log, at = _scan(path, len(report.logs), runs, wanted)
        report.logs.append(log)
        ats.append(at)
        logger.debug("read %s: %d records, %d runs", path, log.records, log.runs)

    labels = [log.party for log in report.logs]
    by_party: dict[str, int] = {}
    for i, log in enumerate(report.logs):
        if log.party in by_party:
            report.problems.append(f"{log.source} and {report.logs[by_party[log.party]].source} "
                                   f"are both logs of {log.party}")
            labels[i] = f"{log.party} ({log.source})"
        else:
            by_party[log.party] = i

    for run_id, held in runs.items():
        run = RunReport(run_id, [labels[i] for i in sorted(held)],
                        [labels[i] for i in range(len(labels)) if i not in held])
        for k, name in enumerate(COMPARED):
            values = {labels[i]: v[k] for i, v in sorted(held.items())}
            if len(set(values.values())) > 1:
                run.differs[name] = values
        report.runs.append(run)

    for source, line, r in loaded:
        if not any(name in by_party for name in r["parties"]):
            report.receipts_skipped += 1
            continue
        report.receipts.append(ReceiptReport(source, line, r["run_id"],
                                             _check_receipt(r, report.logs, ats, by_party)))
    return report


def _short(value: str) -> str:
    return value[:12] if _HEX64.fullmatch(value) else _show(value)


def _run(value: str) -> str:
    return value if _RUN_ID.fullmatch(value) else _show(value, 66)


def _listed(lines: list[str], items: list[str]) -> None:
    lines += items[:MAX_SHOWN]
    if len(items) > MAX_SHOWN:
        lines.append(f"  … and {len(items) - MAX_SHOWN} more")


def format_report(report: CompareReport) -> str:
    """The report as text: logs, disagreeing runs, failing receipts, then the verdict."""
    lines = [f"error: {p}" for p in report.problems]
    lines.append(f"logs: {len(report.logs)}")
    for log in report.logs:
        state = (f"BROKEN at record {log.broken_at}: {log.error}" if log.error else "chain ok")
        lines.append(f"  {log.party}: {log.source}: {state}, {log.records} records, "
                     f"{log.runs} runs, chain head {log.head}")
        lines += [f"    {p}" for p in log.problems]
        if log.more_problems:
            lines.append(f"    … and {log.more_problems} more problems")

    bad_runs = [r for r in report.runs if not r.ok]
    lines.append(f"runs: {len(report.runs)}, {len(report.runs) - len(bad_runs)} completed at "
                 "every log with the same plan, analyst, opened names and release")
    text = []
    for run in bad_runs:
        if run.missing:
            text.append(f"  run {run.run_id}: completed at {', '.join(run.completed)}; "
                        f"no run_completed at {', '.join(run.missing)}")
        for name, values in run.differs.items():
            shown = ", ".join(f"{party} {_short(v)}" for party, v in values.items())
            text.append(f"  run {run.run_id}: {name} differs: {shown}")
    _listed(lines, text)

    bad = [r for r in report.receipts if not r.ok]
    skipped = (f" ({report.receipts_skipped} naming none of these parties skipped)"
               if report.receipts_skipped else "")
    lines.append(f"receipts: {len(report.receipts)} checked, {len(bad)} failing{skipped}")
    unchecked = sorted({party for r in report.receipts
                        for party, (status, _) in r.parties.items() if status == "no log"})
    if unchecked:
        lines.append(f"  not checked at {', '.join(unchecked)}: no log of theirs given")
    text = [f"  {r.source}:{r.line} run {_run(r.run_id)}: {party}: {detail}"
            for r in bad for party, (status, detail) in r.parties.items()
            if status not in ("ok", "no log")]
    _listed(lines, text)

    if report.ok:
        lines.append(f"OK: {len(report.logs)} logs agree on {len(report.runs)} runs")
    else:
        lines.append("DISAGREE: see above")
    return "\n".join(lines)
