"""On-demand (``start_action: trap``) transport-mode connections between two hosts, the gateway side
of the issue-12 host IPsec policy (scenario S5), with real ``gateway run`` daemons in throw-away netns:

    [h1] 10.9.1.1 ===veth=== 10.9.1.2 [h2]      (the hosts are the IKE peers: transport mode)

Each host's gateway has one connection, TCP 8080 only (``10.9.1.1/32[tcp] <-> 10.9.1.2/32[tcp/8080]``),
3DES-SHA1 ESP (the S5 seed) as raw IP protocol 50, routes in table 108; the test steers only TCP to or
from port 8080 into that table with ``ip rule ... ipproto tcp dport/sport 8080 table 108``, as the
lab's host policy does.  Verdicts come from a tcpdump on h1's veth, decrypted with the exported keys
by scapy's transport-mode ESP:

* the first TCP connect to 8080 triggers IKE and succeeds (its SYN waited in the trap queue and
  went through the new SA, it was not lost); on the wire 8080 is only ESP with next header 6
  (TCP: transport framing), ping crosses in clear; a packet outside the port selector that reaches
  the tun (TCP 8081, steered there by an extra rule) is a counted drop, not encrypted, not clear;
* peer dead, ``trap_fallback: clear``: after ``trap_timeout`` the routes go and the connection
  succeeds in clear, logged with connection, peer and reason; the gateway retries after back-off,
  and once the peer's gateway runs the SA comes up and the routes come back;
* peer dead, ``trap_fallback: drop``: nothing of 8080 ever crosses in clear; the routes stay.
Needs root.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, capture, ns_exec, wait_for
from ipsecemu.pcap.uat import read_esp_sa

from support.gateway_lab import Gw

scapy_all = pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP, TCP  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402

pytestmark = pytest.mark.root

H1, H2 = "10.9.1.1", "10.9.1.2"
TABLE = 108
MARKER = b"hostgw: on-demand transport mode over 8080\n"
PSK = "hostgw-trap-psk"
# curl, tcpdump and the HTTP server run without a sanitizer runtime a test run may preload
TOOL_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}


def config(node: str, state: Path, me: str, peer: str, local_ts: str, remote_ts: str, tun: str, *,
           fallback: str = "drop", timeout: int = 10) -> str:
    return f"""\
node: {node}
state_dir: {state}
local_addresses: [{me}]
datapath: {{encapsulation: esp}}
connections:
  s5:
    remote_address: {peer}
    psk: {PSK}
    mode: transport
    esp_proposals: 3des-sha1
    local_ts: ["{local_ts}"]
    remote_ts: ["{remote_ts}"]
    start_action: trap
    trap_fallback: {fallback}
    trap_timeout: {timeout}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}, table: {TABLE}}}
"""


@dataclass
class Hosts:
    h1: str
    h2: str
    veth1: str
    tmp: Path
    prefix: str
    gws: list[Gw]
    procs: list[subprocess.Popen[bytes]]

    def gateway(self, which: int, **kw: object) -> Gw:
        ns, me, peer = (self.h1, H1, H2) if which == 1 else (self.h2, H2, H1)
        lts, rts = (f"{H1}/32[tcp]", f"{H2}/32[tcp/8080]") if which == 1 else (f"{H2}/32[tcp/8080]", f"{H1}/32[tcp]")
        state, tun = self.tmp / f"h{which}", f"{self.prefix}t{which}"
        cfg = self.tmp / f"h{which}.yaml"
        cfg.write_text(config(f"h{which}", state, me, peer, lts, rts, tun, **kw))  # type: ignore[arg-type]
        g = Gw(ns, cfg, state, tun)
        self.gws.append(g)
        g.start()
        return g

    def curl(self, port: int, max_time: float) -> tuple[bytes, float]:
        """(body, seconds until the TCP connection was up) of GET hello.txt from h1 to h2."""
        t0 = time.monotonic()
        r = subprocess.run(["ip", "netns", "exec", self.h1, "curl", "-s", "--max-time", str(max_time), "-w",
                            "\n%{time_connect}", f"http://{H2}:{port}/hello.txt"], capture_output=True,
                           timeout=max_time + 10, env=TOOL_ENV)
        body, _, connect = r.stdout.rpartition(b"\n")
        took = float(connect or 0) or time.monotonic() - t0
        return (body if r.returncode == 0 else b""), took


@pytest.fixture
def hosts(unique_name: str, tmp_path: Path) -> Iterator[Hosts]:
    prefix = "hg" + unique_name[1:6]  # hostgw: this branch's names
    net = Netns()
    h = Hosts(net.add("hostgw-" + unique_name + "-h1"), net.add("hostgw-" + unique_name + "-h2"), prefix + "v1",
              tmp_path, prefix, [], [])
    try:
        net.veth(h.h1, prefix + "v1", h.h2, prefix + "v2", (f"{H1}/24",), (f"{H2}/24",))
        (tmp_path / "www").mkdir()
        (tmp_path / "www" / "hello.txt").write_bytes(MARKER)
        for ns, port_rule in ((h.h1, "dport"), (h.h2, "sport")):
            # decrypted packets come in on the tun, the route back is the veth: no reverse-path filter
            for conf in ("all", "default"):
                net.sysctl(ns, f"net.ipv4.conf.{conf}.rp_filter", "0")
            # the host policy's steering: only TCP 8080 (requests from h1, answers from h2) -> table 108
            ns_exec(ns, "ip", "rule", "add", "priority", "100", "ipproto", "tcp", port_rule, "8080",
                    "table", str(TABLE))
        for port in (8080, 8081):
            h.procs.append(subprocess.Popen(["ip", "netns", "exec", h.h2, "python3", "-m", "http.server", str(port),
                                             "--bind", H2, "--directory", str(tmp_path / "www")],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=TOOL_ENV))
        assert wait_for(lambda: all(f":{p}" in ns_exec(h.h2, "ss", "-ltn").stdout for p in (8080, 8081)), 10)
        yield h
    finally:
        for g in h.gws:
            g.stop()
        for p in h.procs:
            p.terminate()
            p.wait(timeout=5)
        net.close()


def table(ns: str) -> str:
    return ns_exec(ns, "ip", "route", "show", "table", str(TABLE)).stdout


def trap(g: Gw) -> dict:
    (entry,) = [s for s in g.sas() if s["name"] == "s5"]
    return entry


def test_first_connect_triggers_ike_and_only_8080_is_esp_in_transport_framing(hosts: Hosts) -> None:
    g1, g2 = hosts.gateway(1), hosts.gateway(2)
    # before any SA: the state is TRAP, the peer's host route is in table 108, with our source
    for g, ns, me, peer in ((g1, hosts.h1, H1, H2), (g2, hosts.h2, H2, H1)):
        entry = trap(g)
        assert entry["state"] == "TRAP" and entry["trap"]["routes"] == "installed", entry
        text = g.cli("list").stdout  # the text view says the same
        assert "trap: routes installed, fallback " in text and "0 trigger(s)" in text, text
        assert re.search(rf"^{peer} dev \S+ .*src {me}", table(ns), re.M), table(ns)
    assert ns_exec(hosts.h1, "ip", "route", "get", H2).stdout.split()[2] == hosts.veth1  # main: the veth
    pcap = hosts.tmp / "h1.pcap"
    with capture(hosts.h1, hosts.veth1, pcap, "not arp"):
        body, took = hosts.curl(8080, 15)
        assert body == MARKER, g1.log() + g2.log()
        print(f"\n[trap] first TCP connect to 8080 (IKE_SA_INIT + IKE_AUTH on demand): {took * 1000:.0f} ms")
        again, took2 = hosts.curl(8080, 10)
        assert again == MARKER
        print(f"[trap] second connect, SA up: {took2 * 1000:.1f} ms")
        assert ns_exec(hosts.h1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", H2, check=False).returncode == 0
        # TCP 8081 steered into the tun too: outside the port selector, a counted drop in the C loop
        ns_exec(hosts.h1, "ip", "rule", "add", "priority", "101", "ipproto", "tcp", "dport", "8081",
                "table", str(TABLE))
        assert hosts.curl(8081, 2)[0] == b""
        ns_exec(hosts.h1, "ip", "rule", "del", "priority", "101")
    entry = trap(g1)
    assert entry["state"] == "ESTABLISHED", entry
    (child,) = entry["child_sas"]
    assert child["mode"] == "TRANSPORT" and child["protocol"] == "ESP", child
    # RFC 7296 2.9: the triggering packet's 5-tuple is the first selector pair
    assert re.fullmatch(rf"{H1}/32\[6/\d+\]", child["local_ts"][0]) and child["remote_ts"][0] == f"{H2}/32[6/8080]", \
        child
    q = entry["trap"]["queue"]
    assert entry["trap"]["triggers"] == 1 and q["flushed"] >= 1 and q["dropped"] == 0, entry["trap"]
    assert f"1 trigger(s), 0 failure(s); queue 0 packet(s) now, {q['queued']} queued, {q['flushed']} sent" \
        in g1.cli("list").stdout
    loop = g1.counters()["connections"]["s5"]["loop"]
    no_policy = loop.get("no_policy", 0) + loop.get("slow_no_policy", 0)
    assert no_policy >= 1, loop
    print(f"[trap] queue {q}; TCP 8081 in the tun without a selector: {no_policy} packets dropped (no_policy)")

    keys_dir = hosts.tmp / "keys"
    g1.cli("keys", "--out", str(keys_dir))
    sas = {int(r.spi, 16): r for r in read_esp_sa(keys_dir / "esp_sa")}
    pkts = scapy_all.rdpcap(str(pcap))
    clear = [p for p in pkts if TCP in p and {8080, 8081} & {p[TCP].sport, p[TCP].dport}]
    assert not clear, f"TCP 8080/8081 crossed in clear: {clear[0].summary()}"
    assert any(ICMP in p for p in pkts), "ping should cross in clear"
    esp = [p for p in pkts if IP in p and p[IP].proto == 50]
    nhs, seen_http = set(), False
    for p in esp:
        row = sas[int.from_bytes(bytes(p[IP].payload)[:4], "big")]
        sa = SecurityAssociation(ESP, spi=int(row.spi, 16), crypt_algo="3DES", crypt_key=row.enc_key,
                                 auth_algo="HMAC-SHA1-96", auth_key=row.auth_key)
        dec = sa.decrypt(IP(bytes(p[IP])))
        nhs.add(dec[IP].proto)
        assert TCP in dec and 8080 in (dec[TCP].sport, dec[TCP].dport), dec.summary()
        assert (dec[IP].src, dec[IP].dst) == (p[IP].src, p[IP].dst)
        seen_http |= MARKER in bytes(dec[TCP].payload)
    assert len(esp) >= 10 and nhs == {6} and seen_http, (len(esp), nhs)
    print(f"[trap] on the wire: {len(esp)} ESP packets, next header {sorted(nhs)}; nothing of 8080 in clear")


def test_clear_fallback_goes_clear_after_trap_timeout_and_comes_back_with_the_sa(hosts: Hosts) -> None:
    g1 = hosts.gateway(1, fallback="clear", timeout=2)  # h2 runs no gateway: the peer is dead
    pcap = hosts.tmp / "h1.pcap"
    with capture(hosts.h1, hosts.veth1, pcap, "tcp port 8080"):
        body, took = hosts.curl(8080, 15)
    assert body == MARKER, g1.log()
    line = f"s5: peer {H2}: no SA (no Child SA within trap_timeout 2 s): routes removed, traffic goes in clear"
    assert line in g1.log(), g1.log()
    assert table(hosts.h1) == ""
    assert any(TCP in p for p in scapy_all.rdpcap(str(pcap))), "request: the fallback is clear text"
    print(f"\n[trap clear] peer dead: connected in clear after {took:.1f} s (trap_timeout 2 s)")
    # retried after back-off; with the peer's gateway up, the SA comes and the routes come back
    assert wait_for(lambda: "s5: trap: retry: initiating" in g1.log(), 10), g1.log()
    t0 = time.monotonic()
    hosts.gateway(2)
    assert wait_for(lambda: trap(g1)["state"] == "ESTABLISHED" and table(hosts.h1) != "", 20), g1.log()
    print(f"[trap clear] peer back: SA and routes back {time.monotonic() - t0:.1f} s after its gateway started")
    assert hosts.curl(8080, 10)[0] == MARKER


def test_drop_fallback_never_sends_8080_in_clear(hosts: Hosts) -> None:
    g1 = hosts.gateway(1, fallback="drop", timeout=2)
    pcap = hosts.tmp / "h1.pcap"
    with capture(hosts.h1, hosts.veth1, pcap, "tcp port 8080"):
        body, took = hosts.curl(8080, 5)
        assert body == b""
        assert wait_for(lambda: "traffic dropped, never sent in clear (trap_fallback drop" in g1.log(), 5), g1.log()
    assert scapy_all.rdpcap(str(pcap)) == [] or len(scapy_all.rdpcap(str(pcap))) == 0
    assert re.search(rf"^{H2} dev ", table(hosts.h1), re.M), table(hosts.h1)  # the routes stay
    t = trap(g1)["trap"]
    assert t["failures"] >= 1 and t["routes"] == "installed", t
    print(f"\n[trap drop] peer dead: curl gave up after {took:.1f} s, 0 packets of 8080 on the wire, "
          f"queue {t['queue']}")
