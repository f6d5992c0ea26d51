"""Worker-to-worker links: mutually authenticated TLS, bound to the party and the run.

No MPyC here (the adapter, :mod:`.runtime`, attaches the links to MPyC). The lower MPC
index dials the higher, as in MPyC. A dialer opens TCP to the peer's *kernel* (its
:class:`~ppa_kernel.party.mpc_listener.MPCListener`), writes one plain header line
``PPA-MPC/2 <run_id> <from> <to> <time> <nonce> <signature>`` signed with its party's
key (the kernel checks it before it starts or routes anything), and then runs TLS 1.3
with the worker the kernel handed the connection to. Both ends present their party's
pinned certificate; each checks the other's fingerprint against the one pinned for the
index it expects, and inside TLS both send a binding line (run, from, to, plan hash,
role) that the other must find equal to its own expectation. So a link cannot be made
by anyone without a party's key, cannot pass one party off as another, and cannot join
two different runs.

The acceptor drops (and logs) every connection that fails any check and keeps waiting
for the genuine one until the connect deadline: a stray or hostile connection never
disturbs the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ppa_kernel.contract.errors import PartyFailed, PartyUnreachable
from ppa_kernel.contract.expr import canonical_json
from ppa_kernel.contract.identity import (
    HANDSHAKE_TIMEOUT,
    Identity,
    IdentityError,
    Pin,
    client_context,
    fingerprint,
    normalise_fingerprint,
    peer_fingerprint,
    server_context,
)
from ppa_kernel.contract.plan import plan_hash

if TYPE_CHECKING:
    from ppa_kernel.party.job import Job

logger = logging.getLogger(__name__)

HEADER_MAGIC = "PPA-MPC/2"
MAX_HEADER = 256
"""Bytes a header line may take, newline included."""

HEADER_TIMEOUT = 2.0
"""Seconds a connection may take to send its header."""

MAX_BINDING = 512
"""Bytes a binding line may take, newline included."""

RETRY_FIRST, RETRY_MAX = 0.2, 0.5
"""Backoff (seconds) between a dialer's attempts while the peer's kernel refuses."""

MAX_PENDING_HANDSHAKES = 16
"""Handed-off connections a worker authenticates at once; more are dropped."""

_RUN_ID = re.compile(r"[0-9a-f]{8,64}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,3}")
_STAMP = re.compile(r"[1-9][0-9]{0,11}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_REFUSED_US = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_REQUIRED")
"""TLS alerts meaning the peer does not accept our certificate."""


class LinkRefused(Exception):
    """One connection failed a check (dropped, logged; the run goes on)."""


# -- Wire format ------------------------------------------------------------------------


class Header(NamedTuple):
    """A parsed header line: who dials whom for which run, when, signed by the dialler."""

    run_id: str
    sender: int
    receiver: int
    stamp: int  # seconds since the epoch, when the dialler made it
    nonce: str
    signed: bytes  # the text the signature covers
    signature: bytes


def format_header(run_id: str, sender: int, receiver: int, identity: Identity,
                  now: float | None = None) -> bytes:
    """The plain line a dialler sends its peer's kernel before TLS, signed with the
    dialling party's key (so no one else can make a kernel start a waiting run)."""
    stamp = int(time.time() if now is None else now)
    text = f"{HEADER_MAGIC} {run_id} {sender} {receiver} {stamp} {secrets.token_hex(16)}"
    signature = base64.b64encode(identity.key.sign(text.encode("ascii"))).decode()
    line = f"{text} {signature}\n".encode("ascii")
    if parse_header(line, max(sender, receiver) + 1, receiver) is None:
        raise ValueError(f"unusable run id {run_id!r} or index {sender!r}")
    return line


def parse_header(line: bytes, parties: int, own: int) -> Header | None:
    """The header of a line, or None unless it is well formed: at most
    :data:`MAX_HEADER` bytes ending in one newline, a run id of 8 to 64 lowercase hex
    digits, a sender index in range(parties) other than ``own``, ``own`` as receiver, a
    time, a 32-hex-digit nonce and a base64 signature (checked by :func:`signed_by`)."""
    if not 0 < len(line) <= MAX_HEADER or not line.endswith(b"\n") or line.count(b"\n") != 1:
        return None
    try:
        magic, run_id, index, to, stamp, nonce, signature = \
            line[:-1].decode("ascii").split(" ")
        raw = base64.b64decode(signature, validate=True)
    except (UnicodeDecodeError, ValueError):
        return None
    if magic != HEADER_MAGIC or not _RUN_ID.fullmatch(run_id) or \
            not _INDEX.fullmatch(index) or not _INDEX.fullmatch(to) or \
            not _STAMP.fullmatch(stamp) or not _NONCE.fullmatch(nonce) or len(raw) != 64:
        return None
    sender = int(index)
    if not sender < parties or sender == own or int(to) != own:
        return None
    signed = line[:line.rindex(b" ")]
    return Header(run_id, sender, own, int(stamp), nonce, signed, raw)


def signed_by(header: Header, pin: Pin) -> bool:
    """Whether the party of ``pin`` signed the header."""
    try:
        pin.public_key().verify(header.signature, header.signed)
    except (InvalidSignature, IdentityError):
        return False
    return True


def binding_line(run_id: str, dialer: int, acceptor: int, plan: str, role: str) -> bytes:
    """What one end of a link says inside TLS: the run, both indices, the plan hash and
    its role (``dial`` or ``accept``, so a line cannot be reflected)."""
    body = {"link": "ppa-mpc/1", "run": run_id, "from": dialer, "to": acceptor,
            "plan": plan, "role": role}
    return canonical_json(body).encode() + b"\n"


# -- Settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkSettings:
    """What a worker needs to make its links, all from its job (the party's own files)."""

    run_id: str
    index: int
    names: list[str]
    addresses: list[str]
    identity: Identity
    pins: list[Pin]
    plan_hash: str
    connect_timeout: float

    @classmethod
    def from_job(cls, job: Job) -> LinkSettings:
        """Load the identity and pins a job names; refuse a certificate not pinned."""
        pins = []
        for name, pem, expected in zip(job.names, job.peer_certificates, job.fingerprints,
                                       strict=True):
            cert = x509.load_pem_x509_certificate(pem.encode())
            if fingerprint(cert) != normalise_fingerprint(expected):
                raise PartyFailed(f"the job's certificate for {name} is not the pinned one",
                                  party=job.party)
            pins.append(Pin(name, cert, fingerprint(cert)))
        identity = Identity.load(job.certificate, job.key)
        if identity.fingerprint != pins[job.index].fingerprint:
            raise PartyFailed("this party's certificate is not the one pinned for it",
                              party=job.party)
        return cls(job.run_id, job.index, list(job.names), list(job.addresses), identity,
                   pins, plan_hash(job.plan), job.connect_timeout)

    @property
    def party(self) -> str:
        return self.names[self.index]

    def binding(self, dialer: int, acceptor: int, role: str) -> bytes:
        return binding_line(self.run_id, dialer, acceptor, self.plan_hash, role)


# -- An authenticated link --------------------------------------------------------------


class _Handshake(asyncio.Protocol):
    """Buffers what arrives until the link is handed to its real protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = bytearray()
        self.lost: tuple[Exception | None] | None = None  # (exc,) once the connection ended
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        self._wake()

    def eof_received(self) -> bool:
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readline(self, limit: int) -> bytes:
        """One line (newline included) of at most ``limit`` bytes."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) >= limit:
                raise LinkRefused("line too long")
            if self.lost is not None:
                if isinstance(self.lost[0], ssl.SSLError):
                    raise self.lost[0]  # e.g. the peer's alert refusing our certificate
                raise LinkRefused(f"closed ({self.lost[0] or 'end of stream'})")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if end + 1 > limit:
            raise LinkRefused("line too long")
        line = bytes(self.buffer[:end + 1])
        del self.buffer[:end + 1]
        return line


@dataclass
class Link:
    """An authenticated, bound TLS connection to the worker of party ``peer``."""

    peer: int
    dialed: bool  # we dialed (lower index) or accepted
    transport: asyncio.Transport
    _handshake: _Handshake = field(repr=False)

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Hand the link to ``protocol``, with the bytes that came after the binding."""
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        pending = bytes(self._handshake.buffer)
        self._handshake.buffer.clear()
        if pending:
            protocol.data_received(pending)
        if self._handshake.lost is not None:
            protocol.connection_lost(self._handshake.lost[0])

    def close(self) -> None:
        self.transport.close()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _dial_once(settings: LinkSettings, peer: int, context: ssl.SSLContext) -> Link:
    loop = asyncio.get_running_loop()
    host, port = _split_address(settings.addresses[peer])
    plain, handshake = await loop.create_connection(_Handshake, host, port)
    try:
        plain.write(format_header(settings.run_id, settings.index, peer, settings.identity))
        transport = await loop.start_tls(plain, handshake, context, server_hostname="",
                                         ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    except BaseException:
        plain.abort()
        raise
    if transport is None:
        plain.abort()
        raise LinkRefused("closed during TLS")
    try:
        seen = peer_fingerprint(transport.get_extra_info("ssl_object"))
        if seen != settings.pins[peer].fingerprint:  # the context trusts only this pin
            raise _wrong_certificate(settings, peer, seen)
        transport.write(settings.binding(settings.index, peer, "dial"))
        try:
            reply = await handshake.readline(MAX_BINDING)
        except LinkRefused as exc:
            raise LinkRefused(f"its worker closed the link after TLS ({exc}): it refuses "
                              "this party's certificate or binding, or is not ready") from None
        if reply != settings.binding(settings.index, peer, "accept"):
            raise _different_plans(settings, peer)
        return Link(peer, True, transport, handshake)
    except BaseException:
        transport.abort()
        raise


def _different_plans(settings: LinkSettings, peer: int) -> PartyFailed:
    return PartyFailed(f"the parties were sent different plans (the MPC worker of "
                       f"{settings.names[peer]} is bound to another plan for this run)",
                       party=settings.party, hint="send every party the same plan")


def _other_plan(line: bytes, settings: LinkSettings, peer: int) -> bool:
    """Whether ``line`` is the dialler's binding for this run and link, with another plan."""
    try:
        body = json.loads(line)
    except ValueError:
        return False
    expected = json.loads(settings.binding(peer, settings.index, "dial"))
    return isinstance(body, dict) and body.keys() == expected.keys() and \
        body["plan"] != expected["plan"] and \
        all(body[k] == expected[k] for k in expected if k != "plan")


def _wrong_certificate(settings: LinkSettings, peer: int, seen: str | None) -> PartyFailed:
    name = settings.names[peer]
    return PartyFailed(f"the MPC address of {name} ({settings.addresses[peer]}) presented a "
                       f"certificate that is not the one pinned for {name}"
                       + (f" ({seen})" if seen else ""), party=settings.party,
                       hint=f"check the consortium file's address and fingerprint for {name}")


async def dial(settings: LinkSettings, peer: int, deadline: float,
               errors: dict[int, str]) -> Link | None:
    """Link to the worker of ``peer`` (a higher index), retrying while its kernel
    refuses, until ``deadline`` (loop time; then None, the last failure in ``errors``).
    A peer holding the wrong certificate, or refusing ours, is a hard error."""
    loop = asyncio.get_running_loop()
    context = client_context(settings.identity, [settings.pins[peer]])
    name, delay = settings.names[peer], RETRY_FIRST
    while (remaining := deadline - loop.time()) > 0:
        try:
            return await asyncio.wait_for(_dial_once(settings, peer, context), remaining)
        except ssl.SSLCertVerificationError:
            raise _wrong_certificate(settings, peer, None) from None
        except ssl.SSLError as exc:
            if any(reason in str(exc).upper() for reason in _REFUSED_US):
                raise PartyFailed(f"the MPC worker of {name} refused this party's "
                                  "certificate", party=settings.party,
                                  hint=f"{name}'s consortium file must pin this party's "
                                       "current certificate") from None
            errors[peer] = f"TLS: {exc}"
        except (OSError, LinkRefused, TimeoutError, asyncio.IncompleteReadError) as exc:
            errors[peer] = str(exc) or type(exc).__name__
        logger.debug("link to %s not made yet: %s", name, errors.get(peer))
        await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
        delay = min(delay * 1.5, RETRY_MAX)
    return None


# -- Accepting hand-offs ------------------------------------------------------------------


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def receive_handoff(handoff: socket.socket) -> tuple[bytes, socket.socket | None] | None:
    """The next (header, connection) the kernel hands over; None once it has closed."""
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(handoff, MAX_HEADER + 32, 1)
        except (BlockingIOError, InterruptedError):
            await _readable(handoff)
            continue
        if not data and not fds:
            return None
        return data, (socket.socket(fileno=fds[0]) if fds else None)


class Acceptor:
    """Takes the connections the kernel hands over and keeps the authentic ones: one
    per lower peer (a later authentic one replaces an earlier one)."""

    def __init__(self, settings: LinkSettings, handoff: socket.socket) -> None:
        self.settings = settings
        self.handoff = handoff
        self.links: dict[int, Link] = {}
        self.expected = set(range(settings.index))
        self.complete = asyncio.Event()  # every lower peer linked, or a failure
        self.failure: PartyFailed | None = None  # a hard failure that ends the run
        self._pending: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._context = server_context(settings.identity,
                                       settings.pins[:settings.index]) if settings.index else None
        if not self.expected:
            self.complete.set()

    def start(self) -> None:
        self.handoff.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            await self._serve_handoffs()
        except OSError as exc:
            logger.error("hand-off socket failed: %s", exc)

    async def _serve_handoffs(self) -> None:
        while (item := await receive_handoff(self.handoff)) is not None:
            header, conn = item
            if conn is None:
                logger.warning("hand-off without a connection ignored")
                continue
            if len(self._pending) >= MAX_PENDING_HANDSHAKES:
                logger.warning("too many MPC connections in handshake; one dropped")
                conn.close()
                continue
            task = asyncio.get_running_loop().create_task(self._take(header, conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        logger.info("the party kernel closed the hand-off socket")

    async def _take(self, header: bytes, conn: socket.socket) -> None:
        try:
            link = await asyncio.wait_for(self._authenticate(header, conn),
                                          HANDSHAKE_TIMEOUT + 1.0)
        except Exception as exc:  # any failure drops this connection only
            logger.warning("MPC connection dropped (%s): %s", _describe(header),
                           str(exc) or type(exc).__name__)
            conn.close()
            return
        if (old := self.links.get(link.peer)) is not None:
            logger.info("the worker of %s linked again; keeping the newer link",
                        self.settings.names[link.peer])
            old.close()
        self.links[link.peer] = link
        logger.info("linked with the worker of %s", self.settings.names[link.peer])
        if set(self.links) == self.expected:
            self.complete.set()

    async def _authenticate(self, header: bytes, conn: socket.socket) -> Link:
        settings = self.settings
        parsed = parse_header(header, len(settings.names), settings.index)
        if parsed is None or parsed.sender > settings.index:
            raise LinkRefused("malformed header")
        run_id, peer = parsed.run_id, parsed.sender
        if run_id != settings.run_id:
            raise LinkRefused(f"for another run ({run_id})")
        conn.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, handshake = await loop.connect_accepted_socket(
            _Handshake, sock=conn, ssl=self._context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        try:
            seen = peer_fingerprint(transport.get_extra_info("ssl_object"))
            if seen != settings.pins[peer].fingerprint:
                owner = next((p.name for p in settings.pins if p.fingerprint == seen), None)
                raise LinkRefused(f"claims to be {settings.names[peer]} but holds "
                                  f"{owner + chr(39) + 's' if owner else 'an unknown'} "
                                  "certificate")
            line = await handshake.readline(MAX_BINDING)
            if line != settings.binding(peer, settings.index, "dial"):
                if _other_plan(line, settings, peer):  # an authenticated peer, this run
                    transport.write(settings.binding(peer, settings.index, "accept"))
                    transport.close()  # flushes our binding: the dialler fails at once
                    self.failure = _different_plans(settings, peer)
                    self.complete.set()
                    raise LinkRefused("bound to another plan for this run")
                raise LinkRefused(f"binding does not match this run and plan: {line[:200]!r}")
            transport.write(settings.binding(peer, settings.index, "accept"))
            return Link(peer, False, transport, handshake)
        except BaseException:
            if not transport.is_closing():  # a closing one is flushing our last word
                transport.abort()
            raise

    async def close(self) -> None:
        """Stop taking hand-offs (the kernel then refuses late connections)."""
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.handoff.close()


def _describe(header: bytes) -> str:
    return repr(header[:MAX_HEADER].decode("ascii", "replace").strip())


# -- Making every link ------------------------------------------------------------------


async def establish(settings: LinkSettings, handoff: socket.socket | None) -> dict[int, Link]:
    """Authenticated links to every other party's worker, by index, within the connect
    timeout; else :class:`PartyUnreachable` naming the missing parties. ``handoff`` is
    this worker's end of the kernel's hand-off socket (None only for index 0); it is
    closed before returning."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.connect_timeout
    errors: dict[int, str] = {}
    acceptor = None
    if settings.index:
        if handoff is None:
            raise ValueError("a worker with lower peers needs its hand-off socket")
        acceptor = Acceptor(settings, handoff)
        acceptor.start()
    elif handoff is not None:
        handoff.close()
    higher = range(settings.index + 1, len(settings.names))
    dials = {j: loop.create_task(dial(settings, j, deadline, errors)) for j in higher}
    waits = list(dials.values())
    if acceptor is not None:
        waits.append(loop.create_task(acceptor.complete.wait()))
    try:
        await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()),
                           return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        if acceptor is not None:
            await acceptor.close()
    links: dict[int, Link] = dict(acceptor.links) if acceptor is not None else {}
    failure: BaseException | None = acceptor.failure if acceptor is not None else None
    for j, task in dials.items():
        if task.cancelled():
            continue
        if task.exception() is not None:
            failure = failure or task.exception()
        elif (link := task.result()) is not None:
            links[j] = link
    missing = [j for j in range(len(settings.names)) if j != settings.index and j not in links]
    if failure is not None or missing:
        for link in links.values():
            link.close()
        raise failure or _unreachable(settings, missing, errors)
    return links


def _unreachable(settings: LinkSettings, missing: Iterable[int],
                 errors: dict[int, str]) -> PartyUnreachable:
    names = [settings.names[j] for j in missing]
    details = "; ".join(f"{settings.names[j]}: {errors[j]}" for j in missing if j in errors)
    return PartyUnreachable(
        f"could not connect to the MPC worker of {', '.join(names)} within "
        f"{settings.connect_timeout:g} s" + (f" (last error: {details})" if details else ""),
        party=settings.party,
        hint="check that every party kernel is running, was sent this run, and that its "
             "mpc_port is reachable")
