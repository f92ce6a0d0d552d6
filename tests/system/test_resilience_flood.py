"""Resilience campaign 3 (issue #13): an IKE_SA_INIT flood at a responder gateway.

  left ── gwa ══ r ══ gwb (responder) ── right
                 ║
               flood  (198.51.100.2; spoofs sources from 198.18.0.0/15, which r routes back to it)

For 10 s (``make campaigns``: longer, faster) the flooder sends valid IKE_SA_INIT requests (the IKE
core's own first message, fresh SPI each) from ~131 000 spoofed addresses to gwb:500, while an
established tunnel gwa-gwb carries a ping every 50 ms.  Measured, and printed (``-s``): the flood
rate (sent, and taken in by gwb), COOKIE notifies sent (gwb's counter, and the frames that reached
the flooder's interface), half-open SAs (peak), requests the kernel dropped for a full socket buffer,
gwb's RSS (start/peak/end), ping loss.  Checked: COOKIEs engage, the half-open table stays at the
threshold (the spoofed peers never return a cookie), 0 ping loss, the tunnel's IKE SA survives,
RSS bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from campaigns.common import (
    endpoint_counters,
    established,
    gateway_pid,
    lab_up,
    ns,
    pick,
    ping_summary,
    progress,
    rss_kib,
    sas,
    unique,
)

from support.paths import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONN = "gwa-gwb"
COOKIE_THRESHOLD = 10  # ipsecemu.ike.endpoint.IkeEndpoint's default, which the gateway uses
FLOODER = REPO / "tests" / "campaigns" / "ike_flood.py"

LAB = """
name: {name}
nodes:
  left:
    kind: host
    addresses: {{eth0: 10.1.0.10/24}}
    routes: [{{dst: default, via: 10.1.0.1}}]
  gwa:
    kind: ipsecemu
    addresses: {{lan: 10.1.0.1/24, wan: 192.0.2.1/30}}
    routes: [{{dst: 192.0.2.0/24, via: 192.0.2.2}}]
  r:
    kind: router
    addresses: {{a: 192.0.2.2/30, b: 192.0.2.5/30, f: 198.51.100.1/30}}
    routes: [{{dst: 198.18.0.0/15, via: 198.51.100.2}}]
  gwb:
    kind: ipsecemu
    addresses: {{wan: 192.0.2.6/30, lan: 10.2.0.1/24}}
    routes: [{{dst: default, via: 192.0.2.5}}]
  right:
    kind: host
    addresses: {{eth0: 10.2.0.10/24}}
    routes: [{{dst: default, via: 10.2.0.1}}]
  flood:
    kind: host
    addresses: {{eth0: 198.51.100.2/30}}
    routes: [{{dst: default, via: 198.51.100.1}}]
links:
  - endpoints: [left:eth0, gwa:lan]
  - endpoints: [gwa:wan, r:a]
  - endpoints: [r:b, gwb:wan]
  - endpoints: [gwb:lan, right:eth0]
  - endpoints: [r:f, flood:eth0]
vpn:
  connections:
    - name: gwa-gwb
      nodes: [gwa, gwb]
      addresses: [192.0.2.1, 192.0.2.6]
      routes: {{gwa: [10.2.0.0/24], gwb: [10.1.0.0/24]}}
      config:
        psk: resil1-flood-lab-only-psk
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
        dpd: {{interval: 2, timeout: 10}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("fl")
    with lab_up(LAB.format(name=name), tmp_path_factory.mktemp("resil-flood"), name) as lab:
        yield lab


def _udp_rcvbuf_errors(lab: str, node: str) -> int:
    """The kernel's UDP receive-buffer drops in a node's netns (/proc/net/snmp)."""
    lines = [ln.split() for ln in ns(lab, node, "cat", "/proc/net/snmp").stdout.splitlines() if ln.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    return int(vals[head.index("RcvbufErrors")])


def _rx_packets(lab: str, node: str, iface: str) -> int:
    return int(ns(lab, node, "cat", f"/sys/class/net/{iface}/statistics/rx_packets").stdout.strip())


@pytest.mark.timeout(pick(120, 400))
def test_ike_sa_init_flood_cookies_tunnel_and_memory(lab: str) -> None:
    """Short: one 10 s round at 20 000/s.  Long: three 30 s rounds at 50 000/s; RSS after each round
    tells a high-water mark (allocator, buffers) from growth per request."""
    seconds, rate, rounds = pick(10, 30), pick(20000, 50000), pick(1, 3)
    assert established(lab, "gwa", CONN) is not None
    ike_before = established(lab, "gwa", CONN)["initiator-spi"]  # type: ignore[index]
    pid = gateway_pid(lab, "gwb")
    start = rss_kib(pid)
    ends = []
    for i in range(rounds):
        progress(f"flood round {i + 1}/{rounds}")
        ends.append(_flood_round(lab, seconds, rate, ike_before, pid))
    if rounds > 1:
        print(f"\ngwb RSS over {rounds} flood rounds: start {start / 1024:.1f} MiB, after each round "
              + ", ".join(f"{e / 1024:.1f}" for e in ends) + " MiB; growth per round after the first: "
              + ", ".join(f"{(b - a) / 1024:+.1f}" for a, b in zip(ends, ends[1:], strict=False)) + " MiB")


def _flood_round(lab: str, seconds: int, rate: int, ike_before: str, pid: int) -> int:
    """One flood round with its checks and figures; returns gwb's RSS (KiB) after it."""
    rss = [rss_kib(pid)]
    c0 = endpoint_counters(lab, "gwb")
    k0 = _udp_rcvbuf_errors(lab, "gwb")
    rx0 = _rx_packets(lab, "flood", "eth0")
    interval = 0.05
    ping = subprocess.Popen(["ip", "netns", "exec", f"{lab}-left", "ping", "-n", "-q", "-c",
                             str(int((seconds + 3) / interval)), "-i", str(interval), "-W", "2", "10.2.0.10"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    progress(f"flooding gwb for {seconds} s at up to {rate} IKE_SA_INIT/s from 198.18.0.0/15")
    flood = subprocess.Popen(["ip", "netns", "exec", f"{lab}-flood", sys.executable, str(FLOODER), "--dst",
                              "192.0.2.6", "--sources", "198.18.0.0/15", "--seconds", str(seconds), "--rate",
                              str(rate)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    half_open: list[int] = []
    stop = threading.Event()

    def sample_sas() -> None:  # the half-open table, once a second (the gateway's own SA list)
        while not stop.wait(1.0):
            half_open.append(sum(1 for s in sas(lab, "gwb") if s.get("state") != "ESTABLISHED"))

    sampler = threading.Thread(target=sample_sas, daemon=True)
    sampler.start()
    try:
        while flood.poll() is None:
            rss.append(rss_kib(pid))
            time.sleep(0.2)
        out, err = flood.communicate(timeout=10)
    finally:
        stop.set()
        if flood.poll() is None:
            flood.kill()
            flood.wait(5)
    sampler.join(5)
    assert flood.returncode == 0, err[-2000:]
    fl = json.loads(out.strip().splitlines()[-1])
    sent, got = ping_summary(ping.communicate(timeout=seconds + 30)[0])
    time.sleep(1.0)
    rss_end = rss_kib(pid)
    rss.append(rss_end)
    c1 = endpoint_counters(lab, "gwb")
    d = {k: c1.get(k, 0) - c0.get(k, 0) for k in set(c0) | set(c1) if c1.get(k, 0) != c0.get(k, 0)}
    kdrops = _udp_rcvbuf_errors(lab, "gwb") - k0
    cookies_seen = _rx_packets(lab, "flood", "eth0") - rx0
    taken = d.get("ike_in", 0)
    peak = max(half_open) if half_open else -1
    print(f"\nIKE_SA_INIT flood, {fl['seconds']:.1f} s from {fl['sources']} spoofed sources: sent {fl['sent']} "
          f"({fl['rate']}/s, {fl['bytes']} bytes each); gwb took in {taken} ({taken / fl['seconds']:.0f}/s), "
          f"the kernel dropped {kdrops} for a full socket buffer")
    print(f"  COOKIE notifies sent by gwb {d.get('cookie_sent', 0)} ({d.get('cookie_sent', 0) / max(taken, 1):.1%} of "
          f"the requests taken in); frames back at the flooder {cookies_seen}; half-open SAs sampled each "
          f"second: peak {peak} (threshold {COOKIE_THRESHOLD}); hard cap drops {d.get('half_open_cap', 0)}")
    print(f"  gwb RSS start {rss[0] / 1024:.1f} MiB, peak {max(rss) / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
          f"(+{(max(rss) - rss[0]) / 1024:.1f} MiB at peak)")
    print(f"  tunnel gwa-gwb during the flood: ping {sent - got}/{sent} lost; gwb IKE counters moved: {d}")
    assert d.get("cookie_sent", 0) > 0 and d["cookie_sent"] >= 0.9 * (taken - COOKIE_THRESHOLD - 50)
    assert peak <= COOKIE_THRESHOLD + 2  # the spoofed sources never answer: no more half-open SAs
    assert got == sent, f"{sent - got} pings lost during the flood"
    s = established(lab, "gwa", CONN)
    assert s is not None and s["initiator-spi"] == ike_before  # the tunnel's IKE SA was never replaced
    assert max(rss) - rss[0] < 64 * 1024  # bounded: tens of MiB at most, not growing with the flood
    return rss_end
