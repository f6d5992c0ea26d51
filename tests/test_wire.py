"""On the wire: every byte between the analyst and the kernels, and between the parties'
workers, as a tap in the middle sees it.

A local consortium whose kernel ports and MPC ports all go through recording proxies
(:func:`tcp_proxy.route_through_proxies`). After real analyses the tapes must be TLS 1.3
from the first byte (analyst <-> kernel) or from the byte after one plain header line
(MPC links), and must hold nothing readable: no plan, column or party names, no link
keys or data values. Replaying a tapped MPC stream into the same port must not disturb a
later run.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np
import pytest
import statsmodels.formula.api as smf
from oracle import join
from tcp_proxy import Stream, TcpProxy, route_through_proxies, tls_records
from waiting import wait_for

from ppa_kernel import Consortium
from ppa_kernel.analyst.local import LocalParties, write_local_config
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.models.ols import ols

PARTIES = ["insurer", "hospital", "bureau"]
HEADER = re.compile(rb"PPA-MPC/2 [0-9a-f]{16} [0-9] [0-9] [0-9]{10} [0-9a-f]{32} "
                    rb"[A-Za-z0-9+/]{86}==\n")
MIN_HEADER = 128
"""Fewer bytes than any header line: a connection that sent less, and got nothing back,
is some other process on this machine that found a proxy's port (seen once in CI)."""
OLS = "cost_2021 ~ age + sex"
HANDSHAKE, CHANGE_CIPHER_SPEC, APPLICATION_DATA = 22, 20, 23
TLS13 = b"\x03\x04"
NO_DIFFERENCING = {"differencing": False}  # as conftest: the checks here use a pandas oracle


@pytest.fixture(scope="module")
def data():
    return generate(n_core=300, seed=31)


@pytest.fixture(scope="module")
def wired(data, tmp_path_factory):
    """(consortium, kernel-port proxies, MPC-port proxies), every link tapped."""
    folder = tmp_path_factory.mktemp("wire")
    write_local_config(folder, data, "pseudonym", policies={p: NO_DIFFERENCING for p in PARTIES})
    proxies = route_through_proxies(folder, record=True)  # before the kernels read the files
    try:
        parties = LocalParties(folder, PARTIES)
        parties.wait_ready(60)
        try:
            c = Consortium(parties.config, identity=parties.analyst, on_close=parties.stop)
        except BaseException:
            parties.kill()
            raise
        c.local_parties = parties
        with c:
            yield c, proxies[0::2], proxies[1::2]
    finally:
        for proxy in proxies:
            proxy.stop()


def grouped(c: Consortium):
    return c.link().groupby("sex").agg(n=("age", "count"), m=("cost_2021", "mean"))


def check_grouped(got, data) -> None:
    want = join(data, PARTIES).groupby("sex").agg(n=("age", "count"), m=("cost_2021", "mean"))
    assert list(got.index) == list(want.index)
    assert not got.attrs["suppressed"].to_numpy().any()
    np.testing.assert_array_equal(got["n"].to_numpy(float), want["n"].to_numpy(float))
    np.testing.assert_allclose(got["m"].to_numpy(float), want["m"].to_numpy(float), rtol=1e-4)


def streams(proxies: list[TcpProxy]) -> list[Stream]:
    return [s for p in proxies for s in list(p.streams)]


def after_hello(types: list[int]) -> list[int]:
    """The record types after the first handshake record (a hello) and the
    middlebox-compatibility change_cipher_spec that TLS 1.3 may send next."""
    assert types and types[0] == HANDSHAKE, types[:5]
    rest = types[1:]
    if rest and rest[0] == CHANGE_CIPHER_SPEC:
        rest = rest[1:]
    return rest


def server_hello_version(data: bytes) -> bytes:
    """The supported_versions extension of the ServerHello that ``data`` starts with."""
    record = data[5:5 + int.from_bytes(data[3:5], "big")]
    assert record[0] == 2, "not a ServerHello"  # handshake type
    at = 4 + 2 + 32  # handshake header, legacy version, random
    at += 1 + record[at]  # legacy session id
    at += 2 + 1  # cipher suite, compression
    end = at + 2 + int.from_bytes(record[at:at + 2], "big")
    at += 2
    while at < end:
        kind, size = int.from_bytes(record[at:at + 2], "big"), int.from_bytes(
            record[at + 2:at + 4], "big")
        if kind == 0x002B:  # supported_versions: the selected version
            return record[at + 4:at + 4 + size]
        at += 4 + size
    return b""


def check_tls13(upstream: bytes, downstream: bytes) -> None:
    """Both directions are TLS records throughout; the server chose TLS 1.3; after the
    hellos every record is application data (TLS 1.2 would send its certificates, key
    exchange and finished messages as clear handshake records)."""
    up, down = tls_records(upstream), tls_records(downstream)
    if up:
        assert set(after_hello(up)) <= {APPLICATION_DATA}, up[:8]
    if down:
        assert set(after_hello(down)) <= {APPLICATION_DATA}, down[:8]
        assert server_hello_version(downstream) == TLS13


def needles(c: Consortium, data, plans: list[dict]) -> set[bytes]:
    """What must never be readable on the wire."""
    found = {b'"plan"', b"plan_hash", b"pseudonym", b"analyst"}
    found |= {name.encode() for name in PARTIES}  # also inside certificates: TLS 1.3 hides them
    for plan in plans:
        for qualified, column in plan["columns"].items():
            found |= {qualified.encode(), f'"{column["column"]}"'.encode()}
    for frame in data.values():
        for column in frame.columns:
            for value in frame[column].head(20):
                text = str(value)
                if len(text) >= 6:  # shorter ones turn up in random bytes by chance
                    found.add(text.encode())
    return found


PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{32,}")
"""Readable text: 32 printable bytes in a row come by chance about once in 10^13 bytes of
ciphertext, while any message of the protocols is longer."""


def test_every_link_is_tls13_and_nothing_is_readable(wired, data):
    c, kernels, mpc = wired
    plans = [grouped(c).plan()]
    check_grouped(grouped(c).collect(progress=False), data)
    model = ols(c.link(), OLS)
    plans.append(model.plan())
    got = model.collect(progress=False)
    fit = smf.ols(OLS, data=join(data, PARTIES)).fit()
    assert list(got.index) == list(fit.params.index)
    np.testing.assert_allclose(got["coef"], fit.params, rtol=1e-4, atol=1e-4 * fit.bse.max())
    time.sleep(0.5)  # the last bytes of closing connections

    to_kernels = streams(kernels)
    assert len(to_kernels) >= 2 * len(PARTIES)  # hello and the runs, at every party
    for s in to_kernels:
        up, down = bytes(s.upstream), bytes(s.downstream)
        check_tls13(up, down)  # from the very first byte

    links, strangers = [], []
    for s in streams(mpc):
        up, down = bytes(s.upstream), bytes(s.downstream)
        header = HEADER.match(up)
        if not header and len(up) < MIN_HEADER and not down:
            strangers.append(up)  # not a worker's: a dialler writes its header at once
            continue
        assert header, up[:80]
        check_tls13(up[header.end():], down)
        links.append(s)
    assert len(links) >= 2 * 3, strangers  # three links per run, two runs
    if strangers:
        print(f"\nignored {len(strangers)} stray connections to the proxies: {strangers}")
    mpc_bytes = sum(len(s.upstream) + len(s.downstream) for s in links)
    print(f"\nMPC bytes on the wire: {mpc_bytes}, in {len(links)} connections")
    assert mpc_bytes > 100_000  # the shares did travel

    secrets = needles(c, data, plans)
    for s in [*to_kernels, *links]:
        for tape in (bytes(s.upstream), bytes(s.downstream)):
            readable = tape[header.end():] if (header := HEADER.match(tape)) else tape
            assert not PRINTABLE_RUN.search(readable), PRINTABLE_RUN.search(readable)
            leaked = [n for n in secrets if n in tape]
            assert not leaked, leaked


def replay(port: int, tape: bytes, seconds: float = 3.0) -> None:
    """Open a new connection to ``port``, send ``tape``, read what comes back, close."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
            s.sendall(tape)
            s.settimeout(seconds)
            while s.recv(65536):
                pass
    except OSError:
        pass


def test_replayed_mpc_streams_do_not_disturb_a_later_run(wired, data):
    """Bytes tapped from one run's MPC streams, sent again into new connections to the
    same MPC ports while another run goes: as they were (the old run's header) and under
    the new run's header (read off the wire), and the new run's own first bytes the
    moment they pass the tap. The run completes with the right answer."""
    c, _, mpc = wired
    if not streams(mpc):
        check_grouped(grouped(c).collect(progress=False), data)
    old = [(p.target_port, bytes(s.upstream)) for p in mpc for s in list(p.streams)
           if HEADER.match(bytes(s.upstream))]
    seen = {id(s) for s in streams(mpc)}
    done = threading.Event()
    sent: list[str] = []

    def tap_and_replay() -> None:
        while not done.is_set():
            for proxy in mpc:
                for s in list(proxy.streams):
                    tape = bytes(s.upstream)
                    header = HEADER.match(tape)
                    if id(s) in seen or not header or len(tape) == header.end():
                        continue
                    seen.add(id(s))
                    replay(proxy.target_port, tape, 0.3)  # the live ClientHello, again
                    sent.append("live")
                    for port, earlier in old:
                        if port == proxy.target_port:
                            replay(port, earlier, 0.3)  # an old run's stream, as it was
                            body = earlier[HEADER.match(earlier).end():]
                            replay(port, header.group() + body, 0.3)  # under this run's header
                            sent.extend(["old", "rewritten"])
            time.sleep(0.005)

    thread = threading.Thread(target=tap_and_replay, daemon=True)
    thread.start()
    try:
        got = grouped(c).collect(progress=False, timeout=120)
    finally:
        done.set()
        thread.join(30)
    check_grouped(got, data)
    assert {"live", "old", "rewritten"} <= set(sent), sent
    # every replay carries a header whose nonce the kernel has seen (or the old run's,
    # now stale): the kernels drop them before any worker (test_mpc_links.py shows it)
    wait_for(lambda: not thread.is_alive(), timeout=5)
