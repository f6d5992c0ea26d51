"""Messages between the analyst's client and party kernels.

One message per line: ``<MAC> <body>\\n``, where ``<body>`` is the canonical JSON text of an
object and ``<MAC>`` the 64 hex digits of its HMAC-SHA256 under the consortium secret. A
receiver checks, in this order and before any parsing: the line's length (``MAX_REQUEST``
at a kernel, ``MAX_MESSAGE`` at the client), the MAC over the exact body bytes, the
nesting depth (``MAX_DEPTH``, by a linear scan); only then does it parse the body, refusing
NaN and infinities. JSON only: nothing received is ever executed or unpickled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import socket
from itertools import accumulate
from typing import Any, NoReturn

from . import limits
from .errors import ProtocolError
from .expr import canonical_json

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

MAC_HEX = 64
READ_CHUNK = 64 * 1024

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _mac(body: bytes | memoryview, secret: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).hexdigest().encode()


def seal(body: dict, secret: bytes) -> bytes:
    """Encode one authenticated message line."""
    text = canonical_json(body).encode()
    return _mac(text, secret) + b" " + text + b"\n"


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


def unseal(line: bytes, secret: bytes, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    """Check and decode one message line of at most ``limit`` bytes (see the module doc)."""
    if len(line) > limit:
        raise too_large(len(line), limit)
    end = len(line) - line.endswith(b"\n")
    if end <= MAC_HEX or line[MAC_HEX:MAC_HEX + 1] != b" ":
        raise ProtocolError("malformed message", hint="expected '<hex MAC> <JSON body>'")
    view = memoryview(line)[MAC_HEX + 1:end]  # no copy of unauthenticated bytes
    if not hmac.compare_digest(line[:MAC_HEX], _mac(view, secret)):
        raise ProtocolError("message failed authentication",
                            hint="client and parties must share the consortium secret")
    body = view.tobytes()
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
    """A blocking, authenticated line channel to one party kernel (client side)."""

    def __init__(self, host: str, port: int, secret: bytes, party: str, timeout: float):
        self.party, self.secret = party, secret
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, body: dict) -> None:
        self.sock.sendall(seal(body, self.secret))

    def receive(self, timeout: float | None) -> dict:
        """The next reply, checked as :func:`unseal` does, within ``MAX_MESSAGE`` bytes."""
        self.sock.settimeout(timeout)
        line = self.reader.readline(MAX_MESSAGE + 1)
        if not line:
            raise ConnectionError(f"{self.party} closed the connection")
        if not line.endswith(b"\n") and len(line) <= MAX_MESSAGE:
            raise ConnectionError(f"{self.party} closed the connection mid-message")
        return unseal(line, self.secret, MAX_MESSAGE)

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass
