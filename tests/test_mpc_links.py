"""Worker-to-worker links: the kernel's listener, the hand-off and the TLS binding.

Real sockets on 127.0.0.1 and identities made at test time. A fake "kernel" runs an
:class:`MPCListener` whose route hands connections to a fake "worker" (``establish``
on the other end of a socket pair); hostile connections are refused while the genuine
ones still link. The last tests run three real worker-side processes through
``runtime.connect`` and a small MPyC computation, and stop one to see a stall named.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ppa_kernel.contract.config import ConsortiumConfig, PartyAddress, PartyConfig
from ppa_kernel.contract.errors import PartyFailed, PartyUnreachable
from ppa_kernel.contract.identity import Identity, Pin, create_identity
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.party.job import Job
from ppa_kernel.party.mpc_listener import MPCListener
from ppa_kernel.party.secure import links
from ppa_kernel.party.secure.links import (
    MAX_HEADER,
    LinkSettings,
    binding_line,
    dial,
    establish,
    format_header,
    parse_header,
    signed_by,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c"]
RUN = "0123456789abcdef"
PLAN = {"statistic": "count"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def parties(tmp_path):
    """Identities of a, b, c (and an outsider, mallory), their pins and MPC ports."""
    ids = {n: create_identity(tmp_path / "keys", n) for n in [*NAMES, "mallory"]}
    pins = [Pin(n, ids[n].certificate, ids[n].fingerprint) for n in NAMES]
    ports = [free_port() for _ in NAMES]
    return ids, pins, ports


def header(parties, sender: int, receiver: int, run: str = RUN, **kwargs) -> bytes:
    """A header as the worker of party ``sender`` signs it for ``receiver``'s kernel."""
    return format_header(run, sender, receiver, parties[0][NAMES[sender]], **kwargs)


def settings(parties, index: int, *, identity: Identity | None = None, run: str = RUN,
             timeout: float = 5.0, plan: dict = PLAN) -> LinkSettings:
    ids, pins, ports = parties
    return LinkSettings(run, index, NAMES, [f"127.0.0.1:{p}" for p in ports],
                        identity or ids[NAMES[index]], pins, plan_hash(plan), timeout)


def party_config(parties, index: int, tmp_path: Path) -> PartyConfig:
    ids, pins, ports = parties
    members = [PartyAddress(n, "127.0.0.1", 1, ports[i], pins[i]) for i, n in enumerate(NAMES)]
    return PartyConfig(NAMES[index], ConsortiumConfig("t", members, "00"), tmp_path, None,
                       None, ids[NAMES[index]], {})


class FakeKernel:
    """A listener that routes ``runs`` (run id -> kernel's end of a hand-off socket)."""

    def __init__(self, config: PartyConfig, ready: asyncio.Event | None = None) -> None:
        self.runs: dict[str, socket.socket] = {}
        self.ready = ready
        self.listener = MPCListener(config, self.route)

    async def route(self, run_id: str, sender: int) -> socket.socket | None:
        if self.ready is not None and not self.ready.is_set():
            return None  # the run has not started here yet
        return self.runs.get(run_id)

    def add_run(self, run_id: str) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self.runs[run_id] = ours
        return theirs


async def raw(port: int, data: bytes, *, hold: float = 0.0) -> bytes:
    """Send ``data`` to a listener, wait ``hold`` s, return what came back (if anything)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not data:
            return b""  # connect and close
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(hold)
        return await asyncio.wait_for(reader.read(100), 2.0)
    except ConnectionError:
        return b""  # closed with our bytes unread: a reset
    except TimeoutError:
        return b"<timeout>"
    finally:
        writer.close()


def test_headers_are_bounded_validated_and_signed(parties):
    line = header(parties, 1, 2)
    parsed = parse_header(line, 3, 2)
    assert line.startswith(b"PPA-MPC/2 0123456789abcdef 1 2 ") and len(line) <= MAX_HEADER
    assert (parsed.run_id, parsed.sender, parsed.receiver) == (RUN, 1, 2)
    pins = parties[1]
    assert signed_by(parsed, pins[1]) and not signed_by(parsed, pins[0])
    text = line[:-1].decode()
    forged = text.replace(" 1 2 ", " 0 2 ").encode() + b"\n"  # b's signature, a's index
    assert not signed_by(parse_header(forged, 3, 2), pins[0])
    assert parse_header(line, 3, 1) is None  # meant for another party
    head, signature = text.rsplit(" ", 1)
    bad = [line[:-1], line + b"\n", b"PPA-MPC/1 0123456789abcdef 1\n",
           (head + " " + signature[:-4]).encode() + b"\n",
           text.replace("0123456789abcdef", "0123456789ABCDEF").encode() + b"\n",
           text.replace(" 1 2 ", " 3 2 ").encode() + b"\n",
           text.replace(" 1 2 ", " 01 2 ").encode() + b"\n",
           b"x" * (MAX_HEADER + 1) + b"\n", b"\xff" * 20 + b"\n", b""]
    assert all(parse_header(bad_line, 3, 2) is None for bad_line in bad)
    with pytest.raises(ValueError):
        format_header("not hex!", 0, 1, parties[0]["a"])


def test_genuine_peers_link_while_hostile_connections_are_refused(parties, tmp_path):
    ids, _pins, ports = parties

    async def scenario():
        kernel = FakeKernel(party_config(parties, 2, tmp_path))
        await kernel.listener.start()
        worker_end = kernel.add_run(RUN)
        other_run = "fedcba9876543210"
        kernel.runs[other_run] = kernel.runs[RUN]  # a confused kernel routes it to our worker
        accepting = asyncio.create_task(establish(settings(parties, 2, timeout=20), worker_end))
        port = ports[2]
        # connect-and-close, garbage, oversize, a wrong run id, a silent connection
        assert await raw(port, b"") == b""
        assert await raw(port, b"GET / HTTP/1.0\r\n\r\n") == b""
        assert await raw(port, b"x" * (MAX_HEADER + 50)) == b""
        assert await raw(port, header(parties, 0, 2, "00000000deadbeef")) == b""
        # unsigned, signed by another party, stale, replayed: the kernel drops them
        assert await raw(port, b"PPA-MPC/1 0123456789abcdef 0\n") == b""
        forged = header(parties, 1, 2).replace(b" 1 2 ", b" 0 2 ")
        assert await raw(port, forged) == b""
        assert await raw(port, header(parties, 0, 2, now=time.time() - 600)) == b""
        once = header(parties, 0, 2)
        await raw(port, once + b"hello\n" * 3)  # routed, then garbage instead of TLS
        assert await raw(port, once) == b""  # the same header again
        await raw(port, header(parties, 1, 2))  # routed, then closed before TLS
        # an outsider's certificate, and b's certificate claiming to be a
        errors: dict[int, str] = {}
        outsider = await dial(settings(parties, 0, identity=ids["mallory"]), 2,
                              asyncio.get_running_loop().time() + 1.5, errors)
        assert outsider is None and 2 in errors, errors
        print("outsider:", errors)
        impostor = await dial(settings(parties, 0, identity=ids["b"]), 2,
                              asyncio.get_running_loop().time() + 1.5, errors)
        assert impostor is None and 2 in errors
        # a worker of another run's link, handed to this run's worker
        assert await dial(settings(parties, 1, run=other_run), 2,
                          asyncio.get_running_loop().time() + 1.0, {}) is None
        assert not accepting.done()
        deadline = asyncio.get_running_loop().time() + 10
        dialed = await asyncio.gather(dial(settings(parties, 0), 2, deadline, {}),
                                      dial(settings(parties, 1), 2, deadline, {}))
        accepted = await asyncio.wait_for(accepting, 10)
        assert sorted(accepted) == [0, 1] and all(not link.dialed for link in accepted.values())
        assert [link.peer for link in dialed] == [2, 2] and all(link.dialed for link in dialed)
        # the links carry bytes both ways (and bytes sent before attaching are kept)
        dialed[0].transport.write(b"early")
        got = await exchange(accepted[0], dialed[0], b"ping", b"pong")
        assert got == (b"earlyping", b"pong")
        for link in [*dialed, *accepted.values()]:
            link.close()
        await kernel.listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_genuine_party_sent_another_plan_fails_the_link_at_both_ends(parties, tmp_path):
    async def scenario():
        kernel = FakeKernel(party_config(parties, 1, tmp_path))
        await kernel.listener.start()
        accepting = asyncio.create_task(establish(settings(parties, 1, timeout=10),
                                                  kernel.add_run(RUN)))
        with pytest.raises(PartyFailed, match="different plans"):
            await dial(settings(parties, 0, plan={"other": 1}), 1,
                       asyncio.get_running_loop().time() + 5, {})
        with pytest.raises(PartyFailed, match="different plans"):
            await asyncio.wait_for(accepting, 10)
        await kernel.listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)


async def exchange(acceptor, dialer, to_acceptor: bytes, to_dialer: bytes):
    await asyncio.sleep(0.2)
    a, d = Collect(), Collect()
    acceptor.attach(a)
    dialer.attach(d)
    dialer.transport.write(to_acceptor)
    acceptor.transport.write(to_dialer)
    for _ in range(100):
        if len(a.data) >= len(to_acceptor) and len(d.data) >= len(to_dialer):
            break
        await asyncio.sleep(0.02)
    return bytes(a.data), bytes(d.data)


def test_a_dialer_retries_until_the_peer_run_starts(parties, tmp_path):
    async def scenario():
        ready = asyncio.Event()
        kernel = FakeKernel(party_config(parties, 1, tmp_path), ready)
        await kernel.listener.start()
        worker_end = kernel.add_run(RUN)
        loop = asyncio.get_running_loop()
        dialing = asyncio.create_task(dial(settings(parties, 0), 1, loop.time() + 10, {}))
        await asyncio.sleep(1.0)
        assert not dialing.done()  # refused so far, still trying
        ready.set()
        accepting = asyncio.create_task(
            establish(replace(settings(parties, 1), names=NAMES[:2],
                              addresses=settings(parties, 1).addresses[:2]), worker_end))
        link = await asyncio.wait_for(dialing, 10)
        accepted = await asyncio.wait_for(accepting, 10)
        assert link is not None and list(accepted) == [0]
        link.close()
        accepted[0].close()
        await kernel.listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_peer_holding_the_wrong_certificate_is_a_hard_error(parties, tmp_path):
    async def scenario():
        kernel = FakeKernel(party_config(parties, 2, tmp_path))
        await kernel.listener.start()
        worker_end = kernel.add_run(RUN)
        # the worker behind c's address holds b's certificate
        accepting = asyncio.create_task(
            establish(settings(parties, 2, identity=parties[0]["b"], timeout=3), worker_end))
        with pytest.raises(PartyFailed, match="not the one pinned for c"):
            await dial(settings(parties, 0), 2, asyncio.get_running_loop().time() + 5, {})
        with pytest.raises(PartyUnreachable, match="a, b within 3 s"):
            await accepting
        await kernel.listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_nobody_listening_names_the_missing_party(parties):
    async def scenario():
        with pytest.raises(PartyUnreachable, match=r"worker of b, c within 1 s \(last error"):
            await establish(settings(parties, 0, timeout=1), None)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_the_listener_bounds_connections_waiting_for_a_header(parties, tmp_path, monkeypatch):
    from ppa_kernel.party import mpc_listener

    monkeypatch.setattr(mpc_listener, "MAX_PENDING", 4)

    async def scenario():
        kernel = FakeKernel(party_config(parties, 1, tmp_path))
        await kernel.listener.start()
        silent = [await asyncio.open_connection("127.0.0.1", ports[1]) for _ in range(4)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        assert await raw(ports[1], header(parties, 0, 1)) == b""  # refused at once
        assert time.monotonic() - started < 1.5
        assert len(kernel.listener._pending) == 4
        for _, writer in silent:
            writer.close()
        await kernel.listener.close()

    ports = parties[2]
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_binding_lines_are_canonical_and_role_bound():
    dial_line = binding_line(RUN, 0, 2, "h", "dial")
    assert dial_line.endswith(b"\n") and json.loads(dial_line)["role"] == "dial"
    assert dial_line != binding_line(RUN, 0, 2, "h", "accept")
    assert dial_line != binding_line(RUN, 1, 2, "h", "dial")


def test_link_settings_come_from_the_job_and_check_the_pins(parties, tmp_path):
    ids, pins, _ports = parties
    job = make_job(parties, 1, tmp_path, handoff_fd=-1)
    loaded = LinkSettings.from_job(job)
    assert loaded.identity.fingerprint == ids["b"].fingerprint
    assert loaded.plan_hash == plan_hash(PLAN) and loaded.pins == pins
    forged = replace(job, peer_certificates=[pins[0].pem, pins[1].pem, pins[0].pem])
    with pytest.raises(PartyFailed, match="certificate for c is not the pinned one"):
        LinkSettings.from_job(forged)


def make_job(parties, index: int, tmp_path: Path, *, handoff_fd: int,
             stall_timeout: float = 30.0, timeout: float = 15.0) -> Job:
    ids, pins, ports = parties
    me = ids[NAMES[index]]
    return Job(party=NAMES[index], index=index, names=NAMES,
               addresses=[f"127.0.0.1:{p}" for p in ports], plan=PLAN, run_id=RUN,
               snapshot="-", link_column="k", link_salt="00", state_dir=str(tmp_path),
               record_openings=False, connect_timeout=timeout,
               result_path=str(tmp_path / f"result-{index}.json"),
               certificate=str(me.cert_path), key=str(me.key_path),
               peer_certificates=[p.pem for p in pins],
               fingerprints=[p.fingerprint for p in pins], stall_timeout=stall_timeout,
               handoff_fd=handoff_fd)


# -- Heartbeats and MPyC framing (in a subprocess: MPyC with three parties) -------------

EXCHANGER_CHECK = textwrap.dedent("""
    import struct, sys
    sys.argv = ["t", "-M3", "-I1", "--no-log"]
    from ppa_kernel.party.secure import runtime as rt

    class Transport:
        closed = False
        def __init__(self): self.out = []
        def write(self, b): self.out.append(bytes(b))
        def writelines(self, bs): self.out.extend(map(bytes, bs))
        def is_closing(self): return self.closed
        def abort(self): self.closed = True

    mpc = rt.mpc
    for p in mpc.parties:
        p.protocol = None
    mpc.parties[1].protocol = rt.asyncio.Future(loop=mpc._loop)
    ex = rt.LinkExchanger(mpc, 0, dialed=False)   # party 0 dials us
    t = Transport()
    ex.connection_made(t)
    frame = lambda pc, b: struct.pack("<qI", pc, len(b)) + b
    stream = (b"\\x00\\x00" + b"K" * 16 + rt.HEARTBEAT + frame(7, b"seven")
              + rt.HEARTBEAT + rt.HEARTBEAT + frame(-3, b"") + frame(9, b"x" * 40) + rt.HEARTBEAT)
    for i in range(0, len(stream), 5):   # arbitrary splits, heartbeats inside frames' headers
        ex.data_received(stream[i:i + 5])
    assert mpc.parties[0].protocol is ex, "registered once the pid and keys arrived"
    assert ex.buffers == {7: b"seven", -3: b"", 9: b"x" * 40}, ex.buffers
    assert bytes(ex.bytes) == b""
    assert mpc._prss_keys[(0, 1)] == b"K" * 16
    ex.heartbeat()
    assert t.out == [rt.HEARTBEAT]
    liar = rt.LinkExchanger(mpc, 0, dialed=False)
    lt = Transport()
    liar.connection_made(lt)
    liar.data_received(b"\\x02\\x00" + b"K" * 16)   # claims pid 2 on party 0's link
    assert lt.closed and not liar.identified
    print("ok")
""")


def test_the_exchanger_skips_heartbeats_and_checks_the_authenticated_pid():
    out = subprocess.run([sys.executable, "-c", EXCHANGER_CHECK], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# -- Three real worker-side processes -----------------------------------------------------

MINI_WORKER = textwrap.dedent("""
    import json, sys
    from ppa_kernel.party.job import Job
    job, hold = Job.read(sys.argv[1]), float(sys.argv[2])
    sys.argv = ["w", "-I", str(job.index), "--no-log"] + sum((["-P", a] for a in job.addresses), [])
    from ppa_kernel.contract.errors import PPAError
    from ppa_kernel.party.secure import runtime as rt
    from ppa_kernel.party.secure.runtime import mpc

    async def main():
        await rt.connect(job)
        secint = mpc.SecInt(32)
        total = await mpc.output(sum(mpc.input(secint(10 + job.index))))
        print("computed", flush=True)
        if hold:  # all rest, one is stopped meanwhile; the others then wait for it
            await rt.asyncio.sleep(hold)
            await mpc.output(sum(mpc.input(secint(1))))
        rt.allow_disconnects()
        await mpc.shutdown()
        return total

    try:
        print(json.dumps({"total": mpc.run(main())}), flush=True)
    except PPAError as exc:
        print(json.dumps({"error": exc.message}), flush=True)
    except BaseException as exc:
        stalled = [job.names[p] for p in rt.STALLED_PEERS]
        lost = [job.names[p] for p in rt.LOST_PEERS if p is not None]
        print(json.dumps({"error": repr(exc), "stalled": stalled, "lost": lost,
                          "orphaned": bool(rt.ORPHANED)}), flush=True)
""")


async def _three_workers(parties, tmp_path: Path, hold: float, stall: float,
                         stop: int | None = None, how: int = signal.SIGSTOP) -> list[dict]:
    kernels, procs = [], []
    script = tmp_path / "mini_worker.py"
    script.write_text(MINI_WORKER)
    for index in range(3):
        kernel = FakeKernel(party_config(parties, index, tmp_path))
        await kernel.listener.start()
        theirs = kernel.add_run(RUN)
        job = make_job(parties, index, tmp_path, handoff_fd=theirs.fileno(), stall_timeout=stall)
        folder = tmp_path / f"job{index}"
        folder.mkdir()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(job.write(folder)), str(hold), cwd=ROOT,
            env=_env(), stdout=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),))
        theirs.close()
        kernels.append(kernel)
        procs.append(proc)
    try:
        if stop is not None:
            assert (await procs[stop].stdout.readline()).strip() == b"computed"
            os.kill(procs[stop].pid, how)
        outs = []
        for index, proc in enumerate(procs):
            if index == stop:
                continue
            lines = (await asyncio.wait_for(proc.stdout.read(), 60)).decode().splitlines()
            outs.append(json.loads(lines[-1]))
        return outs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for kernel in kernels:
            await kernel.listener.close()


def test_three_workers_link_compute_and_shut_down(parties, tmp_path):
    outs = asyncio.run(asyncio.wait_for(_three_workers(parties, tmp_path, 0, 30), 90))
    assert outs == [{"total": 33}] * 3


def test_a_stopped_peer_is_named_as_stalled(parties, tmp_path, monkeypatch):
    started = time.monotonic()
    outs = asyncio.run(asyncio.wait_for(_three_workers(parties, tmp_path, 2, 3, stop=2), 90))
    # the first to notice names c; the other may see that one go before it notices
    assert any(o.get("stalled") == ["c"] for o in outs), outs
    assert all(o.get("stalled") == ["c"] or o.get("lost") for o in outs), outs
    assert time.monotonic() - started < 30


def test_listener_module_reads_only_the_header(parties, tmp_path):
    """Bytes after the header reach the worker untouched (the listener never reads on)."""
    async def scenario():
        kernel = FakeKernel(party_config(parties, 1, tmp_path))
        await kernel.listener.start()
        worker_end = kernel.add_run(RUN)
        worker_end.setblocking(False)
        _, writer = await asyncio.open_connection("127.0.0.1", parties[2][1])
        sent = header(parties, 0, 1)
        writer.write(sent + b"TLS-BYTES")
        await writer.drain()
        item = None
        for _ in range(100):
            try:
                item = await asyncio.wait_for(links.receive_handoff(worker_end), 0.1)
                break
            except TimeoutError:
                continue
        assert item is not None
        handed, conn = item
        assert handed == sent and conn is not None
        conn.settimeout(2)
        assert conn.recv(100) == b"TLS-BYTES"
        conn.close()
        writer.close()
        worker_end.close()
        await kernel.listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_killed_peer_is_named_as_lost_at_once(parties, tmp_path):
    started = time.monotonic()
    outs = asyncio.run(asyncio.wait_for(
        _three_workers(parties, tmp_path, 2, 30, stop=2, how=signal.SIGKILL), 90))
    assert all(o.get("lost") == ["c"] for o in outs), outs
    assert time.monotonic() - started < 20


ORPHAN_PARENT = textwrap.dedent("""
    import subprocess, sys, time
    script, job, fd, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    child = subprocess.Popen([sys.executable, script, job, "0"], pass_fds=(fd,),
                             stdout=open(out, "w"))
    print(child.pid, flush=True)
    time.sleep(2.0)  # the worker is connecting (to peers that never come); then we go
""")


def test_a_worker_whose_kernel_died_stops(parties, tmp_path):
    script = tmp_path / "mini_worker.py"
    script.write_text(MINI_WORKER)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    job = make_job(parties, 1, tmp_path, handoff_fd=theirs.fileno(), timeout=60)
    path = job.write(tmp_path)
    parent = subprocess.run(
        [sys.executable, "-c", ORPHAN_PARENT, str(script), str(path), str(theirs.fileno()),
         str(tmp_path / "orphan.out")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30,
        pass_fds=(theirs.fileno(),))
    theirs.close()
    pid = int(parent.stdout.split()[0])
    started = time.monotonic()
    while time.monotonic() - started < 15:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                break  # exited; its new parent has not reaped it yet
        except (FileNotFoundError, IndexError):
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the orphaned worker did not stop")
    ours.close()
    assert json.loads((tmp_path / "orphan.out").read_text().splitlines()[-1])["orphaned"]


def test_three_real_workers_run_a_plan_over_the_links(tmp_path):
    """``ppa_kernel.cli worker`` end to end (fake kernels: listener and hand-off only)."""
    import numpy as np
    import pandas as pd

    from ppa_kernel.analyst.frame import SecureFrame

    names = ["insurer", "hospital", "bureau"]
    catalog = {"insurer": {"age": {"kind": "numeric", "min": 18.0, "max": 90.0, "missing": 0}},
               "hospital": {"visits": {"kind": "numeric", "min": 0.0, "max": 50.0,
                                       "missing": 0}},
               "bureau": {"band": {"kind": "categorical", "levels": ["a", "b"], "missing": 0}}}
    plan = {**SecureFrame(catalog, names, names).agg(n=("age", "count")).plan(),
            "min_cell_size": 5, "disclosure": {"dominance_n": 2, "dominance_k": 90,
                                               "p_ratio": 10, "history_limit": 100,
                                               "differencing": False}}
    ids = {n: create_identity(tmp_path / "keys", n) for n in names}
    pins = [Pin(n, ids[n].certificate, ids[n].fingerprint) for n in names]
    ports = [free_port() for _ in names]
    rng = np.random.default_rng(1)
    columns = {"insurer": ("age", lambda k: rng.integers(18, 90, k).astype(float)),
               "hospital": ("visits", lambda k: rng.integers(0, 50, k).astype(float)),
               "bureau": ("band", lambda k: rng.choice(["a", "b"], k))}

    async def scenario():
        kernels, procs, jobs = [], [], []
        for index, name in enumerate(names):
            members = [PartyAddress(n, "127.0.0.1", 1, ports[i], pins[i])
                       for i, n in enumerate(names)]
            config = PartyConfig(name, ConsortiumConfig("t", members, "00"), tmp_path, None,
                                 None, ids[name], {})
            kernel = FakeKernel(config)
            await kernel.listener.start()
            theirs = kernel.add_run(RUN)
            column, make = columns[name]
            frame = pd.DataFrame({"pseudonym": [f"p{i}" for i in range(40)], column: make(40)})
            snapshot = tmp_path / f"{name}.parquet"
            frame.to_parquet(snapshot)
            state = tmp_path / "state" / name
            state.mkdir(parents=True)
            job = Job(party=name, index=index, names=names,
                      addresses=[f"127.0.0.1:{p}" for p in ports], plan=plan, run_id=RUN,
                      snapshot=str(snapshot), link_column="pseudonym", link_salt="00",
                      state_dir=str(state), record_openings=False, connect_timeout=20,
                      result_path=str(state / "result.json"),
                      certificate=str(ids[name].cert_path), key=str(ids[name].key_path),
                      peer_certificates=[p.pem for p in pins],
                      fingerprints=[p.fingerprint for p in pins], stall_timeout=30,
                      handoff_fd=theirs.fileno())
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ppa_kernel.cli", "worker", str(job.write(state)),
                cwd=ROOT, env=_env(), stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),))
            theirs.close()
            kernels.append(kernel)
            procs.append(proc)
            jobs.append(job)
        try:
            codes = [await asyncio.wait_for(proc.wait(), 120) for proc in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            for kernel in kernels:
                await kernel.listener.close()
        return codes, [json.loads(Path(j.result_path).read_text()) for j in jobs]

    codes, results = asyncio.run(asyncio.wait_for(scenario(), 150))
    assert codes == [0, 0, 0], results
    assert results[0]["stats"] == results[1]["stats"] == results[2]["stats"]
