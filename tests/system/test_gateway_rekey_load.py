"""Lossless rekeys at line rate (branches ikelog, rekey0; issue #13): a full-rate iperf3 through
two ``gateway run`` daemons with a small byte lifetime, and a ping beside it.  The C loop raises
the soft limit at once (eventfd), the soft limit of each new SA leaves headroom for the rate its
predecessor carried, the packets an SA used up before its successor is in refused wait for that
successor (encap_held), and the old inbound keeps decrypting what was already in flight: not one
ping is lost over >= 50 byte-limit rekeys, and no packet is dropped at a rekey.  Figures
(throughput, rekeys, pings, packets held, drops by reason, kernel link drops) are printed.
Needs root.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns

from support.gateway_lab import Lab, build_lab, up

pytestmark = pytest.mark.root

LIFETIME_KB = int(os.environ.get("IKELOG_LIFETIME_KB", "8192"))
SECONDS = int(os.environ.get("IKELOG_SECONDS", "8"))
POLICY = f"""\
    ipsec_policy: {{ike_encryption: GCMAES128, ike_integrity: GCMAES128, dh_group: DHGroup14,
                   ipsec_encryption: GCMAES128, ipsec_integrity: GCMAES128, pfs_group: None,
                   sa_lifetime_seconds: 3600, sa_datasize_kilobytes: {LIFETIME_KB}}}
"""


# every counted drop of the C loop (tests/unit/native/test_loop_hold.py: encap_held is not one)
DROP_REASONS = ("tun_bad", "encap_exhausted", "encap_error", "no_policy", "send_errors", "decap_bad_icv",
                "decap_replay", "decap_unknown_sa", "decap_exhausted", "decap_other", "ts_drop", "tun_tx_errors")
# the drops a rekey could cause: an SA used up before the next is in, an SA not (or no longer) installed
REKEY_DROPS = ("encap_exhausted", "decap_unknown_sa", "decap_exhausted", "decap_replay")


def _kernel_drops(ns: str) -> dict[str, int]:
    """Packets the kernel dropped in ns: on its links (a full tun queue while the loop holds it),
    at its UDP sockets (a full ESP socket buffer) and in IP (FragFails: a 1500-byte TCP segment
    from the left host into the 1400-byte tun, before path MTU discovery; not a rekey's)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-s", "-j", "link"], capture_output=True, text=True)
    found = {}
    for lk in json.loads(out.stdout or "[]"):
        st = lk.get("stats64", {})
        for d in ("rx", "tx"):
            if st.get(d, {}).get("dropped"):
                found[f"{lk['ifname']} {d}"] = st[d]["dropped"]
    snmp = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True)
    for proto, keys in (("Udp:", ("RcvbufErrors", "SndbufErrors")),
                        ("Ip:", ("InDiscards", "OutDiscards", "FragFails", "InHdrErrors", "OutNoRoutes"))):
        rows = [ln.split()[1:] for ln in snmp.stdout.splitlines() if ln.startswith(proto)]
        if len(rows) == 2:
            for k, v in zip(*rows, strict=True):
                if k in keys and int(v):
                    found[f"{proto.lower()[:-1]} {k}"] = int(v)
    return found


def _tcp_ext(ns: str, *names: str) -> dict[str, int]:
    """TcpExt counters of ns: tail-loss probes and D-SACKs tell a retransmit of a segment that was
    only late (a hold) from one that was lost."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"], capture_output=True, text=True)
    rows = [ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("TcpExt:")]
    got = dict(zip(*rows[:2], strict=True)) if len(rows) >= 2 else {}
    return {n: int(got.get(n, -1)) for n in names}


def test_full_rate_iperf3_with_byte_lifetime_rekeys_lose_no_ping(unique_name: str, tmp_path: Path) -> None:
    net = Netns()
    lab: Lab | None = None
    server: subprocess.Popen[str] | None = None
    try:
        lab = build_lab("ikr" + unique_name[1:6], tmp_path, net, encap="udp", proposals=POLICY)
        lab.b.start()
        lab.a.start()
        up(lab)
        server = subprocess.Popen(["ip", "netns", "exec", lab.right, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        count = int(SECONDS / 0.02)
        # -O -D: a line per ping, with the time, also for one still unanswered when the next leaves
        pings = subprocess.Popen(["ip", "netns", "exec", lab.left, "ping", "-n", "-D", "-O", "-c", str(count),
                                  "-i", "0.02", "-W", "2", "10.2.0.2"], stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        client = subprocess.run(["ip", "netns", "exec", lab.left, "iperf3", "-c", "10.2.0.2", "-t", str(SECONDS),
                                 "-J"], capture_output=True, text=True, timeout=SECONDS + 30)
        pout, _ = pings.communicate(timeout=SECONDS + 30)
        took = time.monotonic() - t0
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr
        got_m = re.search(r"(\d+) received", pout)
        assert got_m, pout[-2000:]
        got = int(got_m.group(1))
        lost = sorted(set(range(1, count + 1)) - {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", pout)})
        late = len(re.findall(r"no answer yet", pout))  # replies slower than the 20 ms interval
        res = json.loads(client.stdout)["end"]
        mbit = res["sum_received"]["bits_per_second"] / 1e6
        moved = res["sum_received"]["bytes"]
        retrans = res.get("sum_sent", {}).get("retransmits", -1)
        log_a, log_b = (lab.a.state / "gateway.log").read_text(), (lab.b.state / "gateway.log").read_text()
        rekeys = max(log_a.count("Child SA rekeyed"), log_b.count("Child SA rekeyed"))
        soft = log_a.count("soft byte/packet limit") + log_b.count("soft byte/packet limit")
        loops = {n: g.counters()["connections"]["vpn"]["loop"] for n, g in (("a", lab.a), ("b", lab.b))}
        drops = {n: {k: v for k, v in lp.items() if v and k in DROP_REASONS} for n, lp in loops.items()}
        held = {n: lp.get("encap_held", 0) for n, lp in loops.items()}
        kernel = {f"{ns}:{k}": v for ns in (lab.left, lab.a.ns, lab.b.ns, lab.right)
                  for k, v in _kernel_drops(ns).items()}
        tcp = {**_tcp_ext(lab.left, "TCPSlowStartRetrans", "TCPFastRetrans", "TCPLossProbes", "TCPTimeouts",
                          "TCPSACKReorder", "TCPDSACKRecvSegs", "TCPLostRetransmit"),
               **_tcp_ext(lab.right, "TCPOFOQueue")}  # the receiver: segments that came out of order
        # conservation: what gateway a read from its tun, sent as ESP, and b wrote into its tun
        flow = (loops["a"]["tun_rx"], loops["a"]["esp_tx"], loops["b"]["esp_ok"])
        lowered = re.findall(r"soft limit at (\d+) of", log_a + log_b)
        print(f"\nlossless rekeys: {LIFETIME_KB} KB child lifetime, iperf3 {SECONDS} s: {mbit:.0f} Mbit/s "
              f"({moved / 1e6:.0f} MB, {retrans} TCP retransmits: {tcp}; a->b packets read/sent/delivered {flow}), {rekeys} Child SA rekeys ({soft} soft-limit "
              f"detections on both sides, {len(lowered)} soft limits moved for the rate), ping {got}/{count} in "
              f"{took:.1f} s (lost {lost}, {late} replies later than 20 ms), packets held for the next SA a "
              f"{held['a']} b {held['b']}, loop drops by reason a {drops['a']} b {drops['b']}, kernel drops {kernel}")
        # issue #13: not one ping lost.  The packets a used-up SA refused used to be dropped (the rest
        # of the batch that crossed the hard limit: 1 ping lost in 2 of 5 runs); they now wait for
        # the next SA (encap_held), so no packet is ever dropped at the limit
        assert count - got == 0, f"{count - got} pings lost: {lost}\n{log_a[-3000:]}\n{log_b[-3000:]}"
        at_rekey = {n: {k: v for k, v in d.items() if k in REKEY_DROPS} for n, d in drops.items()}
        assert not at_rekey["a"] and not at_rekey["b"], at_rekey
        assert rekeys >= 50, f"only {rekeys} rekeys"
    finally:
        if server is not None and server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(5)
        if lab is not None:
            lab.a.stop()
            lab.b.stop()
        net.close()
