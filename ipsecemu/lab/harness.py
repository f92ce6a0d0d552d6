"""Throw-away strongSwan topologies for the interop tests and the benches: a gateway pair with an
inside host behind each (:func:`pair_topology`, :func:`charon_pair`) and a hub with ``n`` remote
gateways (:func:`star_topology`), built with :class:`~ipsecemu.lab.netns.Netns` and torn down on exit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipsecemu.lab.netns import Netns, need_ping, ns_exec, wait_for
from ipsecemu.strongswan.charon import Charon
from ipsecemu.strongswan.conn import Child, Conn

__all__ = ["CharonPair", "PairTopology", "StarTopology", "charon_pair", "pair_conn", "pair_topology", "ping",
           "setup_gateway", "star_topology"]


@dataclass
class CharonPair:
    """charon <-> charon across one veth; an inside host behind each gateway.

    ``left``/``right`` are the gateways' :class:`Charon`; ``hosts`` the inside host netns
    names; ``inside`` the inside host addresses (ping/iperf from ``hosts[0]`` to ``inside[1]``).
    """

    lab: Netns
    left: Charon
    right: Charon
    gateways: tuple[str, str]
    hosts: tuple[str, str]
    outer: tuple[str, str]
    inside: tuple[str, str]
    conn: tuple[Conn, Conn]

    def ping(self, count: int = 3, size: int = 56, from_left: bool = True, timeout: float = 10.0) -> int:
        """Ping inside host to inside host; returns how many replies came back."""
        src, dst = (self.hosts[0], self.inside[1]) if from_left else (self.hosts[1], self.inside[0])
        return ping(src, dst, count=count, size=size, timeout=timeout)


def ping(ns: str, dst: str, count: int = 3, size: int = 56, timeout: float = 10.0, interval: float = 0.2) -> int:
    """Ping from netns ``ns``; returns the number of replies received."""
    need_ping()
    r = ns_exec(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", "-s", str(size), dst,
                timeout=timeout, check=False)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def setup_gateway(lab: Netns, gw: str, host: str, prefix: str, side: str, gw_inside: str, host_inside: str) -> None:
    """An inside host netns behind gateway ``gw`` on a veth, with forwarding on the gateway."""
    lab.veth(gw, f"{prefix}{side}i", host, f"{prefix}{side}h", (gw_inside,), (host_inside,))
    v6 = ":" in gw_inside
    lab.route(host, "::/0" if v6 else "0.0.0.0/0", gateway=gw_inside.split("/")[0])
    lab.sysctl(gw, "net.ipv6.conf.all.forwarding" if v6 else "net.ipv4.ip_forward", "1")


def _link_local_ready(ns: str, link: str) -> bool:
    out = ns_exec(ns, "ip", "-6", "-o", "addr", "show", "dev", link, "scope", "link", check=False).stdout
    return "fe80" in out and "tentative" not in out


@dataclass(frozen=True)
class PairTopology:
    """Two gateways joined by one veth, an inside host behind each (see :func:`pair_topology`)."""

    lab: Netns
    gateways: tuple[str, str]
    hosts: tuple[str, str]
    outer: tuple[str, str]  # gateway addresses on the shared link
    inside: tuple[str, str]  # inside host addresses
    subnets: tuple[str, str]  # inside subnets (the traffic selectors)
    links: tuple[str, str]  # the gateways' outer link names (for captures)


@contextmanager
def pair_topology(prefix: str, *, ipv6: bool = False) -> Iterator[PairTopology]:
    """netns ``<prefix>L``/``<prefix>R`` (gateways, 192.0.2.1/.2 on one veth) and
    ``<prefix>HL``/``<prefix>HR`` (inside hosts 10.1.0.2 / 10.2.0.2, gateways .1, forwarding on).
    IPv6 is off everywhere (charon would send MOBIKE updates on address events) unless
    ``ipv6``: then everything is IPv6 only (2001:db8::1/2 outside, fd00:1::/64 and fd00:2::/64
    inside) and connections must say ``mobike = no`` (our :class:`Conn` default)."""
    lab = Netns()
    try:
        gl, gr = lab.add(prefix + "L", ipv6=ipv6), lab.add(prefix + "R", ipv6=ipv6)
        hl, hr = lab.add(prefix + "HL", ipv6=ipv6), lab.add(prefix + "HR", ipv6=ipv6)
        if ipv6:
            outer, plen = ("2001:db8::1", "2001:db8::2"), "/64"
            gw_in, host_in, subnets = ("fd00:1::1/64", "fd00:2::1/64"), ("fd00:1::2", "fd00:2::2"), \
                ("fd00:1::/64", "fd00:2::/64")
        else:
            outer, plen = ("192.0.2.1", "192.0.2.2"), "/24"
            gw_in, host_in, subnets = ("10.1.0.1/24", "10.2.0.1/24"), ("10.1.0.2", "10.2.0.2"), \
                ("10.1.0.0/24", "10.2.0.0/24")
        lab.veth(gl, prefix + "o0", gr, prefix + "o1", (outer[0] + plen,), (outer[1] + plen,))
        hplen = "/" + gw_in[0].split("/")[1]
        setup_gateway(lab, gl, hl, prefix, "l", gw_in[0], host_in[0] + hplen)
        setup_gateway(lab, gr, hr, prefix, "r", gw_in[1], host_in[1] + hplen)
        if ipv6:
            # neighbour discovery needs a usable link-local address; until the kernel has one,
            # the first packets wait (about a second), which would look like IKE retransmissions
            for ns, link in ((gl, prefix + "o0"), (gr, prefix + "o1"), (gl, prefix + "li"), (gr, prefix + "ri"),
                             (hl, prefix + "lh"), (hr, prefix + "rh")):
                wait_for(functools.partial(_link_local_ready, ns, link), 5)
        yield PairTopology(lab, (gl, gr), (hl, hr), outer, host_in, subnets, (prefix + "o0", prefix + "o1"))
    finally:
        lab.close()


@dataclass(frozen=True)
class StarTopology:
    """One gateway (``hub``) and ``n`` remote gateways on one bridged segment, an inside host
    behind each (see :func:`star_topology`)."""

    lab: Netns
    hub: str
    hub_host: str
    remotes: tuple[str, ...]
    remote_hosts: tuple[str, ...]
    hub_addr: str
    remote_addrs: tuple[str, ...]
    hub_subnet: str
    remote_subnets: tuple[str, ...]
    hub_inside: str
    remote_inside: tuple[str, ...]


@contextmanager
def star_topology(prefix: str, n: int = 2) -> Iterator[StarTopology]:
    """netns ``<prefix>H`` (hub, 192.0.2.1 on a bridge) + ``<prefix>R0..`` (192.0.2.2.., each on a
    veth into the hub's bridge), inside hosts ``<prefix>HH`` (10.1.0.2) and ``<prefix>HR<i>``
    (10.<i+2>.0.2).  E.g. an on-premises device with tunnels to both instances of an
    active-active Azure VPN gateway."""
    if not 1 <= n <= 8:
        raise ValueError(f"n: 1..8 remote gateways, got {n}")
    lab = Netns()
    try:
        hub, hub_host = lab.add(prefix + "H"), lab.add(prefix + "HH")
        setup_gateway(lab, hub, hub_host, prefix, "h", "10.1.0.1/24", "10.1.0.2/24")
        remotes, hosts, addrs, subnets, inside = [], [], [], [], []
        for i in range(n):
            r, h = lab.add(f"{prefix}R{i}"), lab.add(f"{prefix}HR{i}")
            addr = f"192.0.2.{i + 2}"
            lab.veth(hub, f"{prefix}b{i}", r, f"{prefix}o{i}", (), (addr + "/24",))
            setup_gateway(lab, r, h, prefix, f"r{i}", f"10.{i + 2}.0.1/24", f"10.{i + 2}.0.2/24")
            remotes.append(r)
            hosts.append(h)
            addrs.append(addr)
            subnets.append(f"10.{i + 2}.0.0/24")
            inside.append(f"10.{i + 2}.0.2")
        lab.bridge(hub, prefix + "br", tuple(f"{prefix}b{i}" for i in range(n)), ("192.0.2.1/24",))
        yield StarTopology(lab, hub, hub_host, tuple(remotes), tuple(hosts), "192.0.2.1", tuple(addrs),
                           "10.1.0.0/24", tuple(subnets), "10.1.0.2", tuple(inside))
    finally:
        lab.close()


def pair_conn(topo: PairTopology, side: int, *, ike_proposal: str, esp_proposal: str, psk: str,
              **conn_kw: Any) -> Conn:
    """The charon connection for gateway ``side`` (0 left, 1 right) of a :class:`PairTopology`:
    IDs "left"/"right", inside subnet to inside subnet, connection "pair", child "net"."""
    me, peer = topo.outer[side], topo.outer[1 - side]
    ids = ("left", "right")
    child = Child(name="net", local_ts=(topo.subnets[side],), remote_ts=(topo.subnets[1 - side],),
                  esp_proposals=(esp_proposal,))
    return Conn(name="pair", local_addrs=(me,), remote_addrs=(peer,), local_id=ids[side],
                remote_id=ids[1 - side], psk=psk, proposals=(ike_proposal,), children=(child,), **conn_kw)


@contextmanager
def charon_pair(prefix: str, *, ike_proposal: str = "aes128gcm16-prfsha256-ecp256",
                esp_proposal: str = "aes128gcm16", key_log: bool = False, psk: str = "ipsecemu-test-psk",
                establish: bool = True) -> Iterator[CharonPair]:
    """Bring up two charons on a :func:`pair_topology`, load a PSK connection on both, initiate
    from the left and wait until both show it ESTABLISHED/INSTALLED.  Everything is stopped and
    deleted on exit."""
    charons: list[Charon] = []
    with pair_topology(prefix) as topo:
        try:
            gl, gr = topo.gateways
            conns = [pair_conn(topo, i, ike_proposal=ike_proposal, esp_proposal=esp_proposal, psk=psk)
                     for i in (0, 1)]
            left, right = Charon(gl, key_log=key_log), Charon(gr, key_log=key_log)
            charons += [left, right]
            left.start()
            right.start()
            left.load(conns[0])
            right.load(conns[1])
            pair = CharonPair(topo.lab, left, right, topo.gateways, topo.hosts, topo.outer, topo.inside,
                              (conns[0], conns[1]))
            if establish:
                left.initiate(child="net", ike="pair")
                left.wait_established()
                right.wait_established()
                # libipsec's route via ipsec0 appears right after the SA is installed
                wait_for(lambda: "ipsec0" in ns_exec(gl, "ip", "route", "show", "table", "all").stdout, 3)
            yield pair
        finally:
            for c in charons:
                c.cleanup()
