"""Several Child SAs under one IKE SA, ``ipsecemu gateway run`` against a real charon
(kernel-libipsec) on :func:`pair_topology` plus a second subnet behind charon (10.3.0.2 on the
right host).  charon's children: ``net1`` 10.2.0.0/24 and ``net2`` 10.3.0.0/24, both to our
10.1.0.0/24; our connection allows both.  In both roles (charon initiates the IKE SA and both
children; we initiate the IKE SA and charon adds the second child to it), pings cross each
child both ways and leave on that child's own SA: charon's per-child counters (an independent
party, which drops anything on the wrong SA "due to policy") and ours agree.  Then one child is
rekeyed (by charon, or by us) under a ping on the other: the other's routes and traffic are
untouched, and the rekeyed child carries traffic on its new SA.  Needs root and charon."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ipsecemu.lab.harness import PairTopology, pair_topology, ping
from ipsecemu.lab.netns import ns_exec, wait_for
from ipsecemu.strongswan.charon import Charon, charon_available
from ipsecemu.strongswan.conn import Child, Conn
from ipsecemu.strongswan.vici import CharonError

from support.gateway_lab import Gw

scapy_all = pytest.importorskip("scapy.all")

NO_CHARON = charon_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]

PSK = "multichild-vs-charon-psk"
IKE, ESP = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"
NET2_HOST = "10.3.0.2"


def our_config(gw: Gw, start: str) -> None:
    gw.cfg.write_text(f"""\
node: left
state_dir: {gw.state}
local_addresses: [192.0.2.1]
datapath: {{encapsulation: auto}}
connections:
  pair:
    remote_address: 192.0.2.2
    local_id: left
    remote_id: right
    psk: {PSK}
    ike_proposals: {IKE}
    esp_proposals: {ESP}
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24, 10.3.0.0/24]
    start_action: {start}
    dpd: {{interval: 0}}
    tunnel: {{name: {gw.tun}, mtu: 1400}}
""")


def charon_conn() -> Conn:
    children = tuple(Child(name=n, local_ts=(ts,), remote_ts=("10.1.0.0/24",), esp_proposals=(ESP,))
                     for n, ts in (("net1", "10.2.0.0/24"), ("net2", "10.3.0.0/24")))
    return Conn(name="pair", local_addrs=("192.0.2.2",), remote_addrs=("192.0.2.1",), local_id="right",
                remote_id="left", psk=PSK, proposals=(IKE,), children=children)


# charon reuses the IKE SA for a second child (the harness turns reuse off for its rate tests)
CHARON_CONF = "charon {\n  reuse_ikesa = yes\n}\n"


def second_subnet(topo: PairTopology) -> None:
    """10.3.0.2 on the right inside host, routed there by charon's gateway.  The gateway gets
    10.3.0.1 too: kernel-libipsec installs a child's route into ipsec0 only with a local
    source address inside the child's local selector ("error installing route with policy")."""
    ns_exec(topo.hosts[1], "ip", "addr", "add", NET2_HOST + "/32", "dev", "lo")
    ns_exec(topo.hosts[1], "ip", "link", "set", "lo", "up")
    ns_exec(topo.gateways[1], "ip", "addr", "add", "10.3.0.1/32", "dev", "lo")
    ns_exec(topo.gateways[1], "ip", "link", "set", "lo", "up")
    ns_exec(topo.gateways[1], "ip", "route", "add", "10.3.0.0/24", "via", topo.inside[1])


def charon_children(charon: Charon) -> dict[str, dict[str, Any]]:
    """charon's installed children by name (the newest if a rekey left two)."""
    out: dict[str, dict[str, Any]] = {}
    for c in charon.child_sas():
        if c.get("state") == "INSTALLED":
            out[c["name"]] = c
    return out


def our_children(gw: Gw) -> dict[str, dict[str, Any]]:
    """Our children keyed by their remote TS (each one's newest SA)."""
    out: dict[str, dict[str, Any]] = {}
    for sa in gw.sas():
        for c in sa["child_sas"]:
            if c["state"] == "INSTALLED":
                out[",".join(c["remote_ts"])] = c
    return out


def our_routes(ns: str, tun: str) -> set[str]:
    return {line.split()[0] for line in ns_exec(ns, "ip", "route", "show", "dev", tun).stdout.splitlines()}


def both_up(gw: Gw, charon: Charon) -> bool:
    return len(our_children(gw)) == 2 and set(charon_children(charon)) == {"net1", "net2"}


class Wire:
    """tcpdump on our gateway's outer link (started and stopped by PID): ESP datagrams per
    (source, SPI), and whether any ICMP crossed in clear."""

    def __init__(self, ns: str, link: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", link, "-n", "-U",
                                      "--immediate-mode", "-w", str(path), "udp port 4500 or icmp"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": nothing is missed from here on
        assert b"listening" in line, line

    def stop(self) -> tuple[dict[tuple[str, str], int], int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        spis: dict[tuple[str, str], int] = {}
        clear = 0
        for pkt in scapy_all.rdpcap(str(self.path)):
            if scapy_all.ICMP in pkt:
                clear += 1
            elif scapy_all.UDP in pkt:
                data = bytes(pkt[scapy_all.UDP].payload)
                if len(data) > 8 and data[:4] != bytes(4):  # ESP (not IKE's non-ESP marker)
                    key = (pkt[scapy_all.IP].src, data[:4].hex())
                    spis[key] = spis.get(key, 0) + 1
        return spis, clear


def check_traffic(topo: PairTopology, gw: Gw, charon: Charon, tmp: Path, extra: str = "") -> None:
    """Pings on each child both ways; each child's counters move on both sides, on its own SA, and
    the capture on the wire shows each child's ESP under its own SPIs."""
    ours = our_children(gw)
    wire = Wire(topo.gateways[0], topo.links[0], tmp / f"wire{time.monotonic_ns()}.pcap")
    before_c = {n: (int(c["packets-in"]), int(c["packets-out"])) for n, c in charon_children(charon).items()}
    before_o = {k: (c["packets_in"], c["packets_out"]) for k, c in our_children(gw).items()}
    diag = lambda: gw.log() + charon.log_tail() + extra  # noqa: E731
    assert ping(topo.hosts[0], topo.inside[1], count=3, timeout=20) == 3, diag()
    assert ping(topo.hosts[0], NET2_HOST, count=4, timeout=20) == 4, diag()
    assert ping(topo.hosts[1], topo.inside[0], count=2, timeout=20) == 2, diag()  # net1, charon's side first
    after_c = {n: (int(c["packets-in"]), int(c["packets-out"])) for n, c in charon_children(charon).items()}
    after_o = {k: (c["packets_in"], c["packets_out"]) for k, c in our_children(gw).items()}
    # charon got our echo requests on the child whose selectors they fit, and answered on it
    d1 = [a - b for a, b in zip(after_c["net1"], before_c.get("net1", (0, 0)), strict=True)]
    d2 = [a - b for a, b in zip(after_c["net2"], before_c.get("net2", (0, 0)), strict=True)]
    assert d1 == [5, 5] and d2 == [4, 4], (d1, d2, diag())
    o1 = [a - b for a, b in zip(after_o["10.2.0.0/24"], before_o.get("10.2.0.0/24", (0, 0)), strict=True)]
    o2 = [a - b for a, b in zip(after_o["10.3.0.0/24"], before_o.get("10.3.0.0/24", (0, 0)), strict=True)]
    assert o1 == [5, 5] and o2 == [4, 4], (o1, o2, diag())
    spis, clear = wire.stop()
    c1, c2 = ours["10.2.0.0/24"], ours["10.3.0.0/24"]
    want = {("192.0.2.1", c1["spi_out"]): 5, ("192.0.2.1", c2["spi_out"]): 4, ("192.0.2.2", c1["spi_in"]): 5,
            ("192.0.2.2", c2["spi_in"]): 4}
    assert spis == want and clear == 0, (spis, want, clear)
    loop = gw.counters()["connections"]["pair"]["loop"]
    drops = {k: v for k, v in loop.items() if k.removeprefix("slow_") in ("no_policy", "ts_drop") and v}
    assert not drops, loop


def start_pair(topo: PairTopology, gw: Gw, charon: Charon, we_initiate: bool) -> None:
    second_subnet(topo)
    charon.start()
    charon.load(charon_conn())
    our_config(gw, "initiate" if we_initiate else "listen")
    gw.start()
    if not we_initiate:
        charon.initiate(child="net1", ike="pair")
    charon.wait_established(15)
    assert wait_for(lambda: len(our_children(gw)) == 1, 10), gw.log()
    # the second child under the same IKE SA, started by charon in both roles
    try:
        charon.initiate(child="net2", ike="pair")
    except CharonError as exc:
        raise AssertionError(f"{exc}\n{gw.log()}\n{charon.log_tail(60)}") from None
    assert wait_for(lambda: both_up(gw, charon), 10), gw.log() + charon.log_tail()
    assert len(gw.sas()) == 1 and len(charon.list_sas_all()) == 1  # one IKE SA carries both


@pytest.mark.parametrize(("we_initiate", "backend"), [(False, "native"), (True, "native"), (False, "reference")],
                         ids=["charon-init", "ours-init", "charon-init-slow-path"])
def test_two_children_with_charon(unique_name: str, tmp_path: Path, we_initiate: bool, backend: str) -> None:
    prefix = "mc" + unique_name[1:]
    with pair_topology(prefix) as topo:
        gl, gr = topo.gateways
        charon = Charon(gr, extra_conf=CHARON_CONF)
        gw = Gw(gl, tmp_path / "left.yaml", tmp_path / "left", prefix + "tl", args=("--backend", backend))
        try:
            start_pair(topo, gw, charon, we_initiate)
            assert {c["backend"] for c in our_children(gw).values()} == {"native" if backend == "native" else "slow"}
            # both children's routes stay (the defect: the second withdrew the first's)
            assert our_routes(gl, gw.tun) == {"10.2.0.0/24", "10.3.0.0/24"}, gw.log()
            assert "routes removed" not in gw.log()
            ours = our_children(gw)
            assert {c["reqid"] for c in ours.values()} == {1, 2}
            assert ours["10.3.0.0/24"]["local_ts"] == ["10.1.0.0/24"]
            text = gw.cli("list").stdout  # `sa list` shows each child with its selectors
            blocks = {b.split(",")[1].strip(): b for b in text.split("pair: #")[2:]}
            assert set(blocks) == {"reqid 1", "reqid 2"}, text
            assert "local  10.1.0.0/24\n    remote 10.2.0.0/24" in blocks["reqid 1"], text
            assert "local  10.1.0.0/24\n    remote 10.3.0.0/24" in blocks["reqid 2"], text
            check_traffic(topo, gw, charon, tmp_path)
            # log lines name the connection, the child and the peer
            assert re.search(r"pair: child 2 \(10\.1\.0\.0/24 === 10\.3\.0\.0/24\) with 192\.0\.2\.2: installed",
                             gw.log()), gw.log()

            # rekey child 1 under a ping on child 2: child 2 loses nothing, both routes stay
            old1 = our_children(gw)["10.2.0.0/24"]["spi_in"]
            p = subprocess.Popen(["ip", "netns", "exec", topo.hosts[0], "ping", "-n", "-q", "-c", "60", "-i",
                                  "0.05", "-W", "2", NET2_HOST], stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            routes_seen: list[set[str]] = []
            if we_initiate:
                gw.cli("rekey", old1)
            else:
                charon.rekey(child="net1")
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                routes_seen.append(our_routes(gl, gw.tun))
                time.sleep(0.1)
            out, _ = p.communicate(timeout=60)
            assert " 60 received" in out, out + gw.log() + charon.log_tail()
            assert all(r == {"10.2.0.0/24", "10.3.0.0/24"} for r in routes_seen), routes_seen
            assert wait_for(lambda: len([c for s in gw.sas() for c in s["child_sas"]]) == 2, 10), gw.log()
            now = our_children(gw)
            assert now["10.2.0.0/24"]["spi_in"] != old1 and now["10.2.0.0/24"]["reqid"] == 1
            assert now["10.2.0.0/24"]["spi_in"] == charon_children(charon)["net1"]["spi-out"]
            assert "Child SA rekeyed" in gw.log()
            check_traffic(topo, gw, charon, tmp_path, extra="(after the rekey of child 1)")
            assert gw.stop() == 0
        finally:
            gw.stop()
            charon.cleanup()
