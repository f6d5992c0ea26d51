"""The analyst's client: one API behind every front-end (Python, magics, widgets, papermill).

:class:`Consortium` talks to the party kernels listed in a consortium file, builds
secure frames from their catalogs, and runs plans: it sends the same plan (and hash) to
every party, follows their progress, gathers errors from all of them into one
:class:`~ppa_kernel.contract.errors.ConsortiumError`, checks that all parties released the same
result, and returns it as a pandas DataFrame.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ppa_kernel.contract.config import (
    DEFAULT_STALL_TIMEOUT,
    ConsortiumConfig,
    PartyAddress,
    load_consortium,
)
from ppa_kernel.contract.errors import (
    ConsortiumError,
    PartyFailed,
    PlanError,
    PPAError,
    RunTimeout,
    error_from_dict,
)
from ppa_kernel.contract.identity import Identity, IdentityError
from ppa_kernel.contract.limits import DEFAULT_RUN_TIMEOUT
from ppa_kernel.contract.plan import DISCLOSURE_RULES, check_depth, plan_hash
from ppa_kernel.contract.program import compile_plan
from ppa_kernel.contract.protocol import Channel, ask, connect, request
from ppa_kernel.contract.receipts import append_receipt, receipt, released_digest

from . import accessor  # noqa: F401  (registers the result.ppa accessor)
from .cohort import check_cohort
from .local import STARTUP_TIMEOUT, launch_local
from .progress import Display, ProgressCallback, error_stage, make_display
from .results import check_layout, released_table

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 30.0
IDENTITY_ENV = "PPA_IDENTITY"
"""Environment variable naming the analyst's identity (``keys/alice`` for
``keys/alice.crt`` and ``keys/alice.key``) when none is given."""
CANCEL_TIMEOUT = 5.0
ERROR_GRACE = 1.0
"""After a first error, how long to wait for the other parties' own reports before cancelling."""


@dataclass
class RunOutcome:
    """Everything the parties returned for one run."""

    run_id: str
    plan: dict
    results: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, PPAError] = field(default_factory=dict)
    receipts: dict[str, dict] = field(default_factory=dict)  # party -> {seq, head}
    approvers: dict[str, list[str]] = field(default_factory=dict)
    closed: bool = False  # set when the client stops listening (late errors are ours)
    deadline: float = 0.0  # monotonic; moves once every party approved (see run_raw)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, party: str, error: PPAError) -> None:
        if not self.closed:
            self.errors.setdefault(party, error)


class Consortium:
    """A connection to the party kernels of one consortium."""

    is_mock = False
    """True for a mock consortium (design mode, :meth:`mock`): synthetic data, no releases."""

    def __init__(self, config: ConsortiumConfig, *, identity: Identity | str | Path | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 receipts: str | Path | None = None,
                 on_close: Callable[[], None] | None = None):
        self.config = config
        self.identity = _identity(identity)
        self.receipts_path = Path(receipts) if receipts else default_receipts()
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self._on_close = on_close
        self._closed = False
        self.parties: dict[str, dict] = {}
        self.refresh()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Consortium:
        """Connect to the running party kernels a consortium file lists, as the analyst
        ``identity`` (a path prefix like ``keys/alice``; default ``$PPA_IDENTITY``)."""
        return cls(load_consortium(path), **kwargs)

    @classmethod
    def local(cls, sources: Mapping[str, Any], link: str = "pseudonym", *,
              policies: Mapping[str, Mapping] | None = None,
              categorical: Mapping[str, list[str]] | None = None,
              workdir: str | Path | None = None, record_openings: bool = False,
              startup_timeout: float = STARTUP_TIMEOUT, analysts: tuple[str, ...] = (),
              reviewers: tuple[str, ...] = (),
              party_options: Mapping[str, Any] | None = None, **kwargs: Any) -> Consortium:
        """Start one local party kernel per source and connect (see
        :func:`.local.launch_local` for the sources and options it takes); ``close()``
        stops them. The kernels get throwaway identities, made for this consortium."""
        parties = launch_local(sources, link=link, policies=policies, categorical=categorical,
                               workdir=workdir, record_openings=record_openings,
                               startup_timeout=startup_timeout, analysts=analysts,
                               reviewers=reviewers, party_options=party_options)
        consortium: Consortium | None = None

        def close() -> None:
            parties.stop()

        kwargs.setdefault("receipts", parties.folder / "receipts.jsonl")
        try:
            consortium = cls(parties.config, identity=parties.analyst, on_close=close,
                             **kwargs)
        except PPAError:
            parties.kill()
            raise
        consortium.local_parties = parties
        return consortium

    @classmethod
    def mock(cls, source: Any, rows: int | None = None, seed: int = 0,
             **local_kwargs: Any) -> Consortium:
        """Design mode: a local consortium on synthetic data shaped like ``source``'s
        catalog, with its policies (a live Consortium, a :meth:`catalog_snapshot` dict, or
        a path to one as JSON); ``rows`` caps the largest party's rows (default 2000).
        Every result is marked mock (``df.attrs["mock"]``), never a release; see :mod:`.mock`."""
        from .mock import start_mock

        return start_mock(cls.local, source, rows=rows, seed=seed, **local_kwargs)

    def catalog_snapshot(self) -> dict:
        """What :meth:`mock` needs of this consortium, JSON-able (see :mod:`.mock`)."""
        from .mock import catalog_snapshot

        return catalog_snapshot(self)

    def __repr__(self) -> str:
        """What an analyst needs at a glance: the parties in MPC order with their rows (as
        last heard), open or closed, mock or real, where the kernels come from."""
        parties = []
        for name in self.names:
            info = self.parties.get(name)
            if info is None:
                parties.append(f"{name} (not heard from)")
            elif not info.get("holds_data", True):
                parties.append(f"{name} (computes only)")
            else:
                parties.append(f"{name} ({info['rows']:,} rows)")
        local = getattr(self, "local_parties", None)
        source = f"local kernels in {local.folder}" if local is not None else \
            f"from {self.config.path}" if self.config.path is not None else "from a config"
        mock = " MOCK (synthetic data, no releases)" if self.is_mock else ""
        state = "closed" if self._closed else f"connected as {self.identity.name}"
        return f"<Consortium {self.config.name!r}{mock}: {', '.join(parties)}; {state}; {source}>"

    def __enter__(self) -> Consortium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; for a local consortium also stop its kernels."""
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()

    # ---------------------------------------------------------------- metadata
    def refresh(self) -> None:
        """Ask every party for its size, catalog and policy."""
        self.parties = self._ask_all("hello", {}, "hello")

    def status(self, timeout: float = 5.0) -> pd.DataFrame:
        """One row per party: reachable, data rows and a policy summary (never raises)."""
        rows = []
        for party in self.config.parties:
            row: dict[str, Any] = {"party": party.name, "address": f"{party.host}:{party.port}"}
            try:
                info = self._request(party, "hello", {}, "hello", timeout=timeout)
            except PPAError as exc:
                row.update(reachable=False, error=exc.message)
            else:
                self.parties[party.name] = info
                policy = info["policy"]
                columns = policy.get("columns")
                row.update(reachable=True, rows=info["rows"],
                           min_cell_size=policy["min_cell_size"],
                           quantile_resolution=policy.get("quantile_resolution"),
                           statistics=", ".join(policy["statistics"]),
                           approval=policy["approval"],
                           approved_columns=len(info["catalog"]) if columns is not None
                           else f"all {len(info['catalog'])}")
            rows.append(row)
        return pd.DataFrame(rows).set_index("party")

    @property
    def names(self) -> list[str]:
        """Party names in MPC order."""
        return [p.name for p in self.config.parties]

    @property
    def data_parties(self) -> list[str]:
        """The parties that hold data (not compute-only), in MPC order."""
        return [p for p in self.names if self.parties.get(p, {}).get("holds_data", True)]

    @property
    def catalog(self) -> dict[str, dict[str, dict]]:
        """Approved columns per party."""
        return {name: info["catalog"] for name, info in self.parties.items()}

    def catalog_frame(self) -> pd.DataFrame:
        """The catalog as one table: party, column, kind, levels or range, uses, and for
        numeric columns the owner's minimum quantile precision."""
        rows = []
        for party, columns in self.catalog.items():
            for column, meta in columns.items():
                detail = meta.get("levels") if meta["kind"] != "numeric" else \
                    f"{meta.get('min')} .. {meta.get('max')}"
                rows.append({"party": party, "column": column, "kind": meta["kind"],
                             "levels or range": detail, "uses": ", ".join(meta["uses"]),
                             "quantile precision": meta.get("min_precision")})
        return pd.DataFrame(rows)

    def min_cell_size(self) -> int:
        """The strictest minimum cell size of all parties' policies."""
        return max(info["policy"]["min_cell_size"] for info in self.parties.values())

    def disclosure_rules(self, requested: dict | None = None) -> dict[str, int]:
        """The strictest dominance, p-ratio and history rules of all parties' policies
        (and of ``requested``): each party refuses a plan laxer than its own."""
        rules = [info["policy"]["disclosure"] for info in self.parties.values()]
        if requested:
            rules.append(requested)
        return {"dominance_n": max(r["dominance_n"] for r in rules),
                "dominance_k": min(r["dominance_k"] for r in rules),
                "p_ratio": max(r["p_ratio"] for r in rules),
                "history_limit": min(r["history_limit"] for r in rules),
                "differencing": any(r["differencing"] for r in rules)}

    def link(self, *parties: str):
        """A secure frame over the inner join of the named parties (default: all that
        hold data; compute-only parties take part in every run but hold nothing to link)."""
        from .frame import SecureFrame

        owners = self.data_parties
        chosen = list(parties) or owners
        unknown = [p for p in chosen if p not in self.names]
        if unknown:
            raise PlanError(f"unknown parties {unknown}", hint=f"parties are {self.names}")
        helpers = [p for p in chosen if p not in owners]
        if helpers:
            raise PlanError(f"{', '.join(helpers)} only compute{'s' if len(helpers) == 1 else ''}"
                            " and hold no data to link", hint=f"data parties are {owners}")
        ordered = [p for p in self.names if p in chosen]
        return SecureFrame(self.catalog, self.names, ordered, runner=self)

    # ---------------------------------------------------------------- running
    def prepare(self, plan: dict) -> dict:
        """A copy of the plan with the consortium's minimum cell size filled in.

        A model plan also gets the strictest ``min_residual_df``. A quantile plan's
        precision is left as it is: the builder's default already meets every owner's
        minimum (catalog ``min_precision``), and a finer one the analyst asked for is
        for the owners to refuse, not for the client to coarsen silently.
        """
        plan = copy.deepcopy(plan)
        requested = plan.get("min_cell_size") or 0
        plan["min_cell_size"] = max(requested, self.min_cell_size())
        requested = plan.get("disclosure")
        if requested is None or (isinstance(requested, dict)
                                 and set(requested) == set(DISCLOSURE_RULES)):
            plan["disclosure"] = self.disclosure_rules(requested)
        if plan.get("model") is not None:
            strictest = max(info["policy"].get("min_residual_df", 1)
                            for info in self.parties.values())
            plan["min_residual_df"] = max(plan.get("min_residual_df") or 0, strictest)
        compile_plan(plan)  # the parties' own checks, here first: errors before anything is sent
        check_cohort(plan, self.catalog)  # and an empty cohort says why
        return plan

    def run(self, plan: dict, *, timeout: float | None = None,
            progress: bool | str | ProgressCallback | Display | None = None,
            layout: str = "table") -> pd.DataFrame:
        """Run a plan at every party; return the released table (see
        :func:`.results.released_table` for ``layout``)."""
        check_layout(layout)  # before anything runs
        outcome = self.run_raw(plan, timeout=timeout, progress=progress)
        first = outcome.results[self.names[0]]
        return released_table(outcome.plan, first["stats"], outcome.run_id, layout=layout,
                              attrs={"multiplicity": first["multiplicity"],
                                     "approvers": dict(outcome.approvers),
                                     "receipt": outcome.receipts,
                                     **diagnostics(outcome.results, self.names)},
                              mock=self.is_mock)

    def check(self, plan: dict, *, timeout: float | None = None) -> str:
        """Check a plan with every party's policy without computing; return its hash."""
        check_depth(plan)
        plan = self.prepare(plan)
        digest = plan_hash(plan)
        self._ask_all("check", {"plan": plan, "plan_hash": digest}, "checked", timeout=timeout)
        return digest

    def run_raw(self, plan: dict, *, timeout: float | None = None,
                progress: bool | str | ProgressCallback | Display | None = False) -> RunOutcome:
        """Run a plan; return every party's raw result (raises on any failure)."""
        check_depth(plan)  # before anything walks it recursively (hashing, copying)
        plan = self.prepare(plan)
        run_id = secrets.token_hex(8)
        request = {"run_id": run_id, "plan": plan, "plan_hash": plan_hash(plan),
                   "timeout": timeout or DEFAULT_RUN_TIMEOUT}
        # the first party starts only once every party approved (a policy may have
        # changed since hello: always hold, it costs one small request)
        request["hold"] = True
        outcome = RunOutcome(run_id, plan)
        failed = threading.Event()
        report, display = _display(progress)
        if display is not None:
            display.begin(self.names)
        # until every party approved: as long as the longest a reviewer may take, then the
        # run's own timeout (a waiting kernel's heartbeats show it is alive)
        outcome.deadline = time.monotonic() + self._run_budget(timeout) + max(
            (info["policy"].get("approval_wait", 0) for info in self.parties.values()
             if info["policy"].get("approval") == "manual"), default=0)
        threads = [threading.Thread(target=self._follow_run, daemon=True,
                                    args=(p, request, outcome, failed, report))
                   for p in self.config.parties]
        done = False
        try:
            for t in threads:
                t.start()
            try:
                self._wait(threads, failed, outcome)
            finally:
                outcome.closed = True
            done = not failed.is_set() and len(outcome.results) == len(self.names)
        finally:  # also when interrupted: the display stops ticking
            if display is not None:
                display.close(ok=done, errors=_blamed(outcome.errors))
        if not done:
            self._cancel(run_id)
            if not outcome.errors:
                outcome.errors["client"] = RunTimeout("run did not finish in time")
            raise ConsortiumError(without_knock_ons(list(outcome.errors.values())))
        self._check_agreement(outcome)
        self._keep_receipt(outcome)
        return outcome

    def approval_modes(self) -> set[str]:
        """The parties' approval modes (``auto``, ``manual``, ``pinned``)."""
        return {info["policy"].get("approval", "auto") for info in self.parties.values()}

    def _approved(self, party: str, approvers: list[str], outcome: RunOutcome,
                  request: dict, failed: threading.Event) -> None:
        """A party approved the run; once all have, a held run may start (``go``; if the
        first party refuses it, the run has ``failed``: nobody waits for its deadline)."""
        with outcome.lock:
            outcome.approvers[party] = approvers
            everyone = len(outcome.approvers) == len(self.names)
            if everyone:  # from now on, the run's own timeout
                outcome.deadline = min(outcome.deadline, time.monotonic() +
                                       self._run_budget(float(request["timeout"])))
        if everyone and request.get("hold"):
            first = self.config.parties[0]
            try:
                self._request(first, "go", {"run_id": outcome.run_id}, "go")
            except PPAError as exc:
                exc.party = exc.party or first.name
                outcome.fail(first.name, exc)
                failed.set()

    def _keep_receipt(self, outcome: RunOutcome) -> None:
        """Write the run's receipt (every party's audit chain head after it)."""
        if len(outcome.receipts) != len(self.names):
            logger.warning("run %s: not every party sent a receipt", outcome.run_id)
            return
        stats = outcome.results[self.names[0]]["stats"]
        record = receipt(outcome.run_id, plan_hash(outcome.plan), released_digest(stats),
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), outcome.receipts)
        try:
            append_receipt(self.receipts_path, record)
        except OSError as exc:
            logger.warning("could not keep the receipt of run %s in %s: %s", outcome.run_id,
                           self.receipts_path, exc)

    def _run_budget(self, timeout: float | None) -> float:
        return (timeout or DEFAULT_RUN_TIMEOUT) + self.connect_timeout

    def _wait(self, threads: list[threading.Thread], failed: threading.Event,
              outcome: RunOutcome) -> None:
        """Wait for all parties; after a failure, briefly for the others' own errors."""
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if now > outcome.deadline:
                return
            if failed.is_set():
                outcome.deadline = min(outcome.deadline, now + ERROR_GRACE)
            for t in threads:
                t.join(timeout=0.05)

    def _follow_run(self, party: PartyAddress, request: dict, outcome: RunOutcome,
                    failed: threading.Event, report: Report | None) -> None:
        def fail(error: PPAError) -> None:
            outcome.fail(party.name, error)
            failed.set()
            if report and not outcome.closed:
                try:
                    report(party.name, error_stage(error), 0.0, None)
                except PPAError:  # a callback stopping a run that is failing already
                    pass

        try:
            channel = self._connect(party)
        except PPAError as exc:
            fail(exc)
            return
        try:
            channel.send(self._signed("run", party.name, request))
            while not outcome.closed:
                left = outcome.deadline - time.monotonic()
                try:
                    reply = channel.receive(timeout=max(0.1, min(left, self.stall_timeout)))
                except TimeoutError:
                    if outcome.deadline - time.monotonic() <= 0.1:
                        raise
                    raise PartyFailed(f"sent nothing for {self.stall_timeout:g} s "
                                      "(stalled, or the network is silent)", party=party.name,
                                      hint="check that party's kernel and network") from None
                event = reply.get("event")
                if event == "progress" and report:
                    report(party.name, *progress_event(reply))
                elif event == "approved":
                    if report:
                        report(party.name, "approved", 0.0, None)
                    approvers = reply.get("approvers")
                    self._approved(party.name, [str(a) for a in approvers][:16]
                                   if isinstance(approvers, list) else [], outcome, request,
                                   failed)
                elif event == "result":
                    outcome.results[party.name] = reply["result"]
                    if isinstance(reply.get("receipt"), dict):
                        outcome.receipts[party.name] = reply["receipt"]
                    return
                elif event == "error":  # a party speaks for itself only
                    error = error_from_dict(reply["error"])
                    error.party = party.name
                    fail(error)
                    return
        except TimeoutError:
            # after another party's error the wait is cut to a short grace: running out of
            # it is no fault of this party's, and blaming it would hide the cause
            if not failed.is_set():
                fail(RunTimeout("no answer before the deadline", party=party.name))
        except (OSError, ConnectionError) as exc:
            fail(PartyFailed(f"connection lost: {exc}", party=party.name))
        except PPAError as exc:  # a reply that failed the protocol's checks
            exc.party = exc.party or party.name
            fail(exc)
        finally:
            channel.close()

    def _cancel(self, run_id: str) -> None:
        """Cancel the run at every party at once, each within :data:`CANCEL_TIMEOUT` (a
        stalled kernel may accept the connection and never answer)."""
        def cancel(party: PartyAddress) -> None:
            try:
                self._request(party, "cancel", {"run_id": run_id}, "cancelled",
                              timeout=CANCEL_TIMEOUT, connect_timeout=CANCEL_TIMEOUT)
            except PPAError as exc:
                logger.warning("could not cancel run %s at %s: %s", run_id, party.name, exc)

        threads = [threading.Thread(target=cancel, args=(p,), daemon=True)
                   for p in self.config.parties]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * CANCEL_TIMEOUT + 1)

    def _check_agreement(self, outcome: RunOutcome) -> None:
        reference = outcome.results[self.names[0]]["stats"]
        for name, result in outcome.results.items():
            if result["stats"] != reference:
                raise ConsortiumError([PartyFailed("released a different result than "
                                                   f"{self.names[0]}", party=name)])

    # ---------------------------------------------------------------- transport
    def _connect(self, party: PartyAddress, timeout: float | None = None) -> Channel:
        return connect(party.host, party.port, self.identity, party.pin,
                       timeout or self.connect_timeout)

    def _signed(self, op: str, party: str, fields: dict) -> dict:
        return request(op, self.identity, party, **fields)

    def _ask_all(self, op: str, fields: dict, expect: str,
                 timeout: float | None = None) -> dict[str, dict]:
        """Send one request to every party; gather all errors into one ConsortiumError."""
        replies, errors = {}, []
        for party in self.config.parties:
            try:
                replies[party.name] = self._request(party, op, fields, expect, timeout=timeout)
            except PPAError as exc:
                errors.append(exc)
        if errors:
            raise ConsortiumError(errors)
        return replies

    def _request(self, party: PartyAddress, op: str, fields: dict, expect: str,
                 timeout: float | None = None, connect_timeout: float | None = None) -> dict:
        return ask(party.host, party.port, self.identity, party.pin, op, fields, expect,
                   timeout=timeout or self.connect_timeout,
                   connect_timeout=connect_timeout or self.connect_timeout)

    # ---------------------------------------------------------------- output checkers
    def export(self, folder: str | Path, results: Mapping[str, pd.DataFrame] | list,
               comments: str | list[str] | Mapping | None = None) -> Path:
        """Write released results (name -> table, or a list) for output checkers to a new
        ``folder`` (see :func:`.export.export`); return its path."""
        from .export import export

        return export(folder, results, comments=comments)


KNOCK_ON = "lost connection to the MPC worker of "
"""How a worker reports a peer whose worker stopped: often because that peer failed."""


DIAGNOSTIC_LIMIT = 1e7
"""Largest number a party's diagnostic field may carry (seconds, MB, column counts)."""


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and 0 <= value <= DIAGNOSTIC_LIMIT \
        else None


def diagnostics(results: Mapping[str, dict], names: list[str]) -> dict[str, Any]:
    """The parties' run diagnostics for a table's attrs, checked field by field: phase
    seconds and peak memory are bounded non-negative numbers, phase names and column
    counts (replayed and reused per party) are the known ones; anything else a party
    sent is dropped (and logged)."""
    phases, peaks = {}, {}
    for party, result in results.items():
        raw = result.get("phases")
        raw = raw if isinstance(raw, dict) else {}
        kept = {k: _number(v) for k, v in raw.items() if isinstance(k, str) and len(k) <= 32}
        phases[party] = {k: v for k, v in kept.items() if v is not None}
        peaks[party] = _number(result.get("peak_rss_mb"))
        if len(phases[party]) != len(raw) or (peaks[party] is None
                                              and result.get("peak_rss_mb") is not None):
            logger.warning("dropped malformed diagnostics from %s", party)
    counts = {key: _column_counts(results[names[0]].get(key), names)
              for key in ("input_widths", "reused_widths")}
    return {"phases": phases, "peak_rss_mb": peaks, **counts}


def _column_counts(widths: Any, names: list[str]) -> dict[str, int] | None:
    """Columns per party (replayed or reused), or None unless well-formed and bounded."""
    if isinstance(widths, dict) and set(widths) <= set(names) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096
            for v in widths.values()):
        return widths
    return None


def without_knock_ons(errors: list[PPAError]) -> list[PPAError]:
    """The errors without "lost connection to X" lines from parties whose peer X reported
    its own error: X's error is the cause (e.g. it noticed a third party stall and
    stopped), and blaming X would name the wrong party."""
    failed = {e.party for e in errors}
    def knock_on(error: PPAError) -> bool:
        if not error.message.startswith(KNOCK_ON):
            return False
        named = error.message[len(KNOCK_ON):].split(", ")
        return all(name in failed and name != error.party for name in named)
    kept = [e for e in errors if not knock_on(e)]
    return kept or errors


RECEIPTS_ENV = "PPA_RECEIPTS"
"""Environment variable naming the file where the client keeps its run receipts."""


def default_receipts() -> Path:
    """Where run receipts go: ``$PPA_RECEIPTS``, else ``$XDG_DATA_HOME/ppa/receipts.jsonl``
    (``~/.local/share/ppa/receipts.jsonl``)."""
    if os.environ.get(RECEIPTS_ENV):
        return Path(os.environ[RECEIPTS_ENV])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "ppa" / "receipts.jsonl"


def _identity(identity: Identity | str | Path | None) -> Identity:
    """The analyst's identity: given, as a path prefix, or from ``$PPA_IDENTITY``; it must
    be valid now."""
    if isinstance(identity, Identity):
        identity.check_valid()
        return identity
    prefix = identity or os.environ.get(IDENTITY_ENV)
    if not prefix:
        raise IdentityError("no analyst identity given",
                            hint=f"pass identity='keys/alice' (for keys/alice.crt and .key) "
                                 f"or set {IDENTITY_ENV}; make one with `ppa identity new`")
    found = Identity.from_prefix(prefix)
    found.check_valid()
    return found


Report = Callable[[str, str, float, float | None], None]
"""``report(party, phase, elapsed, fraction)``: one progress report (see :mod:`.progress`)."""
MAX_PHASE_NAME = 40


def progress_event(reply: dict) -> tuple[str, float, float | None]:
    """(phase, elapsed, fraction) of a party's progress event, cut to sane values: a short
    phase name, finite seconds, a fraction in [0, 1] or None (the phase ended)."""
    phase = reply.get("phase")
    phase = phase[:MAX_PHASE_NAME] if isinstance(phase, str) else ""
    numbers = []
    for key in ("elapsed", "fraction"):
        value = reply.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)
        numbers.append(float(value) if ok else None)
    elapsed, fraction = numbers
    return phase, elapsed or 0.0, None if fraction is None else min(max(fraction, 0.0), 1.0)


def _display(progress: bool | str | ProgressCallback | Display | None
             ) -> tuple[Report | None, Display | None]:
    """(report, display) for a run: a display given or chosen (see :mod:`.progress`), or
    a plain callback, which hears of finished phases only.

    ``None`` and ``True`` choose automatically (widget, text or bar); ``False`` shows nothing.
    """
    if isinstance(progress, Display):
        return progress.update, progress
    if callable(progress):
        callback = progress

        def report(party: str, phase: str, elapsed: float, fraction: float | None) -> None:
            if fraction is None:
                callback(party, phase, elapsed)

        return report, None
    mode = "off" if progress is False else "auto" if progress in (None, True) else progress
    display = make_display(mode)
    return (display.update if display else None), display


def _blamed(errors: Mapping[str, PPAError]) -> dict[str, PPAError]:
    """The parties' errors without knock-ons (see :func:`without_knock_ons`)."""
    kept = without_knock_ons(list(errors.values()))
    return {party: e for party, e in errors.items() if any(e is k for k in kept)}
