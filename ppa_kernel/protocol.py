"""Messages between the analyst's client and party kernels.

One JSON object per line, authenticated with HMAC-SHA256 under the consortium secret:
``{"body": {...}, "mac": "<hex>"}``. JSON only: nothing received is ever executed or
unpickled. A message over ``MAX_MESSAGE`` bytes or with a bad MAC is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from typing import Any

from .errors import ProtocolError
from .plan import canonical_json

MAX_MESSAGE = 64 * 1024 * 1024


def seal(body: dict, secret: bytes) -> bytes:
    """Encode one authenticated message line."""
    text = canonical_json(body)
    mac = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
    return (json.dumps({"body": body, "mac": mac}, separators=(",", ":")) + "\n").encode()


def unseal(line: bytes, secret: bytes) -> dict[str, Any]:
    """Decode and authenticate one message line."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        outer = json.loads(line)
        body, mac = outer["body"], outer["mac"]
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("malformed message") from None
    expected = hmac.new(secret, canonical_json(body).encode(), hashlib.sha256).hexdigest()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
        raise ProtocolError("message failed authentication",
                            hint="client and parties must share the consortium secret")
    if not isinstance(body, dict):
        raise ProtocolError("message body must be an object")
    return body


class Channel:
    """A blocking, authenticated line channel to one party kernel (client side)."""

    def __init__(self, host: str, port: int, secret: bytes, party: str, timeout: float):
        self.party, self.secret = party, secret
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, body: dict) -> None:
        self.sock.sendall(seal(body, self.secret))

    def receive(self, timeout: float | None) -> dict:
        self.sock.settimeout(timeout)
        line = self.reader.readline(MAX_MESSAGE + 1)
        if not line:
            raise ConnectionError(f"{self.party} closed the connection")
        return unseal(line, self.secret)

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass
