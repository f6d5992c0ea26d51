"""Run a program of ``tests/mpc_programs`` under MPyC's own local launcher (``-M``
parties on a free run of loopback ports) and return the JSON line party 0 prints."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

PROGRAMS = Path(__file__).parent / "mpc_programs"


def free_base_port(parties: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 60000)
        try:
            sockets = [socket.create_server(("localhost", base + i)) for i in range(parties)]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return base
    raise RuntimeError("no free run of ports")


def run_program(name: str, parties: int, *extra: str, env: dict | None = None,
                timeout: float = 120) -> dict:
    args = [sys.executable, str(PROGRAMS / name), f"-M{parties}", "-B",
            str(free_base_port(parties)), *extra]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
