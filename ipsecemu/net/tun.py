"""The one tun/tap opener: /dev/net/tun + TUNSETIFF, optionally with a virtio_net_hdr per packet
(IFF_VNET_HDR, so TCP super-packets cross: TSO/GRO), persistent, inside a named netns.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

from . import NetError
from .netns import entered

__all__ = ["VNET_HDR", "TunError", "attachable", "clear_offload", "open_tun"]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
MAX_IFNAME = 15
VNET_HDR = 10  # bytes of struct virtio_net_hdr before each packet when opened with vnet_hdr=True


class TunError(NetError):
    """A tun/tap device could not be created or attached."""


def open_tun(name: str, *, tap: bool = False, vnet_hdr: bool = False, persist: bool = False,
             netns: str | None = None, blocking: bool = False) -> int:
    """Create (or attach to the persistent) tun/tap ``name`` without packet info header.

    ``netns``: TUNSETIFF creates the device in the caller's netns, so we enter it for the call.
    ``persist``: the device outlives this fd (e.g. a lab tap a daemon attaches to later).
    Returns the fd (non-blocking unless ``blocking``, close-on-exec)."""
    if not 0 < len(name) <= MAX_IFNAME:
        raise TunError(f"interface name {name!r}: must be 1-{MAX_IFNAME} characters")
    flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    kind = "tap" if tap else "tun"
    with entered(netns):
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"{kind} {name!r}: /dev/net/tun: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            if persist:
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            raise TunError(f"{kind} {name!r}: cannot create or attach ({exc.strerror})") from None
    os.set_blocking(fd, blocking)
    return fd


def clear_offload(fd: int) -> None:
    """Turn the offloads a loop enabled (TUNSETOFFLOAD) off again, so the next user of a persistent
    device gets plain packets; errors are ignored (the device may be gone)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError:
        pass


def attachable(ipr: Any, name: str) -> bool:
    """Through pyroute2 ``ipr`` (in the right netns): may a tun reader take the name ``name``?  Yes when
    there is no such link, or it is a persistent tun nobody reads (no carrier): a lab makes the tuns BGP
    rides in before FRR starts (ipsecemu.lab.svc_frr), a user may make one (``ip tuntap add NAME mode
    tun``).  Anything else by that name (another reader's tun, a tap, a veth) is someone else's."""
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return True
    link = ipr.get_links(idx[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    data = dict((info.get_attr("IFLA_INFO_DATA") or {}).get("attrs", [])) if info else {}
    return (info is not None and info.get_attr("IFLA_INFO_KIND") == "tun" and data.get("IFLA_TUN_TYPE") == IFF_TUN
            and data.get("IFLA_TUN_PERSIST") == 1 and not link.get_attr("IFLA_CARRIER"))
