"""The party kernel's one MPC listener: it routes each connection to its run's worker.

Workers do not listen. A peer's worker connects to this party's ``(bind_host,
mpc_port)`` and sends one plain header line (:func:`.secure.links.format_header`); the
listener reads exactly that line (at most 256 bytes, within 2 s), checks that it is
fresh, new and signed by the party it names (so nobody without a party's key can make
this kernel start or reorder a waiting run), asks the kernel's ``route`` for the run's
hand-off socket and passes the connection's file descriptor to the worker with
``socket.send_fds``. It never does TLS and never reads past the header: the worker
authenticates the peer again (:mod:`.secure.links`). Anything malformed, unsigned,
stale, replayed, for an unknown run, or over the bounds of :data:`MAX_PENDING`
connections waiting (:data:`MAX_PER_SOURCE` from one address), is closed without a
reply.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial

from ppa_kernel.contract.config import PartyConfig

from .requests import MAX_REQUEST_AGE, Nonces
from .secure.links import HEADER_TIMEOUT, MAX_HEADER, parse_header, signed_by

logger = logging.getLogger(__name__)

Route = Callable[[str, int], Awaitable[socket.socket | None]]
"""(run id, sender index) -> the kernel's end of that run's hand-off socket, or None."""

MAX_PENDING = 64
"""Connections that may wait in header or route at once; more are closed at once."""

MAX_PER_SOURCE = 8
"""Connections one source address may have waiting at once."""

MAX_NONCES = 4096
"""Header nonces remembered (for :data:`MAX_REQUEST_AGE`); more: refuse until some expire."""

WARN_EVERY = 5.0
"""Seconds between warnings about refused connections (a flood must not flood the log)."""

ROUTE_TIMEOUT = 5.0
"""Seconds the listener waits for ``route`` (a run that is about to start)."""


class MPCListener:
    """Accepts MPC connections for this party and hands each to its run's worker."""

    def __init__(self, config: PartyConfig, route: Route) -> None:
        self.config = config
        self.route = route
        self.index = config.consortium.index(config.name)
        self.parties = len(config.consortium.parties)
        self.pins = [p.pin for p in config.consortium.parties]
        self._server: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self._sources: collections.Counter[str] = collections.Counter()
        self._nonces = Nonces(MAX_REQUEST_AGE, MAX_NONCES)
        self._warned = 0.0

    @property
    def port(self) -> int:
        """The port listened on (the configured ``mpc_port``)."""
        assert self._server is not None, "listener not started"
        return int(self._server.getsockname()[1])

    async def start(self) -> None:
        """Bind ``(bind_host, mpc_port)`` and start accepting."""
        loop = asyncio.get_running_loop()
        host, port = self.config.bind_host, self.config.bind_mpc_port
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        server = socket.socket(family, kind, proto)
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(address)
            server.listen(128)
            server.setblocking(False)
        except BaseException:
            server.close()
            raise
        self._server = server
        self._accepting = loop.create_task(self._accept())
        logger.info("party %s: MPC listener on %s:%d", self.config.name, host, self.port)

    async def close(self) -> None:
        """Stop accepting and drop the connections still waiting in header or route."""
        tasks = [t for t in (self._accepting, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._server is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._server)
            except OSError as exc:  # e.g. out of file descriptors: wait, go on
                logger.warning("MPC listener: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            source = _source(conn)
            if len(self._pending) >= MAX_PENDING or self._sources[source] >= MAX_PER_SOURCE:
                self._warn(f"MPC listener: too many connections waiting ({len(self._pending)}"
                           f", {self._sources[source]} from {source}); refusing more")
                conn.close()
                continue
            self._sources[source] += 1
            task = loop.create_task(self._handle(conn))
            self._pending.add(task)
            task.add_done_callback(partial(self._done, source))

    def _done(self, source: str, task: asyncio.Task) -> None:
        self._pending.discard(task)
        self._sources[source] -= 1
        if self._sources[source] <= 0:
            del self._sources[source]

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning(message)

    def _fresh(self, stamp: int, nonce: str) -> bool:
        """Whether a signed header is recent and its nonce new (then remember it)."""
        now = time.time()
        return abs(now - stamp) <= MAX_REQUEST_AGE and \
            self._nonces.remember(nonce, stamp, now) is None

    async def _handle(self, conn: socket.socket) -> None:
        peer = _peer(conn)
        try:
            conn.setblocking(False)
            header = await asyncio.wait_for(_read_header(conn), HEADER_TIMEOUT)
            parsed = parse_header(header, self.parties, self.index) if header else None
            if parsed is None:
                logger.info("MPC listener: malformed header from %s dropped", peer)
                return
            run_id, sender = parsed.run_id, parsed.sender
            if not signed_by(parsed, self.pins[sender]):
                logger.info("MPC listener: header from %s not signed by party %d; dropped",
                            peer, sender)
                return
            if not self._fresh(parsed.stamp, parsed.nonce):
                logger.info("MPC listener: stale or replayed header from %s dropped", peer)
                return
            handoff = await asyncio.wait_for(self.route(run_id, sender), ROUTE_TIMEOUT)
            if handoff is None:
                logger.info("MPC listener: no run %s here for %s (index %d)",
                            run_id, peer, sender)
                return
            sent = socket.send_fds(handoff, [header], [conn.fileno()])
            if sent != len(header):
                logger.error("MPC listener: hand-off of run %s cut short", run_id)
        except TimeoutError:
            logger.info("MPC listener: %s too slow, dropped", peer)
        except OSError as exc:  # the peer went, or the run's worker is gone or full
            logger.info("MPC listener: connection from %s dropped: %s", peer, exc)
        except Exception:
            logger.exception("MPC listener: route failed for %s", peer)
        finally:
            conn.close()  # the worker holds its own copy now


async def _read_header(conn: socket.socket) -> bytes | None:
    """The header line, read a byte at a time so not one byte past it is consumed."""
    loop = asyncio.get_running_loop()
    line = bytearray()
    while len(line) < MAX_HEADER:
        byte = await loop.sock_recv(conn, 1)
        if not byte:
            return None
        line += byte
        if byte == b"\n":
            return bytes(line)
    return None


def _source(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "?"


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a closed connection"
