"""``ppa audit compare``: three parties' logs and the analyst's receipts agree on an honest
set; an edit, a deletion, a reorder, a cut tail, a rebuilt chain, a run missing at one
party, a different release at one party and hostile lines are each reported.

The logs are written with :class:`AuditLog` as a kernel writes them (no MPC); one check at
the end runs a real local consortium."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.cli import main
from ppa_kernel.contract.receipts import append_receipt, read_receipts, receipt, released_digest
from ppa_kernel.party import audit_compare
from ppa_kernel.party.audit import GENESIS, AuditError, AuditLog, record_hash
from ppa_kernel.party.audit_compare import compare, format_report

PARTIES = ("insurer", "hospital", "bureau")
RUNS = 3


def run_id(i: int) -> str:
    return f"{i + 1:016x}"


def write_set(folder: Path, *, skip: tuple[str, int] | None = None,
              digest_at: tuple[str, int] | None = None) -> tuple[dict[str, Path], Path]:
    """Three parties' state folders with RUNS runs, and the analyst's receipts file.

    ``skip=(party, i)``: that party refused run i (no run_completed, no receipt from it);
    ``digest_at=(party, i)``: that party records another released digest for run i."""
    logs = {p: AuditLog(folder / "state" / p / "audit.jsonl") for p in PARTIES}
    receipts = folder / "receipts.jsonl"
    for party, log in logs.items():
        log.append("kernel_started", party=party, rows=120, policy={"approval": "auto"},
                   analysts={"alice": {"role": "analyst", "fingerprint": "ab" * 32}})
    for i in range(RUNS):
        plan = {"version": 1, "cohort": {"age": [">=", 40 + i]}, "stats": ["count", "mean"]}
        plan_hash = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
        digest = released_digest({"counts": {"n": [40 + i, 51]}, "sums": {"cost": [1.5, i]}})
        heads = {}
        for party, log in logs.items():
            log.append("plan_accepted", run_id=run_id(i), plan_hash=plan_hash, plan=plan,
                       analyst="alice", nonce=f"{i:032x}")
            if (party, i) == skip:
                log.append("plan_refused", run_id=run_id(i), reason="not pinned",
                           plan=plan, analyst="alice", nonce=f"{i:032x}")
                continue
            if party == "hospital":  # a manual approval: the parties' seqs differ
                log.append("plan_approved", run_id=run_id(i), plan_hash=plan_hash,
                           reviewer="rita", reason="within the DPIA")
            record = log.append(
                "run_completed", run_id=run_id(i), plan_hash=plan_hash, analyst="alice",
                approvers=["rita"] if party == "hospital" else ["policy"],
                opened=["release.count", "release.sum"],
                released_digest="f" * 64 if (party, i) == digest_at else digest,
                released_counts=4, multiplicity=1,
                openings=[{"name": "release.count", "count": 2}])
            heads[party] = {"seq": record["seq"], "head": record["hash"]}
        append_receipt(receipts, receipt(run_id(i), plan_hash, digest,
                                         "2025-01-01T00:00:00Z", heads))
    return {p: log.path.parent for p, log in logs.items()}, receipts


@pytest.fixture
def honest(tmp_path):
    return write_set(tmp_path)


def lines_of(folder: Path) -> list[str]:
    return (folder / "audit.jsonl").read_text().splitlines()


def write_lines(folder: Path, lines: list[str]) -> None:
    (folder / "audit.jsonl").write_text("".join(line + "\n" for line in lines))


def rebuild(records: list[dict]) -> list[str]:
    """Renumber and rechain records with the log's own rules, so verify passes."""
    prev, out = GENESIS, []
    for seq, record in enumerate(records, 1):
        record = {k: v for k, v in record.items() if k != "hash"} | {"seq": seq, "prev": prev}
        record["hash"] = prev = record_hash(record)
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False))
    return out


def check(folders: dict[str, Path], receipts: Path | None = None):
    report = compare(list(folders.values()), [receipts] if receipts else [])
    return report, format_report(report)


def failing_receipts(report) -> dict[tuple[str, str], str]:
    """(run id, party) -> status of every failing receipt entry."""
    return {(r.run_id, party): status for r in report.receipts
            for party, (status, _) in r.parties.items() if status != "ok"}


def test_the_honest_set_agrees(honest):
    folders, receipts = honest
    report, text = check(folders, receipts)
    assert report.ok, text
    assert [log.party for log in report.logs] == list(PARTIES)
    assert [log.records for log in report.logs] == [1 + 2 * RUNS, 1 + 3 * RUNS, 1 + 2 * RUNS]
    assert [log.head for log in report.logs] == [AuditLog(f / "audit.jsonl").head
                                                 for f in folders.values()]
    assert [r.run_id for r in report.runs] == [run_id(i) for i in range(RUNS)]
    assert all(r.completed == list(PARTIES) for r in report.runs)
    assert len(report.receipts) == RUNS and report.receipts_skipped == 0
    assert text.endswith(f"OK: 3 logs agree on {RUNS} runs")
    assert "hospital: " in text and "chain ok, 10 records, 3 runs" in text


@pytest.mark.parametrize("change, seq", [
    ("edit", 7), ("delete", 7), ("reorder", 6)])
def test_breaks_in_one_log_are_verify_breaks(honest, change, seq):
    folders, receipts = honest
    lines = lines_of(folders["hospital"])
    if change == "edit":  # the approver of run 2, as someone would edit it by hand
        lines[6] = lines[6].replace('"approvers":["rita"]', '"approvers":["mallory"]')
    elif change == "delete":  # run 2's release
        del lines[6]
    else:
        lines[5], lines[6] = lines[6], lines[5]
    write_lines(folders["hospital"], lines)
    with pytest.raises(AuditError) as caught:
        AuditLog(folders["hospital"] / "audit.jsonl").verify()
    report, text = check(folders, receipts)
    hospital = report.logs[1]
    assert not report.ok and text.endswith("DISAGREE: see above")
    assert (hospital.broken_at, hospital.error) == (caught.value.seq, caught.value.message
                                                    .split(": ", 1)[1])
    assert f"hospital: {folders['hospital'] / 'audit.jsonl'}: BROKEN at record {seq}" in text
    assert report.logs[0].ok and report.logs[2].ok
    if change == "edit":  # the edited record no longer has the hash the receipt holds
        assert failing_receipts(report) == {(run_id(1), "hospital"): "altered"}
    if change == "delete":  # run 2 is gone, with the record its receipt holds
        assert failing_receipts(report) == {(run_id(1), "hospital"): "altered"}
        assert [(r.run_id, r.missing) for r in report.runs if not r.ok] == [
            (run_id(1), ["hospital"])]
    if change == "reorder":  # the records are all there, in the wrong order
        assert failing_receipts(report) == {}


def test_a_truncated_tail_is_caught_by_the_others_and_the_receipts(honest):
    folders, receipts = honest
    write_lines(folders["bureau"], lines_of(folders["bureau"])[:-1])  # run 3's release
    assert AuditLog(folders["bureau"] / "audit.jsonl").verify() == 2 * RUNS  # alone: fine
    report, text = check(folders, receipts)
    assert not report.ok and all(log.ok for log in report.logs)
    bad = [r for r in report.runs if not r.ok]
    assert [(r.run_id, r.missing) for r in bad] == [(run_id(2), ["bureau"])]
    assert (f"run {run_id(2)}: completed at insurer, hospital; no run_completed at bureau"
            in text)
    assert failing_receipts(report) == {(run_id(2), "bureau"): "truncated"}
    assert "the log ends at record 6, the receipt holds record 7 (truncated)" in text
    # the other logs alone show it; the receipts alone show it
    assert not compare(list(folders.values())).ok
    alone = compare([folders["bureau"]], [receipts])
    assert not alone.ok
    assert {k: v for k, v in failing_receipts(alone).items() if v != "no log"} == {
        (run_id(2), "bureau"): "truncated"}
    assert "not checked at hospital, insurer: no log of theirs given" in format_report(alone)


def test_a_rebuilt_chain_passes_verify_but_not_compare(honest):
    folders, receipts = honest
    records = [json.loads(line) for line in lines_of(folders["bureau"])]
    kept = [r for r in records if r.get("run_id") != run_id(1)]  # run 2 never happened
    write_lines(folders["bureau"], rebuild(kept))
    assert AuditLog(folders["bureau"] / "audit.jsonl").verify() == len(kept)
    report, text = check(folders, receipts)
    assert not report.ok and all(log.ok for log in report.logs), text
    assert [(r.run_id, r.missing) for r in report.runs if not r.ok] == [(run_id(1),
                                                                         ["bureau"])]
    # run 2's record is gone, run 3's moved to run 2's seq with another hash
    assert failing_receipts(report) == {(run_id(1), "bureau"): "altered",
                                        (run_id(2), "bureau"): "truncated"}
    assert "bureau: record 5 is not the one the receipt holds (rebuilt or altered)" in text
    # the other parties alone show it too, without any receipt
    assert not compare(list(folders.values())).ok


def test_a_run_missing_at_one_party_is_a_disagreement(tmp_path):
    folders, receipts = write_set(tmp_path, skip=("bureau", 1))
    report, text = check(folders, receipts)
    assert not report.ok and all(log.ok for log in report.logs)
    assert f"run {run_id(1)}: completed at insurer, hospital; no run_completed at bureau" \
        in text
    assert not failing_receipts(report)  # the client's receipt lacks the bureau, rightly


def test_a_different_release_at_one_party(tmp_path):
    folders, receipts = write_set(tmp_path, digest_at=("hospital", 1))
    report, text = check(folders, receipts)
    assert not report.ok and all(log.ok for log in report.logs)
    run = report.runs[1]
    assert list(run.differs) == ["released_digest"] and not run.missing
    assert run.differs["released_digest"]["hospital"] == "f" * 64
    assert f"run {run_id(1)}: released_digest differs: insurer " in text
    assert "hospital ffffffffffff" in text
    assert failing_receipts(report) == {(run_id(1), "hospital"): "mismatch"}


def test_receipts_of_other_parties_are_skipped_and_unchecked_ones_named(honest, tmp_path):
    folders, receipts = honest
    append_receipt(receipts, receipt("ab" * 8, "0" * 64, "1" * 64, "2025-01-01T00:00:00Z",
                                     {"elsewhere": {"seq": 3, "head": "2" * 64}}))
    report = compare([folders["insurer"], folders["hospital"]], [receipts])
    assert report.receipts_skipped == 1 and len(report.receipts) == RUNS
    assert set(failing_receipts(report).values()) == {"no log"}
    text = format_report(report)
    assert report.ok, text  # what was given agrees; the text says what was not checked
    assert "receipts: 3 checked, 0 failing (1 naming none of these parties skipped)" in text
    assert "not checked at bureau: no log of theirs given" in text
    missing = tmp_path / "nowhere"
    report = compare([*folders.values(), missing])
    assert f"error: {missing}: no audit log" in format_report(report)
    assert not report.ok
    twice = compare([*folders.values(), folders["bureau"] / "audit.jsonl"])
    assert not twice.ok and "are both logs of bureau" in format_report(twice)


HOSTILE = [
    b"not json",
    b"[1, 2]",
    b'{"seq": ' + b"9" * 5000 + b"}",  # a number longer than Python parses
    b'{"seq": 1e999, "x": NaN}',
    b"[" * 6000,  # nesting deeper than the parser goes
    b'{"seq": "\xff\xfe"}',  # not UTF-8
    b"x" * 20_000,  # longer than MAX_LINE (patched below)
    b'{"seq": 99, "event": "run_completed", "run_id": "' + b"a" * 5 + b'"}',
]


def test_hostile_lines_are_reported_never_raised(honest, monkeypatch):
    folders, receipts = honest
    monkeypatch.setattr(audit_compare, "MAX_LINE", 8192)
    log = AuditLog(folders["insurer"] / "audit.jsonl")
    log.append("run_completed", run_id=run_id(0), plan_hash="0" * 64, analyst="alice",
               approvers=[], opened=[], released_digest="0" * 64)  # a duplicate run id
    log.append("run_completed", run_id=123, plan_hash=[], analyst="alice", approvers="x",
               opened=[1], released_digest="0" * 64)
    log.append("kernel_started", party="../../etc")
    log.append("kernel_started", party="hospital")
    assert log.verify() == 11  # a whole chain, with wrong content
    with open(log.path, "ab") as fh:
        fh.write(b"\n".join(HOSTILE) + b"\n" + b'{"no": "newline"}')
    report, text = check(folders, receipts)
    insurer = report.logs[0]
    assert not report.ok and insurer.party == "insurer"
    assert insurer.records == 11 + len(HOSTILE) + 1
    assert insurer.broken_at == 12 and insurer.error == "record 12 is not valid JSON"
    want = [
        f"record 8: run {run_id(0)} completed again (first at record 3)",
        "record 9: run_completed with a missing or malformed run_id, plan_hash, approvers, "
        "opened",
        "record 10: kernel_started names party '../../etc'",
        "record 11: kernel_started names party 'hospital', earlier records 'insurer'",
        "record 13 is not a JSON object",
        "record 14 is not valid JSON",
        "record 16 is not valid JSON",
        "record 17 is not UTF-8 text",
        "record 18 is longer than 8192 bytes",
        "record 19: run_completed with a missing or malformed run_id, plan_hash, analyst, "
        "approvers, opened, released_digest",
        "record 20 is incomplete (no final newline)",
    ]
    assert insurer.problems == want
    for line in want:
        assert f"    {line}" in text


def test_a_nan_in_a_whole_chain_is_a_break_here_and_in_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text(f'{{"seq":1,"prev":"{GENESIS}","x":NaN,"hash":"{"0" * 64}"}}\n')
    with pytest.raises(AuditError, match="record 1 is not plain JSON"):
        AuditLog(path).verify()
    report = compare([path])
    assert report.logs[0].error == "record 1 is not plain JSON"


def test_a_malformed_receipts_file_is_a_report_line(honest, tmp_path):
    folders, _ = honest
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run_id": 5}\n')
    report = compare(list(folders.values()), [bad, tmp_path / "absent.jsonl"])
    text = format_report(report)
    assert not report.ok
    assert f"error: {bad}: line 1 is not a receipt" in text
    assert f"error: {tmp_path / 'absent.jsonl'}: cannot read these receipts: No such file" in text


def test_cli(honest, capsys):
    folders, receipts = honest
    paths = [str(f) for f in folders.values()]
    assert main(["audit", "compare", *paths, "--receipts", str(receipts)]) == 0
    assert f"OK: 3 logs agree on {RUNS} runs" in capsys.readouterr().out
    write_lines(folders["insurer"], lines_of(folders["insurer"])[:-2])
    assert main(["audit", "compare", *paths, "--receipts", str(receipts)]) == 1
    out = capsys.readouterr().out
    assert f"run {run_id(2)}: completed at hospital, bureau; no run_completed at insurer" in out
    assert f"{receipts}:3 run {run_id(2)}: insurer: the log ends at record 5" in out
    assert out.endswith("DISAGREE: see above\n")


def test_a_real_consortium_and_its_receipts(tmp_path):
    data = generate(n_core=80, seed=3)
    with Consortium.local(data, workdir=tmp_path) as c:
        t = c.link()
        result = t[t.age >= 40].groupby("sex").agg(n=("cost_2021", "count")).collect(
            timeout=60)
        state = c.local_parties.folder / "state"
        folders = [state / name for name in data]
        receipts = Path(c.receipts_path)
        report = compare(folders, [receipts])
        assert report.ok, format_report(report)
        assert [r.run_id for r in report.runs] == [result.attrs["run_id"]]
        assert read_receipts(receipts)[-1]["run_id"] == result.attrs["run_id"]
        cut = state / "hospital" / "audit.jsonl"
        cut.write_text("".join(line + "\n" for line in cut.read_text().splitlines()[:-1]))
        report = compare(folders, [receipts])
        assert not report.ok
        assert failing_receipts(report) == {(result.attrs["run_id"], "hospital"): "truncated"}
        assert [r.missing for r in report.runs] == [["hospital"]]
