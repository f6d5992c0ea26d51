"""Tests for ppa_kernel.party.audit."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ppa_kernel.party.audit import GENESIS, AuditError, AuditLog


def canonical_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "nested" / "insurer.jsonl"


def filled(path: Path, n: int = 4) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("run", plan=f"plan-{i}", rows=i)
    return log


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_creates_parent_folder_and_empty_log(path: Path) -> None:
    log = AuditLog(path)
    assert path.parent.is_dir()
    assert not path.exists()
    assert log.records() == []
    assert log.verify() == 0


def test_append_record_shape(path: Path) -> None:
    log = AuditLog(path)
    before = datetime.now().astimezone()
    first = log.append("plan_received", plan_hash="ab" * 32, party="insurer", note="é")
    second = log.append("run_finished", cells=3)
    assert list(first) == ["seq", "time", "event", "plan_hash", "party", "note", "prev",
                           "hash"]
    assert first["seq"] == 1 and second["seq"] == 2
    assert first["event"] == "plan_received" and first["note"] == "é"
    assert first["prev"] == GENESIS == "0" * 64
    assert second["prev"] == first["hash"]
    assert first["hash"] == canonical_hash(first)
    assert second["hash"] == canonical_hash(second)
    stamp = datetime.fromisoformat(first["time"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(stamp - before) < timedelta(minutes=1)


def test_file_is_one_json_line_per_record(path: Path) -> None:
    log = filled(path, 3)
    raw = lines(path)
    assert len(raw) == 3 and all(line.endswith("\n") for line in raw)
    assert [json.loads(line) for line in raw] == log.records()
    assert "é" in AuditLog(path).append("x", who="é")["who"]
    assert "é" in path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_records_and_verify(path: Path) -> None:
    log = filled(path, 5)
    records = log.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["plan"] for r in records] == [f"plan-{i}" for i in range(5)]
    assert log.verify() == 5


def test_non_serialisable_value_writes_nothing(path: Path) -> None:
    log = filled(path, 1)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        log.append("run", thing=object())
    with pytest.raises(TypeError):
        log.append("run", value=float("nan"))
    with pytest.raises(TypeError):
        log.append("run", data={1: "a", "b": 2})  # keys cannot be sorted
    assert path.read_bytes() == before
    assert log.append("run")["seq"] == 2
    assert log.verify() == 2


def test_non_serialisable_first_record_creates_no_file(path: Path) -> None:
    log = AuditLog(path)
    with pytest.raises(TypeError):
        log.append("run", when=datetime.now())
    assert not path.exists()


def test_reserved_field_names_rejected(path: Path) -> None:
    log = AuditLog(path)
    for name in ("seq", "time", "prev", "hash"):
        with pytest.raises(ValueError, match="reserved"):
            log.append("run", **{name: 1})
    assert not path.exists()


def test_reopening_continues_chain(path: Path) -> None:
    first = filled(path, 3)
    last = first.records()[-1]
    again = AuditLog(path)
    record = again.append("restart", reason="test")
    assert record["seq"] == 4
    assert record["prev"] == last["hash"]
    assert again.verify() == 4
    assert first.verify() == 4


def test_reopening_log_with_corrupt_last_line_fails(path: Path) -> None:
    filled(path, 2)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(AuditError, match="last record is not valid JSON"):
        AuditLog(path)


def test_reopening_log_with_truncated_last_line_fails(path: Path) -> None:
    filled(path, 2)
    path.write_text(path.read_text(encoding="utf-8")[:-10], encoding="utf-8")
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(path)


def test_reopening_log_whose_last_record_lacks_hash_fails(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text('{"seq": 1}\n', encoding="utf-8")
    with pytest.raises(AuditError, match="lacks seq or hash"):
        AuditLog(path)


def test_tamper_edit_field(path: Path) -> None:
    log = filled(path, 4)
    raw = lines(path)
    record = json.loads(raw[2])
    record["rows"] = 999
    raw[2] = json.dumps(record) + "\n"
    path.write_text("".join(raw), encoding="utf-8")
    with pytest.raises(AuditError, match="record 3 was altered") as info:
        log.verify()
    assert info.value.seq == 3


def test_tamper_edit_and_rehash(path: Path) -> None:
    """Recomputing the edited record's hash breaks the link to the next record."""
    log = filled(path, 4)
    raw = lines(path)
    record = json.loads(raw[1])
    record["rows"] = 999
    record["hash"] = canonical_hash(record)
    raw[1] = json.dumps(record) + "\n"
    path.write_text("".join(raw), encoding="utf-8")
    with pytest.raises(AuditError, match="chain broken") as info:
        log.verify()
    assert info.value.seq == 3


def test_tamper_delete_line(path: Path) -> None:
    log = filled(path, 4)
    raw = lines(path)
    del raw[1]
    path.write_text("".join(raw), encoding="utf-8")
    with pytest.raises(AuditError, match="missing or reordered") as info:
        log.verify()
    assert info.value.seq == 2


def test_tamper_delete_first_line(path: Path) -> None:
    log = filled(path, 3)
    path.write_text("".join(lines(path)[1:]), encoding="utf-8")
    with pytest.raises(AuditError) as info:
        log.verify()
    assert info.value.seq == 1


def test_tamper_reorder(path: Path) -> None:
    log = filled(path, 4)
    raw = lines(path)
    raw[1], raw[2] = raw[2], raw[1]
    path.write_text("".join(raw), encoding="utf-8")
    with pytest.raises(AuditError) as info:
        log.verify()
    assert info.value.seq == 2


def test_tamper_renumbered_after_delete(path: Path) -> None:
    """Deleting a record and renumbering the rest still breaks the chain."""
    log = filled(path, 3)
    raw = [json.loads(line) for line in lines(path)]
    del raw[0]
    for n, record in enumerate(raw, 1):
        record["seq"] = n
        record["hash"] = canonical_hash(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    with pytest.raises(AuditError, match="chain broken") as info:
        log.verify()
    assert info.value.seq == 1


def test_malformed_lines(path: Path) -> None:
    log = filled(path, 3)
    raw = lines(path)
    path.write_text(raw[0] + "garbage\n" + raw[2], encoding="utf-8")
    with pytest.raises(AuditError, match="record 2 is not valid JSON") as info:
        log.verify()
    assert info.value.seq == 2
    with pytest.raises(AuditError):
        log.records()
    path.write_text(raw[0] + "[1, 2]\n", encoding="utf-8")
    with pytest.raises(AuditError, match="record 2 is not a JSON object"):
        log.verify()
    path.write_text(raw[0] + "\n" + raw[1], encoding="utf-8")
    with pytest.raises(AuditError, match="record 2"):
        log.verify()


def test_thread_safe_appends(path: Path) -> None:
    log = AuditLog(path)

    def worker(k: int) -> None:
        for i in range(50):
            log.append("run", worker=k, i=i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log.verify() == 400
    assert [r["seq"] for r in log.records()] == list(range(1, 401))
