"""Resilience campaign 1 (issue #13): IKE over a lossy ExpressRoute circuit.

The static-route S1 lab (tests/unit/lab/static/er-vwan.yaml, one VPN instance: ce <-> hubgw0 over
msee1/msee2) with the C impairment element on both CE-MSEE links, 10 % loss + 10 % reordering (5 ms
delay, so a reordered frame overtakes) + 5 % duplication in both directions.  Figures (``-s``):

- setup time of the tunnel (initiate -> IKE SA ESTABLISHED with its Child SA, on the CE) over n runs,
  p50/p90/max, and the same n runs without impairment in the same lab as the baseline;
- rekeys (short IKE and Child lifetimes) and DPD (2 s) under the impairment with the default
  retransmission schedule (4 s, x1.8, 5 tries): the tunnel stays up, no SA is torn down by DPD,
  ping loss through the tunnel is what the links alone lose.

Short version in ``make test``; ``IPSECEMU_CAMPAIGN=long`` (``make campaigns``) runs more rounds."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from campaigns.common import (
    LONG,
    dist,
    endpoint_counters,
    established,
    lab_up,
    ns,
    pct,
    pick,
    ping_summary,
    progress,
    sas,
    unique,
)
from campaigns.common import ctl as _ctl

from ipsecemu.lab import drills
from ipsecemu.lab.impair_schema import DIRECTIONS
from ipsecemu.lab.state import LabState

from support.paths import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONN = "ce-hubgw0"
ER_LINKS = ("ce:msee1", "ce:msee2")
IMPAIR = {"loss": "10%", "delay": "5ms", "reorder": "10%", "duplicate": "5%"}
LINK_LOSS = 0.10


def _lab_yaml(name: str) -> str:
    """The static S1 lab with one VPN instance, impairable ER links and short lifetimes + DPD."""
    data = yaml.safe_load((REPO / "tests/unit/lab/static/er-vwan.yaml").read_text())
    data["name"] = name
    del data["nodes"]["hubgw1"]
    data["segments"][0]["members"].remove("hubgw1:eth0")
    for r in data["nodes"]["hub"]["routes"]:
        if r["dst"] == "10.0.1.0/24":
            r.pop("nexthops")
            r["via"] = "10.51.230.4"
    data["vpn"]["connections"] = [c for c in data["vpn"]["connections"] if c["name"] == CONN]
    data["vpn"]["connections"][0]["config"] = {
        "psk": "resil1-lab-only-psk",
        "ike_proposals": "aes256-sha256-modp2048", "esp_proposals": "aes256gcm16-modp2048",
        # rekey at half the lifetime: a lost CREATE_CHILD_SA has 2 retransmissions of room
        "child_lifetime": {"seconds": 24, "rekey_margin": 12, "jitter": 0},
        "ike_lifetime": {"seconds": 40, "rekey_margin": 20, "jitter": 0},
        # DPD every 2 s when idle; a timeout beyond the schedule's last retransmission (89.5 s): the
        # default retransmission schedule decides, as the brief asks (Azure's 45 s: see the figures)
        "dpd": {"interval": 2, "timeout": 90},
    }
    for link in data["links"]:
        if link["endpoints"][0] in ER_LINKS:
            link["impair"] = {}
    data.pop("audit", None)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("ike")
    with lab_up(_lab_yaml(name), tmp_path_factory.mktemp("resil-ike"), name) as lab:
        yield lab


def _impair(lab: str, on: bool) -> dict[str, int]:
    """Both directions of both ER links on or off, in-process (what `lab impair` runs); returns the
    elements' counters (rx, dropped_loss, reordered, duplicated, ...) summed over the four
    directions, cumulative since the lab started."""
    st = LabState.open(lab)
    tot: dict[str, int] = {}
    for link in ER_LINKS:
        answer = drills.impair(st, link, IMPAIR if on else {}, "both", clear=not on)
        for d in DIRECTIONS:
            for k, n in answer[d]["stats"].items():
                tot[k] = tot.get(k, 0) + int(n)
    return tot


def _wait(pred, timeout: float, step: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


def _one_setup(lab: str, timeout: float, impaired: bool) -> tuple[float, int]:
    """Terminate the tunnel (links clean: a lost Delete response leaves the CE's SA DELETING until
    its retransmissions run out, 89.5 s, because the responder is gone), wait until neither side
    holds an SA, switch the impairment on, initiate: seconds to an ESTABLISHED IKE SA with its
    Child SA on the CE (polled every 10 ms over the control socket), and the CE's retransmissions
    (IKE datagrams it sent beyond the two requests, IKE_SA_INIT and IKE_AUTH)."""
    _impair(lab, False)
    if any(s.get("name") == CONN for s in sas(lab, "ce")):
        _ctl(lab, "ce", "terminate", target=CONN)
    gone = _wait(lambda: not any(s.get("name") == CONN for n in ("ce", "hubgw0") for s in sas(lab, n)), 30, 0.02)
    assert gone, (sas(lab, "ce"), sas(lab, "hubgw0"))
    if impaired:
        _impair(lab, True)
    out0 = endpoint_counters(lab, "ce").get("ike_out", 0)
    t0 = time.monotonic()
    _ctl(lab, "ce", "initiate", target=CONN)
    ok = _wait(lambda: established(lab, "ce", CONN) is not None, timeout)
    took = time.monotonic() - t0
    assert ok, f"not established after {took:.1f} s: {sas(lab, 'ce')}"
    return took, endpoint_counters(lab, "ce").get("ike_out", 0) - out0 - 2


@pytest.mark.timeout(pick(240, 900))
def test_setup_time_over_lossy_er_links_vs_baseline(lab: str) -> None:
    n_base, n_imp = pick(5, 10), pick(8, 60)
    _impair(lab, False)
    assert _wait(lambda: established(lab, "ce", CONN) is not None, 30)
    base = []
    for i in range(n_base):
        base.append(_one_setup(lab, 30, False)[0])
        progress(f"baseline setup {i + 1}/{n_base}: {base[-1]:.3f} s")
    el0 = _impair(lab, False)
    imp, retx = [], []
    for i in range(n_imp):
        # the worst case of the default schedule: both requests need all 5 retransmissions, 2 x 165 s
        took, r = _one_setup(lab, 340, True)
        imp.append(took)
        retx.append(r)
        progress(f"impaired setup {i + 1}/{n_imp}: {took:.3f} s, {r} retransmission(s)")
    el = {k: n - el0.get(k, 0) for k, n in _impair(lab, False).items()}
    hist = {k: retx.count(k) for k in sorted(set(retx))}
    print(f"\nIKE setup, no impairment: {dist(base)}")
    print(f"IKE setup, 10% loss + 10% reorder (5 ms) + 5% duplicate each way on the ER links: {dist(imp)}")
    print(f"  ratio impaired/baseline: p50 {pct(imp, 50) / pct(base, 50):.2f}, p90 +{pct(imp, 90) - pct(base, 90):.2f} s; "
          f"setups by extra IKE datagrams the CE sent beyond its 2 requests (its retransmissions, mostly) {hist} (no retransmission expected for ~{(1 - LINK_LOSS) ** 4:.0%}: "
          f"4 datagrams); ER elements during the impaired runs: frames {el['rx']}, lost {el['dropped_loss']}, "
          f"reordered {el['reordered']}, duplicated {el['duplicated']}")
    assert el["delayed"] > 0  # the elements were on, in the IKE path
    # a setup takes the retransmission timeouts it needed (4 s, then 7.2 s more ...) plus the links' delay
    for took, r in zip(imp, retx, strict=True):
        if r == 0:
            assert took < 3.9, (took, r)


def _ping(lab: str, count: int, interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", f"{lab}-onprem1", "ping", "-n", "-q", "-c", str(count),
                             "-i", str(interval), "-W", "2", "10.51.231.4"], stdout=subprocess.PIPE, text=True)


@pytest.mark.timeout(pick(120, 400))
def test_rekeys_and_dpd_survive_lossy_er_links(lab: str, tmp_path: Path) -> None:
    seconds = pick(26, 240)
    _impair(lab, False)
    assert _wait(lambda: established(lab, "ce", CONN) is not None, 30)
    assert ns(lab, "onprem1", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "10.51.231.4").returncode == 0
    _impair(lab, True)
    before = endpoint_counters(lab, "ce")
    hub_before = endpoint_counters(lab, "hubgw0")
    loop0 = _loop_stats(lab)
    log0 = _log_size(lab)
    ike_spis: set[str] = set()
    child_spis: set[str] = set()
    down_polls = polls = 0
    ping = _ping(lab, int(seconds / 0.1), 0.1)
    t0 = time.monotonic()
    next_note = t0 + 30
    while time.monotonic() - t0 < seconds:
        polls += 1
        s = established(lab, "ce", CONN)
        if s is None:
            down_polls += 1
        else:
            ike_spis.add(s["initiator-spi"] if "initiator-spi" in s else str(s.get("uniqueid")))
            child_spis.update(c["spi-in"] for c in s["child-sas"])
        if time.monotonic() > next_note:
            progress(f"rekey/DPD soak: {time.monotonic() - t0:.0f}/{seconds} s, IKE SAs seen {len(ike_spis)}, "
                     f"Child SAs seen {len(child_spis)}")
            next_note += 30
        time.sleep(0.25)
    sent, got = ping_summary(ping.communicate(timeout=60)[0])
    after = endpoint_counters(lab, "ce")
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    hub_after = endpoint_counters(lab, "hubgw0")
    # issue #13: an IKE SA made by a rekey that reached its hard lifetime (both ends count it)
    lifetime = {f"{node}:{k}": a.get(k, 0) - b.get(k, 0) for node, a, b in
                (("ce", after, before), ("hubgw0", hub_after, hub_before))
                for k in ("sa_ike_lifetime_expired", "sa_ike_expiry_deferred", "sa_child_expired",
                          "sa_child_expiry_deferred", "sa_rekey_collision", "sa_child_rekey_collision")}
    teardown = _teardown_lines(lab, log0)
    loop = {k: n - loop0.get(k, 0) for k, n in _loop_stats(lab).items() if n - loop0.get(k, 0)}
    early = _early_promotions(lab)
    _impair(lab, False)
    loss = 1 - got / sent
    expect = 1 - (1 - LINK_LOSS) ** 2
    print(f"\n{seconds} s with 10% loss + reorder + duplicate on the ER links, Child lifetime 24 s (rekey at "
          f"12 s), IKE lifetime 40 s (rekey at 20 s), DPD every 2 s, default retransmission schedule:")
    print(f"  IKE SAs seen {len(ike_spis)} (IKE rekeys {len(ike_spis) - 1}), Child SAs seen {len(child_spis)} "
          f"(Child rekeys {len(child_spis) - 1}); polls without an established tunnel {down_polls}/{polls}")
    print(f"  ping through the tunnel: {sent - got}/{sent} lost ({100 * loss:.1f} %; the links alone lose "
          f"~{100 * expect:.0f} % of round trips); CE IKE counters moved: {d}")
    print(f"  lifetimes and collisions (both gateways): {lifetime}")
    print(f"  IKE SAs torn down (dpd/timeout) in the CE log: {len(teardown)}; the CE's C loop counters moved "
          f"(drops by reason among them): {loop}")
    print(f"  hubgw0 moved its outbound to a rekeyed SA before the CE had installed it: {len(early)} time(s), "
          f"by {', '.join(f'{t:.1f}' for t in early) or '-'} s (replies to the CE are lost meanwhile)")
    if down_polls:  # keep both gateways' logs: `lab down` removes the state dir
        for node in ("ce", "hubgw0"):
            shutil.copy(_log_path(lab, node), tmp_path / f"{node}-gateway.log")
    assert down_polls == 0, f"tunnel was down in {down_polls} polls; gateway logs kept in {tmp_path}"
    assert lifetime["ce:sa_ike_lifetime_expired"] == lifetime["hubgw0:sa_ike_lifetime_expired"] == 0, lifetime
    assert not teardown, "\n".join(teardown)
    # the Child SA really rekeyed under loss: every rekey that needs a retransmission starts the
    # next Child SA's 12 s that much later (4 s, 7.2 s ...), so 240 s give ~19 rekeys, not 20 (the
    # sans-I/O simulation of this setting: 19.2 per 240 s); at least three quarters of the nominal
    rekeys = len(child_spis) - 1
    assert rekeys >= int(0.75 * (seconds // 12)), rekeys
    if LONG:
        # the tunnel loses no more than the links (generous: n is small).  Only in the campaign: in
        # the short run (260 pings) one rekey promote gap (gateway/datapath.py PROMOTE_AFTER, 2 s
        # then, 30 s since) alone lost ~20 pings; it did in 1 of 3 short runs (40.4 %, promoted 2.0 s
        # early), which is not what this gate is about (the IKE and Child SAs above)
        assert loss < expect + 0.12
    # the tunnel carries traffic once the links are clean: within a few seconds, since a rekey
    # may be mid-flight when the impairment goes off (its retransmission 4 s later completes it;
    # one short run's 3 immediate pings all fell into such a gap)
    assert _wait(lambda: ns(lab, "onprem1", "ping", "-n", "-c", "1", "-W", "1", "10.51.231.4").returncode == 0,
                 15, 0.2)


def _loop_stats(lab: str) -> dict[str, int]:
    """The CE's C loop counters for the connection (packets, drops by reason, ...)."""
    st = _ctl(lab, "ce", "counters")["connections"].get(CONN, {}).get("loop") or {}
    return {k: int(v) for k, v in st.items() if isinstance(v, int)}


def _log_path(lab: str, node: str = "ce") -> Path:
    return Path("/run/ipsecemu") / lab / node / "gateway.log"


_TS = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "


def _stamp(text: str) -> float:
    return time.mktime(time.strptime(text[:19], "%Y-%m-%d %H:%M:%S")) + int(text[20:]) / 1000


def _early_promotions(lab: str) -> list[float]:
    """From the two logs: each time the responder's outbound moved to an SA (``outbound now on X``)
    before the CE had installed X as its inbound (``installed SA in X``), by how many seconds."""
    installed: dict[str, float] = {}
    for m in re.finditer(_TS + r".*installed SA in ([0-9a-f]{8})", _log_path(lab).read_text(), re.M):
        installed.setdefault(m.group(2), _stamp(m.group(1)))
    early = []
    for m in re.finditer(_TS + r".*outbound now on ([0-9a-f]{8})", _log_path(lab, "hubgw0").read_text(), re.M):
        at = installed.get(m.group(2))
        if at is not None and at > _stamp(m.group(1)):
            early.append(at - _stamp(m.group(1)))
    return early


def _log_size(lab: str) -> int:
    p = _log_path(lab)
    return p.stat().st_size if p.exists() else 0


def _teardown_lines(lab: str, offset: int) -> list[str]:
    p = _log_path(lab)
    if not p.exists():
        return []
    with p.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    # gateway/explain.py: "conn: IKE SA deleted (dpd|timeout|...): peer ..., role"; the orderly ends
    # (an operator, the peer's delete, a rekey, a replacement) are no teardown
    bad = re.compile(r"IKE SA deleted \((?!local\)|remote\)|rekeyed\)|replaced\))")
    return [ln for ln in text.splitlines() if bad.search(ln)]
