"""``ppa audit verify`` reports the first break of a party's chain, and a kernel refuses to
start on a broken log unless its operator acknowledges the break (which is recorded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ppa_kernel.analyst.local import write_local_config
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.config import ConfigError, load_party
from ppa_kernel.party.audit import AuditLog
from ppa_kernel.party.kernel import PartyKernel

PPA = [sys.executable, "-m", "ppa_kernel.cli"]


def audit(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([*PPA, "audit", "verify", *map(str, paths)], capture_output=True,
                          text=True, timeout=60)


def make_log(folder, n: int = 5):
    log = AuditLog(folder / "audit.jsonl")
    for i in range(n):
        log.append("run_completed", run_id=f"{i:016x}")
    return log


def rewrite(path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


@pytest.mark.parametrize("name, change, seq", [
    ("edit", lambda lines: [lines[0], lines[1].replace("0000000000000001", "ffff"),
                            *lines[2:]], 2),
    ("delete", lambda lines: [lines[0], *lines[2:]], 2),
    ("reorder", lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], 2),
])
def test_verify_reports_the_first_break(tmp_path, name, change, seq):
    log = make_log(tmp_path)
    ok = audit(tmp_path)
    assert ok.returncode == 0 and f"ok, 5 records, chain head {log.head}" in ok.stdout
    rewrite(log.path, change)
    broken = audit(tmp_path, log.path)
    assert broken.returncode == 1
    assert broken.stdout.count(f"BROKEN at record {seq}") == 2, broken.stdout
    assert audit(tmp_path / "nowhere").returncode == 1


@pytest.fixture
def party_file(tmp_path):
    write_local_config(tmp_path, generate(n_core=60, seed=2), "pseudonym")
    return tmp_path / "insurer.toml"


def test_a_kernel_refuses_a_broken_log_unless_acknowledged(party_file):
    config = load_party(party_file)
    PartyKernel(config)  # a first start writes the log
    path = config.state_dir / "audit.jsonl"
    rewrite(path, lambda lines: [lines[0].replace('"kernel_started"', '"kernel_stopped"')])
    with pytest.raises(ConfigError, match=r"audit log is broken.*record 1 was altered"):
        PartyKernel(load_party(party_file))
    config = load_party(party_file)
    config.extra["accept_broken_audit"] = True
    kernel = PartyKernel(config)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["event"] == "audit_break_acknowledged" and first["seq"] == 1
    assert "altered" in first["error"] and first["broken_at"] == 1
    assert (config.state_dir / first["kept_as"]).is_file()  # the broken log, kept aside
    assert kernel.audit.verify() == 2  # a new, whole chain: acknowledgement, start
    PartyKernel(load_party(party_file))  # and later starts need no acknowledgement
