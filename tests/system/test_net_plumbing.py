"""ipsecemu.net against the kernel: tun/tap created inside a named netns, vnet header, persistence,
netlink and sysctl through the one way into a netns."""

from __future__ import annotations

import os

import pytest

from ipsecemu.lab.netns import Netns
from ipsecemu.net.netns import NetnsError, ipr_in, netlink, netns_exists, ns_exec, pids_in_netns, sysctl
from ipsecemu.net.proc import start, stop_popen, wait_for
from ipsecemu.net.tun import TunError, open_tun


def _links(ns: str | None) -> set[str]:
    return set(netlink(ns, lambda ipr: [lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()]))


def test_tun_in_netns_goes_with_its_fd(unique_name: str) -> None:
    with Netns() as n:
        ns = n.add(unique_name)
        fd = open_tun("tn0", netns=ns, vnet_hdr=True)
        try:
            assert "tn0" in _links(ns) and "tn0" not in _links(None)
            assert not os.get_blocking(fd)
            flags = ns_exec(ns, "cat", "/sys/class/net/tn0/tun_flags").stdout.strip()
            assert int(flags, 16) & 0x4000  # IFF_VNET_HDR
        finally:
            os.close(fd)
        assert wait_for(lambda: "tn0" not in _links(ns), 5)  # not persistent: gone with the fd


def test_persistent_tap_and_reattach(unique_name: str) -> None:
    with Netns() as n:
        ns = n.add(unique_name)
        os.close(open_tun("tp0", tap=True, persist=True, netns=ns))
        assert "tp0" in _links(ns)
        fd = open_tun("tp0", tap=True, netns=ns, blocking=True)  # a daemon attaching later
        assert os.get_blocking(fd)
        os.close(fd)
        with pytest.raises(TunError, match="tun 'tp0'"):  # a tap is not a tun
            open_tun("tp0", netns=ns)


def test_ipr_in_sysctl_and_pids(unique_name: str) -> None:
    with Netns() as n:
        ns = n.add(unique_name)
        assert netns_exists(ns)
        with ipr_in(ns) as ipr:
            assert ipr.link_lookup(ifname="lo")
        sysctl(ns, [("net.ipv4.ip_forward", "1")])
        assert ns_exec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        p = start(["ip", "netns", "exec", ns, "sleep", "30"])
        try:
            assert wait_for(lambda: p.pid in pids_in_netns(ns), 5)
        finally:
            stop_popen(p)
    with pytest.raises(NetnsError):
        open_tun("tn1", netns=unique_name)  # netns removed
