"""Party and consortium configuration files (TOML).

A consortium file, shared by all parties and the analyst, lists the parties in MPC
order with their kernel and MPC addresses::

    [consortium]
    name = "demo"
    secret_file = "consortium.key"   # HMAC key for client<->kernel messages (keep private)
    link_salt = "3f1c..."            # public salt for hashing link keys

    [[party]]
    name = "insurer"
    host = "127.0.0.1"
    port = 7101       # party kernel (control messages)
    mpc_port = 7201   # MPyC worker (MPC messages)

A party file holds one party's own settings, read only by its kernel::

    [party]
    name = "insurer"
    consortium = "consortium.toml"
    state_dir = "state/insurer"      # audit log, linkage state, data snapshot

    [data]
    source = "insurer.csv"           # CSV, Parquet, SQLite file or SQLAlchemy URL
    link = "pseudonym"
    table = "claims"                 # SQL sources: table or query
    categorical = ["region_code"]    # integer columns to treat as categories

    [policy]                         # see ppa_kernel.party.policy
    min_cell_size = 10

Relative paths are relative to the file that names them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PPAError


class ConfigError(PPAError):
    """A configuration file is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class PartyAddress:
    """Where one party's kernel and MPC worker listen."""

    name: str
    host: str
    port: int
    mpc_port: int


@dataclass(frozen=True)
class ConsortiumConfig:
    """The consortium file: parties in MPC order and the shared settings."""

    name: str
    parties: list[PartyAddress]
    secret: bytes
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


@dataclass(frozen=True)
class PartyConfig:
    """One party's own settings."""

    name: str
    consortium: ConsortiumConfig
    state_dir: Path
    data: dict[str, Any]
    policy: dict[str, Any] | None
    worker_log_level: str = "WARNING"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> PartyAddress:
        return self.consortium.party(self.name)


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
    parties = []
    for entry in _need(data, "party", str(path)):
        where = f"{path} [[party]]"
        parties.append(PartyAddress(str(_need(entry, "name", where)),
                                    str(entry.get("host", "127.0.0.1")),
                                    int(_need(entry, "port", where)),
                                    int(_need(entry, "mpc_port", where))))
    if len({p.name for p in parties}) != len(parties) or len(parties) < 3:
        raise ConfigError(f"{path} must list at least three parties with distinct names",
                          hint="MPyC's honest-majority protocols need three or more parties")
    secret_path = path.parent / _need(head, "secret_file", f"{path} [consortium]")
    try:
        secret = secret_path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"consortium secret {secret_path} not found",
                          hint="every party and the analyst need the same secret file") from None
    return ConsortiumConfig(str(head.get("name", path.stem)), parties, secret,
                            str(_need(head, "link_salt", f"{path} [consortium]")), path)


def load_party(path: str | Path) -> PartyConfig:
    """Read a party file (and the consortium file it names)."""
    path = Path(path).resolve()
    data = _read_toml(path)
    head = _need(data, "party", str(path))
    consortium = load_consortium(path.parent / _need(head, "consortium", f"{path} [party]"))
    name = str(_need(head, "name", f"{path} [party]"))
    consortium.party(name)
    source = dict(_need(data, "data", str(path)))
    raw = _need(source, "source", f"{path} [data]")
    if "://" not in str(raw):
        source["source"] = str((path.parent / raw).resolve())
    _need(source, "link", f"{path} [data]")
    state_dir = (path.parent / head.get("state_dir", f"state/{name}")).resolve()
    return PartyConfig(name, consortium, state_dir, source, data.get("policy"),
                       str(head.get("worker_log_level", "WARNING")))
