"""The operator's profiling switch: ``PPA_PROFILE_DIR`` in a kernel's own environment
makes each MPC worker write a cProfile of its run; without it nothing is written."""

from __future__ import annotations

import pstats
from types import SimpleNamespace

from ppa_kernel.party import worker


def busy() -> int:
    return sum(i * i for i in range(20_000))


def test_a_profile_is_written_only_when_asked(tmp_path, monkeypatch):
    job = SimpleNamespace(party="hospital", run_id="0123456789abcdef")
    monkeypatch.delenv(worker.PROFILE_ENV, raising=False)
    assert worker._profiled(job, busy) == busy()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(worker.PROFILE_ENV, str(tmp_path / "prof"))
    assert worker._profiled(job, busy) == busy()
    path = tmp_path / "prof" / "hospital-0123456789abcdef.prof"
    functions = {name for _, _, name in pstats.Stats(str(path)).stats}
    assert "busy" in functions
