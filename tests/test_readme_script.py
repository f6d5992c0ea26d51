"""The README's "Party kernels on their own" script, run as pasted, so it cannot rot.

The block under ``<!-- readme-script -->`` runs in a fresh folder whose ``.venv`` is this
test's environment; its released table is checked against pandas, its kernels must have
stopped, and their logs must hold no error. The ``[policy]`` excerpt under
``<!-- readme-policy -->`` must be lines that ``ppa init`` really writes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPT_TIMEOUT = 180
PARTIES = ("insurer", "hospital", "bureau")


def readme_block(marker: str, language: str) -> str:
    """The fenced ``language`` block that follows ``<!-- marker ... -->`` in the README."""
    text = README.read_text()
    start = text.index(f"<!-- {marker}")
    found = re.compile(rf"^```{language}\n(.*?)^```$", re.S | re.M).search(text, start)
    assert found is not None, f"no ```{language} block after the {marker} marker"
    return found.group(1)


def test_the_script_is_under_its_heading():
    text = README.read_text()
    heading = text.index("### Party kernels on their own")
    assert heading < text.index("<!-- readme-script") < text.index("\n## ", heading)


@pytest.fixture(scope="module")
def pasted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The script's folder and its finished run (kernels it left running are killed)."""
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "bin" / "activate").exists():
        pytest.skip("not running in a virtual environment (`make install` makes .venv)")
    folder = tmp_path_factory.mktemp("clone")
    (folder / ".venv").symlink_to(venv)
    (folder / "run.sh").write_text(readme_block("readme-script", "bash"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "run.sh"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        for pid in _kernel_pids(folder):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    return folder, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kernel_pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in (folder / "consortium").glob("*.pid")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_pasted_script_runs_and_releases_what_pandas_computes(pasted):
    folder, run = pasted
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    for party in PARTIES:
        assert f"{party}: ready on 127.0.0.1:" in run.stdout
    data = folder / "consortium" / "data"
    frames = {"insurer": pd.read_csv(data / "insurer.csv"),
              "hospital": pd.read_parquet(data / "hospital.parquet"),
              "bureau": pd.read_csv(data / "bureau.csv")}
    rows = ", ".join(f"{name} ({len(frames[name]):,} rows)" for name in PARTIES)
    config = (folder / "consortium" / "consortium.toml").resolve()
    assert f"<Consortium 'local': {rows}; connected as analyst; from {config}>" in run.stdout

    joined = frames["insurer"].merge(frames["hospital"], on="pseudonym") \
        .merge(frames["bureau"], on="pseudonym")
    change = (joined.cost_2021 - joined.cost_2020).groupby(joined.income_band)
    released = {band: (int(n), float(mean)) for band, n, mean in
                re.findall(r"^(Q\d)\s+(\d+)\s+(-?[\d.]+)$", run.stdout, re.M)}
    assert sorted(released) == sorted(change.groups), run.stdout
    for band, (n, mean) in released.items():
        assert n == change.count()[band]
        assert mean == pytest.approx(change.mean()[band], abs=0.01)


def test_the_script_stops_its_kernels_and_they_log_no_error(pasted):
    folder, run = pasted
    assert run.returncode == 0, run.stderr
    pids = _kernel_pids(folder)
    assert len(pids) == len(PARTIES)
    assert not [pid for pid in pids if _alive(pid)]
    for party in PARTIES:
        log = (folder / "consortium" / f"{party}.log").read_text()
        assert "PPA-PARTY-READY" in log
        assert " ERROR " not in log and "Traceback" not in log, log


def test_the_policy_shown_is_the_one_ppa_init_writes(pasted):
    folder, _ = pasted
    written = (folder / "consortium" / "insurer.toml").read_text().splitlines()
    shown = [line for line in readme_block("readme-policy", "toml").splitlines() if line]
    assert "[policy]" in shown and "[policy.columns]" in shown
    for line in shown:
        if "..." in line:  # the excerpt elides what varies: a range, a fingerprint
            prefix = line.split("...")[0]
            assert any(w.startswith(prefix) for w in written), line
        else:
            assert line in written, line
