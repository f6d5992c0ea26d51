"""Party and consortium configuration files (TOML).

A consortium file, shared by all parties and the analyst, lists the parties in MPC
order with their addresses and pins each party's certificate by its fingerprint (see
:mod:`.identity`; there is no shared secret)::

    [consortium]
    name = "demo"
    link_salt = "3f1c..."            # public salt for hashing link keys

    [[party]]
    name = "insurer"
    host = "10.0.0.1"
    port = 7101                      # party kernel: analysts' requests (TLS)
    mpc_port = 7201                  # party kernel: MPC links between workers (TLS)
    certificate = "certs/insurer.crt"
    fingerprint = "sha256:9f2c..."   # checked against the certificate on every load

A party file holds one party's own settings, read only by its kernel::

    [party]
    name = "insurer"
    consortium = "consortium.toml"
    state_dir = "state/insurer"      # audit log, linkage state, data snapshot
    certificate = "keys/insurer.crt" # this party's identity (`ppa identity new`)
    key = "keys/insurer.key"         # 0600, never leaves this machine
    stall_timeout = 30               # seconds of silence after which a peer has stalled
    spare_worker = true              # start each run's MPC worker ahead (one idle process)
    replay_cache_gb = 4              # disk for kept shares of replayed columns, per epoch
    # listen_host = "10.20.0.5"      # bind address, if not the consortium file's host (NAT)
    # listen_port = 7101             # bind ports, if peers reach us through a port forward
    # listen_mpc_port = 7201
    # review_port = 7301             # the reviewers' web page (TLS; `ppa review login`)

    [data]                           # absent for a compute-only party
    source = "insurer.csv"           # CSV, Parquet, SQLite file or SQLAlchemy URL
    link = "pseudonym"
    table = "claims"                 # SQL sources: table or query
    categorical = ["region_code"]    # integer columns to treat as categories

    [policy]                         # see ppa_kernel.party.policy
    min_cell_size = 10

    [policy.analysts.alice]          # the analysts (and reviewers) this party serves
    role = "analyst"
    certificate = "analysts/alice.crt"
    fingerprint = "sha256:41d0..."

Relative paths are relative to the file that names them.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PPAError
from .identity import Identity, IdentityError, Pin, certificate_name


class ConfigError(PPAError):
    """A configuration file is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class PartyAddress:
    """Where one party's kernel and MPC worker listen."""

    name: str
    host: str
    port: int
    mpc_port: int
    pin: Pin  # the party's certificate, as pinned by the consortium file


@dataclass(frozen=True)
class ConsortiumConfig:
    """The consortium file: parties in MPC order and the shared settings."""

    name: str
    parties: list[PartyAddress]
    link_salt: str
    path: Path | None = None

    def party(self, name: str) -> PartyAddress:
        for p in self.parties:
            if p.name == name:
                return p
        raise ConfigError(f"party {name!r} is not in consortium {self.name!r}",
                          hint=f"parties are {', '.join(p.name for p in self.parties)}")

    def index(self, name: str) -> int:
        return self.parties.index(self.party(name))

    @property
    def pins(self) -> dict[str, Pin]:
        """Every party's pinned certificate, by name."""
        return {p.name: p.pin for p in self.parties}


ROLES = ("analyst", "reviewer")
"""What a party lets a named person do: analysts run plans; reviewers (the approval issue)
read what the party publishes."""

DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_REPLAY_CACHE_GB = 4
MAX_REPLAY_CACHE_GB = 4096
"""Seconds without a word from a peer (kernel or worker) after which it has stalled."""

MAX_STALL_TIMEOUT = 3600.0

DEFAULT_MAX_QUEUE = 64
"""Runs a party kernel holds waiting for their turn; more are refused."""


@dataclass(frozen=True)
class Analyst:
    """A person a party serves, pinned by certificate, with a role from :data:`ROLES`."""

    pin: Pin
    role: str

    @property
    def name(self) -> str:
        return self.pin.name


@dataclass(frozen=True)
class PartyConfig:
    """One party's own settings."""

    name: str
    consortium: ConsortiumConfig
    state_dir: Path
    data: dict[str, Any] | None  # None: a compute-only party, holding no data
    policy: dict[str, Any] | None
    identity: Identity
    analysts: dict[str, Analyst]
    worker_log_level: str = "WARNING"
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    max_queue: int = DEFAULT_MAX_QUEUE
    spare_worker: bool = True  # keep one MPC worker started ahead of the next run
    replay_cache_bytes: int = DEFAULT_REPLAY_CACHE_GB << 30  # kept replayed columns, per epoch
    listen_host: str | None = None  # bind address; default: the consortium file's host
    listen_port: int | None = None  # bind ports, if others reach this party through a
    listen_mpc_port: int | None = None  # port forward or proxy; default: the file's
    review_port: int | None = None  # the reviewer web page (TLS); None: no page
    file: Path | None = None  # the party file this was read from (to reload the policy)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> PartyAddress:
        return self.consortium.party(self.name)

    @property
    def bind_host(self) -> str:
        return self.listen_host or self.address.host

    @property
    def bind_port(self) -> int:
        return self.listen_port or self.address.port

    @property
    def bind_mpc_port(self) -> int:
        return self.listen_mpc_port or self.address.mpc_port

    @property
    def holds_data(self) -> bool:
        return self.data is not None

    @property
    def link_column(self) -> str:
        """The data's link column (a compute-only party's empty table names it ``link``)."""
        return str(self.data["link"]) if self.data is not None else "link"


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _need(table: dict, key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where} needs '{key}'")
    return table[key]


def load_consortium(path: str | Path) -> ConsortiumConfig:
    """Read a consortium file."""
    path = Path(path).resolve()
    data = _read_toml(path)
    head = _need(data, "consortium", str(path))
    if "secret_file" in head:
        raise ConfigError(f"{path} names a shared secret_file; consortia no longer use one",
                          hint="give each party a certificate and pin its fingerprint "
                               "(see the README's deployment guide)")
    parties = []
    for entry in _need(data, "party", str(path)):
        where = f"{path} [[party]]"
        name = str(_need(entry, "name", where))
        pin = _pin(name, entry, path, f"{where} {name}")
        parties.append(PartyAddress(name, str(entry.get("host", "127.0.0.1")),
                                    _port(_need(entry, "port", where), where),
                                    _port(_need(entry, "mpc_port", where), where), pin))
    if len({p.name for p in parties}) != len(parties) or len(parties) < 3:
        raise ConfigError(f"{path} must list at least three parties with distinct names",
                          hint="MPyC's honest-majority protocols need three or more parties")
    if len({p.pin.fingerprint for p in parties}) != len(parties):
        raise ConfigError(f"{path} pins one certificate for two parties",
                          hint="every party needs its own identity")
    return ConsortiumConfig(str(head.get("name", path.stem)), parties,
                            str(_need(head, "link_salt", f"{path} [consortium]")), path)


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{where}: port {value!r} is not a number from 1 to 65535")
    return value


def _pin(name: str, entry: dict, path: Path, where: str) -> Pin:
    """The certificate an entry names, checked against the fingerprint it pins."""
    try:
        return Pin.load(name, path.parent / str(_need(entry, "certificate", where)),
                        entry.get("fingerprint"))
    except IdentityError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def _seconds(value: Any, where: str, default: float, limit: float) -> float:
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or \
            not 0 < value <= limit or math.isnan(value):
        raise ConfigError(f"{where} must be a number of seconds above 0 and at most {limit:g}")
    return float(value)


def _analysts(policy: dict | None, path: Path) -> dict[str, Analyst]:
    """The ``[policy.analysts.NAME]`` tables, taken out of the policy."""
    table = (policy or {}).pop("analysts", None) or {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path} [policy.analysts] must be a table of analysts")
    analysts = {}
    for name, entry in table.items():
        where = f"{path} [policy.analysts.{name}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table (role, certificate, fingerprint)")
        role = entry.get("role", "analyst")
        if role not in ROLES:
            raise ConfigError(f"{where}: unknown role {role!r}", hint=f"roles are {ROLES}")
        pin = _pin(name, entry, path, where)
        if certificate_name(pin.certificate) != name:
            raise ConfigError(f"{where}: the certificate is made out to "
                              f"{certificate_name(pin.certificate)!r}, not {name!r}",
                              hint="name the table after the analyst's certificate (the name "
                                   "given to `ppa identity new`)")
        if any(a.pin.fingerprint == pin.fingerprint for a in analysts.values()):
            raise ConfigError(f"{where}: this certificate is already pinned for another "
                              "analyst", hint="pin each certificate once, with one role")
        analysts[name] = Analyst(pin, role)
    return analysts


def load_party(path: str | Path) -> PartyConfig:
    """Read a party file (and the consortium file it names)."""
    path = Path(path).resolve()
    data = _read_toml(path)
    head = _need(data, "party", str(path))
    consortium = load_consortium(path.parent / _need(head, "consortium", f"{path} [party]"))
    where = f"{path} [party]"
    name = str(_need(head, "name", where))
    consortium.party(name)
    source = None
    if "data" in data:
        source = dict(data["data"])
        raw = _need(source, "source", f"{path} [data]")
        if "://" not in str(raw):
            source["source"] = str((path.parent / raw).resolve())
        _need(source, "link", f"{path} [data]")
    state_dir = (path.parent / head.get("state_dir", f"state/{name}")).resolve()
    try:
        identity = Identity.load(path.parent / str(_need(head, "certificate", where)),
                                 path.parent / str(_need(head, "key", where)))
        identity.check_valid()
    except IdentityError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None
    if identity.fingerprint != consortium.party(name).pin.fingerprint:
        raise ConfigError(f"{where}: this party's certificate is not the one the consortium "
                          f"file pins for {name}",
                          hint="send the other parties the new fingerprint, or use the "
                               "pinned key")
    policy = data.get("policy")
    policy = dict(policy) if isinstance(policy, dict) else policy
    analysts = _analysts(policy, path)
    max_queue = head.get("max_queue", DEFAULT_MAX_QUEUE)
    if not isinstance(max_queue, int) or isinstance(max_queue, bool) or \
            not 1 <= max_queue <= 10_000:
        raise ConfigError(f"{where}: max_queue must be a whole number from 1 to 10000")
    spare = head.get("spare_worker", True)
    if not isinstance(spare, bool):
        raise ConfigError(f"{where}: spare_worker must be true or false")
    cache_gb = head.get("replay_cache_gb", DEFAULT_REPLAY_CACHE_GB)
    if not isinstance(cache_gb, int | float) or isinstance(cache_gb, bool) or \
            not 0 <= cache_gb <= MAX_REPLAY_CACHE_GB or math.isnan(cache_gb):
        raise ConfigError(f"{where}: replay_cache_gb must be a number of GiB from 0 (keep "
                          f"no replayed columns) to {MAX_REPLAY_CACHE_GB}")
    listen = head.get("listen_host")
    ports = [None if head.get(key) is None else _port(head[key], f"{where} {key}")
             for key in ("listen_port", "listen_mpc_port", "review_port")]
    return PartyConfig(name, consortium, state_dir, source, policy, identity, analysts,
                       str(head.get("worker_log_level", "WARNING")),
                       _seconds(head.get("stall_timeout"), f"{where} stall_timeout",
                                DEFAULT_STALL_TIMEOUT, MAX_STALL_TIMEOUT),
                       max_queue, spare, int(cache_gb * (1 << 30)),
                       str(listen) if listen else None, *ports, file=path)
