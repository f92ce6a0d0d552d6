"""Rekeys under load (branch resil2, issue #13): Child SA rekeys (byte lifetime) and IKE SA rekeys
(short IKE lifetime) while iperf3 runs through two ``gateway run`` daemons and a ping runs beside
it.  Rekeys and collisions are counted by the gateways themselves (their log lines, the IKE core's
counters in ``sa counters --json``); pings lost and encap/decap drops are printed.

``make test`` runs the short regression (20 Child + 3 IKE rekeys, well under a minute); ``make soak``
the campaign of the issue (RESIL2_CHILD_REKEYS=100 RESIL2_IKE_REKEYS=10).  Needs root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns

from support.gateway_lab import Lab, build_lab, up
from support.resil2 import PingRounds, tally, teardown

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHILD_REKEYS = int(os.environ.get("RESIL2_CHILD_REKEYS", "20"))
IKE_REKEYS = int(os.environ.get("RESIL2_IKE_REKEYS", "3"))
RATE = os.environ.get("RESIL2_RATE", "300M")  # iperf3 -b: a steady rate gives a steady rekey cadence
CHILD_KB = int(os.environ.get("RESIL2_CHILD_KB", "16384"))
IKE_SECONDS = int(os.environ.get("RESIL2_IKE_SECONDS", "6"))
# 0 = no jitter: both peers' soft limits are equal, as before resil2 (the "before" figure)
JITTER_PERCENT = int(os.environ.get("RESIL2_JITTER_PERCENT", "5"))
MAX_SECONDS = float(os.environ.get("RESIL2_MAX_SECONDS", str(10 + 2 * IKE_SECONDS * IKE_REKEYS)))

PROPOSALS = f"""\
    esp_proposals: aes128gcm16
    ike_proposals: aes128gcm16-prfsha256-ecp256
    child_lifetime: {{seconds: 3600, kilobytes: {CHILD_KB}, jitter_percent: {JITTER_PERCENT}}}
    ike_lifetime: {{seconds: {IKE_SECONDS}}}
"""


def _count(lab: Lab, what: str) -> int:
    return (lab.a.state / "gateway.log").read_text().count(what)


def test_child_and_ike_rekeys_under_iperf3_lose_no_ping(unique_name: str, tmp_path: Path) -> None:
    net = Netns()
    lab: Lab | None = None
    procs: list[subprocess.Popen[str]] = []
    try:
        lab = build_lab("rs2" + unique_name[1:6], tmp_path, net, encap="udp", proposals=PROPOSALS)
        lab.b.start()
        lab.a.start()
        up(lab)
        server = subprocess.Popen(["ip", "netns", "exec", lab.right, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        procs.append(server)
        time.sleep(0.5)
        base_child, base_ike = _count(lab, "Child SA rekeyed"), _count(lab, "IKE SA rekeyed")
        client = subprocess.Popen(["ip", "netns", "exec", lab.left, "iperf3", "-c", "10.2.0.2", "-b", RATE,
                                   "-t", str(int(MAX_SECONDS) + 5), "-J"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(client)
        pings = PingRounds(lab.left, "10.2.0.2").start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < MAX_SECONDS:
            if _count(lab, "Child SA rekeyed") - base_child >= CHILD_REKEYS + 2 \
                    and _count(lab, "IKE SA rekeyed") - base_ike >= IKE_REKEYS:
                break
            time.sleep(0.5)
        sent, got = pings.stop()
        took = time.monotonic() - t0
        client.send_signal(signal.SIGINT)  # iperf3 reports what it did so far
        out, err = client.communicate(timeout=15)
        try:
            end = json.loads(out)["end"]  # interrupted: only the sender's sum is filled in
            mbit = f"{max(end[k]['bits_per_second'] for k in ('sum_sent', 'sum_received')) / 1e6:.0f}"
        except (ValueError, KeyError):
            mbit = "?"
        ta, tb = tally(lab.a), tally(lab.b)
        collisions_child = max(ta.child_collisions, tb.child_collisions)
        collisions_ike = max(ta.ike_collisions, tb.ike_collisions)
        # a collision makes two "rekeyed" lines for one child on each side: one rekey done
        child_done = ta.child_rekeys - base_child - collisions_child
        ike_done = ta.ike_rekeys - base_ike
        print(f"\nrekeys under load: iperf3 -b {RATE} ({mbit} Mbit/s), child lifetime {CHILD_KB} KB (jitter "
              f"{JITTER_PERCENT} %), IKE lifetime "
              f"{IKE_SECONDS} s, {took:.1f} s: {child_done} Child SA rekeys, {ike_done} IKE SA rekeys, "
              f"collisions child {collisions_child} IKE {collisions_ike}, pings lost {sent - got}/{sent}, "
              f"encap/decap drops a ({ta.encap_drop}, {ta.decap_drop}) b ({tb.encap_drop}, {tb.decap_drop})")
        logs = (lab.a.log(), lab.b.log())
        assert child_done >= CHILD_REKEYS, f"only {child_done} Child SA rekeys in {took:.0f} s\n{logs[0]}"
        assert ike_done >= IKE_REKEYS, f"only {ike_done} IKE SA rekeys in {took:.0f} s\n{logs[0]}"
        if JITTER_PERCENT:  # without jitter nearly every child rekey collided (36 of 38 here)
            assert collisions_child <= max(2, child_done // 10), f"{collisions_child} child rekey collisions"
        assert sent > 0 and got == sent, f"{sent - got} of {sent} pings lost\n{logs[0]}\n{logs[1]}"
    finally:
        teardown(procs, lab, net)
