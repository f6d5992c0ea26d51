"""A consortium of party kernels on this machine, for demos, tests and notebooks.

:func:`launch_local` writes a consortium file, one party file per source and throwaway
identities (a key and certificate per party and per local analyst, under ``keys/``, keys
0600) into a working folder, starts ``ppa party serve`` for each party as a separate
process, waits until all are ready (or one fails, with its error), and connects.
Closing the consortium stops the kernels (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pyarrow import ArrowException

from ppa_kernel.contract.config import ConsortiumConfig, load_consortium
from ppa_kernel.contract.errors import (
    ConsortiumError,
    DataError,
    PartyFailed,
    PPAError,
    error_from_dict,
)
from ppa_kernel.contract.identity import Identity, create_identity
from ppa_kernel.contract.protocol import ERROR_MARKER, READY_MARKER

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60.0
LOCAL_ANALYST = "analyst"
"""Name of the local consortium's analyst identity."""
KEYS = "keys"


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on the loopback interface."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _sorted_if_many(value: Any) -> Any:
    """A collection (a column's uses) as a sorted list; a single value as it is."""
    return sorted(value) if isinstance(value, set | frozenset | list | tuple) else value


def _policy_toml(policy: Mapping[str, Any] | str | None) -> str:
    """A ``[policy]`` table from its settings; a string is such a table's text, kept as it is
    (comments and all)."""
    if isinstance(policy, str):
        return policy if policy.endswith("\n") else policy + "\n"
    if not policy:
        return ""
    lines = ["[policy]"]
    lines += [f"{k} = {_toml(v)}" for k, v in policy.items() if not isinstance(v, Mapping)]
    for key, table in policy.items():  # sub-tables: columns, quantile_precision
        if isinstance(table, Mapping):
            lines.append(f"[policy.{key}]")
            lines += [f"{json.dumps(name)} = {_toml(_sorted_if_many(value))}"
                      for name, value in table.items()]
    return "\n".join(lines) + "\n"


def _analysts_toml(identities: Mapping[str, Identity], folder: Path,
                   reviewers: tuple[str, ...] = ()) -> str:
    lines = []
    for name, identity in identities.items():
        role = "reviewer" if name in reviewers else "analyst"
        lines += [f"[policy.analysts.{_toml(name)}]", f"role = {_toml(role)}",
                  f"certificate = {_toml(str(identity.cert_path.relative_to(folder)))}",
                  f"fingerprint = {_toml(identity.fingerprint)}", ""]
    return "\n".join(lines)


def write_local_config(folder: Path, sources: Mapping[str, Any], link: str,
                       policies: Mapping[str, Mapping | str] | None = None,
                       categorical: Mapping[str, list[str]] | None = None, *,
                       analysts: tuple[str, ...] = (LOCAL_ANALYST,),
                       reviewers: tuple[str, ...] = (),
                       party_options: Mapping[str, Any] | None = None) -> Path:
    """Write consortium and party files and throwaway identities for local kernels; return
    the consortium file. A source of None makes a compute-only party (it holds no data);
    a party's policy is its ``[policy]`` settings or that table's TOML text (written as it
    is, before the analysts' tables); ``reviewers`` are pinned at every party with the
    reviewer role; ``party_options`` go into every party file's ``[party]`` table (e.g.
    stall_timeout), except a value that is itself a table named after a party: that goes
    into that party's file only."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = folder / KEYS
    keys.mkdir(mode=0o700, exist_ok=True)
    people = {name: create_identity(keys, name) for name in (*analysts, *reviewers)}
    ports = free_ports(2 * len(sources))
    lines = ["[consortium]", 'name = "local"', f'link_salt = "{secrets.token_hex(16)}"', ""]
    for i, name in enumerate(sources):
        identity = create_identity(keys, name)
        lines += ["[[party]]", f"name = {_toml(name)}", 'host = "127.0.0.1"',
                  f"port = {ports[2 * i]}", f"mpc_port = {ports[2 * i + 1]}",
                  f"certificate = {_toml(f'{KEYS}/{name}.crt')}",
                  f"fingerprint = {_toml(identity.fingerprint)}", ""]
    (folder / "consortium.toml").write_text("\n".join(lines))
    settings = party_options or {}
    for name, source in sources.items():
        own = {**{k: v for k, v in settings.items() if not isinstance(v, Mapping)},
               **settings.get(name, {})}  # a party's own table: {"hospital": {...}}
        extra = [f"{key} = {_toml(value)}" for key, value in own.items()]
        head = ["[party]", f"name = {_toml(name)}", 'consortium = "consortium.toml"',
                f'state_dir = "state/{name}"', f"certificate = {_toml(f'{KEYS}/{name}.crt')}",
                f"key = {_toml(f'{KEYS}/{name}.key')}", *extra, ""]
        policy = _policy_toml((policies or {}).get(name)) + \
            _analysts_toml(people, folder, reviewers)
        if source is None:
            (folder / f"{name}.toml").write_text("\n".join(head) + "\n" + policy)
            continue
        options = dict(source) if isinstance(source, Mapping) else {"source": source}
        source = options.pop("source")
        if isinstance(source, pd.DataFrame):
            path = folder / f"{name}.parquet"
            try:
                source.to_parquet(path)
            except (ValueError, TypeError, ArrowException) as exc:
                raise DataError(f"cannot store its DataFrame ({exc})", party=name,
                                hint="give each column one type") from None
            source = path
        location = str(source) if "://" in str(source) else str(Path(source).resolve())
        text = [*head, "[data]", f"source = {_toml(location)}", f"link = {_toml(link)}"]
        text += [f"{key} = {_toml(options[key])}" for key in ("table", "query") if key in options]
        if categorical and categorical.get(name):
            text.append(f"categorical = {_toml(list(categorical[name]))}")
        text.append("")
        (folder / f"{name}.toml").write_text("\n".join(text) + policy)
    return folder / "consortium.toml"


class LocalParties:
    """The kernel processes of a local consortium."""

    def __init__(self, folder: Path, names: list[str], record_openings: bool = False):
        self.folder = folder
        self.config: ConsortiumConfig = load_consortium(folder / "consortium.toml")
        self.analyst = Identity.from_prefix(folder / KEYS / LOCAL_ANALYST)
        self.procs: dict[str, subprocess.Popen] = {}
        self.stderr: dict[str, Path] = {}
        for name in names:
            cmd = [sys.executable, "-m", "ppa_kernel.cli", "party", "serve",
                   str(folder / f"{name}.toml"), "--exit-with-parent", str(os.getpid())]
            if record_openings:
                cmd.append("--record-openings")
            err = folder / f"{name}.stderr.log"
            self.stderr[name] = err
            self.procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                stderr=err.open("wb"), text=True,
                                                start_new_session=True)
        atexit.register(self.kill)

    def wait_ready(self, timeout: float) -> None:
        """Wait for every kernel's ready line; raise one error naming each failed party."""
        errors: list[PPAError] = []
        results: dict[str, str] = {}

        def watch(name: str, proc: subprocess.Popen) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(READY_MARKER):
                    results[name] = "ready"
                    return
                if line.startswith(ERROR_MARKER):
                    errors.append(error_from_dict(json.loads(line[len(ERROR_MARKER):])))
                    return
            tail = self.stderr[name].read_text()[-800:] if self.stderr[name].exists() else ""
            errors.append(PartyFailed(f"kernel exited during start-up: {tail.strip()}",
                                      party=name))

        threads = [threading.Thread(target=watch, args=item, daemon=True)
                   for item in self.procs.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        missing = [n for n in self.procs if n not in results]
        if errors or missing:
            if not errors:
                errors = [PartyFailed(f"kernel not ready within {timeout:g} s", party=n)
                          for n in missing]
            self.kill()
            raise ConsortiumError(errors)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every kernel (SIGTERM: each stops its workers), killing it after ``grace`` s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Stop every kernel process (and its workers) now."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if proc.stdout:
                proc.stdout.close()


def launch_local(sources: Mapping[str, Any], *, link: str = "pseudonym",
                 policies: Mapping[str, Mapping] | None = None,
                 categorical: Mapping[str, list[str]] | None = None,
                 workdir: str | Path | None = None, record_openings: bool = False,
                 startup_timeout: float = STARTUP_TIMEOUT,
                 analysts: tuple[str, ...] = (LOCAL_ANALYST,),
                 reviewers: tuple[str, ...] = (),
                 party_options: Mapping[str, Any] | None = None) -> LocalParties:
    """Write the files for a kernel per source, start the kernels and wait until all are
    ready (:meth:`ppa_kernel.analyst.client.Consortium.local` connects to them).

    A source is a path (CSV, Parquet, SQLite), an SQLAlchemy URL, a DataFrame, a dict
    ``{"source": ..., "table": ...}`` / ``{"source": ..., "query": ...}`` for SQL sources,
    or None for a compute-only party. ``analysts`` names the local analyst identities
    (the first is the one :meth:`~ppa_kernel.analyst.client.Consortium.local` uses).
    """
    if LOCAL_ANALYST not in analysts:
        analysts = (LOCAL_ANALYST, *analysts)
    if len(sources) < 3:
        raise PartyFailed("a consortium needs at least three parties",
                          hint="MPyC's honest-majority protocols need three or more")
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ppa-local-"))
    write_local_config(folder, sources, link, policies, categorical, analysts=analysts,
                       reviewers=reviewers, party_options=party_options)
    parties = LocalParties(folder, list(sources), record_openings)
    parties.wait_ready(startup_timeout)
    return parties
