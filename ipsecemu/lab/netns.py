"""Small pyroute2 helpers to build throw-away network namespaces for tests and the harness.

The plumbing underneath (entering a netns, netlink in it, running a command in it, polling) is
:mod:`ipsecemu.net`; the names are re-exported here for the harness and the benches.

``Netns`` is a context manager that creates named namespaces and veth pairs and always
removes what it created (namespaces only; deleting a namespace deletes its links).  It is
deliberately tiny: the full topology builder lives in :mod:`ipsecemu.lab.builder`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, netns

from ipsecemu.net.netns import NetnsError, entered, netlink, ns_argv, ns_exec
from ipsecemu.net.netns import sysctl as set_sysctls
from ipsecemu.net.proc import stop_popen, wait_for

__all__ = ["Netns", "NetnsError", "aping", "capture", "entered", "need_ping", "netlink", "ns_exec", "wait_for"]

MAX_IFNAME = 15


def _split(cidr: str) -> tuple[str, int, int]:
    iface = ipaddress.ip_interface(cidr)
    return str(iface.ip), iface.network.prefixlen, iface.version


class Netns:
    """Create namespaces and veth pairs; tear all of them down on exit (idempotent)."""

    def __init__(self) -> None:
        self.created: list[str] = []

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> Netns:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for name in reversed(self.created):
            try:
                netns.remove(name)
            except OSError:
                pass  # already gone: teardown must be idempotent
        self.created.clear()

    # -- building ----------------------------------------------------------------------
    def add(self, name: str, *, ipv6: bool = False) -> str:
        """Create namespace ``name`` with lo up.  IPv6 is off by default because charon
        reacts to IPv6 address events with MOBIKE updates (see notes/strongswan-netns.md)."""
        if name in netns.listnetns():
            raise NetnsError(f"netns {name!r} already exists")
        netns.create(name)
        self.created.append(name)
        # IPv6 off, or on without DAD delay (tests bind to fresh addresses right away)
        key, value = ("accept_dad", "0") if ipv6 else ("disable_ipv6", "1")
        set_sysctls(name, [(f"net.ipv6.conf.{scope}.{key}", value) for scope in ("all", "default")])
        netlink(name, lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up"))
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str,
             addrs_a: tuple[str, ...] = (), addrs_b: tuple[str, ...] = ()) -> None:
        """A veth pair ``ns_a:if_a`` <-> ``ns_b:if_b`` (both may be the same namespace),
        brought up with the given ``addr/prefix`` addresses."""
        for n in (if_a, if_b):
            if not 0 < len(n) <= MAX_IFNAME:
                raise NetnsError(f"link name {n!r}: must be 1..{MAX_IFNAME} characters")
        try:
            netlink(ns_a, lambda ipr: ipr.link("add", ifname=if_a, kind="veth",
                                               peer={"ifname": if_b, "net_ns_fd": ns_b}))
        except Exception as exc:  # pyroute2 raises NetlinkError (an OSError) with errno text
            raise NetnsError(f"veth {if_a}/{if_b}: {exc}") from exc
        for ns, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
            self.addrs(ns, ifname, *addrs)

    def addrs(self, ns: str, ifname: str, *cidrs: str) -> None:
        """Add addresses to ``ifname`` in ``ns`` and bring it up."""
        def do(ipr: IPRoute) -> None:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise NetnsError(f"no link {ifname!r} in netns {ns!r}")
            for cidr in cidrs:
                ip, plen, _v = _split(cidr)
                ipr.addr("add", index=idx[0], address=ip, prefixlen=plen)
            ipr.link("set", index=idx[0], state="up")

        netlink(ns, do)

    def bridge(self, ns: str, name: str, ports: tuple[str, ...], addrs: tuple[str, ...] = ()) -> None:
        """A Linux bridge ``name`` in ``ns`` with the given existing links as ports."""
        def do(ipr: IPRoute) -> None:
            ipr.link("add", ifname=name, kind="bridge")
            br = ipr.link_lookup(ifname=name)[0]
            for port in ports:
                idx = ipr.link_lookup(ifname=port)
                if not idx:
                    raise NetnsError(f"no link {port!r} in netns {ns!r}")
                ipr.link("set", index=idx[0], master=br, state="up")

        netlink(ns, do)
        self.addrs(ns, name, *addrs)

    def route(self, ns: str, dst: str, *, gateway: str | None = None, dev: str | None = None) -> None:
        """Add a route in ``ns`` (via ``gateway`` and/or out of ``dev``)."""
        def do(ipr: IPRoute) -> None:
            kw: dict[str, Any] = {"dst": dst}
            if gateway:
                kw["gateway"] = gateway
            if dev:
                kw["oif"] = ipr.link_lookup(ifname=dev)[0]
            ipr.route("add", **kw)

        netlink(ns, do)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        set_sysctls(ns, [(key, value)])


@contextmanager
def capture(ns: str, ifname: str, path: str | os.PathLike[str], bpf: str = "", timeout: float = 5.0) -> Iterator[None]:
    """tcpdump on ``ns:ifname`` into ``path`` while the block runs (armed before it starts).

    ``--immediate-mode`` matters: without it packets still in the kernel ring when we stop
    tcpdump are counted as "received by filter" but never written."""
    argv = ns_argv(ns, "tcpdump", "--immediate-mode", "-U", "-n", "-i", ifname, "-w", str(path))
    proc = subprocess.Popen(argv + ([bpf] if bpf else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        seen = b""

        def armed() -> bool:
            nonlocal seen
            seen += (proc.stderr.read() if proc.stderr is not None else None) or b""
            return b"listening on" in seen or proc.poll() is not None

        if not wait_for(armed, timeout) or proc.poll() is not None:
            raise NetnsError(f"tcpdump on {ns}:{ifname} did not start: {seen.decode(errors='replace')}")
        yield
        time.sleep(0.05)  # let the last packets of the block reach the socket
    finally:
        stop_popen(proc, timeout)
        if proc.stderr:
            proc.stderr.close()


def need_ping() -> None:
    """A clear error instead of "0 replies" when iputils-ping is missing."""
    if shutil.which("ping") is None:
        raise NetnsError("ping not installed: apt-get install iputils-ping")


async def aping(ns: str, dst: str, count: int = 3, size: int = 56, interval: float = 0.2,
                timeout: float = 20.0) -> int:
    """ping from netns ``ns`` without blocking the event loop; returns the replies received."""
    need_ping()
    proc = await asyncio.create_subprocess_exec(
        *ns_argv(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2"),
        "-s", str(size), dst, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 0
    text = out.decode()
    return int(text.split(" received")[0].rsplit(" ", 1)[-1]) if " received" in text else 0
