"""FRR in network namespaces: the Virtual WAN hub picks the path its routing preference says, and a lost
path moves the route within the BFD / hold time.

Five namespaces, each running its own FRR from a state directory under /tmp:

    ce ──er── msee ──── hub            ER path:  hub <- msee (AS 12076) <- ce (AS 65001)
     ├─vpn0── inst0 ───┤               VPN path: hub <- inst0/inst1 (iBGP, AS 65515) <- ce
     └─vpn1── inst1 ───┘

The ce-inst links stand in for the two IPsec tunnels (BGP to APIPA addresses rides inside them in the
lab); the CE advertises the same prefix 10.0.1.0/24 over ER and over both VPN sessions (scenario S3).
Every assertion reads FRR's own view: ``show bgp ipv4 unicast PREFIX json`` and ``show ip route json``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecemu.routing.azure import (
    HUB_ASN,
    MSEE_ASN,
    HubCandidate,
    Peer,
    hub_node,
    msee_node,
    select_hub_routes,
    vpn_instance_node,
)
from ipsecemu.routing.frr import FrrInstance
from ipsecemu.routing.intent import BgpTimers, HubRoutingPreference, Neighbor, PathKind, RoutingNode
from ipsecemu.routing.render import render_frr_conf

pytestmark = pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists() or shutil.which("vtysh") is None,
                                reason="FRR not installed (make deps)")

PREFIX = "10.0.1.0/24"
CE_ASN = 65001
MSEE_TO_HUB = "192.168.20.1"  # msee's address as the hub sees it
INST0_TO_HUB, INST1_TO_HUB = "10.51.230.18", "10.51.230.22"
ER_NEXTHOPS = {MSEE_TO_HUB}
VPN_NEXTHOPS = {INST0_TO_HUB, INST1_TO_HUB}
# (node a, link name in a, address in a, node b, link name in b, address in b), all /30
LINKS = [
    ("ce", "er", "192.168.10.1", "msee", "ce", "192.168.10.2"),
    ("msee", "hub", "192.168.20.1", "hub", "msee", "192.168.20.2"),
    ("ce", "vpn0", "169.254.21.2", "inst0", "ce", "169.254.21.1"),
    ("ce", "vpn1", "169.254.22.2", "inst1", "ce", "169.254.22.1"),
    ("inst0", "hub", "10.51.230.18", "hub", "inst0", "10.51.230.17"),
    ("inst1", "hub", "10.51.230.22", "hub", "inst1", "10.51.230.21"),
]
NODES = ("ce", "msee", "inst0", "inst1", "hub")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Lab:
    ns: dict[str, str]
    state: Path
    frr: dict[str, FrrInstance]

    def start(self, nodes: dict[str, RoutingNode]) -> None:
        for name, node in nodes.items():
            inst = FrrInstance(node=name, state_dir=self.state / name, netns=self.ns[name], daemons=node.daemons)
            self.frr[name] = inst
            inst.start(render_frr_conf(node))

    def hub_paths(self) -> list[dict]:
        data = self.frr["hub"].vtysh_json(f"show bgp ipv4 unicast {PREFIX} json")
        return list(data.get("paths", []))

    def hub_fib_nexthops(self) -> set[str]:
        """Next hops of the route zebra installed for PREFIX at the hub (empty if none)."""
        routes = self.frr["hub"].vtysh_json(f"show ip route {PREFIX} json").get(PREFIX, [])
        return {nh["ip"] for r in routes if r.get("selected") for nh in r.get("nexthops", [])
                if nh.get("active") and "ip" in nh}


@pytest.fixture
def lab(unique_name: str) -> Iterator[Lab]:
    ns = {n: f"{unique_name}-{n}" for n in NODES}
    made: list[str] = []
    # Not tmp_path: FRR drops to the frr user, which cannot enter pytest's 0700 directories.
    state = Path(tempfile.mkdtemp(prefix=f"ipsecemu-routing-{unique_name}-"))
    state.chmod(0o755)
    lab = Lab(ns=ns, state=state, frr={})
    try:
        for n in NODES:
            _ip("netns", "add", ns[n])
            made.append(ns[n])
            _ip("-n", ns[n], "link", "set", "lo", "up")
        for a, la, aa, b, lb, ab in LINKS:
            _ip("link", "add", la, "netns", ns[a], "type", "veth", "peer", "name", lb, "netns", ns[b])
            for node, link, addr in ((a, la, aa), (b, lb, ab)):
                _ip("-n", ns[node], "addr", "add", f"{addr}/30", "dev", link)
                _ip("-n", ns[node], "link", "set", link, "up")
        yield lab
    finally:
        for inst in lab.frr.values():
            inst.stop()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def build_nodes(preference: HubRoutingPreference, vpn_prepend: int = 0, bfd: bool = True) -> dict[str, RoutingNode]:
    timers = BgpTimers(keepalive=3, hold=10)
    ce = RoutingNode(name="ce", asn=CE_ASN, router_id="1.1.1.1", originate=(PREFIX,), neighbors=(
        Neighbor(name="msee", address="192.168.10.2", remote_asn=MSEE_ASN, kind=PathKind.EXPRESSROUTE,
                 timers=timers, bfd=bfd, advertise=(PREFIX,)),
        Neighbor(name="inst0", address="169.254.21.1", remote_asn=HUB_ASN, kind=PathKind.VPN, timers=timers,
                 bfd=bfd, advertise=(PREFIX,), prepend=vpn_prepend, ebgp_multihop=2),
        Neighbor(name="inst1", address="169.254.22.1", remote_asn=HUB_ASN, kind=PathKind.VPN, timers=timers,
                 bfd=bfd, advertise=(PREFIX,), prepend=vpn_prepend, ebgp_multihop=2),
    ))
    msee = msee_node("msee", "12.0.76.1", ce=[Peer("ce", "192.168.10.1", CE_ASN)],
                     hub=[Peer("hub", "192.168.20.2", HUB_ASN)], timers=timers, bfd=bfd)
    inst0 = vpn_instance_node("inst0", "10.51.230.4", ce=[Peer("ce", "169.254.21.2", CE_ASN)],
                              hub=[Peer("hub", "10.51.230.17", HUB_ASN)], timers=timers, bfd=bfd)
    inst1 = vpn_instance_node("inst1", "10.51.230.5", ce=[Peer("ce", "169.254.22.2", CE_ASN)],
                              hub=[Peer("hub", "10.51.230.21", HUB_ASN)], timers=timers, bfd=bfd)
    hub = hub_node("hub", "10.51.230.1", originate=["10.51.230.0/24", "10.51.231.0/24"],
                   msees=[Peer("msee", MSEE_TO_HUB, MSEE_ASN)],
                   instances=[Peer("inst0", INST0_TO_HUB, HUB_ASN), Peer("inst1", INST1_TO_HUB, HUB_ASN)],
                   preference=preference, timers=timers, bfd=bfd)
    return {"ce": ce, "msee": msee, "inst0": inst0, "inst1": inst1, "hub": hub}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; return the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def all_paths_learnt(lab: Lab) -> bool:
    peers = {p["peer"]["peerId"] for p in lab.hub_paths()}
    return peers >= ER_NEXTHOPS | VPN_NEXTHOPS


def bfd_up(lab: Lab, node: str) -> set[str]:
    return {p["peer"] for p in lab.frr[node].vtysh_json("show bfd peers json") if p["status"] == "up"}


def frr_selection(paths: list[dict]) -> set[str]:
    """The peers whose paths BGP uses: the best path plus its multipath siblings."""
    return {p["peer"]["peerId"] for p in paths if p.get("bestpath", {}).get("overall") or p.get("multipath")}


def model_selection(paths: list[dict], preference: HubRoutingPreference) -> set[str]:
    kinds = {MSEE_TO_HUB: PathKind.EXPRESSROUTE, INST0_TO_HUB: PathKind.VPN, INST1_TO_HUB: PathKind.VPN}
    cands = [HubCandidate(PREFIX, kinds[p["peer"]["peerId"]], int(p["aspath"]["length"]), p["peer"]["peerId"])
             for p in paths]
    return {c.via for c in select_hub_routes("10.0.1.1", cands, preference)}


@pytest.mark.slow
@pytest.mark.parametrize(("preference", "vpn_prepend", "expected"), [
    (HubRoutingPreference.EXPRESSROUTE, 0, ER_NEXTHOPS),  # S3: ER wins, traffic in clear
    (HubRoutingPreference.VPN, 0, VPN_NEXTHOPS),  # VPN preference: ECMP over both instances
    (HubRoutingPreference.ASPATH, 0, VPN_NEXTHOPS),  # "65001" beats "12076 65001"
    (HubRoutingPreference.ASPATH, 2, ER_NEXTHOPS),  # prepend on the VPN: "65001 65001 65001" loses
], ids=["expressroute", "vpn", "aspath", "aspath-vpn-prepended"])
def test_hub_routing_preference(lab: Lab, preference: HubRoutingPreference, vpn_prepend: int,
                                expected: set[str]) -> None:
    lab.start(build_nodes(preference, vpn_prepend))
    took = wait_for(lambda: all_paths_learnt(lab), 60, "the hub to learn the prefix over ER and both VPNs")
    wait_for(lambda: lab.hub_fib_nexthops() == expected, 15,
             f"hub FIB next hops {sorted(expected)} (have {sorted(lab.hub_fib_nexthops())})")
    paths = lab.hub_paths()
    aspaths = sorted((p["peer"]["peerId"], p["aspath"]["string"]) for p in paths)
    print(f"\n{preference.value} prepend={vpn_prepend}: converged in {took:.1f} s; paths {aspaths}; "
          f"selected {sorted(frr_selection(paths))}")
    assert frr_selection(paths) == expected
    assert model_selection(paths, preference) == expected  # FRR agrees with the documented rules
    er_path = next(p for p in paths if p["peer"]["peerId"] == MSEE_TO_HUB)
    assert er_path["aspath"]["string"] == f"{MSEE_ASN} {CE_ASN}"


def _flush_msee_hub_side(lab: Lab) -> None:
    # A silent failure: the msee stops answering on its hub link, but the hub's interface stays up, so
    # only BFD or the BGP hold timer can notice.
    _ip("-n", lab.ns["msee"], "addr", "flush", "dev", "hub")


def _ce_er_link_down(lab: Lab) -> None:
    _ip("-n", lab.ns["ce"], "link", "set", "er", "down")


@pytest.mark.slow
@pytest.mark.parametrize(("failure", "bfd", "bound"), [
    ("silent", True, 3.0),  # BFD 3 x 300 ms
    ("silent", False, 10.0 + 3.0),  # hold time 10 s
    ("link-down", True, 3.0),  # the msee sees carrier loss on its CE link and withdraws at once
], ids=["silent-bfd", "silent-hold", "er-link-down"])
def test_failover_moves_route(lab: Lab, failure: str, bfd: bool, bound: float) -> None:
    lab.start(build_nodes(HubRoutingPreference.EXPRESSROUTE, bfd=bfd))
    wait_for(lambda: all_paths_learnt(lab), 60, "all paths at the hub")
    wait_for(lambda: lab.hub_fib_nexthops() == ER_NEXTHOPS, 15, "the ER route at the hub")
    if bfd:
        wait_for(lambda: bfd_up(lab, "hub") >= ER_NEXTHOPS | VPN_NEXTHOPS, 15, "BFD up at the hub")
    (_flush_msee_hub_side if failure == "silent" else _ce_er_link_down)(lab)
    took = wait_for(lambda: lab.hub_fib_nexthops() == VPN_NEXTHOPS, bound + 10,
                    "the hub to move the prefix to the VPN instances", interval=0.02)
    print(f"\nfailover ({failure}, bfd={bfd}): hub moved {PREFIX} from ER to VPN in {took:.2f} s")
    assert took <= bound
    if failure == "silent" and not bfd:
        assert took >= 3.0, "without BFD only the hold timer can notice a silent failure"


def test_instance_lifecycle(unique_name: str) -> None:
    """Start one instance, check health, run the printed vtysh command line as is, lose bgpd, stop."""
    ns = f"{unique_name}-solo"
    state = Path(tempfile.mkdtemp(prefix=f"ipsecemu-routing-{unique_name}-"))
    state.chmod(0o755)
    _ip("netns", "add", ns)
    inst = FrrInstance(node="solo", state_dir=state / "solo", netns=ns)
    try:
        inst.start(render_frr_conf(RoutingNode(name="solo", asn=65001, router_id="1.1.1.1",
                                               originate=(PREFIX,))))
        assert inst.health() == {"zebra": True, "bgpd": True, "vtysh": True}
        out = subprocess.run(inst.vtysh_argv("show bgp ipv4 unicast json"), capture_output=True, text=True,
                             check=True).stdout
        assert PREFIX in out
        pids = inst.running_daemons()
        os.kill(pids["bgpd"], signal.SIGKILL)
        wait_for(lambda: not inst.health()["bgpd"], 5, "bgpd to be seen down")
        assert not inst.healthy()
        inst.stop()
        assert inst.running_daemons() == {}
        assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids.values())
    finally:
        inst.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
