"""Hostile input on the client-kernel wire: bounded, authenticated before parsing, answered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract import protocol as proto
from ppa_kernel.contract.errors import ProtocolError
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.contract.protocol import (
    MAX_DEPTH,
    MAX_REQUEST,
    Channel,
    nesting_depth,
    seal,
    unseal,
)
from ppa_kernel.party.kernel import PartyKernel

KEY = b"k"
IDLE = 1.0


def raw_line(body: bytes, secret: bytes = KEY) -> bytes:
    """A correctly authenticated line around arbitrary body bytes."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest().encode() + b" " + body + b"\n"


def nested(depth: int) -> bytes:
    """An object whose value nests arrays to a total depth of ``depth``."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.fixture
def no_json(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("json.loads called on an unauthenticated message")

    monkeypatch.setattr(json, "loads", refuse)


# ---------------------------------------------------------------- seal / unseal
def test_wire_format_is_mac_space_canonical_body():
    body = {"op": "hello", "b": [1, "x"], "ü": None}
    line = seal(body, KEY)
    text = canonical_json(body).encode()
    assert line == hmac.new(KEY, text, hashlib.sha256).hexdigest().encode() + b" " + text + b"\n"
    assert unseal(line, KEY) == body
    assert unseal(line.rstrip(b"\n"), KEY) == body


def test_bad_mac_on_a_huge_line_is_refused_fast_without_parsing(no_json):
    line = b"0" * 64 + b" " + b'{"a":"' + b"x" * 30_000_000 + b'"}\n'
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="authentication"):
        unseal(line, KEY)
    assert time.perf_counter() - started < 0.2


def test_tampered_or_malformed_lines_are_refused_before_parsing(no_json):
    line = seal({"op": "hello", "n": 1}, KEY)
    for bad in (line.replace(b'"n":1', b'"n":2'), line.replace(b" ", b"  ", 1),
                line[:64].upper() + line[64:]):
        with pytest.raises(ProtocolError, match="authentication"):
            unseal(bad, KEY)
    with pytest.raises(ProtocolError, match="authentication"):
        unseal(line, b"other")
    for bad in (b"not json", b"", b"\n", line[:64] + b"\n", line.replace(b" ", b":", 1)):
        with pytest.raises(ProtocolError, match="malformed"):
            unseal(bad, KEY)


def test_size_bound_is_checked_before_the_mac(no_json):
    line = raw_line(b'{"a":"' + b"x" * MAX_REQUEST + b'"}')
    with pytest.raises(ProtocolError,
                       match=rf"message too large \({len(line)} bytes > limit {MAX_REQUEST}\)"):
        unseal(line, KEY, MAX_REQUEST)
    with pytest.raises(ProtocolError, match="too large"):
        unseal(b"x" * 101, b"other", 100)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinities_are_refused(constant):
    with pytest.raises(ProtocolError, match=constant.lstrip(b"-").decode()):
        unseal(raw_line(b'{"x":[1,' + constant + b"]}"), KEY)


def test_deep_nesting_is_refused_without_recursion():
    assert unseal(raw_line(nested(MAX_DEPTH)), KEY)["a"] is not None
    for body in (nested(MAX_DEPTH + 1), nested(600), b"[" * 200_000, b'{"a":' * 100_000):
        with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH}"):
            unseal(raw_line(body), KEY)


def test_nesting_depth_ignores_brackets_inside_strings():
    assert nesting_depth(b'{"s":"[[[{{{\\"[[[","t":["]]]"]}') == 2
    assert nesting_depth(b"17") == 0
    assert unseal(raw_line(b'{"s":"' + b"[" * 1000 + b'"}'), KEY) == {"s": "[" * 1000}


# ---------------------------------------------------------------- client side
def serve_once(payload: bytes) -> tuple[str, int]:
    """A one-shot TCP server that sends ``payload`` to its first client and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = server.accept()
        with conn, server:
            try:
                conn.sendall(payload)
            except OSError:
                pass  # the client stopped reading

    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()


def receive(payload: bytes):
    host, port = serve_once(payload)
    channel = Channel(host, port, KEY, "p", timeout=5)
    try:
        return channel.receive(timeout=5)
    finally:
        channel.close()


def test_client_checks_replies_like_the_kernel(monkeypatch):
    assert receive(seal({"event": "hello"}, KEY)) == {"event": "hello"}
    with pytest.raises(ProtocolError, match="NaN"):
        receive(raw_line(b'{"event":NaN}'))
    with pytest.raises(ProtocolError, match="nested deeper"):
        receive(raw_line(nested(600)))
    with pytest.raises(ConnectionError, match="mid-message"):
        receive(seal({"event": "hello"}, KEY)[:-5])
    monkeypatch.setattr(proto, "MAX_MESSAGE", 1000)
    calls = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(a))
    with pytest.raises(ProtocolError, match="authentication"):
        receive(b"0" * 64 + b" {}\n")
    with pytest.raises(ProtocolError, match=r"too large \(1001 bytes > limit 1000\)"):
        receive(raw_line(b'{"a":"' + b"x" * 5000 + b'"}'))
    assert not calls


# ---------------------------------------------------------------- a real kernel
@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPA_IDLE_TIMEOUT", str(IDLE))
        with Consortium.local(generate(n_core=200, seed=3), link="pseudonym",
                              workdir=tmp_path_factory.mktemp("hostile")) as c:
            yield c


class Raw:
    """A raw TCP connection to one party kernel."""

    def __init__(self, c: Consortium, index: int = 0):
        party = c.config.parties[index]
        self.secret = c.config.secret
        self.sock = socket.create_connection((party.host, party.port), timeout=5)
        self.file = self.sock.makefile("rb")

    def ask(self, line: bytes) -> dict:
        self.sock.sendall(line)
        return self.reply()

    def reply(self) -> dict:
        return unseal(self.file.readline(), self.secret)

    def hello(self) -> dict:
        return self.ask(seal({"op": "hello"}, self.secret))

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
    def flood():
        try:
            raw.sock.sendall(b"0" * 64 + b" " + b"x" * (4 * MAX_REQUEST) + b"\n")
        except OSError:
            pass  # the kernel closed the connection without reading the rest

    started = time.monotonic()
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    message = error_of(raw.reply())
    assert message.startswith("message too large (") and f"> limit {MAX_REQUEST})" in message
    assert raw.file.readline() == b""  # then closed
    assert time.monotonic() - started < 2
    started = time.monotonic()
    status = consortium.status(timeout=1)
    assert status["reachable"].all() and time.monotonic() - started < 1
    sender.join(5)


def test_kernel_refuses_nan_and_deep_nesting_and_keeps_the_connection(consortium, raw):
    secret = raw.secret
    assert "NaN" in error_of(raw.ask(raw_line(b'{"op":"hello","x":NaN}', secret)))
    assert raw.hello()["event"] == "hello"
    assert "Infinity" in error_of(raw.ask(raw_line(b'{"op":"hello","x":-Infinity}', secret)))
    assert f"nested deeper than {MAX_DEPTH}" in error_of(raw.ask(raw_line(nested(600), secret)))
    assert "authentication" in error_of(raw.ask(raw_line(b'{"op":"hello"}', b"wrong")))
    assert "malformed" in error_of(raw.ask(raw_line(b'{"op":', secret)))
    assert raw.hello()["event"] == "hello"
    log = consortium.local_parties.stderr[consortium.config.parties[0].name].read_text()
    assert "RecursionError" not in log and "client_connected_cb" not in log


def test_kernel_answers_a_request_it_cannot_handle_and_keeps_the_connection(consortium, raw):
    plan = consortium.prepare(consortium.link().agg(n=("age", "count")).plan())
    request = {"op": "run", "run_id": secrets.token_hex(8), "plan": plan,
               "plan_hash": plan_hash(plan), "timeout": "soon"}
    error_of(raw.ask(seal(request, raw.secret)), "PlanError", "PartyFailed")
    assert raw.hello()["event"] == "hello"


def test_any_unexpected_exception_gets_an_error_reply():
    class Kernel:
        name, config = "p", SimpleNamespace(consortium=SimpleNamespace(secret=KEY))
        _connection, _send = PartyKernel._connection, PartyKernel._send

        async def _dispatch(self, request: dict, writer) -> None:
            if request["op"] == "boom":
                raise RuntimeError("internal detail")
            await self._send(writer, {"event": "hello"})

    async def main() -> list[dict]:
        server = await asyncio.start_server(Kernel()._connection, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        replies = []
        for op in ("boom", "hello"):
            writer.write(seal({"op": op}, KEY))
            replies.append(unseal(await asyncio.wait_for(reader.readline(), 5), KEY))
        writer.close()
        server.close()
        return replies

    boom, hello = asyncio.run(main())
    assert error_of(boom, "PartyFailed") == "internal error (RuntimeError)"
    assert boom["error"]["party"] == "p" and hello == {"event": "hello"}


def test_kernel_closes_an_idle_partial_line(raw):
    raw.sock.sendall(b"0" * 64 + b' {"op":"hel')
    started = time.monotonic()
    raw.sock.settimeout(IDLE + 5)
    assert raw.sock.recv(1) == b""
    assert IDLE * 0.8 < time.monotonic() - started < IDLE + 3


def test_idle_timeout_never_cuts_a_streaming_run(consortium):
    started = time.monotonic()
    frame = consortium.link().agg(n=("age", "count")).collect()
    assert time.monotonic() - started > IDLE  # the run outlasted the idle timeout
    assert int(frame["n"].iloc[0]) > 0
