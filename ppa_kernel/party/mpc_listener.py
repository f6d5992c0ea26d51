"""The party kernel's one MPC listener: it routes each connection to its run's worker.

Workers do not listen. A peer's worker connects to this party's ``(bind_host,
mpc_port)`` and sends one plain line ``PPA-MPC/1 <run_id> <from_index>``; the listener
reads exactly that line (at most 96 bytes, within 5 s), asks the kernel's ``route``
for the run's hand-off socket and passes the connection's file descriptor to the worker
with ``socket.send_fds``. It never does TLS and never reads past the header: the worker
authenticates the peer (:mod:`.secure.links`). Anything malformed, for an unknown run,
or over the bound of :data:`MAX_PENDING` connections waiting in header or route, is
closed without a reply.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from ppa_kernel.contract.config import PartyConfig

from .secure.links import HEADER_TIMEOUT, MAX_HEADER, parse_header

logger = logging.getLogger(__name__)

Route = Callable[[str, int], Awaitable[socket.socket | None]]
"""(run id, sender index) -> the kernel's end of that run's hand-off socket, or None."""

MAX_PENDING = 64
"""Connections that may wait in header or route at once; more are closed at once."""

ROUTE_TIMEOUT = 5.0
"""Seconds the listener waits for ``route`` (a run that is about to start)."""


class MPCListener:
    """Accepts MPC connections for this party and hands each to its run's worker."""

    def __init__(self, config: PartyConfig, route: Route) -> None:
        self.config = config
        self.route = route
        self.index = config.consortium.index(config.name)
        self.parties = len(config.consortium.parties)
        self._server: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

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
            if len(self._pending) >= MAX_PENDING:
                logger.warning("MPC listener: %d connections pending; one refused", MAX_PENDING)
                conn.close()
                continue
            task = loop.create_task(self._handle(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handle(self, conn: socket.socket) -> None:
        peer = _peer(conn)
        try:
            conn.setblocking(False)
            header = await asyncio.wait_for(_read_header(conn), HEADER_TIMEOUT)
            parsed = parse_header(header, self.parties, self.index) if header else None
            if parsed is None:
                logger.info("MPC listener: malformed header from %s dropped", peer)
                return
            run_id, sender = parsed
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


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a closed connection"
