"""Hostile input on the client-kernel wire: bounded before parsing, answered, and only for
a peer holding a pinned certificate and sending fresh signed requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import ssl
import threading
import time
from types import SimpleNamespace

import psutil
import pytest
from waiting import wait_for, workers_under

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract import protocol as proto
from ppa_kernel.contract.config import Analyst
from ppa_kernel.contract.errors import ConsortiumError, ProtocolError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.identity import (
    Pin,
    client_context,
    create_identity,
    server_context,
)
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.protocol import (
    MAX_DEPTH,
    MAX_REQUEST,
    Channel,
    decode,
    encode,
    nesting_depth,
    request,
)
from ppa_kernel.party.kernel import PartyKernel
from ppa_kernel.party.requests import RequestGuard

IDLE = 1.0


def nested(depth: int) -> bytes:
    """An object whose value nests arrays to a total depth of ``depth``."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    made = {name: create_identity(folder, name) for name in ("kernel", "alice")}
    return made, {name: Pin.load(name, i.cert_path, i.fingerprint) for name, i in made.items()}


# ---------------------------------------------------------------- encode / decode
def test_wire_format_is_one_canonical_json_line():
    body = {"op": "hello", "b": [1, "x"], "ü": None}
    assert encode(body) == canonical_json(body).encode() + b"\n"
    assert decode(encode(body)) == body and decode(encode(body).rstrip(b"\n")) == body
    assert nesting_depth(b"17") == 0
    assert decode(b'{"s":"' + b"[" * 1000 + b'"}') == {"s": "[" * 1000}


def test_decode_bounds_before_parsing(monkeypatch):
    calls = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(a))
    with pytest.raises(ProtocolError, match="too large"):
        decode(b"x" * 101, 100)
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(nested(MAX_DEPTH + 1))
    assert not calls
    monkeypatch.undo()
    assert decode(nested(MAX_DEPTH))["a"] is not None
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ProtocolError, match="JSON does not allow"):
            decode(b'{"x":[1,' + constant + b"]}")
    with pytest.raises(ProtocolError, match="object"):
        decode(b"[1]")


# ---------------------------------------------------------------- client side
def serve_once(payload: bytes, keys) -> tuple[str, int]:
    """A one-shot TLS server (the pinned kernel) that sends ``payload`` and closes."""
    made, pins = keys
    server = socket.create_server(("127.0.0.1", 0))
    context = server_context(made["kernel"], [pins["alice"]])

    def run():
        conn, _ = server.accept()
        with server:
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(payload)
            except (OSError, ssl.SSLError):
                pass  # the client stopped reading

    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()


def receive(payload: bytes, keys):
    made, pins = keys
    host, port = serve_once(payload, keys)
    channel = Channel(host, port, made["alice"], Pin("p", pins["kernel"].certificate,
                                                      pins["kernel"].fingerprint), timeout=5)
    try:
        return channel.receive(timeout=5)
    finally:
        channel.close()


def test_client_checks_replies_like_the_kernel(monkeypatch, keys):
    assert receive(encode({"event": "hello"}), keys) == {"event": "hello"}
    with pytest.raises(ProtocolError, match="NaN"):
        receive(b'{"event":NaN}\n', keys)
    with pytest.raises(ProtocolError, match="nested deeper"):
        receive(nested(600) + b"\n", keys)
    with pytest.raises(ConnectionError, match="mid-message"):
        receive(encode({"event": "hello"})[:-5], keys)
    monkeypatch.setattr(proto, "MAX_MESSAGE", 1000)
    with pytest.raises(ProtocolError, match=r"too large \(1001 bytes > limit 1000\)"):
        receive(b'{"a":"' + b"x" * 5000 + b'"}\n', keys)


# ---------------------------------------------------------------- a real kernel
@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def consortium(hostile_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPA_IDLE_TIMEOUT", str(IDLE))
        with Consortium.local(generate(n_core=200, seed=3), link="pseudonym",
                              workdir=hostile_root) as c:
            yield c


class Raw:
    """A TLS connection to one party kernel, as the consortium's analyst."""

    def __init__(self, c: Consortium, index: int = 0):
        party = c.config.parties[index]
        self.identity, self.party = c.identity, party.name
        raw = socket.create_connection((party.host, party.port), timeout=5)
        self.sock = client_context(c.identity, [party.pin]).wrap_socket(raw)
        self.file = self.sock.makefile("rb")

    def line(self, op: str, **fields) -> bytes:
        return encode(request(op, self.identity, self.party, **fields))

    def ask(self, line: bytes) -> dict:
        self.sock.sendall(line)
        return self.reply()

    def reply(self) -> dict:
        return decode(self.file.readline())

    def hello(self) -> dict:
        return self.ask(self.line("hello"))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(consortium):
    conn = Raw(consortium)
    yield conn
    conn.close()


def error_of(reply: dict, *types: str) -> str:
    assert reply["event"] == "error", reply
    assert reply["error"]["type"] in (types or ("ProtocolError",)), reply
    return reply["error"]["message"]


def test_kernel_answers_an_oversized_line_and_stays_up(consortium, raw):
    def flood():  # twice the limit: enough to prove nothing buffers it, and sent well
        try:      # within the kernel's linger even on a loaded machine (the answer is lost
            raw.sock.sendall(b"x" * (2 * MAX_REQUEST) + b"\n")  # if input stays unread)
        except OSError:
            pass  # the kernel closed the connection without reading the rest

    started = time.monotonic()
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    message = error_of(raw.reply())
    assert message.startswith("message too large (") and f"> limit {MAX_REQUEST})" in message
    assert raw.file.readline() == b""  # then closed, after lingering (TLS cannot half-close)
    assert time.monotonic() - started < proto.LINGER + 2
    started = time.monotonic()
    status = consortium.status(timeout=1)
    assert status["reachable"].all() and time.monotonic() - started < 1
    sender.join(5)


def test_kernel_refuses_nan_and_deep_nesting_and_keeps_the_connection(consortium, raw):
    assert "NaN" in error_of(raw.ask(b'{"op":"hello","x":NaN}\n'))
    assert raw.hello()["event"] == "hello"
    assert "Infinity" in error_of(raw.ask(b'{"op":"hello","x":-Infinity}\n'))
    assert f"nested deeper than {MAX_DEPTH}" in error_of(raw.ask(nested(600) + b"\n"))
    assert "malformed" in error_of(raw.ask(b'{"op":\n'))
    assert "not signed" in error_of(raw.ask(b'{"op":"hello","analyst":"analyst","party":"'
                                            + raw.party.encode() + b'"}\n'))
    assert raw.hello()["event"] == "hello"
    log = consortium.local_parties.stderr[consortium.config.parties[0].name].read_text()
    assert "RecursionError" not in log and "client_connected_cb" not in log


def test_kernel_answers_a_request_it_cannot_handle_and_keeps_the_connection(consortium, raw):
    plan = consortium.prepare(consortium.link().agg(n=("age", "count")).plan())
    line = raw.line("run", run_id=secrets.token_hex(8), plan=plan, plan_hash=plan_hash(plan),
                    timeout="soon")
    error_of(raw.ask(line), "PlanError", "PartyFailed")
    assert raw.hello()["event"] == "hello"


def test_a_replayed_or_misdirected_request_is_refused(consortium, raw):
    line = raw.line("hello")
    assert raw.ask(line)["event"] == "hello"
    assert "replayed request" in error_of(raw.ask(line))
    other = consortium.config.parties[1].name
    misdirected = encode(request("hello", raw.identity, other))
    assert f"meant for '{other}'" in error_of(raw.ask(misdirected))
    assert raw.hello()["event"] == "hello"


def test_there_is_no_shutdown_request(consortium, raw):
    assert "may not send 'shutdown'" in error_of(raw.ask(raw.line("shutdown")), "PolicyRefused")
    assert consortium.status(timeout=2)["reachable"].all()


def test_an_unpinned_analyst_gets_no_answer(consortium, tmp_path):
    mallory = create_identity(tmp_path, "analyst")  # the right name, not the pinned key
    with pytest.raises(ConsortiumError, match="without answering") as info:
        Consortium(consortium.config, identity=mallory, connect_timeout=5)
    assert all(f"[{p}]" in str(info.value) for p in consortium.names)
    assert "[policy.analysts]" in str(info.value)


def test_any_unexpected_exception_gets_an_error_reply(keys):
    made, pins = keys

    class Kernel:
        name, guard = "p", RequestGuard("p", started=time.time() - 1)
        config = SimpleNamespace(analysts={"alice": Analyst(pins["alice"], "analyst")})
        _connection, _send = PartyKernel._connection, PartyKernel._send

        async def _dispatch(self, request: dict, writer) -> None:
            if request["op"] == "check":
                raise RuntimeError("internal detail")
            await self._send(writer, {"event": "hello"})

    async def main() -> list[dict]:
        server = await asyncio.start_server(Kernel()._connection, "127.0.0.1", 0,
                                            ssl=server_context(made["kernel"], [pins["alice"]]))
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname()[:2],
            ssl=client_context(made["alice"], [pins["kernel"]]), server_hostname="")
        replies = []
        for op in ("check", "hello"):
            writer.write(encode(request(op, made["alice"], "p")))
            replies.append(decode(await asyncio.wait_for(reader.readline(), 5)))
        writer.close()
        server.close()
        return replies

    boom, hello = asyncio.run(main())
    assert error_of(boom, "PartyFailed") == "internal error (RuntimeError)"
    assert boom["error"]["party"] == "p" and hello == {"event": "hello"}


def test_kernel_closes_an_idle_partial_line(raw):
    raw.sock.sendall(b'{"op":"hel')
    started = time.monotonic()
    raw.sock.settimeout(IDLE + 5)
    assert raw.sock.recv(1) == b""
    assert IDLE * 0.8 < time.monotonic() - started < IDLE + 3


def test_idle_timeout_never_cuts_a_streaming_run(consortium, hostile_root):
    """A run whose workers all fall silent for longer than the idle timeout (paused with
    SIGSTOP, so no progress reaches the analyst) is still followed to its answer."""
    paused: list[float] = []

    def pause_the_run() -> None:
        workers = wait_for(lambda: workers_under(hostile_root), timeout=30, step=0.005)
        try:
            for worker in workers:
                worker.suspend()
            time.sleep(IDLE * 1.5)
            paused.append(IDLE * 1.5)
        finally:
            for worker in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.resume()

    pauser = threading.Thread(target=pause_the_run, daemon=True)
    pauser.start()
    started = time.monotonic()
    frame = consortium.link().agg(n=("age", "count")).collect()
    took = time.monotonic() - started
    pauser.join(5)
    assert paused, "no worker of the run was found to pause"
    assert took > IDLE * 1.5  # silent for longer than the idle timeout, and not cut
    assert int(frame["n"].iloc[0]) == 200  # n_core people are at all three parties
