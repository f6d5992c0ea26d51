"""The MPyC worker: one process per party per plan, started by the party kernel.

Run as ``python -m ppa_kernel.cli --log-level L worker JOB.json``. The job file
(:class:`.job.Job`, written by the kernel) holds the plan, this party's index, the MPC
addresses and where its data snapshot and linkage state live. The worker prints one
JSON line per phase to stdout and writes its result (or a structured error) to the
job's ``result_path``. Only the worker process
imports :mod:`.secure.runtime` (the MPyC adapter): MPyC parses ``sys.argv`` and sets up
a global runtime at import, so the worker sets ``sys.argv`` first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import resource
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ppa_kernel.contract.errors import (
    PartyFailed,
    PlanError,
    PPAError,
    RunTimeout,
)

from .job import JOB_FILE, Job, mpyc_argv

if TYPE_CHECKING:  # imported at run time only inside the worker (MPyC reads sys.argv)
    from .secure.history import History
    from .secure.linkage import Linkage

logger = logging.getLogger(__name__)

PARENT_PID = os.getppid()
"""The party kernel that started this worker; when it goes, the worker stops."""


STEP_INTERVAL = 0.3
"""Least seconds between two reports of a phase under way (a few a second at most)."""


class Phases:
    """Wall time per phase, reported to the kernel as the run goes.

    ``phases(name)`` reports that a phase ended; ``phases.step(name, done, total)`` that
    a phase under way has done ``done`` of ``total`` steps. A report carries nothing but
    the phase's name, seconds since the worker started and that fraction, and step
    counts derive from public sizes only (row counts, column counts, parties), never
    from data: a step report says no more than the phases' timing already does.
    """

    def __init__(self) -> None:
        self.start = self.last = self.stepped = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self.last, 4)
        self.last = now
        self._print({"phase": phase, "elapsed": round(now - self.start, 3)})

    def step(self, phase: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps of ``phase``: its start (``done`` 0) always,
        later steps at most every :data:`STEP_INTERVAL` seconds, the last never (the
        phase's end follows)."""
        now = time.perf_counter()
        if done >= total or (done and now - self.stepped < STEP_INTERVAL):
            return
        self.stepped = now
        self._print({"phase": phase, "fraction": round(done / total, 2),
                     "elapsed": round(now - self.start, 3)})

    @staticmethod
    def _print(event: dict) -> None:
        print(json.dumps(event), flush=True)


async def _start(job: Job) -> None:
    """Make authenticated links to every other party's worker (through the kernels'
    listeners), or fail naming the missing ones (:func:`.secure.runtime.connect`)."""
    from .secure.runtime import connect

    await connect(job, PARENT_PID)


async def _agree(job: Job) -> None:
    """Refuse to go on unless every party was sent the same plan for the same run.

    Each inputs a digest of (plan hash, run id) and all are opened
    (``protocol.plan_agreement``): an analyst who sends different parties different
    plans, which could still give one consistent MPC program, is stopped before any
    data is input.
    """
    import hashlib

    from ppa_kernel.contract.plan import plan_hash

    from .secure.openings import reveal
    from .secure.runtime import link_type, mpc

    text = f"{plan_hash(job.plan)}:{job.run_id}".encode()
    mine = int.from_bytes(hashlib.sha256(text).digest()[:15], "big")
    digests = {int(v) for v in await reveal("protocol.plan_agreement",
                                            mpc.input(link_type()(mine)))}
    if len(digests) != 1:
        raise PlanError("the parties were sent different plans (or runs)",
                        party=job.party, hint="send every party the same plan")


EPOCH_FOLDER = "epoch"
"""Folder under the state directory for the current data epoch (linkage and history)."""


def data_fingerprint(frame: pd.DataFrame, keys) -> str:
    """Digest of this party's data as loaded: its link keys and every column's values."""
    from .secure import linkage as lk

    body = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return lk.fingerprint(keys, "\x1f".join(map(str, frame.columns)).encode() + body)


@dataclass
class Epoch:
    """What a run uses of the data epoch: its linkage and history, whether it linked
    afresh, the agreed token of each stored table column (0: replay it) and the token
    under which this run's replayed columns are kept (:mod:`.secure.replay_cache`)."""

    linkage: Linkage
    history: History
    relinked: bool
    columns: list[int]
    token: int


async def _linkage(job: Job, frame: pd.DataFrame, phases: Phases, tokens: list[int]) -> Epoch:
    """The data epoch's linkage and history; link again when any party's data changed.

    Every party inputs whether its stored epoch matches its data, the epoch's token, how
    many released row sets it recorded, a random nonce and the token of each table
    column it holds (``tokens``, in table order; ``linkage.ready``). All reuse the epoch
    when all match; the history is cut to the shortest (sets beyond it were never
    released, see :meth:`.secure.query._Disclosure._record`), a column is reused when
    every party holds it under one token, and the nonces' sum names the columns this
    run replays. Otherwise they agree on a new random token (``linkage.epoch``), link,
    and start an empty history and no stored columns.
    """
    from .secure import linkage as lk
    from .secure.history import History
    from .secure.openings import reveal
    from .secure.replay_cache import TOKEN_BITS
    from .secure.runtime import mpc

    folder = Path(job.state_dir) / EPOCH_FOLDER
    keys = lk.hash_keys(frame[job.link_column].tolist(), job.link_salt)
    digest = data_fingerprint(frame, keys)
    stored = lk.Linkage.load(folder)
    if stored is not None and stored.fingerprint != digest:
        stored = None
    history = History(folder) if stored is not None else None
    secint = mpc.SecInt(64)
    mine = [int(stored is not None), stored.epoch if stored else 0,
            len(history) if history is not None else 0, secrets.randbits(TOKEN_BITS),
            *(tokens if stored is not None else [0] * len(tokens))]
    inputs = mpc.input([secint(v) for v in mine])
    ready = [int(v) for v in await reveal("linkage.ready", [x for row in inputs for x in row])]
    rows = [ready[i:i + len(mine)] for i in range(0, len(ready), len(mine))]
    fresh = sum(r[3] for r in rows) % (1 << TOKEN_BITS) or 1
    if stored is not None and all(r[0] == 1 and r[1] == stored.epoch for r in rows):
        history.truncate(min(r[2] for r in rows))
        first = rows[0]
        agreed = [first[c] if all(r[c] == first[c] for r in rows) else 0
                  for c in range(4, len(mine))]
        return Epoch(stored, history, False, agreed, fresh)
    shutil.rmtree(folder, ignore_errors=True)
    token_parts = mpc.input(secint(secrets.randbits(20)))
    parts = [int(v) for v in await reveal("linkage.epoch", token_parts)]
    epoch = sum(v << (20 * i) for i, v in enumerate(parts)) % (1 << 60) or 1
    linkage = await lk.link(keys, epoch, digest, progress=phases)
    linkage.save(folder)
    return Epoch(linkage, History(folder), True, [0] * len(tokens), fresh)


async def _run(job: Job) -> dict:
    from ppa_kernel.contract.program import compile_plan

    from .owner import feature_matrix
    from .secure import limb_fixed, truncation  # noqa: F401  (cheap truncation, random bits)
    from .secure.disclosure import Rules
    from .secure.linkage import linked_limbs
    from .secure.openings import LEDGER
    from .secure.query import joined_rows, run_query
    from .secure.replay_cache import ColumnCache, table_columns
    from .secure.runtime import allow_disconnects, mpc, value_type

    phases = Phases()
    LEDGER.record_values = job.record_openings
    program = compile_plan(job.plan)
    LEDGER.allowed = program.openings()
    frame = pd.read_parquet(job.snapshot)
    block = feature_matrix(program, job.party, frame)  # fail on own data before MPC
    await _start(job)
    await _agree(job)
    phases("connect")
    columns = table_columns(program, job.party, block)
    cache = ColumnCache(Path(job.state_dir) / EPOCH_FOLDER, job.replay_cache_bytes)
    epoch = await _linkage(job, frame, phases, [cache.token(*c) for c in columns])
    linkage, history = epoch.linkage, epoch.history
    widths = [len(program.features.get(p, [])) for p in program.parties]
    stored = {c: cache.shares(columns[c][0]) for c, token in enumerate(epoch.columns) if token}
    keep = joined_rows(program, linkage.group_sizes)
    for c, column in stored.items():
        if column.shape[1] != len(keep):
            cache.drop(columns[c][0])  # the next run replays it
            raise PartyFailed("a stored column does not fit this epoch's linkage")
    table = await linked_limbs(
        linkage, block, widths, value_type(), progress=phases, keep=keep, stored=stored,
        on_replayed=lambda c, s: cache.store(*columns[c], token=epoch.token, shares=s))
    phases("input")
    state = await run_query(program, table, linkage.group_sizes, value_type(),
                            Rules.from_plan(job.plan), progress=phases, history=history)
    stats = state.stats
    if job.plan.get("model") is not None:
        from .secure.models import run_model

        phases.step("model", 0, 1)
        stats.model = await run_model(state)
        phases("model")
    allow_disconnects()
    await mpc.shutdown()
    phases("release")
    return {"stats": asdict(stats), "multiplicity": linkage.multiplicity(),
            "sizes": linkage.sizes, "relinked": epoch.relinked, "phases": phases.seconds,
            **_column_counts(program.parties, widths, stored),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "openings": LEDGER.entries}


def _column_counts(parties: list[str], widths: list[int], stored) -> dict[str, dict]:
    """Per party, the table columns this run replayed (``input_widths``) and took from
    the epoch's stored columns (``reused_widths``)."""
    offsets = list(itertools.accumulate([0, *widths]))
    reused = [sum(offsets[i] <= c < offsets[i + 1] for c in stored) for i in range(len(widths))]
    return {"input_widths": {p: w - r for p, w, r in zip(parties, widths, reused, strict=True)},
            "reused_widths": dict(zip(parties, reused, strict=True))}


PROFILE_ENV = "PPA_PROFILE_DIR"
"""Set in a party kernel's own environment (never by a request): each of its workers
writes a cProfile of its run to ``$PPA_PROFILE_DIR/<party>-<run_id>.prof``."""


def _profiled(job: Job, run):
    """``run()``, under cProfile when the operator asked for profiles."""
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return run()
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(run)
    finally:
        Path(folder).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(folder) / f"{job.party}-{job.run_id}.prof"))


def _preload(argv: list[str] | None) -> None:
    """Import what every run needs, ahead of its job; MPyC with the command line it
    reads at import (``argv``, this party's from :func:`.job.mpyc_argv`)."""
    import pyarrow.parquet  # noqa: F401

    from ppa_kernel.contract import program  # noqa: F401

    from . import owner  # noqa: F401

    if argv is not None:
        sys.argv = argv
        from .secure import limb_fixed, linkage, query, truncation  # noqa: F401


def _wait_for_job(jobs: Path, argv: list[str] | None) -> Path | None:
    """As a spare: the job file the kernel names on stdin (None: the kernel closed it
    first). Only a ``job.json`` in a run folder of this party's ``jobs`` is taken."""
    _preload(argv)
    line = sys.stdin.readline().strip()
    if not line:
        return None
    path = Path(line).resolve()  # no ".." and no symbolic link leads out of jobs
    if path.name != JOB_FILE or path.parent.parent != jobs.resolve():
        raise SystemExit(f"worker: refusing job path {line!r} outside {jobs}")
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one job, write its result file, return the exit status. With
    ``--spare JOBS``, wait first for the job's path on stdin (see :mod:`.runs`)."""
    argv = sys.argv[1:] if argv is None else argv
    path: Path | None = Path(argv[0])
    preloaded = None
    if argv[0] == "--spare":
        preloaded = json.loads(argv[2])
        path = _wait_for_job(Path(argv[1]), preloaded)
        if path is None:
            return 0
    job = Job.read(path)
    os.chdir(path.parent)  # a busy worker's folder is its run's (an idle spare's: jobs)
    wanted = mpyc_argv(job.index, job.addresses)
    if preloaded not in (None, wanted):  # the kernel's addresses are fixed while it runs
        raise SystemExit(f"worker: started for MPyC {preloaded}, the job needs {wanted}")
    sys.argv = wanted
    from .secure.runtime import LOST_PEERS, ORPHANED, STALLED_PEERS, lost_peers_failed, mpc

    try:
        result = _profiled(job, lambda: mpc.run(_run(job)))
        status = 0
    except PPAError as exc:
        result, status = {"error": exc.to_dict()}, 1
    except (asyncio.CancelledError, ConnectionError) as exc:
        stalled = [job.names[p] for p in STALLED_PEERS]
        lost = [job.names[p] for p in LOST_PEERS if p is not None]
        if ORPHANED:
            message = "the party kernel that started this MPC worker has gone"
        elif stalled:
            message = (f"the MPC worker of {', '.join(stalled)} has sent nothing for "
                       f"{job.stall_timeout:g} s (stalled or network silent)")
        elif lost:
            message = f"lost connection to the MPC worker of {', '.join(lost)}"
            lost_peers_failed(job.names)
        else:
            message = f"MPC connection failed: {exc!r}"
        result, status = {"error": PartyFailed(message, party=job.party).to_dict()}, 1
    except TimeoutError:
        err = RunTimeout("the MPC computation timed out", party=job.party)
        result, status = {"error": err.to_dict()}, 1
    except Exception as exc:  # any other failure still ends in a structured result
        logger.exception("worker failed")
        err = PartyFailed(f"worker failed: {exc!r}", party=job.party)
        result, status = {"error": err.to_dict()}, 1
    Path(job.result_path).write_text(json.dumps(result))
    return status

