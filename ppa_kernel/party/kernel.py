"""The party kernel: one long-lived process per data party.

It loads the party's data once and publishes its catalog (:mod:`.catalog`), serves
signed JSON requests from the analysts its policy pins, over mutual TLS
(:mod:`ppa_kernel.contract.protocol`, :mod:`.requests`), checks each plan (:mod:`.checks`),
logs to the hash-chained audit log (:mod:`.audit`) who asked for what, queues accepted
runs (:mod:`.schedule`), runs each in a fresh MPyC worker subprocess under a deadline
(:mod:`.runs`) whose links to the other parties' workers come through this kernel's MPC
listener (:mod:`.mpc_listener`), and returns the released aggregates. It never executes
analyst text.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import re
import shutil
import signal
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from ppa_kernel.contract import VERSION
from ppa_kernel.contract.config import ConfigError, PartyConfig, load_party
from ppa_kernel.contract.errors import (
    PartyFailed,
    PlanError,
    PolicyRefused,
    PPAError,
)
from ppa_kernel.contract.identity import HANDSHAKE_TIMEOUT, IdentityError, peer_name, server_context
from ppa_kernel.contract.limits import DEFAULT_RUN_TIMEOUT, MAX_RUN_TIMEOUT
from ppa_kernel.contract.protocol import (
    HEARTBEAT_INTERVAL,
    MAX_REQUEST,
    READY_MARKER,
    LineReader,
    decode,
    encode,
    idle_timeout,
)
from ppa_kernel.contract.receipts import released_digest

from . import checks
from .approvals import Approvals
from .audit import AuditError, AuditLog
from .catalog import build_catalog, check_policy_columns, load_party_data
from .mpc_listener import MPCListener
from .policy import Policy, PolicyError
from .requests import RequestGuard
from .review_view import describe_plan, released_plans
from .review_web import ReviewWeb
from .runs import WORKER_CONNECT_TIMEOUT, Workers
from .schedule import RunQueue

logger = logging.getLogger(__name__)


class PartyKernel:
    """Serves one party's requests; see the module docstring."""

    def __init__(self, config: PartyConfig):
        self.config = config
        self.name = config.name
        try:
            self.policy = Policy.from_dict(config.name, config.policy)
        except PolicyError as exc:
            raise PolicyRefused(f"invalid policy: {exc}", party=config.name) from None
        self.frame, self.described = load_party_data(config)
        check_policy_columns(self.name, self.policy, self.described, config.link_column)
        self.catalog = build_catalog(self.policy, self.described, rows=len(self.frame))
        # The state folder holds a full copy of the data: owner only (0700, files 0600).
        state = config.state_dir
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        # The data epoch (state/epoch: linkage and release history) outlives restarts; the
        # workers start a new one when any party's data changed. Remove an old layout's.
        shutil.rmtree(state / "linkage", ignore_errors=True)
        self.snapshot = state / "snapshot.parquet"
        self.workers = Workers(config, self.snapshot, spare=config.spare_worker)
        self.workers.clear_leftovers()
        fd = os.open(self.snapshot, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on open
        with os.fdopen(fd, "wb") as fh:
            self.frame.to_parquet(fh)
        self.audit = open_audit(config, state / "audit.jsonl")
        # earlier releases, for the reviewers' similar-plans section (read once, then kept)
        self.released = deque(released_plans(self.audit.records()), maxlen=MAX_RELEASED)
        self.audit.append("kernel_started", party=self.name, rows=len(self.frame),
                          policy=self.policy.summary(), analysts={
                              a.name: {"role": a.role, "fingerprint": a.pin.fingerprint}
                              for a in config.analysts.values()})
        self.approvals = Approvals(self.name, self.policy.approval, self.policy.approval_wait,
                                   self.policy.approval_valid, state, self.audit)
        check_reviewers(self.name, self.policy, config)
        if not config.analysts:
            raise ConfigError(f"the policy of {self.name} names no analysts",
                              hint="add a [policy.analysts.NAME] table with the analyst's "
                                   "role, certificate and fingerprint")
        try:
            self.tls = server_context(config.identity,
                                      [a.pin for a in config.analysts.values()])
        except (IdentityError, OSError) as exc:
            raise ConfigError(f"cannot set up TLS for {self.name}: {exc}") from None
        self.guard = RequestGuard(self.name)
        index = config.consortium.index(self.name)
        self.queue = RunQueue(self.name, sequencer=index == 0, capacity=config.max_queue)
        self.index = index
        self.mpc = MPCListener(config, self._route)
        self.web = None if config.review_port is None else ReviewWeb(
            self, config.bind_host, config.review_port, config.address.host, state)
        self.server: asyncio.base_events.Server | None = None
        self.stopped = asyncio.Event()

    # ------------------------------------------------------------------ serving
    async def serve(self) -> None:
        config, host = self.config, self.config.bind_host
        self.server = await asyncio.start_server(
            self._connection, host, config.bind_port, limit=MAX_REQUEST, ssl=self.tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        await self.mpc.start()
        self.workers.start_spare()
        if self.web is not None:
            self.web.start()
        print(f"{READY_MARKER} {self.name} {host}:{config.bind_port}", flush=True)
        logger.info("party %s serving on %s:%s (MPC links on port %s)", self.name, host,
                    config.bind_port, config.bind_mpc_port)
        try:
            async with self.server:
                await self.stopped.wait()
        finally:
            if self.web is not None:
                await asyncio.to_thread(self.web.close)
            await self.mpc.close()
            await self.workers.kill_all()

    async def _route(self, run_id: str, from_index: int) -> socket.socket | None:
        """The hand-off socket of ``run_id``'s worker, for a lower party's worker dialling
        in; starting the run if it waits here (see :mod:`.schedule`). None: refuse."""
        if from_index >= self.index:
            return None
        if self.queue.active != run_id:
            if not self.queue.trigger(run_id) or \
                    not await self.queue.until_active(run_id, WORKER_CONNECT_TIMEOUT):
                return None
        return await self.workers.wait_handoff(run_id, WORKER_CONNECT_TIMEOUT)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Answer request lines until the client closes, idles or sends an oversized line.

        A client whose certificate the policy does not pin never gets this far (the TLS
        handshake fails); every failure of a request gets an error reply; the idle timeout
        bounds only the wait for the next line, never a run streaming its progress.
        """
        name = peer_name(writer.get_extra_info("ssl_object"),
                         {a.name: a.pin for a in self.config.analysts.values()})
        if name is None:  # the TLS context trusts only pinned certificates
            writer.close()
            return
        analyst = self.config.analysts[name]
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
                    if writer.can_write_eof():  # TLS cannot half-close: the close ends it
                        writer.write_eof()
                    await lines.discard()
                    break
                if not line:
                    break
                try:
                    request = decode(line, MAX_REQUEST)
                    self.guard.check(request, analyst)
                    await self._dispatch(request, writer)
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
        writer.write(encode(body))
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
            await self._send(writer, {"event": "cancelled", "killed": await self._cancel(
                str(request.get("run_id")), str(request["analyst"]))})
        elif op == "go":
            released = self.queue.release(self._run_id(request), str(request["analyst"]))
            await self._send(writer, {"event": "go", "released": released})
        elif isinstance(op, str) and op.startswith("review_"):
            await self._send(writer, await self._review(op, request))
        else:
            raise PlanError(f"unknown request {op!r}")

    def _run_id(self, request: dict) -> str:
        """The request's run id, which names the run's job folder: 8 to 64 hex digits."""
        run_id = str(request.get("run_id"))
        if not re.fullmatch(r"[0-9a-f]{8,64}", run_id):
            raise PlanError(f"malformed run_id {run_id[:80]!r}", party=self.name,
                            hint="a run_id is 8 to 64 lowercase hex digits, "
                                 "e.g. secrets.token_hex(8)")
        return run_id

    async def _cancel(self, run_id: str, analyst: str) -> bool:
        """Stop a run this analyst asked for, waiting or running; whether one was stopped."""
        if self.approvals.withdraw(run_id, analyst):
            return True
        if self.queue.owners.get(run_id) != analyst:
            return False
        self.audit.append("run_cancel_requested", run_id=run_id, analyst=analyst)
        return self.queue.cancel(run_id) or await self.workers.kill(run_id)

    # ------------------------------------------------------------------ reviewing
    async def _review(self, op: str, request: dict) -> dict[str, Any]:
        """A reviewer's request (the guard checked the role): list, show, decide, pin."""
        reviewer, item = str(request["analyst"]), str(request.get("id"))
        approvals = self.approvals
        if op == "review_list":
            return {"event": "reviews", "mode": approvals.mode, "items": approvals.listing()}
        if op == "review_show":
            return {"event": "review", **await asyncio.to_thread(self.review_view, item)}
        if op in ("review_approve", "review_reject"):
            review = approvals.decide(item, reviewer, op == "review_approve",
                                      request.get("reason"), request.get("plan_hash"))
            return {"event": "decided", "item": review.summary()}
        if op == "review_pin":
            pin = approvals.pin(item, reviewer, request.get("params"),
                                request.get("valid_for"), request.get("reason"),
                                request.get("plan_hash"))
            return {"event": "pinned", "pin": pin.summary()}
        if op == "review_login":
            if self.web is None:
                raise PlanError(f"{self.name} serves no reviewer web page", party=self.name,
                                hint="set review_port in the party file's [party] table")
            return self.web.login(reviewer)
        if op == "review_unpin":
            approvals.unpin(str(request.get("pin")), reviewer)
            return {"event": "unpinned", "pin": str(request.get("pin"))}
        raise PlanError(f"unknown request {op!r}")

    def review_view(self, item: str) -> dict[str, Any]:
        """A review item, its plan and the plan in plain language (see :mod:`.review_view`)."""
        review = self.approvals.review(item)
        return {"item": review.summary(), "plan": review.plan,
                "view": describe_plan(review.plan, self.name, len(self.frame),
                                      list(self.released))}

    def describe(self) -> dict[str, Any]:
        """What the party publishes: size, approved columns, policy summary."""
        return {"party": self.name, "rows": len(self.frame), "catalog": self.catalog,
                "policy": self.policy.summary(), "version": VERSION,
                "holds_data": self.config.holds_data}

    def reload_policy(self) -> bool:
        """Re-read the party file's ``[policy]`` (SIGHUP, ``ppa party reload``): plans
        checked from now on follow it; runs already accepted keep the check they had. The
        analysts, ports and data are read only at start (a change needs a restart). A
        policy that does not load is refused and the old one stays; both are recorded."""
        if self.config.file is None:
            return False
        try:
            fresh = load_party(self.config.file)
            policy = Policy.from_dict(self.name, fresh.policy)
            check_policy_columns(self.name, policy, self.described, self.config.link_column)
            check_reviewers(self.name, policy, fresh)
            catalog = build_catalog(policy, self.described, rows=len(self.frame))
        except (PPAError, PolicyError) as exc:
            logger.error("party %s: policy not reloaded, the old one stays: %s", self.name, exc)
            self.audit.append("policy_reload_refused", reason=str(exc))
            return False
        changed = {a.name: a.pin.fingerprint for a in fresh.analysts.values()} != \
            {a.name: a.pin.fingerprint for a in self.config.analysts.values()}
        if changed:
            logger.warning("party %s: the analysts changed; restart the kernel for that",
                           self.name)
        self.policy, self.catalog = policy, catalog
        self.approvals.configure(policy.approval, policy.approval_wait, policy.approval_valid)
        self.audit.append("policy_reloaded", policy=policy.summary(),
                          analysts_changed_need_restart=changed)
        logger.info("party %s: policy reloaded (approval %s)", self.name, policy.approval)
        return True

    # ------------------------------------------------------------------ checking
    def check_plan(self, request: dict) -> tuple[dict, str]:
        """Validate a plan and check it against this party's policy; the plan and its hash."""
        return checks.check_plan(request, self.config, self.policy, self.catalog)

    async def _check(self, request: dict, writer: asyncio.StreamWriter) -> None:
        _, digest = await asyncio.to_thread(self.check_plan, request)
        self.audit.append("plan_checked", run_id=str(request.get("run_id")), plan_hash=digest,
                          **_asked_by(request))
        await self._send(writer, {"event": "checked", "plan_hash": digest})

    # ------------------------------------------------------------------ running
    async def _run(self, request: dict, writer: asyncio.StreamWriter) -> None:
        """Check, run and release one plan; every accepted plan gets one outcome record."""
        run_id = str(request.get("run_id"))
        try:
            self._run_id(request)
            try:
                timeout = float(request.get("timeout") or DEFAULT_RUN_TIMEOUT)
            except (TypeError, ValueError):
                timeout = math.nan
            if not 0 < timeout <= MAX_RUN_TIMEOUT:
                raise PlanError(f"malformed timeout {request.get('timeout')!r}",
                                party=self.name, hint="give the timeout in seconds, above 0 "
                                                      f"and at most {MAX_RUN_TIMEOUT:g}")
            plan, digest = await asyncio.to_thread(self.check_plan, request)
        except PPAError as exc:
            self.audit.append("plan_refused", run_id=run_id, reason=str(exc),
                              plan=request.get("plan") if isinstance(request.get("plan"), dict)
                              else None, **_asked_by(request))
            raise
        asked = _asked_by(request)
        self.audit.append("plan_accepted", run_id=run_id, plan_hash=digest, plan=plan, **asked)
        # the wait for a reviewer is the policy's (approval_wait), not part of the run's
        # timeout, which starts once this party approved
        approvers = await self.approvals.approve(run_id, plan, digest, asked["analyst"],
                                                 partial(self._awaiting, writer))
        await self._send(writer, {"event": "approved", "approvers": approvers})
        try:
            await self.queue.turn(run_id, asked["analyst"], timeout,
                                  partial(self._queued, writer),
                                  held=request.get("hold") is True)
            try:
                await self._send(writer, {"event": "progress", "phase": "policy check",
                                          "elapsed": 0})
                async with _heartbeat(writer):
                    result = await self.workers.run(run_id, plan, timeout,
                                                    partial(self._progress, writer))
            finally:
                self.queue.finish(run_id)
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
        record = self.audit.append(
            "run_completed", run_id=run_id, plan_hash=digest, analyst=asked["analyst"],
            approvers=approvers, opened=sorted({e["name"] for e in result["openings"]}),
            released_digest=released_digest(result["stats"]), released_counts=released,
            multiplicity=result["multiplicity"], openings=openings)
        self.released.append({"run_id": run_id, "time": record["time"],
                              "analyst": asked["analyst"], "plan": plan})
        if not self.config.extra.get("record_openings"):
            result["openings"] = openings
        receipt = {"party": self.name, "seq": record["seq"], "head": record["hash"]}
        await self._send(writer, {"event": "result", "run_id": run_id, "plan_hash": digest,
                                  "result": result, "receipt": receipt})

    async def _progress(self, writer: asyncio.StreamWriter, event: dict) -> None:
        await self._send(writer, {"event": "progress", **event})

    async def _awaiting(self, writer: asyncio.StreamWriter, waited: float) -> None:
        await self._send(writer, {"event": "progress", "phase": "awaiting approval",
                                  "elapsed": round(waited, 1)})

    async def _queued(self, writer: asyncio.StreamWriter, position: int) -> None:
        await self._send(writer, {"event": "progress", "phase": "queued", "elapsed": 0,
                                  "position": position})


def check_reviewers(party: str, policy: Policy, config: PartyConfig) -> None:
    """Refuse manual or pinned approval without a reviewer: no plan could ever run."""
    if policy.approval != "auto" and not any(a.role == "reviewer"
                                             for a in config.analysts.values()):
        raise ConfigError(f"approval = {policy.approval!r} but {party}'s policy names no "
                          "reviewer", party=party,
                          hint='add a [policy.analysts.NAME] table with role = "reviewer"')


def open_audit(config: PartyConfig, path) -> AuditLog:
    """The party's audit log, its whole chain checked first: a broken log stops the kernel
    unless the operator acknowledged the break (``ppa party serve --accept-broken-audit``),
    which is then recorded."""
    try:
        log = AuditLog(path)
        log.verify()
        return log
    except AuditError as exc:
        if not config.extra.get("accept_broken_audit"):
            raise ConfigError(f"the audit log is broken: {exc.message}", party=config.name,
                              hint="check it with `ppa audit verify`; to go on anyway, "
                                   "start with --accept-broken-audit (recorded)") from None
        broken = path.with_name(f"{path.name}.broken-{int(time.time())}")
        path.rename(broken)  # kept for inspection; a new chain starts, naming it
        log = AuditLog(path)
        log.append("audit_break_acknowledged", error=exc.message, broken_at=exc.seq,
                   kept_as=broken.name)
        logger.warning("party %s: audit log broken (%s); kept as %s, new chain started",
                       config.name, exc.message, broken)
        return log


def _asked_by(request: dict) -> dict[str, str]:
    """Who asked, for the audit log (the request's checked analyst and nonce)."""
    return {"analyst": str(request.get("analyst")), "nonce": str(request.get("nonce"))}


@contextlib.asynccontextmanager
async def _heartbeat(writer: asyncio.StreamWriter):
    """Send ``alive`` every :data:`HEARTBEAT_INTERVAL` while the block runs, so the client
    can tell a busy party from a stalled one; a client that went away cancels the block."""
    task = asyncio.current_task()
    assert task is not None

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                writer.write(encode({"event": "alive"}))
                await writer.drain()
            except (ConnectionError, RuntimeError):
                task.cancel()
                return

    beater = asyncio.create_task(beat())
    try:
        yield
    finally:
        beater.cancel()


MAX_RELEASED = 1000
"""Earlier releases a kernel keeps in memory for its reviewers' similar-plans section."""

PID_FILE = "kernel.pid"
"""File in the state folder holding the running kernel's process id (``ppa party stop``)."""

LOCK_FILE = "kernel.lock"
"""File in the state folder that the running kernel holds locked (one kernel per folder)."""


def lock_state(config: PartyConfig) -> int:
    """Lock the party's state folder for this process (the lock goes with the process);
    refuse if another kernel holds it. Returns the lock's file descriptor."""
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(config.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another kernel of {config.name} already serves from "
                          f"{config.state_dir}", party=config.name,
                          hint="stop it first (`ppa party stop`), or give this one its own "
                               "state_dir") from None
    return fd


def state_locked(config: PartyConfig) -> bool:
    """Whether a running kernel holds the party's state folder."""
    try:
        fd = os.open(config.state_dir / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False

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
          parent_pid: int | None = None, accept_broken_audit: bool = False) -> None:
    """Run a party kernel until it receives SIGTERM/SIGINT (its local operator's stop).

    With ``parent_pid`` (local kernels) it also stops within about a second of that
    process's death, so a crashed notebook kernel leaves no party processes behind.
    """
    if record_openings:
        config.extra["record_openings"] = True
    if accept_broken_audit:
        config.extra["accept_broken_audit"] = True

    lock = lock_state(config)  # before anything in the state folder is touched

    async def main():
        kernel = PartyKernel(config)
        pid_file = config.state_dir / PID_FILE
        pid_file.write_text(f"{os.getpid()}\n")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kernel.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, kernel.reload_policy)
        watch = None if parent_pid is None else \
            asyncio.create_task(_stop_when_orphaned(kernel, parent_pid))
        started = time.time()
        try:
            await kernel.serve()
        finally:
            pid_file.unlink(missing_ok=True)
        if watch is not None:
            watch.cancel()
        logger.info("party %s stopped after %.0f s", kernel.name, time.time() - started)

    try:
        asyncio.run(main())
    finally:
        os.close(lock)

