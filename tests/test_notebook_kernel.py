"""A real Jupyter kernel: %ppa demo starts party kernels; however the kernel ends, none remain."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

jupyter_client = pytest.importorskip("jupyter_client")

START = """
%load_ext ppa_kernel
%ppa demo --rows 300
import json
print("PIDS", json.dumps([p.pid for p in
      get_ipython()._ppa_session.consortium.local_parties.procs.values()]))
"""


def execute(client, code: str, timeout: float = 120) -> str:
    """Run code in the kernel; return its stdout, fail on an error reply."""
    msg_id = client.execute(code)
    out = []
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


def start_demo_kernel() -> tuple[object, object, list[int]]:
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env={**os.environ, "PPA_PROGRESS": "off"})
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    out = execute(client, START)
    pids = json.loads(out.split("PIDS", 1)[1].strip().splitlines()[0])
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
    return manager, client, pids


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_kernel_shutdown_stops_the_demo_parties():
    manager, client, pids = start_demo_kernel()
    execute(client, "%%secure -o n\nlink().count()")
    client.stop_channels()
    manager.shutdown_kernel(now=False)
    assert wait_gone(pids, 15) == []


def test_a_killed_kernel_leaves_no_party_behind():
    manager, client, pids = start_demo_kernel()
    client.stop_channels()
    manager.signal_kernel(signal.SIGKILL)  # no atexit handlers run
    assert wait_gone(pids, 10) == [], "party kernels must notice their parent is gone"
    manager.shutdown_kernel(now=True)


def test_ppa_stop_stops_the_parties():
    manager, client, pids = start_demo_kernel()
    try:
        assert "stopped" in execute(client, "%ppa stop")
        assert wait_gone(pids, 10) == []
        assert "nothing to stop" in execute(client, "%ppa stop")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
