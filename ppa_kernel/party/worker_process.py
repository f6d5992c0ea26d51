"""One MPC worker process as the party kernel holds it: started ahead of its job (a
*spare*), given the job's path on stdin, followed on the kernel's event loop.

The process is started with :class:`subprocess.Popen` (fork and exec in the caller, no
event loop involved), so a spare can be started from synchronous code and can never be
left half-started by a cancelled task; its stdout is attached to the running loop only
when it gets its job (:meth:`WorkerProcess.give`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

EXIT_POLL = 0.01
"""Seconds between looks for a worker's exit once its stdout has closed."""

MAX_EVENT_LINE = 1 << 16
"""Longest progress line a worker prints (its events are a few dozen bytes)."""


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Thread counts of numpy's BLAS, which a worker sets to 1 unless the operator set them:
a party's workers and its peers' (on one host in tests and demos) run side by side, and
threads that spin on shared cores make the dot products slower, not faster."""


def worker_environment() -> dict[str, str]:
    """The kernel's environment with one BLAS thread per worker (see :data:`BLAS_THREADS`)."""
    env = dict(os.environ)
    for name in BLAS_THREADS:
        env.setdefault(name, "1")
    return env


class WorkerProcess:
    """A started worker: the process, the kernel's end of its hand-off socket, and the
    number of the worker's end in the worker."""

    def __init__(self, jobs: Path, log_level: str, mpyc_argv: list[str]) -> None:
        jobs.mkdir(mode=0o700, exist_ok=True)
        jobs = jobs.resolve()  # the worker's folder and argument, whatever the kernel's cwd
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "ppa_kernel.cli", "--log-level", log_level, "worker",
                 "--spare", str(jobs), "--mpyc-argv", json.dumps(mpyc_argv)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                pass_fds=(theirs.fileno(),), cwd=jobs, env=worker_environment())
        except BaseException:
            ours.close()
            raise
        finally:
            self.fd = theirs.fileno()
            theirs.close()  # the worker holds its end now
        self.handoff = ours
        self.stdout: asyncio.StreamReader | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def give(self, job_path: Path) -> None:
        """Send the path of its job file, and nothing more; then follow its stdout."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        try:
            self.popen.stdin.write(f"{job_path.resolve()}\n".encode())
            self.popen.stdin.close()  # a line far below a pipe's buffer: never blocks
        except (BrokenPipeError, ValueError):
            pass  # it died: its exit is read as the run's failure
        reader = asyncio.StreamReader(limit=MAX_EVENT_LINE)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     self.popen.stdout)
        self.stdout = reader

    async def wait(self) -> int:
        """Wait for the worker's exit (after its stdout closed, or after a kill)."""
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(EXIT_POLL)
        return code

    def kill(self) -> bool:
        """SIGKILL the worker's process group; whether it was still running."""
        if self.popen.poll() is not None:
            return False
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        """Close the kernel's ends (hand-off socket, stdin; stdout if never attached)."""
        self.handoff.close()
        for pipe in (self.popen.stdin, None if self.stdout else self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
