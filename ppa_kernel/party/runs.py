"""The MPyC worker processes of a party kernel: one per run, in its own job folder,
followed for progress, killed when the run ends early.

A worker process serves one run and exits. To keep its start-up (Python, pandas, the
party's modules: about 0.7 s) out of every run, the kernel keeps one *spare*: a worker
started ahead, its modules imported, waiting on its stdin for the path of a job file.
A run takes the spare (or starts one when there is none) and a new spare is started
as soon as the run's worker has its job, so that a run right after it need not wait
for the imports. The spare is the party's own code, sees nothing before its job,
and ends when the kernel's end of its stdin closes.

Workers do not listen: the kernel's :class:`.mpc_listener.MPCListener` accepts the MPC
connections and hands each one, by file descriptor, to the worker of the run it names,
over that run's hand-off socket (:meth:`Workers.handoff`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ppa_kernel.contract.config import PartyConfig
from ppa_kernel.contract.errors import PartyFailed, RunTimeout, error_from_dict

from .job import RESULT_FILE, Job, mpyc_argv
from .worker_process import WorkerProcess

logger = logging.getLogger(__name__)

WORKER_CONNECT_TIMEOUT = 30.0
"""Seconds a worker waits to reach every peer's worker (at most the run's timeout)."""

HANDOFF_POLL = 0.05
"""Seconds between looks for a run's hand-off socket in :meth:`Workers.wait_handoff`."""

Progress = Callable[[dict], Awaitable[None]]
"""Receives each progress event a worker prints."""


class Workers:
    """Starts, follows and stops this party's workers (one per run id)."""

    def __init__(self, config: PartyConfig, snapshot: Path, *, spare: bool = True) -> None:
        self.config = config
        self.snapshot = snapshot
        self.jobs = config.state_dir / "jobs"  # one folder per run, holding its job file
        self.running: dict[str, WorkerProcess] = {}
        self._handoffs: dict[str, socket.socket] = {}  # run id -> kernel's end
        self.keep_spare = spare
        self._spare: WorkerProcess | None = None
        self._closed = False

    def handoff(self, run_id: str) -> socket.socket | None:
        """The kernel's end of a run's hand-off socket, while its worker runs."""
        return self._handoffs.get(run_id)

    async def wait_handoff(self, run_id: str, timeout: float) -> socket.socket | None:
        """:meth:`handoff`, waiting up to ``timeout`` s for the run to start (for a route
        of :class:`.mpc_listener.MPCListener` that a peer reaches a little early)."""
        deadline = time.monotonic() + timeout
        while (sock := self._handoffs.get(run_id)) is None and time.monotonic() < deadline:
            await asyncio.sleep(HANDOFF_POLL)
        return sock

    def clear_leftovers(self) -> None:
        """Remove job folders left by a kernel killed mid-run (they hold the link salt)."""
        self.jobs.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.jobs, 0o700)
        leftovers = list(self.jobs.iterdir())
        for folder in leftovers:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
        if leftovers:
            logger.info("party %s: removed %d job folder(s) left by interrupted runs",
                        self.config.name, len(leftovers))

    def job(self, run_id: str, plan: dict, folder: Path, timeout: float,
            handoff_fd: int = -1) -> Job:
        """The job of one run: everything but the plan and run id from this party's files."""
        consortium = self.config.consortium
        identity = self.config.identity
        return Job(party=self.config.name, index=consortium.index(self.config.name),
                   names=[p.name for p in consortium.parties],
                   addresses=[f"{p.host}:{p.mpc_port}" for p in consortium.parties],
                   plan=plan, run_id=run_id, snapshot=str(self.snapshot),
                   link_column=self.config.link_column, link_salt=consortium.link_salt,
                   state_dir=str(self.config.state_dir),
                   record_openings=bool(self.config.extra.get("record_openings")),
                   connect_timeout=min(WORKER_CONNECT_TIMEOUT, timeout),
                   result_path=str(folder / RESULT_FILE),
                   certificate=str(identity.cert_path), key=str(identity.key_path),
                   peer_certificates=[p.pin.pem for p in consortium.parties],
                   fingerprints=[p.pin.fingerprint for p in consortium.parties],
                   stall_timeout=self.config.stall_timeout, handoff_fd=handoff_fd,
                   replay_cache_bytes=self.config.replay_cache_bytes)

    def start_spare(self) -> None:
        """Start the spare worker now, if the kernel keeps one and has none."""
        if self.keep_spare and not self._closed and self._spare is None:
            try:
                self._spare = self._start()
            except OSError as exc:  # the next run starts its own worker
                logger.warning("party %s: no spare MPC worker: %s", self.config.name, exc)

    def _start(self) -> WorkerProcess:
        """A worker process that imports its modules, then waits for a job on stdin."""
        consortium = self.config.consortium
        argv = mpyc_argv(consortium.index(self.config.name),
                         [f"{p.host}:{p.mpc_port}" for p in consortium.parties])
        return WorkerProcess(self.jobs, self.config.worker_log_level, argv)

    def _take(self) -> WorkerProcess:
        """The spare, if it is alive; else a worker started now."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.returncode is None:
            return spare
        if spare is not None:
            spare.close()
        return self._start()

    async def run(self, run_id: str, plan: dict, timeout: float, progress: Progress) -> dict:
        """Run the plan in a worker whose job folder ``state_dir/jobs/<run_id>`` (0700)
        lives only as long as the run; the worker is killed if the run ends early."""
        folder = self.jobs / run_id
        self.jobs.mkdir(mode=0o700, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # never read a stale result
        folder.mkdir(mode=0o700)
        worker = self._take()
        try:
            job = self.job(run_id, plan, folder, timeout, worker.fd)
            job_path = job.write(folder)
            self.running[run_id] = worker
            self._handoffs[run_id] = worker.handoff
            try:
                await worker.give(job_path)
                self.start_spare()  # the next run's worker imports while this one runs
                await asyncio.wait_for(self._follow(worker, progress), timeout)
            except TimeoutError:
                await self.kill(run_id)
                raise RunTimeout(f"run did not finish within {timeout:g} s",
                                 party=self.config.name,
                                 hint="raise the timeout, or check the other parties") from None
            except BaseException:  # cancelled, or the client's connection broke
                await self.kill(run_id)
                raise
            finally:
                self.running.pop(run_id, None)
                self._handoffs.pop(run_id, None)
            return self._result(worker, Path(job.result_path))
        finally:
            worker.kill()  # a worker given no job (the job file failed) waits on
            worker.close()
            shutil.rmtree(folder, ignore_errors=True)
            self.start_spare()  # if the one started above failed or was never started

    async def _follow(self, proc: WorkerProcess, progress: Progress) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            await progress(event)
        await proc.wait()

    def _result(self, proc: WorkerProcess, path: Path) -> dict:
        """The worker's result, or its error (a missing or unreadable result: PartyFailed)."""
        party = self.config.name
        if path.exists():
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                raise PartyFailed("MPC worker left an unreadable result", party=party,
                                  hint="see the party kernel's log") from None
            if not isinstance(result, dict):
                raise PartyFailed("MPC worker left a malformed result", party=party)
            if "error" in result:  # keep its kind: a plan error stays a PlanError
                err = result["error"] if isinstance(result["error"], dict) else {}
                error = error_from_dict({"type": err.get("type", "PartyFailed"),
                                         "message": str(err.get("message", "MPC worker failed")),
                                         "hint": err.get("hint")})
                error.party = party
                raise error
            return result
        code = proc.returncode
        cause = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        raise PartyFailed(f"MPC worker died ({cause})", party=party)

    async def kill(self, run_id: str) -> bool:
        """Kill a run's worker (and its process group); whether one was running."""
        proc = self.running.get(run_id)
        if proc is None or not proc.kill():
            return False
        await proc.wait()
        return True

    async def kill_all(self) -> None:
        """Kill every run's worker and the spare; start no new spare."""
        self._closed = True
        for run_id in list(self.running):
            await self.kill(run_id)
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            spare.close()
            await spare.wait()
