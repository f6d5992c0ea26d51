"""The MPyC adapter: the only module that imports MPyC or touches its private names.

MPyC parses ``sys.argv`` and builds its global runtime when ``mpyc.runtime`` is first
imported, so only the worker process imports this module, after it has set ``sys.argv``.
It exports the runtime ``mpc`` (callers use its public API), the secure types the engine
uses, small wrappers for the MPyC internals the protocols need, and the adjustments to
MPyC 0.11 (the first, second and fifth installed on import, the truncation and the
random bits by :mod:`.truncation` and :mod:`.limb_fixed` when those are imported):

- **No pickle on the wire.** MPyC marshals NumPy share arrays between parties with
  ``pickle``; unpickling bytes from the network lets a peer (or anyone on an unprotected
  link) run code. :class:`WireCodec` replaces it with a strict format that carries only
  non-negative integers and arrays of them, and rejects anything else.
- **Fast share randomness.** MPyC draws every Shamir coefficient with its own
  ``secrets.randbelow`` call (one system call each, 40% of linkage time). We draw them in
  bulk from ``os.urandom``, each 64 bits longer than the modulus, so each is within
  statistical distance 2^-64 of uniform.
- **Cheap truncation.** Fixed-point truncation masks with pseudorandom shares instead of
  random bits (:mod:`.truncation`): a product of 100,000 fixed-point values took 160 s
  and now takes under 1 s.
- **Random bits without square roots.** Shared random bits over the value field come
  from :func:`.limb_fixed.random_bits` (a dealt bit XOR a PRSS bit; 26 µs per bit
  before, for a modular square root each), installed by :func:`use_random_bits` when
  :mod:`.limb_fixed` is imported.
- **A lost peer is an error, not a hang.** MPyC raises inside an asyncio callback when a
  connection drops, and then waits forever; we record the loss and stop the worker's
  event loop so it fails promptly, naming the peer.
- **Our links, not MPyC's.** :func:`connect` replaces ``mpc.start()``: the links are made
  and authenticated by :mod:`.links` (TLS with pinned certificates, bound to the run) and
  attached to MPyC through :class:`LinkExchanger`, which also carries heartbeats; a
  watchdog fails the run when a peer stalls, and ends an orphaned worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
from mpyc import asyncoro, thresha
from mpyc import runtime as mpyc_runtime
from mpyc.asyncoro import mpc_coro
from mpyc.runtime import Runtime, mpc

from .limbs import LINK, VALUE, split_ints
from .links import Link, LinkSettings, establish

if TYPE_CHECKING:
    from ppa_kernel.party.job import Job

__all__ = ["CLOSED_PEERS", "HEARTBEAT_INTERVAL", "LOST_PEERS", "MPYC_RANDOM_BITS", "ORPHANED",
           "STALLED_PEERS", "LinkExchanger", "PeerLost", "Runtime", "WireCodec",
           "allow_disconnects", "connect", "exchange", "link_type", "lost_peers_failed", "mpc",
           "mpc_coro", "mpyc_random_bits", "np_random_split", "prss_input", "prss_keys",
           "random_field_array", "reshare", "shares", "use_random_bits", "use_truncation",
           "value_type", "wrap", "zero_sharing"]

logger = logging.getLogger(__name__)

LINK_FIELD_BITS = 128
"""Field size for link keys and the Legendre PRF (at least 2^128, see shared/ARCHITECTURE.md)."""

LINK_MODULUS = LINK.modulus
"""The link field's prime, 2^130 - 5 (:data:`.limbs.LINK`)."""

VALUE_MODULUS = VALUE.modulus
"""The value field's prime, 2^256 - 189 (:data:`.limbs.VALUE`): the largest prime below
2^256, and 3 mod 4 as MPyC's random bits want."""

VALUE_FIELD_BITS = 256
"""Field size for analysis values: room for sums of products of squared fixed-point values."""

COMPARE_BITS = 64
"""Bit length assumed by secure comparisons: compared values satisfy |v| < 2^63."""


@functools.cache
def link_type():
    """Secure prime-field type for link keys and PRF tags: GF(2^130 - 5), whose arithmetic
    :mod:`.limbs` vectorises."""
    assert LINK_MODULUS >= 1 << LINK_FIELD_BITS
    return mpc.SecFld(modulus=LINK_MODULUS)


@functools.cache
def value_type():
    """Secure integer type (64-bit comparisons) over GF(2^256 - 189), whose arithmetic
    :mod:`.limbs` vectorises."""
    assert VALUE_MODULUS.bit_length() == VALUE_FIELD_BITS and VALUE_MODULUS % 4 == 3
    return mpc.SecInt(COMPARE_BITS, p=VALUE_MODULUS)


async def shares(x) -> np.ndarray:
    """This party's shares of secure array ``x`` as an object array of field values."""
    share = await mpc.gather(x)
    return share.value


def wrap(sectype, values: np.ndarray, *, reduced: bool = False):
    """Secure array of ``sectype`` holding ``values`` as this party's local shares
    (``reduced``: the values are already in range(p), as limb arrays' integers are).

    Only for results of local linear operations on shares (no communication, no opening).
    """
    field = sectype.field
    values = np.asarray(values, dtype=object)
    return sectype.array(field.array(values if reduced else values % field.modulus, check=False))


# -- Wrappers for the MPyC internals the protocols use -----------------------------------

FieldArray = Any
"""An MPyC finite-field array (``field.array``); MPyC types are made at run time."""


def random_field_array(field_or_sectype: Any, n: int, bound: int | None = None) -> Any:
    """This party's shares of ``n`` secret random values, without communication (PRSS):
    a field array, or a secure array if given a secure type. Uniform in the field or,
    given ``bound``, each a sum of d = :func:`~.truncation.carry_bound` terms uniform below
    the largest power of two at most ``bound / d``. Under MPyC's ``no_prss`` option the
    parties communicate and the result must be awaited. Wraps ``Runtime._np_randoms``."""
    return mpc._np_randoms(field_or_sectype, n, bound)


async def reshare(x: FieldArray) -> FieldArray:
    """Fresh degree-t shares of the values of which field array ``x`` holds this party's
    shares of degree up to 2t (degree reduction, one round). Wraps ``Runtime._reshare``."""
    return await mpc._reshare(x)


def zero_sharing(field: Any, n: int) -> FieldArray:
    """This party's degree-2t pseudorandom shares of n zeros (PRSS, no communication).
    Wraps ``thresha.np_pseudorandom_share_0`` on a fresh ``Runtime._prss_uci()``."""
    m = len(mpc.parties)
    return thresha.np_pseudorandom_share_0(field, m, mpc.pid, mpc.prfs(field.order),
                                           mpc._prss_uci(), n)


def prss_input() -> bytes:
    """A fresh input, common to all parties, for pseudorandom sharings (it advances the
    program counter, so every call differs). Wraps ``Runtime._prss_uci``."""
    return mpc._prss_uci()


@mpc_coro
async def exchange(outgoing: Mapping[int, bytes], sources: list[int]):
    """Send ``outgoing[pid]`` to each peer and receive one message from each of
    ``sources``, all under one MPyC program counter; resolves to ``{pid: bytes}``.
    Wraps ``Runtime._send_message`` and ``_receive_message``."""
    await mpc.returnType(asyncio.Future)
    for pid, data in outgoing.items():
        mpc._send_message(pid, data)
    received = await mpc.gather([mpc._receive_message(pid) for pid in sources])
    return dict(zip(sources, received, strict=True))


def prss_keys() -> Mapping[Any, bytes]:
    """This party's secret PRSS keys by subset of m - t parties (exactly the members of a
    subset share its key). Wraps ``Runtime._prss_keys``."""
    return mpc._prss_keys


# -- No pickle on the wire; fast share randomness ----------------------------------------

_MAGIC = b"PPAW"


class WireCodec:
    """``dumps``/``loads`` for ints and integer arrays only (MPyC's ``pickle`` stand-in)."""

    @staticmethod
    def dumps(obj) -> bytes:
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            value = int(obj)
            sign = 1 if value < 0 else 0
            body = abs(value).to_bytes((abs(value).bit_length() + 7) // 8 or 1, "big")
            return _MAGIC + b"i" + bytes([sign]) + body
        array = np.asarray(obj, dtype=object)
        flat = array.reshape(-1).tolist()
        if flat and (min(flat) < 0 or not isinstance(flat[0], int)):
            raise TypeError("wire codec carries non-negative integers only")
        width = max(flat, default=0).bit_length() // 8 + 1
        head = struct.pack(">BH", array.ndim, width) + struct.pack(f">{array.ndim}Q", *array.shape)
        try:
            body = b"".join(map(int.to_bytes, flat, repeat(width), repeat("big")))
        except (AttributeError, TypeError) as exc:
            raise TypeError("wire codec carries non-negative integers only") from exc
        return _MAGIC + b"a" + head + body

    @staticmethod
    def loads(data: bytes):
        if data[:4] != _MAGIC:
            raise ValueError("unexpected message format from peer")
        kind = data[4:5]
        if kind == b"i":
            value = int.from_bytes(data[6:], "big")
            return -value if data[5] else value
        if kind != b"a":
            raise ValueError("unexpected message kind from peer")
        ndim, width = struct.unpack_from(">BH", data, 5)
        shape = struct.unpack_from(f">{ndim}Q", data, 8)
        start = 8 + 8 * ndim
        count = int(np.prod(shape)) if ndim else 1
        if len(data) != start + count * width:
            raise ValueError("truncated message from peer")
        return np.array(split_ints(data, start, count, width), dtype=object).reshape(shape)


def _bulk_randbelow(order: int, count: int) -> np.ndarray:
    """``count`` integers in range(order), statistically close to uniform."""
    width = (order.bit_length() + 64 + 7) // 8
    values = np.array(split_ints(os.urandom(width * count), 0, count, width), dtype=object)
    return values % order


def np_random_split(field, s, t, m):
    """Shamir shares of every secret in ``s`` (MPyC's function with bulk randomness)."""
    p = field.modulus
    if isinstance(s, field.array):
        s = s.value
    n = len(s)
    coefficients = _bulk_randbelow(field.order, t * n).reshape(t, n)
    if t == 1:  # f(X) = s + c X at X = 1..m, by repeated addition
        shares, value = [], s
        for _ in range(m):
            value = value + coefficients[0]
            shares.append(value % p)
        return np.array(shares, dtype=object).reshape(m, n)
    vander = np.vander(np.array(range(1, m + 1), dtype="O"), N=t + 1, increasing=True)
    return (vander @ np.concatenate((s.reshape(1, n), coefficients))) % p


# -- A lost peer is an error, not a hang ------------------------------------------------


class PeerLost(ConnectionError):
    """The connection to another party's worker dropped during a run."""


LOST_PEERS: list[int] = []
CLOSED_PEERS: list[int] = []  # of LOST_PEERS, those that closed cleanly (no error seen)
_shutting_down = False


def allow_disconnects() -> None:
    """Mark the orderly end of a run: peers closing connections is expected now."""
    global _shutting_down
    _shutting_down = True
    if _watchdog is not None:
        _watchdog.cancel()


def _connection_lost(self, exc):
    """``MessageExchanger.connection_lost``: record the peer and cancel the run's tasks.

    A peer closing at the end of the run is normal (debug). A clean close before that
    ends this run too, but is not yet an error: the peer may have stopped with an error
    of its own that this party is about to raise as well (the worker logs the loss only
    if the run fails of it, :func:`lost_peers_failed`). A broken connection is an error.
    """
    peer = getattr(self, "peer_pid", None)
    if _shutting_down and exc is None:
        logger.debug("party %s closed its link at the end of the run", peer)
        self.runtime.unset_protocol(self.peer_pid)
        return
    LOST_PEERS.append(peer)
    if exc is None:
        CLOSED_PEERS.append(peer)
        logger.debug("party %s closed its link before the end of the run", peer)
    else:
        logger.error("lost connection to party %s: %s", peer, exc)
    _cancel_run()


def lost_peers_failed(names: list[str]) -> None:
    """Log, once the run has failed of it, each peer that closed its link mid-run."""
    closed = [names[p] for p in dict.fromkeys(CLOSED_PEERS) if p is not None]
    if closed:
        logger.error("lost connection to the MPC worker of %s: closed before the end of "
                     "the run", ", ".join(closed))


def _running_tasks(loop):
    return [t for t in asyncio.all_tasks(loop) if not t.done()]


def _cancel_run() -> None:
    """Cancel every task of the run (but the caller's), so the worker fails promptly."""
    current = asyncio.current_task(mpc._loop) if mpc._loop.is_running() else None
    for task in _running_tasks(mpc._loop):
        if task is not current:
            task.cancel()


# -- Our links, not MPyC's --------------------------------------------------------------

HEARTBEAT_INTERVAL = 2.0
"""Seconds between heartbeats to each peer (and watchdog checks)."""

HEARTBEAT_SIZE = 0xFFFFFFFF
"""The payload size that marks a heartbeat frame (MPyC never sends a 4 GiB payload)."""

HEARTBEAT = struct.pack("<qI", 0, HEARTBEAT_SIZE)
"""A heartbeat: an MPyC frame header (pc, payload size) with no payload."""

STALLED_PEERS: list[int] = []
ORPHANED: list[int] = []  # the parent pid, once the kernel that started us has gone
_LINKS: dict[int, LinkExchanger] = {}
_watchdog: asyncio.Task | None = None


class LinkExchanger(asyncoro.MessageExchanger):
    """MPyC's exchanger on an authenticated link, its peer fixed by the handshake.

    ``dialed``: this party dialed (the lower index, MPyC's client) and sends its pid and
    PRSS keys first; otherwise the 2-byte pid the peer sends must be the authenticated
    one. Heartbeat frames (:data:`HEARTBEAT`) are skipped; any bytes count as a sign of
    life (:attr:`last_heard`).
    """

    def __init__(self, rt: Runtime, peer_pid: int, dialed: bool) -> None:
        super().__init__(rt, peer_pid)
        self.dialed = dialed
        self.identified = dialed
        self.last_heard = time.monotonic()

    def connection_made(self, transport) -> None:
        if self.dialed:
            super().connection_made(transport)  # sends pid and PRSS keys, registers us
        else:
            self.transport = transport

    def heartbeat(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(HEARTBEAT)

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        buffer = self.bytes
        buffer.extend(data)
        if not self.identified and not self._identify(buffer):
            return
        while len(buffer) >= 12:
            pc, payload_size = struct.unpack_from("<qI", buffer)
            if payload_size == HEARTBEAT_SIZE:
                del buffer[:12]
                continue
            end = 12 + payload_size
            if len(buffer) < end:
                break
            payload = bytes(buffer[12:end])
            del buffer[:end]
            if pc in self.buffers:
                self.buffers.pop(pc).set_result(payload)
            else:
                self.buffers[pc] = payload

    def _identify(self, buffer: bytearray) -> bool:
        """Read the peer's pid (it must be the authenticated one) and its PRSS keys."""
        if len(buffer) < 2:
            return False
        rt, claimed = self.runtime, int.from_bytes(buffer[:2], "little")
        if claimed != self.peer_pid:
            logger.error("party %s sent MPyC pid %s on its authenticated link; dropped",
                         self.peer_pid, claimed)
            self.transport.abort()  # connection_lost: the run fails, naming the peer
            buffer.clear()
            return False
        size = 0 if rt.options.no_prss else rt._prss_keys_from_peer(claimed)
        if len(buffer) < 2 + size:
            return False
        del buffer[:2]
        if size:
            rt._prss_keys_from_peer(claimed, buffer)
            del buffer[:size]
        self.identified = True
        rt.set_protocol(claimed, self)
        return True


def attach(links: Mapping[int, Link]) -> None:
    """Give MPyC the authenticated links, as ``mpc.start()`` would its own."""
    loop = mpc._loop
    for peer in mpc.parties:
        peer.protocol = asyncio.Future(loop=loop) if peer.pid == mpc.pid else None
    for pid, link in links.items():
        exchanger = LinkExchanger(mpc, pid, link.dialed)
        _LINKS[pid] = exchanger
        link.attach(exchanger)


async def _watch(stall_timeout: float, parent_pid: int) -> None:
    """Send heartbeats; fail the run when a peer stalls or our kernel has gone."""
    last_tick = responsive_since = time.monotonic()
    while not _shutting_down:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        now = time.monotonic()
        if now - last_tick > 2 * HEARTBEAT_INTERVAL:
            responsive_since = now  # our own loop was busy: peers' bytes may be queued
        last_tick = now
        if os.getppid() != parent_pid:
            ORPHANED.append(parent_pid)
            logger.error("the party kernel (pid %d) has gone; stopping", parent_pid)
            _cancel_run()
            return
        for pid, exchanger in _LINKS.items():
            exchanger.heartbeat()
            if now - max(exchanger.last_heard, responsive_since) > stall_timeout:
                STALLED_PEERS.append(pid)
                logger.error("the worker of party %d has sent nothing for %g s", pid,
                             stall_timeout)
                _cancel_run()
                return


async def connect(job: Job, parent_pid: int | None = None) -> None:
    """Replace ``mpc.start()``: authenticated links to every peer's worker (or
    :class:`~ppa_kernel.contract.errors.PartyUnreachable`), attached to MPyC, with
    heartbeats and a watchdog (stall timeout, orphan check) until the run ends."""
    global _watchdog
    settings = LinkSettings.from_job(job)
    parent = os.getppid() if parent_pid is None else parent_pid
    _watchdog = mpc._loop.create_task(_watch(job.stall_timeout, parent))
    handoff = socket.socket(fileno=job.handoff_fd) if job.handoff_fd >= 0 else None
    try:
        links = await establish(settings, handoff)
    except BaseException:
        _watchdog.cancel()
        raise
    attach(links)
    try:  # the PRSS keys follow the links at once
        await asyncio.wait_for(mpc.parties[mpc.pid].protocol, job.connect_timeout)
    except TimeoutError:
        missing = [job.names[p.pid] for p in mpc.parties
                   if p.pid != mpc.pid and p.protocol is None]
        raise PeerLost(f"no MPyC greeting from {', '.join(missing)}") from None
    mpc.start_time = time.time()


# -- Installing the patches -------------------------------------------------------------


def use_truncation(np_trunc: Callable, trunc: Callable) -> None:
    """Make MPyC's runtime truncate with ``np_trunc`` and ``trunc`` (:mod:`.truncation` calls
    this when it is imported; :mod:`.fixed` and the worker import it)."""
    Runtime.np_trunc = np_trunc
    Runtime.trunc = trunc


MPYC_RANDOM_BITS = Runtime.np_random_bits
"""MPyC's own ``Runtime.np_random_bits``."""


def use_random_bits(np_random_bits: Callable) -> None:
    """Make MPyC's runtime draw shared random bits with ``np_random_bits`` (same
    signature as ``Runtime.np_random_bits``; :mod:`.limb_fixed` calls this on import)."""
    Runtime.np_random_bits = np_random_bits


@contextlib.contextmanager
def mpyc_random_bits() -> Iterator[None]:
    """MPyC's own random bits inside the block (the reference that tests and benchmarks
    compare the installed ones with), the installed ones again after it."""
    installed = Runtime.np_random_bits
    Runtime.np_random_bits = MPYC_RANDOM_BITS
    try:
        yield
    finally:
        Runtime.np_random_bits = installed


def install() -> None:
    """Install the codec, bulk randomness and lost-peer patches (idempotent)."""
    mpyc_runtime.pickle = WireCodec
    thresha.np_random_split = np_random_split
    asyncoro.MessageExchanger.connection_lost = _connection_lost


install()
