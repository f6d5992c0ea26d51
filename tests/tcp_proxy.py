"""A small TCP proxy for tests and benchmarks: it forwards to one target, optionally after
a fixed one-way delay (a WAN stand-in where ``tc netem`` is not available), and can
record every byte in each direction (a wire tap). It runs its own event loop in a thread
and listens on loopback only."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Stream:
    """The bytes one proxied connection carried, per direction."""

    upstream: bytearray = field(default_factory=bytearray)  # client -> target
    downstream: bytearray = field(default_factory=bytearray)  # target -> client


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``(host, target_port)``; see the module doc."""

    def __init__(self, host: str, target_port: int, *, delay: float = 0.0,
                 record: bool = False, listen_host: str = "127.0.0.1") -> None:
        self.host, self.target_port, self.delay, self.record = host, target_port, delay, record
        self.listen_host = listen_host
        self.streams: list[Stream] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, self.listen_host, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(self.host,
                                                                         self.target_port)
        except OSError:
            writer.close()
            return
        stream = Stream()
        self.streams.append(stream)
        await asyncio.gather(self._pipe(reader, target_writer, stream.upstream),
                             self._pipe(target_reader, writer, stream.downstream),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    tape: bytearray) -> None:
        """Copy one direction, each chunk ``delay`` s after it arrived (order kept)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(send())
        try:
            while chunk := await reader.read(65536):
                if self.record:
                    tape += chunk
                queue.put_nowait((time.monotonic() + self.delay, chunk))
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            await sender


def tls_records(data: bytes) -> list[int]:
    """The content types of the TLS records ``data`` consists of; raises ValueError at the
    first byte that is not a well-formed TLS record header (a trailing partial record,
    cut off when the connection closed, is allowed)."""
    types, at = [], 0
    while at + 5 <= len(data):
        kind, major, minor = data[at], data[at + 1], data[at + 2]
        length = int.from_bytes(data[at + 3:at + 5], "big")
        if kind not in (20, 21, 22, 23) or major != 3 or minor not in (1, 3) or \
                length > 2 ** 14 + 256:
            raise ValueError(f"not a TLS record at byte {at}: {data[at:at + 16]!r}")
        types.append(kind)
        at += 5 + length
    return types


def route_through_proxies(folder, *, delay: float = 0.0, record: bool = False,
                          links: tuple[str, ...] = ("port", "mpc_port")) -> list[TcpProxy]:
    """Put a proxy in front of every party's kernel and MPC ports of the local consortium
    files in ``folder`` (as :func:`~ppa_kernel.analyst.local.write_local_config` writes
    them): the consortium file then names the proxies, and each party file binds the
    kernel to its old ports (``listen_port``, ``listen_mpc_port``). Returns the started
    proxies (stop them afterwards)."""
    import tomllib
    from pathlib import Path

    folder = Path(folder)
    path = folder / "consortium.toml"
    text = path.read_text()
    proxies = []
    for party in tomllib.loads(text)["party"]:
        own = folder / f"{party['name']}.toml"
        bind = []
        for key in links:
            proxy = TcpProxy("127.0.0.1", party[key], delay=delay, record=record).start()
            proxies.append(proxy)
            text = text.replace(f"\n{key} = {party[key]}\n", f"\n{key} = {proxy.port}\n")
            bind.append(f"listen_{key} = {party[key]}")
        own.write_text(own.read_text().replace("[party]\n", "[party]\n" + "\n".join(bind)
                                               + "\n", 1))
    path.write_text(text)
    return proxies
