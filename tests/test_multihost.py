"""Three party kernels and an analyst on four hosts (Linux network namespaces).

Deployed as operators would: each party makes its identity with `ppa identity new`,
the certificates are exchanged (copied), every party holds the same consortium file
naming each party's address on the test network, its ports and pinned certificate, and
its own party file with its data, key and the analyst it serves; each kernel runs with
`ppa party serve` in its own namespace. The analyst, in a namespace of her own, runs
the headline study and an OLS fit (checked against pandas and statsmodels on the same
data); an analyst whose certificate no party pins is refused. See tests/netns.py for the
network (10.231.0.0/24, only inside the test's namespaces). Needs root and `ip`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import netns
import numpy as np
import pandas as pd
import pytest
from oracle import assert_matches, expected, join

PARTIES = ["insurer", "hospital", "bureau"]
ANALYST_HOST = "analyst"
HOSTS = [*PARTIES, ANALYST_HOST]
PORT, MPC_PORT = 7101, 7201  # the same on every host, as in a real deployment
N_CORE, SEED = 260, 11
MIN_CELL = 15  # at this data size some headline cells fall under it (see the oracle check)
READY_TIMEOUT = 60.0
STUDY_TIMEOUT = 150.0
OLS = "cost_change ~ app_user * income_band + age"
PPA = [sys.executable, "-m", "ppa_kernel.cli"]

REQUIRE = os.environ.get("PPA_REQUIRE_NETNS") == "1"  # CI: the test must run, not skip

_reason = netns.unavailable()
pytestmark = pytest.mark.skipif(_reason is not None and not REQUIRE, reason=_reason or "")


# --------------------------------------------------------------------------- network
@pytest.fixture(scope="module")
def net():
    """The four hosts on one bridge; removed afterwards, also on failure."""
    netns.clean_leftovers()
    network = netns.Network(HOSTS)
    try:
        network.create()
    except (netns.NetnsError, OSError, subprocess.SubprocessError) as exc:
        if REQUIRE:
            raise
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield network
    finally:
        _kill_strays(network)
        network.destroy(force=True)


def _kill_strays(network: netns.Network) -> list[int]:
    """SIGKILL, by pid, what is left in the test's own namespaces (only processes this
    test started, or their children: the namespaces are new and ours)."""
    strays = [pid for ns in network.all_namespaces if ns in netns.namespaces()
              for pid in netns.pids_in(ns)]
    for pid in strays:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return strays


ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(20)
print("listening", flush=True)
for _ in range(int(sys.argv[3])):
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10)
        conn.sendall(conn.recv(100).upper())
"""

ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as c:
    c.sendall(sys.argv[3].encode())
    print(c.recv(100).decode())
"""


@pytest.mark.timeout(60, method="signal")
def test_hosts_reach_each_other_and_nothing_else(net):
    """TCP between every pair of hosts across the bridge; no host has a route out of the
    test network, and the test's own namespace holds none of its addresses."""
    for target in HOSTS:
        others = [h for h in HOSTS if h != target]
        server = net.popen(target, [sys.executable, "-c", ECHO_SERVER, net.address(target),
                                    "7999", str(len(others))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "listening", server.stderr.read()
            for source in others:
                out = net.run(source, [sys.executable, "-c", ECHO_CLIENT, net.address(target),
                                       "7999", f"from {source}"], timeout=20)
                assert out.returncode == 0, out.stderr
                assert out.stdout.strip() == f"FROM {source.upper()}"
            server.wait(timeout=20)
            assert server.returncode == 0, server.stderr.read()
        finally:
            netns.stop(server, grace=2)
            server.stdout.close()
            server.stderr.close()
    for host in HOSTS:
        out = net.run(host, ["ip", "-4", "route"], timeout=10).stdout
        routes = [line.strip() for line in out.splitlines() if line.strip()]
        assert routes == [f"{netns.SUBNET}.0/24 dev eth0 proto kernel scope link "
                          f"src {net.address(host)}"], routes
    assert f"{netns.SUBNET}." not in netns.ip("-o", "-4", "addr")


# --------------------------------------------------------------------------- deployment
def _ppa(net: netns.Network, host: str, *args: str | Path, cwd: Path) -> str:
    out = net.run(host, [*PPA, *args], timeout=60, cwd=cwd)
    assert out.returncode == 0, f"ppa {' '.join(map(str, args))}: {out.stderr}"
    return out.stdout


def _new_identity(net: netns.Network, host: str, name: str, folder: Path) -> str:
    """`ppa identity new NAME --folder FOLDER/keys` on the host; its fingerprint."""
    out = _ppa(net, host, "identity", "new", name, "--folder", "keys", cwd=folder)
    found = re.search(r"^fingerprint:\s+(sha256:[0-9a-f]{64})$", out, re.M)
    assert found, out
    assert (folder / "keys" / f"{name}.key").stat().st_mode & 0o777 == 0o600
    return found.group(1)


def _q(value: object) -> str:
    return json.dumps(value)


def _consortium_toml(net: netns.Network, fingerprints: dict[str, str]) -> str:
    lines = ["[consortium]", 'name = "netns-test"', f"link_salt = {_q(secrets.token_hex(16))}",
             ""]
    for party in PARTIES:
        lines += ["[[party]]", f"name = {_q(party)}", f"host = {_q(net.address(party))}",
                  f"port = {PORT}", f"mpc_port = {MPC_PORT}",
                  f"certificate = {_q(f'certs/{party}.crt')}",
                  f"fingerprint = {_q(fingerprints[party])}", ""]
    return "\n".join(lines)


def _party_toml(party: str, data_file: str, alice: str) -> str:
    return textwrap.dedent(f"""\
        [party]
        name = {_q(party)}
        consortium = "consortium.toml"
        state_dir = "state"
        certificate = "keys/{party}.crt"
        key = "keys/{party}.key"
        stall_timeout = 30

        [data]
        source = {_q(data_file)}
        link = "pseudonym"

        [policy]
        min_cell_size = {MIN_CELL}

        [policy.analysts.alice]
        role = "analyst"
        certificate = "analysts/alice.crt"
        fingerprint = {_q(alice)}
        """)


class Deployment:
    """The files of three parties and two would-be analysts, and the running kernels."""

    def __init__(self, net: netns.Network, root: Path):
        self.net, self.root = net, root
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped: dict[str, tuple[str, int | None]] = {}

    def folder(self, who: str) -> Path:
        return self.root / who

    def write(self) -> None:
        from ppa_kernel.analyst.synthetic import write_demo_data

        people = {p: p for p in PARTIES} | {"alice": ANALYST_HOST, "mallory": ANALYST_HOST}
        prints = {}
        for who, host in people.items():
            self.folder(who).mkdir(parents=True)
            prints[who] = _new_identity(self.net, host, who, self.folder(who))
        # The exchange of certificates: each party's to everyone, alice's to the parties.
        consortium = _consortium_toml(self.net, prints)
        for who in people:
            certs = self.folder(who) / "certs"
            certs.mkdir()
            for party in PARTIES:
                shutil.copy(self.folder(party) / "keys" / f"{party}.crt", certs)
            (self.folder(who) / "consortium.toml").write_text(consortium)
        # Each party's own data, and its party file.
        paths = write_demo_data(self.root / "generated", n_core=N_CORE, seed=SEED, fmt="mixed")
        for party in PARTIES:
            data = shutil.move(paths[party], self.folder(party) / paths[party].name)
            (self.folder(party) / "analysts").mkdir()
            shutil.copy(self.folder("alice") / "keys" / "alice.crt",
                        self.folder(party) / "analysts")
            (self.folder(party) / f"{party}.toml").write_text(
                _party_toml(party, Path(data).name, prints["alice"]))

    def start(self) -> None:
        """Start every kernel in its namespace; wait (bounded) for each one's ready line."""
        for party in PARTIES:
            folder = self.folder(party)
            with open(folder / "kernel.out", "wb") as out, \
                    open(folder / "kernel.err", "wb") as err:
                self.procs[party] = self.net.popen(
                    party, [*PPA, "party", "serve", f"{party}.toml",
                            "--exit-with-parent", str(os.getpid())],
                    cwd=folder, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        for party, proc in self.procs.items():
            out = self.folder(party) / "kernel.out"
            line = netns.wait_for_line(proc, out, ["PPA-PARTY-READY", "PPA-PARTY-ERROR"],
                                       max(1.0, deadline - time.monotonic()))
            if line is None or not line.startswith("PPA-PARTY-READY"):
                if line is not None:
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                    reason = "could not start"
                elif proc.poll() is not None:
                    reason = "exited before it was ready"
                else:
                    reason = f"not ready within {READY_TIMEOUT:g} s"
                pytest.fail(f"kernel of {party} {reason} (rc {proc.returncode})\n"
                            f"stdout: {out.read_text()[-2000:]}\n"
                            f"stderr: {self.kernel_stderr(party)}", pytrace=False)
            assert f"{self.net.address(party)}:{PORT}" in line, line
        for party in PARTIES:  # both ports bound to the party's address, nothing else
            if shutil.which("ss") is not None:
                out = self.net.run(party, ["ss", "-ltnH"], timeout=10).stdout
                listening = {row.split()[3] for row in out.splitlines() if row.strip()}
                address = self.net.address(party)
                assert listening == {f"{address}:{PORT}", f"{address}:{MPC_PORT}"}, listening

    def kernel_stderr(self, party: str) -> str:
        path = self.folder(party) / "kernel.err"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> dict[str, tuple[str, int | None]]:
        """SIGTERM each kernel by its pid (SIGKILL after a grace); how each ended."""
        for party, proc in self.procs.items():
            if party not in self.stopped:
                how = netns.stop(proc, grace=10)
                self.stopped[party] = (how, proc.returncode)
        return self.stopped

    def analyst(self, who: str, mode: str) -> dict:
        """Run the analyst script as ``who`` on the analyst's host; its JSON output."""
        folder = self.folder(who)
        (folder / "study.py").write_text(ANALYST_SCRIPT)
        started = time.monotonic()
        out = self.net.run(ANALYST_HOST, [sys.executable, "study.py", mode, f"keys/{who}", OLS],
                           timeout=STUDY_TIMEOUT, cwd=folder)
        seconds = time.monotonic() - started
        assert out.returncode == 0, (f"analyst script ({mode}) failed:\n{out.stderr[-4000:]}"
                                     + "".join(f"\n--- {p} kernel stderr:\n"
                                               f"{self.kernel_stderr(p)}" for p in PARTIES))
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["seconds"] = seconds
        return result


ANALYST_SCRIPT = '''\
"""The analyst's session: connect with a consortium file and an identity, run studies."""
import json, sys
from ppa_kernel.analyst.client import Consortium
from ppa_kernel.analyst.demo import headline_study
from ppa_kernel.contract.errors import PPAError

mode, identity, formula = sys.argv[1:4]
if mode == "connect":
    try:
        c = Consortium.from_file("consortium.toml", identity=identity)
    except PPAError as exc:
        errors = getattr(exc, "errors", [exc])
        print(json.dumps({"refused": True, "type": type(exc).__name__, "message": str(exc),
                          "errors": [{"type": type(e).__name__, "party": e.party,
                                      "message": str(e)} for e in errors]}))
    else:
        c.close()
        print(json.dumps({"refused": False}))
    sys.exit(0)

with Consortium.from_file("consortium.toml", identity=identity) as c:
    table = headline_study(c, timeout=120)
    t = c.link()
    t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
    fit = t.ols(formula).collect(timeout=120)
    levels = c.catalog["bureau"]["income_band"]["levels"]
print(json.dumps({
    "levels": levels,
    "headline": json.loads(table.reset_index().to_json(orient="records")),
    "suppressed": json.loads(table.attrs["suppressed"].reset_index().to_json(orient="records")),
    "ols": json.loads(fit.to_json(orient="split")),
    "ols_attrs": {k: float(fit.attrs[k]) for k in ("n", "df_resid", "r_squared",
                                                    "r_squared_adj")},
}))
'''


@pytest.fixture(scope="module")
def deployment(net, tmp_path_factory):
    """Files written as operators would, kernels serving in their namespaces."""
    deploy = Deployment(net, tmp_path_factory.mktemp("multihost"))
    try:
        deploy.write()
        deploy.start()
        yield deploy
    finally:
        deploy.stop()


# --------------------------------------------------------------------------- the oracle
@pytest.fixture(scope="module")
def plain():
    """The joined plain data (the data write_demo_data wrote for the parties)."""
    from ppa_kernel.analyst.synthetic import generate

    data = join(generate(N_CORE, SEED), PARTIES)
    data["cost_change"] = data.cost_2021 - data.cost_2020
    return data


def _close(got, want, scale, rtol: float = 1e-6) -> None:
    """As tests/test_models_ols.py: within rtol of the value or of its scale."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    bound = rtol * (np.abs(want) + np.asarray(scale, dtype=float))
    assert (np.abs(got - want) <= bound).all(), (got - want) / bound


@pytest.mark.timeout(240, method="signal")
def test_studies_from_the_analyst_host_match_pandas(deployment, plain):
    import statsmodels.formula.api as smf

    result = deployment.analyst("alice", "study")
    print(f"\nheadline study + OLS from the analyst's namespace: {result['seconds']:.1f} s")

    by = ["income_band", "app_user"]
    change = lambda r: r.cost_2021 - r.cost_2020  # noqa: E731
    want, mask = expected(plain, by, [result["levels"], [False, True]],
                          {"n": (change, "count"), "mean": (change, "mean"),
                           "sd": (change, "std")}, min_cell=MIN_CELL)
    assert mask.to_numpy().any() and (~mask).to_numpy().any(), \
        "the test data must release some cells and suppress others"
    got = pd.DataFrame(result["headline"]).set_index(by)
    got.attrs["suppressed"] = pd.DataFrame(result["suppressed"]).set_index(by).astype(bool)
    assert_matches(got, want, mask)

    fit = smf.ols(OLS, data=plain).fit()
    table = result["ols"]
    got = pd.DataFrame(table["data"], index=table["index"], columns=table["columns"])
    assert list(got.index) == list(fit.params.index)
    se = fit.bse.to_numpy()
    _close(got["coef"], fit.params, se)
    _close(got["std err"], se, 0)
    _close(got["t"], fit.tvalues, 1)
    attrs = result["ols_attrs"]
    assert attrs["n"] == fit.nobs and attrs["df_resid"] == fit.df_resid
    np.testing.assert_allclose(attrs["r_squared"], fit.rsquared, rtol=1e-8)


@pytest.mark.timeout(120, method="signal")
def test_unpinned_analyst_refused_by_every_party(deployment):
    """mallory has a valid identity and the consortium file but no party pins her."""
    result = deployment.analyst("mallory", "connect")
    assert result["refused"], "a kernel served an analyst its policy does not pin"
    assert {e["party"] for e in result["errors"]} == set(PARTIES), result
    for party in PARTIES:
        assert party in result["message"], result["message"]
    print(f"\nmallory refused: {result['message']}")


@pytest.mark.timeout(90, method="signal")
def test_kernels_stop_on_sigterm_and_namespaces_go(net, deployment):
    """Runs last: SIGTERM ends each kernel and its workers; the namespaces are removed."""
    ended = deployment.stop()
    assert all(how == "terminated" for how, _ in ended.values()), ended
    time.sleep(0.5)
    left = {ns: netns.pids_in(ns) for ns in net.all_namespaces}
    assert not any(left.values()), f"processes left after SIGTERM: {left}"
    names = list(net.all_namespaces)
    net.destroy()
    remaining = set(names) & set(netns.namespaces())
    assert not remaining, remaining
