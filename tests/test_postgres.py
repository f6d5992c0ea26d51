"""A party whose table lives in PostgreSQL, on a real server this test starts and stops.

The server is Debian's (``initdb`` / ``pg_ctl`` from the ``postgresql`` package, on PATH
or under ``/usr/lib/postgresql/*/bin``), listening on 127.0.0.1 only and on a socket in a
temporary folder; as root it runs as the ``postgres`` user (``initdb`` refuses root). The
insurer's kernel reads its table through SQLAlchemy and psycopg; the released study must
equal pandas on the same data. Without a server the test is skipped, unless
``PPA_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it), which makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle import assert_matches, expected, join

from ppa_kernel import Consortium
from ppa_kernel.analyst.local import free_ports
from ppa_kernel.analyst.synthetic import generate

REQUIRED = os.environ.get("PPA_REQUIRE_POSTGRES") == "1"
START_TIMEOUT = 60
STOP_TIMEOUT = 30
PARTIES = ("insurer", "hospital", "bureau")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"PPA_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def _server_binaries() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl``: from PATH, else Debian's newest version."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return found  # type: ignore[return-value]
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        folder = Path(versions[-1]).parent
        return str(folder / "initdb"), str(folder / "pg_ctl")
    return None


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as the server's user: ourselves, or ``postgres`` when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A running server's SQLAlchemy URL (database ``postgres``, user ``ppa``, trusted)."""
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's postgresql+psycopg driver)
    except ImportError:
        _unavailable("the psycopg driver (in the test extra) is not installed")
    binaries = _server_binaries()
    if binaries is None:
        _unavailable("PostgreSQL's initdb / pg_ctl are not installed (apt-get install "
                     "postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or
                              subprocess.run(["id", "postgres"], capture_output=True).returncode):
        _unavailable("running as root without a `postgres` user to run the server")
    initdb, pg_ctl = binaries
    folder = Path(tempfile.mkdtemp(prefix="ppa-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    port = free_ports(1)[0]
    run = dict(capture_output=True, text=True, timeout=START_TIMEOUT, cwd=folder)
    made = subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "ppa",
                                           "--auth=trust", "-E", "UTF8", "--no-locale"]), **run)
    assert made.returncode == 0, made.stderr
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    started = subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(log), "-w",
                                              "-t", str(START_TIMEOUT), "-o", options,
                                              "start"]), **run)
    try:
        assert started.returncode == 0, started.stderr + (log.read_text() if log.exists()
                                                          else "")
        yield f"postgresql+psycopg://ppa@127.0.0.1:{port}/postgres"
    finally:
        _stop(pg_ctl, data)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(pg_ctl: str, data: Path) -> None:
    """Stop the server (fast: it ends its sessions); kill it if that does not work."""
    try:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t",
                                        str(STOP_TIMEOUT), "stop"]),
                       capture_output=True, timeout=STOP_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pass
    pid_file = data / "postmaster.pid"
    if pid_file.exists():  # still running: its first line is the postmaster's pid
        try:
            os.kill(int(pid_file.read_text().split()[0]), 9)
        except (ProcessLookupError, ValueError, IndexError):
            pass


def test_a_party_reads_its_table_from_postgresql(postgres, tmp_path):
    import sqlalchemy as sa

    data = generate(n_core=200, seed=11)
    engine = sa.create_engine(postgres)
    with engine.begin() as connection:
        data["insurer"].to_sql("claims", connection, index=False)
    engine.dispose()
    sources = {"insurer": {"source": postgres, "table": "claims"},
               "hospital": data["hospital"], "bureau": data["bureau"]}
    with Consortium.local(sources, workdir=tmp_path / "consortium") as c:
        assert f'source = "{postgres}"' in (tmp_path / "consortium" / "insurer.toml").read_text()
        assert c.parties["insurer"]["rows"] == len(data["insurer"])
        t = c.link()
        t = t.assign(change=t.cost_2021 - t.cost_2020)
        result = t.groupby("region").agg(n=("change", "count"),
                                         mean=("change", "mean")).collect()
    frame = join(data, list(PARTIES))
    frame = frame.assign(change=frame.cost_2021 - frame.cost_2020)
    want, mask = expected(frame, ["region"], [sorted(frame["region"].unique())],
                          {"n": ("change", "count"), "mean": ("change", "mean")})
    assert not mask.to_numpy().any(), "the study should release every cell"
    assert_matches(result, want, mask)
