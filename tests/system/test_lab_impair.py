"""Link impairment in a lab (native/src/impair.c between the two ends of a link) and the drill
commands, measured with real traffic: ping RTT against the configured delay, ping loss against
binomial bounds, iperf3 throughput against the configured rate (±10 %), counters in `lab status`,
the clear error for a link declared without ``impair:``, `lab link down|up`.  Figures are printed
(`-s`)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.labs import cli, iperf3_server, lab_up, ns, unique

pytestmark = pytest.mark.root

LAB = """
name: {name}
nodes:
  h1:
    kind: host
    addresses: {{e0: 10.77.0.1/24, e1: 10.77.1.1/24}}
  h2:
    kind: host
    addresses: {{e0: 10.77.0.2/24, e1: 10.77.1.2/24}}
links:
  - endpoints: [h1:e0, h2:e0]
    impair: {{}}
  - endpoints: [h1:e1, h2:e1]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("impair")
    with lab_up(tmp_path_factory.mktemp("impair"), LAB.format(name=name), name, timeout=60) as up:
        yield up


def ping(lab: str, count: int, interval: float = 0.05, dst: str = "10.77.0.2") -> tuple[int, list[float]]:
    res = ns(lab, "h1", "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", dst,
             timeout=count * interval + 30)
    rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", res.stdout)]
    return len(rtts), rtts


def test_delay_and_jitter_show_in_ping_rtt(lab: str) -> None:
    cli("lab", "impair", lab, "h1:e0", "--delay", "20ms")
    ping(lab, 2)  # ARP
    got, rtts = ping(lab, 40)
    rtts.sort()
    print(f"\ndelay 20ms each way: RTT min {rtts[0]:.2f} median {rtts[len(rtts) // 2]:.2f} max {rtts[-1]:.2f} ms "
          f"({got}/40 answered)")
    assert got == 40
    assert rtts[0] >= 40.0  # the element never sends early
    assert rtts[len(rtts) // 2] <= 40.0 + 5.0  # the wheel's tick is 65 us; the rest is scheduling noise

    cli("lab", "impair", lab, "h1:e0", "--jitter", "5ms")
    got, rtts = ping(lab, 100, 0.02)
    rtts.sort()
    mean = sum(rtts) / len(rtts)
    print(f"delay 20ms jitter 5ms each way: RTT min {rtts[0]:.2f} mean {mean:.2f} max {rtts[-1]:.2f} ms")
    assert got == 100
    assert rtts[0] >= 30.0 and mean == pytest.approx(40.0, abs=4.0)
    assert rtts[-1] - rtts[0] > 5.0  # the jitter is really there


def test_loss_within_binomial_bounds_and_counted(lab: str) -> None:
    cli("lab", "impair", lab, "h1:e0", "--clear")
    cli("lab", "impair", lab, "h1:e0", "--direction", "out", "--loss", "20%")
    before = _counters(lab)["h1:e0 -> h2:e0"]["lost"]
    n, p = 300, 0.2
    got, _ = ping(lab, n, 0.01)
    lost = n - got
    sd = math.sqrt(n * p * (1 - p))
    after = _counters(lab)["h1:e0 -> h2:e0"]["lost"]
    print(f"\nloss 20% (h1 -> h2 only): {lost}/{n} pings lost ({100 * lost / n:.1f} %), bounds "
          f"{n * p - 5 * sd:.0f}..{n * p + 5 * sd:.0f}; element counted {after - before}")
    assert abs(lost - n * p) <= 5 * sd
    assert abs((after - before) - lost) <= 3  # an ARP frame may be lost too
    cli("lab", "impair", lab, "h1:e0", "--clear")
    got, _ = ping(lab, 50, 0.01)
    assert got == 50


def test_duplicates_and_corruption_reach_the_peer(lab: str) -> None:
    cli("lab", "impair", lab, "h1:e0", "--clear")
    cli("lab", "impair", lab, "h1:e0", "--direction", "in", "--duplicate", "50%")  # h2 -> h1: the replies
    n = 100
    res = ns(lab, "h1", "ping", "-n", "-c", str(n), "-i", "0.01", "-W", "1", "10.77.0.2")
    dups = res.stdout.count("(DUP!)")
    sd = math.sqrt(n * 0.25)
    print(f"\nduplicate 50% (replies): ping saw {dups} duplicate replies of {n}")
    assert abs(dups - n * 0.5) <= 5 * sd, res.stdout[-500:]
    cli("lab", "impair", lab, "h1:e0", "--clear")
    cli("lab", "impair", lab, "h1:e0", "--direction", "out", "--corrupt", "100%")
    got, _ = ping(lab, 20, 0.01)
    out = cli("lab", "status", lab).stdout
    corrupted = int(re.search(r"impair h1:e0 -> h2:e0: corrupt 100%; .*corrupted (\d+)", out).group(1))
    print(f"corrupt 100% (requests): {got}/20 answered, element corrupted {corrupted} frames")
    assert got == 0 and corrupted >= 20  # any one flipped bit fails the IP or ICMP checksum
    cli("lab", "impair", lab, "h1:e0", "--clear")


def _counters(lab: str) -> dict[str, dict[str, int]]:
    out = cli("lab", "status", lab).stdout
    res = {}
    for m in re.finditer(r"impair (\S+ -> \S+): .*?; passed (\d+), lost (\d+), queue drops (\d+)", out):
        res[m.group(1)] = {"passed": int(m.group(2)), "lost": int(m.group(3)), "queue": int(m.group(4))}
    assert res, out
    return res


@pytest.mark.parametrize("rate_mbit", [200])
def test_rate_limit_within_ten_percent_in_iperf3(lab: str, rate_mbit: int) -> None:
    cli("lab", "impair", lab, "h1:e0", "--clear")
    cli("lab", "impair", lab, "h1:e0", "--rate", f"{rate_mbit}mbit")
    with iperf3_server(lab, "h2", 5211):
        res = ns(lab, "h1", "iperf3", "-c", "10.77.0.2", "-p", "5211", "-t", "4", "-O", "1", "-J", timeout=30)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        bps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]
    c = _counters(lab)["h1:e0 -> h2:e0"]
    print(f"\nrate {rate_mbit} Mbit/s: iperf3 received {bps / 1e6:.1f} Mbit/s "
          f"({100 * (bps / 1e6 / rate_mbit - 1):+.1f} %), queue drops {c['queue']}")
    assert abs(bps / 1e6 - rate_mbit) <= 0.10 * rate_mbit
    cli("lab", "impair", lab, "h1:e0", "--clear")


def test_status_shows_settings_and_counters(lab: str) -> None:
    cli("lab", "impair", lab, "h2:e0", "--direction", "out", "--delay", "1ms", "--duplicate", "1%")
    out = cli("lab", "status", lab).stdout
    assert re.search(r"impair h2:e0 -> h1:e0: delay 1ms duplicate 1%; passed \d+", out), out
    assert re.search(r"impair h1:e0 -> h2:e0: none; passed \d+", out), out
    shown = cli("lab", "impair", lab, "h1:e0").stdout
    assert "h2:e0 -> h1:e0: delay 1ms duplicate 1%" in shown
    cli("lab", "impair", lab, "h2:e0", "--clear")


def test_a_link_without_impair_gets_a_clear_error(lab: str) -> None:
    res = cli("lab", "impair", lab, "h1:e1", "--delay", "5ms", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "declare 'impair: {}' on the link" in res.stderr, res.stderr
    res = cli("lab", "impair", lab, "h1:e0", "--delay", "5 parsecs", check=False)
    assert res.returncode != 0 and "--delay: must be a time like 20ms" in res.stderr, res.stderr


def test_link_down_and_up(lab: str) -> None:
    cli("lab", "link", lab, "h1:e0", "down")
    got, _ = ping(lab, 3, 0.2)
    assert got == 0
    state = ns(lab, "h2", "ip", "-o", "link", "show", "e0").stdout
    assert "NO-CARRIER" in state or "LOWERLAYERDOWN" in state or "state DOWN" in state, state
    cli("lab", "link", lab, "h1:e0", "up")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        got, _ = ping(lab, 1, 0.2)
        if got:
            break
    print(f"\nlink h1:e0 up again: first ping answered after {time.monotonic() - t0:.2f} s")
    assert got == 1


def test_lab_check_names_file_line_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(LAB.format(name="impair-bad").replace("impair: {}", "impair: {a_to_b: {loss: 2%, rate: fast}}"))
    res = cli("lab", "check", str(f), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"{f}:12: links[0].impair.a_to_b.rate: must be a rate like 650mbit" in res.stderr, res.stderr
