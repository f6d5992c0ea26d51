"""The job file: what a party kernel tells the MPyC worker it starts for one run.

The kernel writes it (0600, in the run's own folder ``state_dir/jobs/<run_id>``) and the
worker reads it; both are this party's own code, so the file is a typed record rather
than a message from outside. Every field is derived from the party's configuration and
the plan it has checked, never from the request.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ppa_kernel.contract.config import DEFAULT_REPLAY_CACHE_GB

JOB_FILE = "job.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Job:
    """One run at one party."""

    party: str
    index: int  # this party's MPC id: its place in the consortium file
    names: list[str]  # every party, in MPC order
    addresses: list[str]  # "host:mpc_port" of every party's worker, in MPC order
    plan: dict  # the checked plan
    run_id: str
    snapshot: str  # this party's data as loaded (Parquet)
    link_column: str
    link_salt: str
    state_dir: str
    record_openings: bool  # test kernels only: also return the opened values
    connect_timeout: float  # seconds to reach every peer's worker
    result_path: str
    certificate: str  # path of this party's certificate (its identity)
    key: str  # path of this party's private key (0600)
    peer_certificates: list[str]  # PEM of every party's pinned certificate, in MPC order
    fingerprints: list[str]  # every party's pinned fingerprint, in MPC order
    stall_timeout: float  # seconds of silence after which a peer's worker has stalled
    handoff_fd: int  # this worker's end of the kernel's hand-off socket (MPC connections)
    replay_cache_bytes: int = DEFAULT_REPLAY_CACHE_GB << 30  # kept replayed columns, per epoch

    def write(self, folder: Path) -> Path:
        """Write the job into the run's folder (created by the kernel); return its path."""
        path = folder / JOB_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Job:
        """The job a kernel wrote (a missing or unknown field is a programming error)."""
        data: dict[str, Any] = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"job file fields differ: {sorted(set(data) ^ names)}")
        return cls(**data)


def mpyc_argv(index: int, addresses: list[str]) -> list[str]:
    """The command line MPyC reads at import: this party's id and every party's address."""
    argv = ["ppa-worker", "-I", str(index), "--no-log"]
    for address in addresses:
        argv += ["-P", address]
    return argv
