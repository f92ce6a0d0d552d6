"""Resilience campaign 2 (issue #13): ESP reordering against the replay window (128 packets).

Lab: left ── gwa ══ wan (C impairment element) ══ gwb ── right; one tunnel, ESP-in-UDP, C loops.

- Crafted, deterministic: with gwa's outbound keys (`sa keys`), ESP packets of chosen sequence
  numbers are built by the reference transform (``ipsecemu.esp.reference``) and sent from gwa's
  address and port into gwb (a raw socket in gwa's netns).  Reordering inside the window: every
  packet accepted, 0 replay drops; duplicates and packets older than the window: each one counted
  as a replay drop in gwb's loop counters, none accepted; the exact window edge (top - 127 accepted,
  top - 128 dropped).
- Real traffic: iperf3 UDP left -> right through the tunnel while the element reorders 25 % of the
  ESP frames on the wan link.  A small delay (reordering depth within the window): iperf3 sees the
  packets out of order and gwb drops none as replay; a long delay (depth beyond the window): the
  late packets are counted as replay drops, the gateway keeps running, and the same flow without
  reordering is the baseline.  Figures printed (``-s``); ``IPSECEMU_CAMPAIGN=long`` runs more."""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from campaigns.common import ctl, lab_up, ns, pick, progress, sa_counters, unique

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.esp.framing import ip_checksum
from ipsecemu.esp.reference import EspOutbound
from ipsecemu.lab import drills
from ipsecemu.lab.state import LabState
from ipsecemu.net.netns import entered
from ipsecemu.pcap.uat import read_esp_sa

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONN = "gwa-gwb"
WINDOW = 128
GWA, GWB, LEFT, RIGHT = "192.0.2.1", "192.0.2.2", "10.1.0.10", "10.2.0.10"

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
  gwb:
    kind: ipsecemu
    addresses: {{wan: 192.0.2.2/30, lan: 10.2.0.1/24}}
  right:
    kind: host
    addresses: {{eth0: 10.2.0.10/24}}
    routes: [{{dst: default, via: 10.2.0.1}}]
links:
  - endpoints: [left:eth0, gwa:lan]
  - endpoints: [gwa:wan, gwb:wan]
    impair: {{}}
  - endpoints: [gwb:lan, right:eth0]
vpn:
  connections:
    - name: gwa-gwb
      nodes: [gwa, gwb]
      addresses: [192.0.2.1, 192.0.2.2]
      routes: {{gwa: [10.2.0.0/24], gwb: [10.1.0.0/24]}}
      config:
        psk: resil1-esp-lab-only-psk
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
        replay_window: 128
        dpd: 0
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("esp")
    with lab_up(LAB.format(name=name), tmp_path_factory.mktemp("resil-esp"), name) as lab:
        yield lab


def _in_counters(lab: str, spi: str) -> dict[str, int]:
    """gwb's inbound counters of the Child SA with inbound SPI ``spi`` (hex)."""
    for sa in sa_counters(lab, "gwb", CONN):
        if sa["spi_in"] == spi:
            return dict(sa["in"])
    raise AssertionError(f"no SA {spi} on gwb: {sa_counters(lab, 'gwb', CONN)}")


def _replay_total(lab: str) -> dict[str, int]:
    """gwb's inbound packets/replay drops summed over its Child SAs."""
    tot = {"packets": 0, "replay": 0, "bad_icv": 0}
    for sa in sa_counters(lab, "gwb", CONN):
        for k in tot:
            tot[k] += int(sa["in"][k])
    return tot


def _impair(lab: str, **values: str) -> dict[str, int]:
    """gwa -> gwb only (the ESP of the measured flow); no values: clear.  Returns the element's
    counters of that direction (cumulative)."""
    st = LabState.open(lab)
    ans = drills.impair(st, "gwa:wan", values, "out", clear=not values)
    return {k: int(v) for k, v in ans["a_to_b"]["stats"].items()}


# ---------------------------------------------------------------- real traffic through the element

def _iperf_udp(lab: str, seconds: float, mbit: int, port: int) -> dict[str, Any]:
    """The receiver's (iperf3 server's) view of one UDP run: packets, lost, out of order."""
    srv = subprocess.Popen(["ip", "netns", "exec", f"{lab}-right", "iperf3", "-s", "-1", "-J", "-p", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.4)
        res = ns(lab, "left", "iperf3", "-c", RIGHT, "-p", str(port), "-u", "-b", f"{mbit}M", "-l", "1000",
                 "-t", str(seconds), timeout=seconds + 40)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        text, _ = srv.communicate(timeout=20)
    finally:
        if srv.poll() is None:
            srv.terminate()
            srv.wait(timeout=10)
    end = json.loads(text)["end"]
    s = end["sum"]
    ooo = int(s.get("out_of_order", 0)) or sum(int(st["udp"].get("out_of_order", 0)) for st in end["streams"])
    return {"packets": int(s["packets"]), "lost": int(s["lost_packets"]), "out_of_order": ooo}


def _run(lab: str, label: str, seconds: float, mbit: int, port: int, **imp: str) -> dict[str, Any]:
    _impair(lab)
    el0 = _impair(lab, **imp) if imp else _impair(lab)
    c0 = _replay_total(lab)
    r = _iperf_udp(lab, seconds, mbit, port)
    el1 = _impair(lab)
    c1 = _replay_total(lab)
    r.update(replay=c1["replay"] - c0["replay"], bad_icv=c1["bad_icv"] - c0["bad_icv"],
             reordered=el1["reordered"] - el0["reordered"], label=label)
    progress(f"{label}: {r}")
    return r


@pytest.mark.timeout(pick(120, 300))
def test_reordering_inside_and_beyond_the_window_with_real_traffic(lab: str) -> None:
    seconds, mbit = pick(4, 20), 20  # 20 Mbit/s of 1000-byte datagrams: 2500 packets/s
    base = _run(lab, "baseline: delay 100 ms, no reordering", seconds, mbit, 5401, delay="100ms")
    # inside the window at 500 packets/s: the nominal depth is ~1 packet; at 2500/s a stalled sender
    # (iperf3 catches up in bursts on a loaded box) once reached >128 deep and lost 157 of 50 000
    # packets as replays, rightly (see docs/notes-resil1.md)
    inside = _run(lab, "reorder 25 %, delay 2 ms, 500 packets/s (depth ~1)", seconds, 4, 5402,
                  delay="2ms", reorder="25%")
    beyond = _run(lab, "reorder 25 %, delay 100 ms (depth ~250 packets)", seconds, mbit, 5403,
                  delay="100ms", reorder="25%")
    print(f"\niperf3 UDP {mbit} Mbit/s (inside: 4 Mbit/s) x {seconds} s left -> right through the tunnel, reordering of the ESP "
          f"on the wan link (gwa -> gwb), replay window {WINDOW}:")
    for r in (base, inside, beyond):
        print(f"  {r['label']}: element reordered {r['reordered']}; iperf3 packets {r['packets']}, lost "
              f"{r['lost']}, out of order {r['out_of_order']}; gwb replay drops {r['replay']}, bad ICV {r['bad_icv']}")
    assert base["replay"] == 0 and base["out_of_order"] == 0
    assert inside["reordered"] > 0 and inside["out_of_order"] > 0  # reordered packets were delivered...
    assert inside["replay"] == 0  # ...and none was taken for a replay
    assert beyond["replay"] > 0  # too late for the window: counted drops, not accepted
    assert all(r["bad_icv"] == 0 for r in (base, inside, beyond))
    # the drops are the packets iperf3 misses (a few more may fall to the load of the box)
    assert beyond["lost"] >= beyond["replay"] * 0.9
    assert _ping(lab) == 3  # the gateway is fine afterwards


def _ping(lab: str) -> int:
    out = ns(lab, "left", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", RIGHT).stdout
    return out.count("time=")


# ---------------------------------------------------------------- crafted ESP, exact counts

def _icmp_echo(seq: int) -> bytes:
    """An IPv4 ICMP echo request left -> right (fits the SA's selectors)."""
    icmp = struct.pack(">BBHHH", 8, 0, 0, 0x5231, seq & 0xFFFF) + b"resil1-replay-window"
    icmp = icmp[:2] + struct.pack(">H", ip_checksum(icmp)) + icmp[4:]
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0, 64, 1, 0,
                      socket.inet_aton(LEFT), socket.inet_aton(RIGHT))
    hdr = hdr[:10] + struct.pack(">H", ip_checksum(hdr)) + hdr[12:]
    return hdr + icmp


class Crafter:
    """ESP-in-UDP packets of gwa's outbound SA with any sequence number, sent as gwa (raw socket in
    gwa's netns: source 192.0.2.1:4500, which gwb's connected UDP socket accepts)."""

    def __init__(self, lab: str, tmp: Path) -> None:
        child = next(c for s in ctl(lab, "gwa", "list_sas") for c in s["child-sas"])
        spi_out = child["spi-out"]
        self.used = int(child["packets-out"])  # sequence numbers gwa itself has used on this SA
        ctl(lab, "gwa", "export_keys", dir=str(tmp))
        row = next(r for r in read_esp_sa(tmp / "esp_sa") if r.src == GWA and r.spi_matches(int(spi_out, 16)))
        alg = row.algorithm()
        assert alg is not None
        self.spi = spi_out
        self.cfg = EspSaConfig(int(spi_out, 16), alg.encr, row.enc_key, alg.integ, row.auth_key,
                               replay_window=WINDOW)
        self.esp = EspOutbound(self.cfg)
        with entered(f"{lab}-gwa"):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, seqs: list[int]) -> None:
        for q in seqs:
            self.esp.next_seq = q
            verdict, esp = self.esp.encap(_icmp_echo(q), 4)  # 4: IPv4 inside (tunnel mode)
            assert verdict == 0 and esp
            udp = struct.pack(">HHHH", 4500, 4500, 8 + len(esp), 0) + esp  # checksum 0: allowed on IPv4
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                             socket.inet_aton(GWA), socket.inet_aton(GWB))
            ip = ip[:10] + struct.pack(">H", ip_checksum(ip)) + ip[12:]
            self.sock.sendto(ip + udp, (GWB, 0))
        time.sleep(0.3)  # let gwb's loop take them all in

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(pick(120, 300))
def test_crafted_esp_inside_window_accepted_beyond_window_counted(lab: str, tmp_path: Path) -> None:
    n, dups, old = pick(512, 8192), pick(32, 512), pick(64, 1024)
    rng = random.Random(13)
    cr = Crafter(lab, tmp_path)
    try:
        c0 = _in_counters(lab, cr.spi)
        top = cr.used + 100_000  # far above what gwa's real traffic used: the window starts here
        cr.send([top])
        # 1. reordering inside the window: blocks of 64 shuffled (every packet within 63 of the top)
        seqs = list(range(top + 1, top + 1 + n))
        order = []
        for i in range(0, n, 64):
            blk = seqs[i:i + 64]
            rng.shuffle(blk)
            order += blk
        cr.send(order)
        top += n
        c1 = _in_counters(lab, cr.spi)
        # 2. duplicates of packets still inside the window
        cr.send([rng.randrange(top - WINDOW + 1, top + 1) for _ in range(dups)])
        c2 = _in_counters(lab, cr.spi)
        # 3. a jump ahead, then never-seen packets older than the window, then never-seen ones inside it,
        #    and the exact edge: top - 127 is inside, top - 128 is not
        jump = top + 2 * WINDOW + old
        cr.send([jump])
        too_old = rng.sample(range(top + 1, jump - WINDOW + 1), old) + [jump - WINDOW]
        inside = [jump - WINDOW + 1] + rng.sample(range(jump - WINDOW + 2, jump), 20)
        cr.send(too_old)
        cr.send(inside)
        c3 = _in_counters(lab, cr.spi)
    finally:
        cr.close()
    d1 = {k: c1[k] - c0[k] for k in ("packets", "replay", "bad_icv")}
    d2 = {k: c2[k] - c1[k] for k in ("packets", "replay")}
    d3 = {k: c3[k] - c2[k] for k in ("packets", "replay")}
    print(f"\ncrafted ESP into gwb's loop (window {WINDOW}): {1 + n} packets, blocks of 64 shuffled: accepted "
          f"{d1['packets']}, replay drops {d1['replay']}, bad ICV {d1['bad_icv']}")
    print(f"  {dups} duplicates inside the window: accepted {d2['packets']}, replay drops {d2['replay']}")
    print(f"  jump +{jump - top}, {len(too_old)} never-seen packets older than the window (edge top-128 "
          f"included), {len(inside)} inside (edge top-127 included): accepted {d3['packets']}, replay drops "
          f"{d3['replay']}")
    assert d1 == {"packets": 1 + n, "replay": 0, "bad_icv": 0}
    assert d2 == {"packets": 0, "replay": dups}
    assert d3 == {"packets": 1 + len(inside), "replay": len(too_old)}
    # gwa's own sequence numbers now lie below gwb's window: a Child rekey gives the tunnel fresh SAs
    ctl(lab, "gwa", "rekey", target=CONN)
    end = time.monotonic() + 20
    while time.monotonic() < end and _ping(lab) < 3:
        time.sleep(0.5)
    assert _ping(lab) == 3
