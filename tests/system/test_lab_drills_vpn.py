"""SKU emulation and node drills on a VPN lab, measured with real traffic:

- ``sku: VpnGw1`` on gwa caps its uplink (the impairment element, charged for tunnelled bytes):
  two tunnels (gwa-gwb, gwa-gwc) carrying iperf3 at once share 650 Mbit/s, ±10 % (printed);
- ``lab node LAB gwa restart``: the gateway is stopped by PID and started again, its tunnels
  re-establish (time printed), traffic passes again; ``stop`` of a responder (gwc) leaves it down,
  ``start`` brings it back (gwa notices by DPD and re-initiates).

  left ── gwa (sku VpnGw1) ══wan══ r ══ gwb ── right1
                                     ╚══ gwc ── right2
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from support.labs import cli, iperf3_server, lab_up, ping_within, pings, star_lab, unique

pytestmark = pytest.mark.root

VPN = """\
vpn:
  connections:
    - name: gwa-gwb
      nodes: [gwa, gwb]
      addresses: [192.0.2.1, 192.0.2.6]
      routes: {gwa: [10.2.0.0/24], gwb: [10.1.0.0/24]}
      config: &c
        psk: drills-lab-only-psk
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
        dpd: {interval: 2, timeout: 10}
    - name: gwa-gwc
      nodes: [gwa, gwc]
      addresses: [192.0.2.1, 192.0.2.10]
      routes: {gwa: [10.3.0.0/24], gwc: [10.1.0.0/24]}
      config: *c
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("drills")
    text = star_lab(name, VPN, gwa_extra="    sku: VpnGw1\n")
    with lab_up(tmp_path_factory.mktemp("drills"), text, name) as up:
        yield up


def _two_streams(lab: str, seconds: int = 5) -> list[float]:
    """iperf3 from right1 and right2 to left at once (two tunnels through gwa's uplink): Mbit/s each."""
    with ExitStack() as servers:
        for p in (5301, 5302):
            servers.enter_context(iperf3_server(lab, "left", p))
        clients = [subprocess.Popen(["ip", "netns", "exec", f"{lab}-{src}", "iperf3", "-c", "10.1.0.10", "-p", str(p),
                                     "-t", str(seconds), "-O", "1", "-J"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
                   for src, p in (("right1", 5301), ("right2", 5302))]
        results = [c.communicate(timeout=60)[0] for c in clients]
    return [json.loads(r)["end"]["sum_received"]["bits_per_second"] / 1e6 for r in results]


def _capped(lab: str, cap: int, attempts: int) -> float:
    """Aggregate Mbit/s of the two tunnels under ``cap``: never more than cap + 10 % (the bucket holds);
    on a busy box, up to ``attempts`` runs for one within ±10 % (the closest one is returned)."""
    best = 0.0
    for _ in range(attempts):
        rates = _two_streams(lab)
        got = sum(rates)
        print(f"  cap {cap} Mbit/s: two tunnels {rates[0]:.0f} + {rates[1]:.0f} = {got:.0f} Mbit/s "
              f"({100 * (got / cap - 1):+.1f} %)")
        assert got <= 1.1 * cap, f"{got:.0f} Mbit/s went through a {cap} Mbit/s cap"
        best = got if abs(got - cap) < abs(best - cap) else best
        if abs(got - cap) <= 0.1 * cap:
            break
    return best


def test_sku_caps_two_tunnels_sharing_the_uplink(lab: str) -> None:
    assert pings(lab, "right1", "10.1.0.10") == 3 and pings(lab, "right2", "10.1.0.10") == 3
    print()
    total = _capped(lab, 650, 3)
    status = cli("lab", "status", lab).stdout
    print("\n".join(line for line in status.splitlines() if "impair" in line))
    assert "rate 650mbit overhead -76B" in status
    # the same lab without the cap: whether the cap (and not this machine) set the figures
    cli("lab", "impair", lab, "gwa:wan", "--clear")
    free = sum(_two_streams(lab, 4))
    print(f"SKU VpnGw1 (650 Mbit/s emulated): {total:.0f} Mbit/s ({100 * (total / 650 - 1):+.1f} %); "
          f"the same two tunnels without the cap: {free:.0f} Mbit/s")
    if total < 0.9 * 650:  # only excusable when the box itself could not carry much more right now
        assert free < 1.3 * 650, f"{total:.0f} Mbit/s under a 650 cap, yet {free:.0f} Mbit/s without it"
        print("  (below -10 %: the machine, not the cap, limited this run)")
    # VpnGw2/VpnGw3's caps, set at run time the way the SKU sets them; held to ±10 % only where this
    # machine carries clearly more than the cap without it
    for sku, cap in (("VpnGw2", 1000), ("VpnGw3", 1250)):
        cli("lab", "impair", lab, "gwa:wan", "--rate", f"{cap}mbit", "--overhead=-76")
        got = _capped(lab, cap, 2)
        fast_enough = free > 1.3 * cap
        print(f"{sku} cap ({cap} Mbit/s): {got:.0f} Mbit/s ({100 * (got / cap - 1):+.1f} %)"
              + ("" if fast_enough else f" - not held to -10 %: {free:.0f} Mbit/s without a cap"))
        if fast_enough:
            assert got >= 0.9 * cap, f"{sku}: {got:.0f} Mbit/s is not within 10 % of {cap}"
    cli("lab", "impair", lab, "gwa:wan", "--rate", "650mbit", "--overhead=-76")


def test_gateway_restart_rejoins_and_time_is_printed(lab: str) -> None:
    # gwa (the emulated Azure gateway, two tunnels) is stopped by PID and started again; it initiates both
    out = cli("lab", "node", lab, "gwa", "restart", "--wait", "60", timeout=120).stdout
    print("\n" + out)
    m = re.search(r"tunnels re-established ([0-9.]+) s after the start", out)
    assert m, out
    assert "stopped 1 daemon(s)" in out and "started ipsecemu gateway" in out
    for src in ("right1", "right2"):  # the route agent puts the tunnel routes back within its poll interval
        assert ping_within(lab, src, "10.1.0.10"), src


def test_node_stop_then_start(lab: str) -> None:
    out = cli("lab", "node", lab, "gwc", "stop").stdout
    assert "stopped 1 daemon(s)" in out
    st = cli("lab", "status", lab, "--json").stdout
    procs = [p for lb in json.loads(st)["labs"] for p in lb["processes"] if p.get("node") == "gwc"]
    assert procs == []
    assert pings(lab, "right2", "10.1.0.10", 2) == 0
    res = cli("lab", "node", lab, "gwc", "stop", check=False)
    assert res.returncode == 0 and "stopped 0 daemon(s)" in res.stdout
    t0 = time.monotonic()
    out = cli("lab", "node", lab, "gwc", "start", timeout=120).stdout
    print(f"\n{out}(command took {time.monotonic() - t0:.2f} s)")
    assert "tunnels re-established" in out
    res = cli("lab", "node", lab, "gwc", "start", check=False)
    assert res.returncode != 0 and "is running" in res.stderr and "Traceback" not in res.stderr
