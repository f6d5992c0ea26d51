"""Messages between the analyst's client and party kernels.

The link is mutual TLS (:mod:`.identity`): the client checks that the kernel holds the
certificate the consortium file pins for that party, and the kernel that the client holds
one its policy pins for an analyst. One message per line: the canonical JSON text of an
object. A receiver checks, in this order and before any parsing: the line's length
(``MAX_REQUEST`` at a kernel, ``MAX_MESSAGE`` at the client) and the nesting depth
(``MAX_DEPTH``, by a linear scan); only then does it parse the body, refusing NaN and
infinities. JSON only: nothing received is ever executed or unpickled.

Every request is signed by the analyst and carries the analyst's name, the party it is
for, a fresh nonce and the time (:func:`request`); a kernel refuses a request that is
stale, from the future, meant for another party or seen before
(:mod:`ppa_kernel.party.requests`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import ssl
import time
from itertools import accumulate
from typing import Any, NoReturn

from . import limits
from .errors import PartyFailed, PartyUnreachable, ProtocolError, error_from_dict
from .expr import canonical_json
from .identity import Identity, Pin, client_context, peer_fingerprint, sign

logger = logging.getLogger(__name__)

READY_MARKER = "PPA-PARTY-READY"
"""The line a kernel prints on stdout once it serves (then its name and address)."""
ERROR_MARKER = "PPA-PARTY-ERROR"
"""The line a kernel prints on stdout when it cannot start (then the error as JSON)."""

MAX_MESSAGE = 64 * 1024 * 1024
"""Longest line (bytes, newline included) the client accepts: replies carry results."""

MAX_REQUEST = 1024 * 1024
"""Longest line a party kernel accepts: requests carry plans only."""

MAX_DEPTH = 2 * limits.MAX_EXPR_DEPTH + 16  # a plan's own bound, inside a request
"""Deepest nesting of arrays and objects in a message body."""

IDLE_TIMEOUT = 60.0
"""Seconds a kernel waits for a client's next request line before closing the connection
(the environment variable ``PPA_IDLE_TIMEOUT`` overrides it; see :func:`idle_timeout`)."""

LINGER = 2.0
"""Seconds a kernel goes on reading, and dropping, an oversized request after answering it
(at most ``MAX_MESSAGE`` bytes): closing with unread input would reset the connection and
destroy the answer before the client reads it."""

HEARTBEAT_INTERVAL = 2.0
"""Seconds between the ``alive`` events a kernel sends while a request waits or runs."""

NONCE_HEX = 32
"""Hex digits of a request's nonce (128 random bits)."""

READ_CHUNK = 64 * 1024

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def encode(body: dict) -> bytes:
    """One message line."""
    return canonical_json(body).encode() + b"\n"


def request(op: str, identity: Identity, party: str, **fields: Any) -> dict:
    """A signed request for ``party``: op, analyst, party, nonce, time and ``fields``."""
    return sign({"op": op, "analyst": identity.name, "party": party,
                 "nonce": secrets.token_hex(NONCE_HEX // 2), "time": time.time(), **fields},
                identity)


def too_large(size: int, limit: int, *, at_least: bool = False) -> ProtocolError:
    """The error for a line of ``size`` bytes over ``limit``."""
    return ProtocolError(f"message too large ({'at least ' if at_least else ''}{size} bytes "
                         f"> limit {limit})")


def nesting_depth(text: bytes) -> int:
    """Deepest nesting of ``[`` and ``{`` outside strings (iterative, linear in the size)."""
    brackets = _STRING.sub(b"", text).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _no_constant(name: str) -> NoReturn:
    raise ProtocolError(f"message contains {name}, which JSON does not allow")


def decode(line: bytes, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    """Check and decode one message line of at most ``limit`` bytes (see the module doc)."""
    if len(line) > limit:
        raise too_large(len(line), limit)
    body = line[:len(line) - line.endswith(b"\n")]
    if nesting_depth(body) > MAX_DEPTH:
        raise ProtocolError(f"message nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except ValueError:
        raise ProtocolError("malformed message", hint="the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("message body must be an object")
    return value


def idle_timeout() -> float:
    """``PPA_IDLE_TIMEOUT`` (positive seconds) if set, else :data:`IDLE_TIMEOUT`."""
    text = os.environ.get("PPA_IDLE_TIMEOUT", "")
    try:
        value = float(text) if text else IDLE_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        logger.warning("ignoring PPA_IDLE_TIMEOUT=%r (not a positive number)", text)
        value = IDLE_TIMEOUT
    return value


class LineReader:
    """Reads lines from an asyncio stream, buffering at most ``limit`` bytes plus one chunk."""

    def __init__(self, reader: asyncio.StreamReader, limit: int):
        self.reader, self.limit = reader, limit
        self.buffer = bytearray()

    async def readline(self) -> bytes:
        """The next line, newline included; ``b""`` at the end of the stream (a trailing
        partial line is dropped). A line over the limit raises ProtocolError unread."""
        start = 0
        while (end := self.buffer.find(b"\n", start)) < 0:
            if len(self.buffer) > self.limit:
                raise too_large(len(self.buffer), self.limit, at_least=True)
            start = len(self.buffer)
            chunk = await self.reader.read(READ_CHUNK)
            if not chunk:
                return b""
            self.buffer += chunk
        if end + 1 > self.limit:
            raise too_large(end + 1, self.limit)
        line = bytes(self.buffer[:end + 1])
        del self.buffer[:end + 1]
        return line

    async def discard(self, limit: int = MAX_MESSAGE, seconds: float = LINGER) -> None:
        """Drop what arrives (keeping none of it) until the end of the stream, ``limit``
        bytes or ``seconds``."""
        self.buffer.clear()
        try:
            async with asyncio.timeout(seconds):
                while limit > 0 and (chunk := await self.reader.read(READ_CHUNK)):
                    limit -= len(chunk)
        except TimeoutError:
            pass


class Channel:
    """A blocking mutual-TLS line channel to one party kernel (client side).

    It connects within ``timeout`` seconds and refuses a kernel that does not hold the
    certificate ``pin`` (raising :class:`PartyUnreachable`)."""

    def __init__(self, host: str, port: int, identity: Identity, pin: Pin, timeout: float):
        self.party = pin.name
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = client_context(identity, [pin]).wrap_socket(raw)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise PartyUnreachable(f"TLS with the kernel at {host}:{port} failed "
                                   f"({getattr(exc, 'reason', None) or exc})", party=pin.name,
                                   hint="check that it holds the certificate the consortium "
                                        "file pins, and that its policy names you") from None
        if peer_fingerprint(self.sock) != pin.fingerprint:  # the context trusts only pin
            self.close()
            raise PartyUnreachable(f"the kernel at {host}:{port} is not {pin.name}",
                                   party=pin.name)
        self.reader = self.sock.makefile("rb")
        self.answered = False

    def send(self, body: dict) -> None:
        self.sock.sendall(encode(body))

    def receive(self, timeout: float | None) -> dict:
        """The next reply, checked as :func:`decode` does, within ``MAX_MESSAGE`` bytes.

        A kernel that ends the connection before its first reply has refused us (under
        TLS 1.3 the client learns that the kernel rejected its certificate only then)."""
        self.sock.settimeout(timeout)
        try:
            line = self.reader.readline(MAX_MESSAGE + 1)
        except ssl.SSLError as exc:
            line = b""
            if self.answered:
                raise ConnectionError(f"TLS error from {self.party}: {exc}") from None
        if not line and not self.answered:
            raise PartyUnreachable("the kernel ended the connection without answering",
                                   party=self.party,
                                   hint="does its policy pin your certificate "
                                        "([policy.analysts])? Is yours still valid?")
        self.answered = True
        if not line:
            raise ConnectionError(f"{self.party} closed the connection")
        if not line.endswith(b"\n") and len(line) <= MAX_MESSAGE:
            raise ConnectionError(f"{self.party} closed the connection mid-message")
        return decode(line, MAX_MESSAGE)

    def close(self) -> None:
        try:
            if hasattr(self, "reader"):
                self.reader.close()
            self.sock.close()
        except OSError:
            pass


def connect(host: str, port: int, identity: Identity, pin: Pin, timeout: float) -> Channel:
    """A channel to a party kernel; PartyUnreachable (naming the party) if it cannot be
    reached."""
    try:
        return Channel(host, port, identity, pin, timeout)
    except OSError as exc:
        raise PartyUnreachable(f"cannot reach the party kernel at {host}:{port}"
                               f" ({exc.strerror or exc})", party=pin.name,
                               hint="is `ppa party serve` running there?") from None


def ask(host: str, port: int, identity: Identity, pin: Pin, op: str, fields: dict,
        expect: str, *, timeout: float, connect_timeout: float) -> dict[str, Any]:
    """One signed request to a party kernel and its one reply (event ``expect``); the
    party's error reply is raised as that error, attributed to that party only."""
    channel = connect(host, port, identity, pin, connect_timeout)
    try:
        channel.send(request(op, identity, pin.name, **fields))
        reply = channel.receive(timeout=timeout)
    except (OSError, ConnectionError) as exc:
        raise PartyUnreachable(f"no answer ({exc})", party=pin.name) from None
    finally:
        channel.close()
    if reply.get("event") == "error":
        error = error_from_dict(reply["error"])
        error.party = pin.name  # a party speaks for itself only
        raise error
    if reply.get("event") != expect:
        raise PartyFailed(f"unexpected reply {reply.get('event')!r}", party=pin.name)
    return reply
