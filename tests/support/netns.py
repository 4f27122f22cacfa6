"""Several "hosts" on one machine: Linux network namespaces that the tests create themselves.

A :class:`Network` is a private L2 segment: a bridge inside a namespace of its own (the
"switch"), and one namespace per host, each joined to the bridge by a veth pair and given an
address in ``10.77.0.0/24``. Nothing is added to the machine's own namespace, so traffic stays
among namespaces the test created; they are deleted at the end (and stale ones of dead test
processes at the start).

Code runs "on" a host through :meth:`Host.run`: a fresh thread that enters the host's
namespace (``setns``) and calls the function there. Sockets that function opens, and every
child process it starts (a child inherits the calling thread's namespace), live on that host.
So ``host.run(head.start)`` starts a Ray head on ``host``, and ``host.run(asyncio.run, coro)``
runs a NATS client there.

Needs root (``CAP_SYS_ADMIN``) and ``ip`` from iproute2; :func:`netns_unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/var/run/netns"
_PREFIX = "swf"
SUBNET = "10.77.0"
IP_TIMEOUT_S = 20.0


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise OSError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def netns_unavailable() -> str | None:
    """Why this machine cannot run namespace tests, or None when it can."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except OSError as exc:
        return f"the kernel refused a network namespace: {exc}"
    with contextlib.suppress(OSError):
        _ip("netns", "delete", probe)
    return None


def remove_stale_namespaces() -> None:
    """Delete ``swf<pid>-*`` namespaces left by test processes that are gone (a killed run)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(_NETNS_DIR):
            match = re.fullmatch(rf"{_PREFIX}(\d+)-.+", name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                with contextlib.suppress(OSError):
                    _ip("netns", "delete", name)


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{_NETNS_DIR}/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """One namespace on the network: a name, an address, and a way to run code there."""

    name: str
    netns: str
    ip: str
    link: str  # the veth end on the switch: down = this host is cut off

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in a thread inside this host's namespace; return its result or raise."""
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                _enter(self.netns)
                result.append(fn(*args, **kwargs))
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run on this host (for subprocesses started from anywhere)."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Network:
    """A bridge in a switch namespace and hosts attached to it (see the module docstring)."""

    tag: str = "net"
    hosts: dict[str, Host] = field(default_factory=dict)
    _switch: str = ""

    def __post_init__(self) -> None:
        self._base = f"{_PREFIX}{os.getpid()}-{self.tag}"
        self._switch = f"{self._base}-sw"

    def create(self) -> Network:
        remove_stale_namespaces()
        _ip("netns", "add", self._switch)
        _ip("link", "set", "lo", "up", netns=self._switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self._switch)
        _ip("link", "set", "br0", "up", netns=self._switch)
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` on the bridge, with the next free address."""
        index = len(self.hosts) + 1
        netns = f"{self._base}-{name}"
        link = f"v{index}"
        ip = f"{SUBNET}.{index}"
        _ip("netns", "add", netns)
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns, netns=self._switch)
        _ip("link", "set", link, "master", "br0", netns=self._switch)
        _ip("link", "set", link, "up", netns=self._switch)
        _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        # A default route makes "which address reaches the world" (Ray's node-IP guess) answer
        # eth0's address; nothing routes past the bridge, so no packet leaves the network.
        _ip("route", "add", "default", "dev", "eth0", netns=netns)
        host = Host(name=name, netns=netns, ip=ip, link=link)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Partition ``host`` from everyone else (its switch port goes down)."""
        _ip("link", "set", host.link, "down", netns=self._switch)

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.link, "up", netns=self._switch)

    def delete(self) -> None:
        """Delete every namespace of this network (their veth pairs go with them)."""
        for host in self.hosts.values():
            with contextlib.suppress(OSError):
                _ip("netns", "delete", host.netns)
        with contextlib.suppress(OSError):
            _ip("netns", "delete", self._switch)
        self.hosts.clear()


@contextlib.contextmanager
def network(tag: str, *hosts: str) -> Iterator[Network]:
    """A :class:`Network` with ``hosts`` (in order: the first gets ``.1``), deleted on exit."""
    net = Network(tag)
    try:
        net.create()
        for name in hosts:
            net.add_host(name)
        yield net
    finally:
        net.delete()
