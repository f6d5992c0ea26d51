"""A peer closing its link at the end of a run is not an error; a loss mid-run is.

MPyC's runtime is built on import from ``sys.argv``, so the checks run in a subprocess
(as in tests/test_mpc_links.py). Whole runs: tests/test_readme_script.py finds no error
in the kernels' logs after an ordinary run; tests/test_mpc_links.py and
tests/test_failures.py still name a killed or stalled peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLOSE_CHECK = textwrap.dedent("""
    import logging, sys
    sys.argv = ["t", "-M3", "-I1", "--no-log"]
    from ppa_kernel.party.secure import runtime as rt

    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger(rt.__name__)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)

    class Runtime:
        unset = []
        def unset_protocol(self, pid): self.unset.append(pid)

    class Exchanger:
        runtime = Runtime()
        def __init__(self, pid): self.peer_pid = pid

    def errors():
        return [r.getMessage() for r in records if r.levelno >= logging.WARNING]

    rt._connection_lost(Exchanger(0), None)          # party 0 closes before the end
    assert errors() == [], errors()
    assert rt.LOST_PEERS == [0] and rt.CLOSED_PEERS == [0]
    rt.lost_peers_failed(["insurer", "hospital", "bureau"])   # ... and the run failed of it
    assert errors() == ["lost connection to the MPC worker of insurer: closed before the "
                        "end of the run"], errors()
    rt._connection_lost(Exchanger(2), ConnectionResetError("reset"))   # a broken link
    assert errors()[-1] == "lost connection to party 2: reset", errors()
    assert rt.CLOSED_PEERS == [0] and rt.LOST_PEERS == [0, 2]
    before = len(errors())
    rt.allow_disconnects()                           # the program finished
    rt._connection_lost(Exchanger(0), None)          # party 0 closes: the normal end
    assert len(errors()) == before and Runtime.unset == [0]
    assert rt.LOST_PEERS == [0, 2]
    assert records[-1].levelno == logging.DEBUG and "end of the run" in records[-1].getMessage()
    print("ok")
""")


def test_a_close_at_the_end_is_debug_and_a_loss_mid_run_an_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CLOSE_CHECK], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
