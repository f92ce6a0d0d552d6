"""Soak (branch resil2, issue #13): two ``gateway run`` daemons rekey their Child SA and IKE SA every
SOAK_REKEY seconds (time lifetimes) while iperf3 and a ping run through the tunnel; every
SOAK_SAMPLE seconds the RSS and the open fds of each gateway are sampled.  The series and the growth
(median of the last third against the first third) are printed; the test fails when the fds are not
flat or the RSS grows beyond SOAK_RSS_GROWTH (a fraction).

``make test`` runs 45 s (rekeys every 10 s: only a gross leak shows), ``make soak`` the issue's
10 minutes with rekeys every 30 s (SOAK_SECONDS=600 SOAK_REKEY=30 SOAK_SAMPLE=10).  Needs root."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns

from support.gateway_lab import Lab, build_lab, up
from support.resil2 import PingRounds, proc_sample, tally, teardown, thirds

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))
REKEY = float(os.environ.get("SOAK_REKEY", "10"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "5"))
RSS_GROWTH = float(os.environ.get("SOAK_RSS_GROWTH", "0.2"))  # +20 % of the first third's median
RATE = os.environ.get("SOAK_RATE", "50M")
# time lifetimes: the IKE core rekeys at 80-90 % of them
LIFE = max(4, round(REKEY / 0.85))
PROPOSALS = f"""\
    esp_proposals: aes128gcm16-ecp256
    ike_proposals: aes128gcm16-prfsha256-ecp256
    child_lifetime: {{seconds: {LIFE}}}
    ike_lifetime: {{seconds: {LIFE}}}
"""


def test_soak_rekeys_under_traffic_keep_rss_and_fds_flat(unique_name: str, tmp_path: Path) -> None:
    net = Netns()
    lab: Lab | None = None
    procs: list[subprocess.Popen[str]] = []
    try:
        lab = build_lab("rs2" + unique_name[1:6], tmp_path, net, encap="udp", proposals=PROPOSALS)
        lab.b.start()
        lab.a.start()
        up(lab)
        gws = {"a": lab.a, "b": lab.b}
        pids = {n: g.proc.pid for n, g in gws.items() if g.proc is not None}  # `ip netns exec` execs the daemon
        server = subprocess.Popen(["ip", "netns", "exec", lab.right, "iperf3", "-s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        procs.append(server)
        time.sleep(0.5)
        client = subprocess.Popen(["ip", "netns", "exec", lab.left, "iperf3", "-c", "10.2.0.2", "-b", RATE,
                                   "-t", str(int(SECONDS) + 30)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(client)
        pings = PingRounds(lab.left, "10.2.0.2", per_round=100, interval=0.05).start()
        rss: dict[str, list[int]] = {n: [] for n in pids}
        fds: dict[str, list[int]] = {n: [] for n in pids}
        t0 = time.monotonic()
        next_at = t0
        while time.monotonic() - t0 < SECONDS:
            if time.monotonic() >= next_at:
                for n, pid in pids.items():
                    r, f = proc_sample(pid)
                    rss[n].append(r)
                    fds[n].append(f)
                next_at += SAMPLE
            assert client.poll() is None, f"iperf3 ended early: {client.stderr.read() if client.stderr else ''}"
            time.sleep(0.2)
        sent, got = pings.stop()
        ta, tb = tally(lab.a), tally(lab.b)
        print(f"\nsoak: {SECONDS:.0f} s, lifetimes {LIFE} s (rekeys every ~{REKEY:.0f} s), iperf3 -b {RATE}: "
              f"{ta.child_rekeys} Child SA / {ta.ike_rekeys} IKE SA rekeys (a's log), collisions child "
              f"{max(ta.child_collisions, tb.child_collisions)} IKE {max(ta.ike_collisions, tb.ike_collisions)}, "
              f"pings lost {sent - got}/{sent}, "
              f"encap/decap drops a ({ta.encap_drop}, {ta.decap_drop}) b ({tb.encap_drop}, {tb.decap_drop})")
        bad = []
        for n in pids:
            r0, r1 = thirds(rss[n])
            f0, f1 = thirds(fds[n])
            growth = (r1 - r0) / r0
            print(f"  gateway {n}: RSS KiB every {SAMPLE:.0f} s {rss[n]}\n  gateway {n}: fds {fds[n]}\n"
                  f"  gateway {n}: RSS {r0:.0f} -> {r1:.0f} KiB ({growth:+.1%}), fds {f0:.0f} -> {f1:.0f}")
            if f1 > f0:
                bad.append(f"gateway {n}: fds grew {f0:.0f} -> {f1:.0f}")
            if growth > RSS_GROWTH:
                bad.append(f"gateway {n}: RSS grew {growth:+.1%} (bound {RSS_GROWTH:+.0%})")
        assert not bad, "; ".join(bad)
        assert ta.child_rekeys >= max(1, int(SECONDS / LIFE) - 1), f"only {ta.child_rekeys} Child SA rekeys"
        assert ta.ike_rekeys >= max(1, int(SECONDS / LIFE) - 1), f"only {ta.ike_rekeys} IKE SA rekeys"
        assert sent > 0 and got == sent, f"{sent - got} of {sent} pings lost\n{lab.a.log()}\n{lab.b.log()}"
    finally:
        teardown(procs, lab, net)
