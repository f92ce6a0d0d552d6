"""Entering a named network namespace (``ip netns`` style, /run/netns/NAME) and running things in it.

There is one way in: :func:`entered` moves the *calling thread* into the netns with setns(2) for
the duration of a block.  Sockets, netlink handles and tun devices created inside stay bound to
that netns afterwards, which lets one process (and one asyncio loop) serve several namespaces
without forking.  Commands run through ``ip netns exec`` (:func:`ns_argv`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from pyroute2 import IPRoute

from . import NetError

__all__ = ["NETNS_DIR", "NetnsError", "entered", "ipr_in", "netlink", "netns_exists", "netns_inode", "open_ipr",
           "ns_argv", "ns_exec", "pids_in_netns", "sysctl"]

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsError(NetError):
    """A namespace or link could not be found, created or entered (the message says which and why)."""


_libc = ctypes.CDLL(None, use_errno=True)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


@contextmanager
def entered(ns: str | None) -> Iterator[None]:
    """Run the block with the calling thread in netns ``ns`` (None: stay where we are).

    setns(2) is per thread, so other threads are not affected; keep the block short and
    synchronous.  Never creates a missing netns."""
    if ns is None:
        yield
        return
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(NETNS_DIR / ns, os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsError(f"no netns named {ns!r}") from None
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                raise NetnsError(f"setns({ns}): {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(here, _CLONE_NEWNET) != 0:  # pragma: no cover - would leave us stranded
                raise NetnsError(f"could not return from netns {ns}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(here)


def open_ipr(ns: str | None) -> IPRoute:
    """A netlink socket bound to netns ``ns`` (None: ours); the caller closes it.

    Opened by entering the netns for the socket() call only instead of pyroute2's
    ``IPRoute(netns=...)``, which forks a helper per socket (about 9x slower here, see
    docs/notes-plumbing.md) that inherits our signal handlers."""
    with entered(ns):
        return IPRoute()


@contextmanager
def ipr_in(ns: str | None) -> Iterator[IPRoute]:
    """:func:`open_ipr` for the duration of a block."""
    ipr = open_ipr(ns)
    try:
        yield ipr
    finally:
        ipr.close()


def netlink(ns: str | None, fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn(IPRoute)`` in netns ``ns``.  Inside a running asyncio loop the call goes to a
    helper thread, because pyroute2's synchronous API refuses to run in one; the calls are short."""
    def run() -> T:
        with ipr_in(ns) as ipr:
            return fn(ipr)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    box: dict[str, Any] = {}

    def thread() -> None:
        try:
            box["ok"] = run()
        except BaseException as exc:  # re-raised in the caller's thread
            box["err"] = exc

    t = threading.Thread(target=thread, name="netlink")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return cast(T, box["ok"])


def ns_argv(ns: str | None, *argv: str) -> list[str]:
    """The command line that runs ``argv`` inside ``ns`` (None: here)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def ns_exec(ns: str | None, *argv: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside ``ns`` and capture its output (text)."""
    return subprocess.run(ns_argv(ns, *argv), capture_output=True, text=True, timeout=timeout, check=check)


def sysctl(ns: str | None, pairs: list[tuple[str, str]]) -> None:
    """Set sysctls inside a netns (/proc/sys/net is per netns of the writer); NetnsError on failure."""
    if not pairs:
        return
    try:
        res = ns_exec(ns, "sysctl", "-q", "-w", *[f"{k}={v}" for k, v in pairs], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{ns}: sysctl: {exc}") from None
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise NetnsError(f"{ns}: sysctl: {msg}")


def pids_in_netns(ns: str) -> list[int]:
    """PIDs (other than ours) whose network namespace is the named netns (like `ip netns pids`)."""
    ino = netns_inode(ns)
    if ino is None:
        return []
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if os.stat(d / "ns" / "net").st_ino == ino:
                out.append(int(d.name))
        except OSError:
            continue
    return out
