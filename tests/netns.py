"""A private test network of Linux network namespaces, one per simulated host.

    with Network(["insurer", "hospital", "bureau", "analyst"]) as net:
        net.address("insurer")                      # "10.231.0.11"
        net.run("analyst", ["python", "-c", "..."])  # under `ip netns exec`

Each host is a namespace of its own with loopback up and one veth interface ``eth0``
holding an address in :data:`SUBNET`; the other ends of the veth pairs hang on a bridge
``br0`` in a "switch" namespace. Nothing is added to the namespace the tests run in (both
ends of every veth pair are created directly inside the test's namespaces), no namespace
has a default route, so the hosts reach only each other and their own loopback. As the
addresses exist only inside one network's namespaces, parallel networks do not clash.

Namespaces are named ``ppa-mh<pid>-<host>`` (:data:`PREFIX`, the creating process's id);
:func:`clean_leftovers` deletes those of processes that are gone. Needs root and ``ip``
(:func:`unavailable` says why not). Processes a test starts in a namespace are its own
to stop: :meth:`Network.destroy` refuses to leave a namespace behind that still holds one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "ppa-mh"
SUBNET = "10.231.0"
"""The test network is SUBNET.0/24; the hosts get SUBNET.11, .12, ... in order."""
FIRST_HOST = 11
SWITCH = "switch"
IP_TIMEOUT = 10.0
_NAME = re.compile(rf"^{PREFIX}(\d+)-[A-Za-z0-9_.-]+$")


class NetnsError(RuntimeError):
    """An `ip` command failed (the message holds its stderr)."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None."""
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    return None


def ip(*args: str, check: bool = True, timeout: float = IP_TIMEOUT) -> str:
    """Run ``ip ARGS``; its stdout (NetnsError on failure when ``check``)."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out.stdout


def namespaces() -> list[str]:
    """Names of all network namespaces ``ip netns`` knows."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """Processes running in a namespace."""
    return [int(p) for p in ip("netns", "pids", namespace, check=False).split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers() -> list[str]:
    """Delete this harness's namespaces whose creating process is gone; return their names.

    Processes still inside them are not ours to end (a kernel started with
    ``--exit-with-parent`` stops by itself); the namespace then lives on, unnamed, until
    they exit.
    """
    removed = []
    for name in namespaces():
        match = _NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


class Network:
    """Hosts (namespaces) on one bridge, addressed SUBNET.11, SUBNET.12, ... (see module)."""

    def __init__(self, hosts: Sequence[str]):
        if len(set(hosts)) != len(hosts) or SWITCH in hosts:
            raise ValueError(f"host names must be distinct and not {SWITCH!r}")
        if len(hosts) > 200:
            raise ValueError("at most 200 hosts")
        self.hosts = list(hosts)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-{SWITCH}"
        self._made: list[str] = []

    # ------------------------------------------------------------------ naming
    def namespace(self, host: str) -> str:
        if host not in self.hosts:
            raise KeyError(host)
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{FIRST_HOST + self.hosts.index(host)}"

    @property
    def all_namespaces(self) -> list[str]:
        return [self.switch, *(self.namespace(h) for h in self.hosts)]

    # ------------------------------------------------------------------ life cycle
    def create(self) -> Network:
        """Make the switch and the hosts; on any failure remove what was made and raise."""
        try:
            self._add(self.switch)
            ip("-n", self.switch, "link", "set", "lo", "up")
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge",
               "forward_delay", "0", "stp_state", "0")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                ns, port = self.namespace(host), f"port{i}"
                self._add(ns)
                ip("link", "add", "eth0", "netns", ns, "type", "veth",
                   "peer", "name", port, "netns", self.switch)
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy(force=True)
            raise
        return self

    def _add(self, ns: str) -> None:
        if ns in namespaces():  # our own pid's: a network this process did not remove
            ip("netns", "delete", ns)
        ip("netns", "add", ns)
        self._made.append(ns)

    def destroy(self, *, force: bool = False) -> None:
        """Delete the namespaces. Raises if a process still runs in one (the test must stop
        what it started) unless ``force``; raises if a namespace is still listed after."""
        busy = {ns: pids_in(ns) for ns in self._made}
        busy = {ns: pids for ns, pids in busy.items() if pids}
        for ns in reversed(self._made):
            ip("netns", "delete", ns, check=False)
        left = [ns for ns in self._made if ns in namespaces()]
        self._made = []
        if left:
            raise NetnsError(f"namespaces not deleted: {left}")
        if busy and not force:
            raise NetnsError(f"processes still running in deleted namespaces: {busy}")

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy(force=exc[0] is not None)

    # ------------------------------------------------------------------ running
    def argv(self, host: str, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run inside a host's namespace (``ip netns exec`` execs it: the process
        keeps the pid Popen returns, and its parent is the caller)."""
        return ["ip", "netns", "exec", self.namespace(host), *map(str, argv)]

    def run(self, host: str, argv: Sequence[str | Path], *, timeout: float,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a command in a host's namespace to completion (text output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(host, argv), timeout=timeout, **kwargs)

    def popen(self, host: str, argv: Sequence[str | Path], **kwargs) -> subprocess.Popen:
        """Start a command in a host's namespace."""
        return subprocess.Popen(self.argv(host, argv), **kwargs)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> str:
    """End a process we started, by its pid: SIGTERM, then SIGKILL after ``grace`` s.
    Returns how it ended: "exited", "terminated" or "killed"."""
    if proc.poll() is not None:
        return "exited"
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return "exited"
    try:
        proc.wait(timeout=grace)
        return "terminated"
    except subprocess.TimeoutExpired:
        pass
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    return "killed"


def wait_for_line(proc: subprocess.Popen, stdout: Path, markers: Sequence[str],
                  timeout: float) -> str | None:
    """The first line of ``stdout`` (a file the process writes) starting with one of the
    markers; None if the process exits or ``timeout`` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        text = stdout.read_text(errors="replace") if stdout.exists() else ""
        for line in text.splitlines():
            if line.startswith(tuple(markers)):
                return line
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.1)
