"""The party kernel: one long-lived process per data party.

It loads the party's data once (checking types and duplicate link keys), publishes a
catalog of approved columns (for numeric ones the coarse range and the policy's minimum
quantile precision, ``min_precision``), and serves authenticated JSON requests from analysts'
clients (:mod:`.protocol`). For each plan it checks the policy, logs to the hash-chained
audit log, runs the plan in a fresh MPyC worker subprocess under a deadline, and returns
the released aggregates. It never executes analyst text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ppa_kernel.contract import VERSION
from ppa_kernel.contract.config import PartyConfig
from ppa_kernel.contract.errors import (
    DataError,
    PartyFailed,
    PlanError,
    PolicyRefused,
    PPAError,
    RunTimeout,
    error_from_dict,
)
from ppa_kernel.contract.expr import canonical_json, expr_columns
from ppa_kernel.contract.limits import DEFAULT_RUN_TIMEOUT
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.program import compile_plan
from ppa_kernel.contract.protocol import (
    MAX_REQUEST,
    READY_MARKER,
    LineReader,
    idle_timeout,
    seal,
    unseal,
)

from .audit import AuditLog
from .datasource import DataSourceError, describe_columns, load_table
from .policy import Policy, PolicyError, QuantileRequest, published_min_precision

logger = logging.getLogger(__name__)

WORKER_CONNECT_TIMEOUT = 30.0


def load_party_data(config: PartyConfig) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The party's table sorted by link key, and its column descriptions."""
    data = config.data
    try:
        frame = load_table(data["source"], table=data.get("table"), query=data.get("query"),
                           link=data["link"])
        described = describe_columns(frame, data["link"],
                                     categorical=set(data.get("categorical", [])))
    except DataSourceError as exc:
        raise DataError(str(exc), party=config.name) from None
    if frame.empty:
        raise DataError(f"{data['source']} has no rows", party=config.name,
                        hint="a party needs at least one record to take part")
    frame = frame.sort_values(data["link"], kind="stable").reset_index(drop=True)
    for column, meta in described.items():
        if meta["kind"] == "numeric":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif meta["kind"] == "bool":
            frame[column] = frame[column].astype("boolean")
    return frame, described


def _coarse(value: float | None, up: bool) -> float | None:
    """Round a bound outward to two significant digits (exact extremes are disclosive)."""
    if value is None or value == 0:
        return value
    step = 10 ** (math.floor(math.log10(abs(value))) - 1)
    return float((math.ceil if up else math.floor)(value / step) * step)


class PartyKernel:
    """Serves one party's requests; see the module docstring."""

    def __init__(self, config: PartyConfig):
        self.config = config
        self.name = config.name
        try:
            self.policy = Policy.from_dict(config.name, config.policy)
        except PolicyError as exc:
            raise PolicyRefused(f"invalid policy: {exc}", party=config.name) from None
        self.frame, described = load_party_data(config)
        self._check_policy_columns(described)
        self.catalog = self._catalog(described)
        # The state folder holds a full copy of the data: owner only (0700, files 0600).
        state = config.state_dir
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        # The data epoch (state/epoch: linkage and release history) outlives restarts; the
        # workers start a new one when any party's data changed. Remove an old layout's.
        shutil.rmtree(state / "linkage", ignore_errors=True)
        self.jobs = state / "jobs"  # one folder per run, holding its job file (link salt)
        self.jobs.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.jobs, 0o700)
        leftovers = list(self.jobs.iterdir())
        for folder in leftovers:  # left by a kernel killed mid-run
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
        if leftovers:
            logger.info("party %s: removed %d job folder(s) left by interrupted runs",
                        self.name, len(leftovers))
        self.snapshot = state / "snapshot.parquet"
        fd = os.open(self.snapshot, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on open
        with os.fdopen(fd, "wb") as fh:
            self.frame.to_parquet(fh)
        self.audit = AuditLog(state / "audit.jsonl")
        self.audit.append("kernel_started", party=self.name, rows=len(self.frame),
                          policy=self.policy.summary())
        self.lock = asyncio.Lock()
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.server: asyncio.base_events.Server | None = None
        self.stopped = asyncio.Event()

    def _check_policy_columns(self, described: dict[str, dict]) -> None:
        """Refuse to start when ``[policy.quantile_precision]`` names no numeric column."""
        problems = [f"'policy.quantile_precision.{name}' names "
                    + ("no column of the data" if name not in described else
                       f"a {described[name]['kind']} column (numeric only)")
                    for name in sorted(self.policy.quantile_precision)
                    if described.get(name, {}).get("kind") != "numeric"]
        if problems:
            numeric = sorted(c for c, m in described.items() if m["kind"] == "numeric")
            raise PolicyRefused("invalid policy: " + "; ".join(problems), party=self.name,
                                hint=f"numeric columns: {', '.join(numeric) or 'none'}")

    def _catalog(self, described: dict[str, dict]) -> dict[str, dict]:
        rules = self.policy.columns
        out = {}
        for column, meta in described.items():
            if rules is not None and column not in rules:
                continue
            entry = dict(meta)
            entry["missing"] = bool(meta.get("missing"))  # whether, not how many
            if entry["kind"] == "numeric":
                entry["min"], entry["max"] = _coarse(meta["min"], False), _coarse(meta["max"], True)
                entry["min_precision"] = published_min_precision(
                    self.policy.min_precision(column, entry["min"], entry["max"]))
            entry["uses"] = sorted(rules[column].uses) if rules is not None else \
                ["filter", "group", "measure"]
            out[column] = entry
        return out

    # ------------------------------------------------------------------ serving
    async def serve(self) -> None:
        address = self.config.address
        self.server = await asyncio.start_server(self._connection, address.host, address.port,
                                                 limit=MAX_REQUEST)
        print(f"{READY_MARKER} {self.name} {address.host}:{address.port}", flush=True)
        logger.info("party %s serving on %s:%s", self.name, address.host, address.port)
        async with self.server:
            await self.stopped.wait()
        await self._kill_all()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Answer request lines until the client closes, idles or sends an oversized line.

        Every failure of a request gets a sealed error reply; the idle timeout bounds only
        the wait for the next line, never a run streaming its progress.
        """
        secret = self.config.consortium.secret
        lines, idle = LineReader(reader, MAX_REQUEST), idle_timeout()

        async def reply_error(exc: PPAError) -> None:
            exc.party = exc.party or self.name
            await self._send(writer, {"event": "error", "error": exc.to_dict()})

        try:
            while True:
                try:
                    line = await asyncio.wait_for(lines.readline(), idle)
                except TimeoutError:
                    logger.info("party %s: closing a connection idle for %g s", self.name, idle)
                    break
                except PPAError as exc:  # an oversized line: answer, drop the rest, close
                    await reply_error(exc)
                    writer.write_eof()
                    await lines.discard()
                    break
                if not line:
                    break
                try:
                    await self._dispatch(unseal(line, secret, MAX_REQUEST), writer)
                except PPAError as exc:
                    await reply_error(exc)
                except ConnectionError:
                    raise
                except Exception as exc:
                    logger.exception("party %s: request failed", self.name)
                    await reply_error(PartyFailed(f"internal error ({type(exc).__name__})",
                                                  hint="see the party kernel's log"))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, body: dict) -> None:
        writer.write(seal(body, self.config.consortium.secret))
        await writer.drain()

    async def _dispatch(self, request: dict, writer: asyncio.StreamWriter) -> None:
        op = request.get("op")
        if op == "hello":
            await self._send(writer, {"event": "hello", **self.describe()})
        elif op == "run":
            await self._run(request, writer)
        elif op == "check":
            await self._check(request, writer)
        elif op == "cancel":
            killed = await self._kill(str(request.get("run_id")))
            await self._send(writer, {"event": "cancelled", "killed": killed})
        elif op == "shutdown":
            await self._send(writer, {"event": "bye"})
            self.stopped.set()
        else:
            raise PlanError(f"unknown request {op!r}")

    def describe(self) -> dict[str, Any]:
        """What the party publishes: size, approved columns, policy summary."""
        return {"party": self.name, "rows": len(self.frame), "catalog": self.catalog,
                "policy": self.policy.summary(), "version": VERSION}

    # ------------------------------------------------------------------ checking
    def check_plan(self, request: dict) -> tuple[dict, str]:
        """Validate a plan and check it against this party's policy."""
        plan = request.get("plan")
        try:
            compile_plan(plan)  # validates, derives the layout and checks every bound
        except PPAError:
            raise
        except Exception as exc:  # a malformed plan must never become an internal error
            logger.warning("plan check failed unexpectedly: %r", exc)
            raise PlanError(f"malformed plan ({type(exc).__name__})") from None
        digest = plan_hash(plan)
        if request.get("plan_hash") != digest:
            raise PlanError("plan hash does not match the plan",
                            hint="the plan was altered in transit or built inconsistently")
        self._check_layout(plan)
        if plan.get("min_cell_size") is None:
            raise PlanError("the plan must state its minimum cell size")
        if plan.get("disclosure") is None:
            raise PlanError("the plan must state its disclosure rules ('disclosure')",
                            hint="build plans through the client, which fills them in")
        uses = self._uses(plan)
        stats = {("count" if a["stat"] == "size" else a["stat"]) for a in plan["aggregates"]}
        if plan.get("model") is not None:
            stats.add(plan["model"]["kind"])
        try:
            self.policy.check(uses, stats, plan.get("min_cell_size"),
                              plan.get("min_residual_df"), self._quantile_request(plan),
                              plan["disclosure"])
        except PolicyError as exc:
            raise PolicyRefused("; ".join(exc.reasons), party=self.name,
                                hint=exc.hint) from None
        for name, meta in plan["columns"].items():
            if meta["party"] == self.name:
                self._check_column(name, meta)
        for entry in plan["groupby"]:
            if plan["columns"][entry["expr"]["col"]]["party"] == self.name:
                self._check_levels(entry)
        return plan, digest

    def _check_layout(self, plan: dict) -> None:
        """Refuse a plan whose parties or link disagree with the consortium file: the MPC
        order and every party's input layout follow from it, never from the plan."""
        names = [p.name for p in self.config.consortium.parties]
        if plan["parties"] != names:
            raise PlanError("'parties' must list the consortium's parties in its order: "
                            + ", ".join(names), party=self.name,
                            hint="build plans from the consortium the parties run")
        if plan["link"] != [n for n in names if n in plan["link"]]:
            raise PlanError("'link' must list its parties in the consortium's order: "
                            + ", ".join(n for n in names if n in plan["link"]),
                            party=self.name)

    def _uses(self, plan: dict) -> dict[str, set[str]]:
        uses: dict[str, set[str]] = {}

        def mark(expr, use):
            for col in expr_columns(expr):
                party, column = col.split(".", 1)
                if party == self.name:
                    uses.setdefault(column, set()).add(use)

        mark(plan.get("filter"), "filter")
        for entry in plan["groupby"]:
            mark(entry["expr"], "group")
        for agg in plan["aggregates"]:
            mark(agg.get("expr"), "measure")
        if plan.get("model") is not None:
            from ppa_kernel.contract.models import model_kind

            kind = model_kind(plan)
            for expr in kind.value_inputs(plan) + kind.squared_measures(plan):
                mark(expr, "measure")
            for expr in kind.condition_inputs(plan):  # splits rows by a column's values
                for col in expr_columns(expr):
                    meta = plan["columns"][col]
                    mark({"col": col}, "filter" if meta["kind"] == "numeric" else "group")
        for meta in plan["columns"].values():  # no column escapes the policy
            if meta["party"] == self.name and meta["column"] not in uses:
                uses[meta["column"]] = {"measure"}
        return uses

    def _quantile_request(self, plan: dict) -> QuantileRequest | None:
        """For a quantile plan: its precision and range, with the published range of each
        of this party's numeric columns its measure reads (see :class:`QuantileRequest`)."""
        model = plan.get("model")
        if model is None or model.get("kind") != "quantile":
            return None
        columns: dict[str, tuple[float | None, float | None]] = {}
        for name in expr_columns(model["measure"]):
            meta = plan["columns"][name]
            entry = self.catalog.get(meta["column"])
            if meta["party"] == self.name and entry is not None and \
                    entry["kind"] == "numeric":
                columns[meta["column"]] = (entry["min"], entry["max"])
        measure = model["measure"].get("col")
        own = measure is not None and plan["columns"][measure]["party"] == self.name
        return QuantileRequest(model["precision"], tuple(model["range"]), columns,
                               plan["columns"][measure]["column"] if own else None)

    def _check_column(self, name: str, meta: dict) -> None:
        column = meta["column"]
        if column not in self.catalog:
            raise PlanError(f"unknown column {name!r}", party=self.name,
                            hint=f"{self.name} offers {', '.join(sorted(self.catalog))}")
        entry = self.catalog[column]
        if entry["kind"] != meta["kind"]:
            raise PlanError(f"column {name!r} is {entry['kind']}, "
                            f"not {meta['kind']}", party=self.name)
        if meta.get("missing", True) is False and entry["missing"]:
            raise PlanError(f"the plan says {name} has no missing values, but it has",
                            party=self.name, hint="refresh the catalog and rebuild the plan")
        if entry["kind"] == "numeric":
            published = [entry.get("min"), entry.get("max")]
            if None in published:
                published = [0.0, 0.0]  # no values: every row is missing
            if meta.get("range") is None or [float(b) for b in meta["range"]] != published:
                raise PlanError(f"column {name!r} must carry its published range "
                                f"{published[0]:g} .. {published[1]:g}", party=self.name,
                                hint="refresh the catalog and rebuild the plan")

    def _check_levels(self, entry: dict) -> None:
        """A group on one of this party's columns uses exactly its published levels (or
        bins of a numeric column); extra levels would only cost inputs."""
        meta = self.catalog[entry["expr"]["col"].split(".", 1)[1]]
        if entry.get("bins") is not None:
            if meta["kind"] != "numeric":
                raise PlanError(f"group {entry['name']!r}: only numeric columns are binned",
                                party=self.name)
            return
        published = meta.get("levels")
        if published is None or sorted(map(canonical_json, entry["levels"])) != \
                sorted(map(canonical_json, published)):
            raise PlanError(f"group {entry['name']!r} must use the published levels of its "
                            "column", party=self.name,
                            hint="refresh the catalog and rebuild the plan")

    async def _check(self, request: dict, writer: asyncio.StreamWriter) -> None:
        _, digest = await asyncio.to_thread(self.check_plan, request)
        self.audit.append("plan_checked", run_id=str(request.get("run_id")), plan_hash=digest)
        await self._send(writer, {"event": "checked", "plan_hash": digest})

    # ------------------------------------------------------------------ running
    async def _run(self, request: dict, writer: asyncio.StreamWriter) -> None:
        """Check, run and release one plan; every accepted plan gets one outcome record."""
        run_id = str(request.get("run_id"))
        try:
            if not re.fullmatch(r"[0-9a-f]{8,64}", run_id):  # names the run's job folder
                raise PlanError(f"malformed run_id {run_id[:80]!r}", party=self.name,
                                hint="a run_id is 8 to 64 lowercase hex digits, "
                                     "e.g. secrets.token_hex(8)")
            try:
                timeout = float(request.get("timeout") or DEFAULT_RUN_TIMEOUT)
            except (TypeError, ValueError):
                timeout = math.nan
            if not 0 < timeout < math.inf:
                raise PlanError(f"malformed timeout {request.get('timeout')!r}",
                                party=self.name, hint="give the timeout in seconds, above 0")
            plan, digest = await asyncio.to_thread(self.check_plan, request)
        except PPAError as exc:
            self.audit.append("plan_refused", run_id=run_id, reason=str(exc),
                              plan=request.get("plan") if isinstance(request.get("plan"), dict)
                              else None)
            raise
        self.audit.append("plan_accepted", run_id=run_id, plan_hash=digest, plan=plan)
        try:
            if self.lock.locked():
                # Queueing could pair this run's worker with another run's workers at the
                # other parties (they share MPC ports); refusing keeps runs apart.
                raise PartyFailed("busy with another run", party=self.name,
                                  hint="runs go one at a time per consortium; retry when it ends")
            async with self.lock:  # taken without yielding right after the check above
                await self._send(writer, {"event": "progress", "phase": "policy check",
                                          "elapsed": 0})
                result = await self._run_worker(run_id, plan, request, timeout, writer)
            counts = result["stats"]["counts"].values()
            released = sum(sum(v is not None for v in col) for col in counts)
            openings = [{"name": e["name"], "count": e["count"]} for e in result["openings"]]
        except asyncio.CancelledError:  # the client went away or the kernel is stopping
            self.audit.append("run_failed", run_id=run_id, plan_hash=digest, reason="cancelled")
            raise
        except PPAError as exc:
            self.audit.append("run_failed", run_id=run_id, plan_hash=digest, reason=str(exc))
            raise
        except Exception as exc:
            self.audit.append("run_failed", run_id=run_id, plan_hash=digest,
                              reason=f"{type(exc).__name__}: {exc}")
            raise
        self.audit.append("run_completed", run_id=run_id, plan_hash=digest,
                          released_counts=released, multiplicity=result["multiplicity"],
                          openings=openings)
        if not self.config.extra.get("record_openings"):
            result["openings"] = openings
        await self._send(writer, {"event": "result", "run_id": run_id, "plan_hash": digest,
                                  "result": result})

    async def _run_worker(self, run_id: str, plan: dict, request: dict, timeout: float,
                          writer: asyncio.StreamWriter) -> dict:
        """Run the plan in a worker whose job folder ``state_dir/jobs/<run_id>`` (0700)
        lives only as long as the run; the worker is killed if the run ends early."""
        consortium = self.config.consortium
        folder = self.config.state_dir / "jobs" / run_id
        folder.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # never read a stale result
        folder.mkdir(mode=0o700)
        try:
            job = {"party": self.name, "index": consortium.index(self.name),
                   "names": [p.name for p in consortium.parties],
                   "addresses": [f"{p.host}:{p.mpc_port}" for p in consortium.parties],
                   "plan": plan, "run_id": run_id,
                   "snapshot": str(self.snapshot), "link_column": self.config.data["link"],
                   "link_salt": consortium.link_salt, "state_dir": str(self.config.state_dir),
                   "record_openings": bool(self.config.extra.get("record_openings")),
                   "connect_timeout": min(WORKER_CONNECT_TIMEOUT, timeout),
                   "result_path": str(folder / "result.json")}
            job_path = folder / "job.json"
            fd = os.open(job_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(job, fh)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ppa_kernel.cli", "--log-level",
                self.config.worker_log_level, "worker", str(job_path),
                stdout=asyncio.subprocess.PIPE, start_new_session=True)
            self.workers[run_id] = proc
            try:
                await asyncio.wait_for(self._follow(proc, writer), timeout)
            except TimeoutError:
                await self._kill(run_id)
                raise RunTimeout(f"run did not finish within {timeout:g} s", party=self.name,
                                 hint="raise the timeout, or check the other parties") from None
            except BaseException:  # cancelled, or the client's connection broke
                await self._kill(run_id)
                raise
            finally:
                self.workers.pop(run_id, None)
            return self._worker_result(proc, Path(job["result_path"]))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _follow(self, proc: asyncio.subprocess.Process, writer) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            await self._send(writer, {"event": "progress", **event})
        await proc.wait()

    def _worker_result(self, proc: asyncio.subprocess.Process, path: Path) -> dict:
        """The worker's result, or its error (a missing or unreadable result: PartyFailed)."""
        if path.exists():
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                raise PartyFailed("MPC worker left an unreadable result", party=self.name,
                                  hint="see the party kernel's log") from None
            if not isinstance(result, dict):
                raise PartyFailed("MPC worker left a malformed result", party=self.name)
            if "error" in result:  # keep its kind: a plan error stays a PlanError
                err = result["error"] if isinstance(result["error"], dict) else {}
                error = error_from_dict({"type": err.get("type", "PartyFailed"),
                                         "message": str(err.get("message", "MPC worker failed")),
                                         "hint": err.get("hint")})
                error.party = self.name
                raise error
            return result
        code = proc.returncode
        cause = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        raise PartyFailed(f"MPC worker died ({cause})", party=self.name)

    async def _kill(self, run_id: str) -> bool:
        proc = self.workers.get(run_id)
        if proc is None or proc.returncode is not None:
            return False
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        await proc.wait()
        return True

    async def _kill_all(self) -> None:
        for run_id in list(self.workers):
            await self._kill(run_id)


PARENT_POLL = 1.0
"""Seconds between checks that the process which started a local kernel is still alive."""


async def _stop_when_orphaned(kernel: PartyKernel, parent_pid: int) -> None:
    """Stop the kernel once its parent (a notebook or test process) has gone away."""
    while not kernel.stopped.is_set():
        if os.getppid() != parent_pid:
            logger.warning("party %s: parent process %d is gone, stopping", kernel.name,
                           parent_pid)
            kernel.stopped.set()
            return
        await asyncio.sleep(PARENT_POLL)


def serve(config: PartyConfig, *, record_openings: bool = False,
          parent_pid: int | None = None) -> None:
    """Run a party kernel until it is asked to shut down or receives SIGTERM/SIGINT.

    With ``parent_pid`` (local kernels) it also stops within about a second of that
    process's death, so a crashed notebook kernel leaves no party processes behind.
    """
    if record_openings:
        config.extra["record_openings"] = True

    async def main():
        kernel = PartyKernel(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kernel.stopped.set)
        watch = None if parent_pid is None else \
            asyncio.create_task(_stop_when_orphaned(kernel, parent_pid))
        started = time.time()
        await kernel.serve()
        if watch is not None:
            watch.cancel()
        logger.info("party %s stopped after %.0f s", kernel.name, time.time() - started)

    asyncio.run(main())

