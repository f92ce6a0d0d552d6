"""``lab up --smoke``: does the lab do what its file says?  A reason for every flow.

A lab that declares ``audit:`` is smoke-checked by its audit (ipsecemu.lab.audit): every flow is run
with a marker, the untrusted links are captured, and each flow is judged from the packets against
its declared expectation -- so S3's documented ``clear`` passes, ESP over an IPv6 underlay is seen
(the decryptor reads both IP versions), and MACsec-protected frames count as encrypted, not clear.
A lab without ``audit:`` gets a ping between every pair of host nodes, with the reason of a failure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from ipsecemu.net.netns import ns_exec

from .audit import AuditError, Probe, run_audit
from .audit_classify import BLOCKED, CLEAR, ENCRYPTED, NOT_DELIVERED, NOT_OBSERVED
from .capture import CaptureError
from .state import LabState
from .topology import Topology

Say = Callable[[str], None]


def _links(p: Probe, macsec: set[str], kind: str) -> str:
    parts = []
    for label, ev in p.evidence.items():
        n = ev.clear if kind == CLEAR else ev.encrypted
        if n:
            parts.append(f"{label}{' (MACsec port)' if label in macsec else ''} {n} frame{'s' * (n != 1)}")
    return ", ".join(parts) or "no link"


def reason(p: Probe, macsec: set[str]) -> str:
    """Why a probe got its verdict, from its evidence: what the packets showed, link by link."""
    if p.observed == CLEAR:
        return f"the marker crossed untrusted links in clear: {_links(p, macsec, CLEAR)}"
    if p.observed == ENCRYPTED:
        layer = "MACsec/ESP" if any(k in macsec for k, v in p.evidence.items() if v.encrypted) else "ESP"
        return (f"delivered; the marker only showed after removing {layer} with the lab's keys: "
                f"{_links(p, macsec, ENCRYPTED)}")
    if p.observed == NOT_DELIVERED:
        return f"seen encrypted ({_links(p, macsec, ENCRYPTED)}) but no answer came back ({p.detail or 'no detail'})"
    if p.observed == BLOCKED:
        return f"not delivered ({p.detail or 'no answer'}) and never seen on an untrusted link"
    if p.observed == NOT_OBSERVED:
        return "delivered, but never seen on an untrusted link (or only in ESP without a key): nothing proven"
    return p.detail or "no detail"


def macsec_labels(topo: Topology) -> set[str]:
    """Untrusted ``node:iface`` labels that are MACsec ports (captured under the tap)."""
    return {f"{ep.node}:{ep.iface}" for lk in topo.links if lk.macsec is not None for ep in (lk.a, lk.b)}


def audit_smoke(topo: Topology, state: LabState, say: Say) -> bool:
    """The lab's audit as the smoke check: one line per flow (expected, observed, reason)."""
    try:
        report = run_audit(topo, state)
    except (AuditError, CaptureError) as exc:
        say(f"smoke: the audit could not run: {exc}")
        return False
    macsec = macsec_labels(topo)
    for p in report.probes:
        what = f"{p.src} -> {p.dst} {p.dst_ip} {p.flow.proto}{f'/{p.port}' if p.port else ''}"
        declared = " (as the lab file declares)" if p.flow.expect == CLEAR and p.ok else ""
        say(f"smoke: {what}: {'ok' if p.ok else 'FAILED'}: expected {p.flow.expect}{declared}, "
            f"observed {p.observed}: {reason(p, macsec)}")
    n = len(report.mismatches)
    say(f"smoke: audit {'passed' if not n else 'FAILED'}: {len(report.probes) - n} of {len(report.probes)} flows "
        f"as expected (captures and report.json under {state.dir / 'audit'})")
    return not n


_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


def ping_reason(returncode: int, stdout: str, stderr: str) -> str:
    """``2/2 replies, avg 0.1 ms`` or why not (loss, or ping's own error line)."""
    m = _LOSS.search(stdout)
    if m and int(m.group(2)):
        rtt = _RTT.search(stdout)
        return f"{m.group(2)}/{m.group(1)} replies" + (f", avg {rtt.group(1)} ms" if rtt else "")
    err = (stderr.strip().splitlines() or [""])[-1]
    if m:
        return f"0/{m.group(1)} replies" + (f" ({err})" if err else " (no route back, or dropped on the way)")
    return err or f"ping exit status {returncode}"


def ping_smoke(topo: Topology, say: Say) -> bool:
    """Ping between every pair of host nodes (first address each), with a reason per pair."""
    hosts = [n for n in topo.nodes if n.kind == "host" and n.addresses]
    ok = True
    for a in hosts:
        for b in hosts:
            if a is b:
                continue
            dst = str(ipaddress.ip_interface(b.addresses[0][1]).ip)
            ping = ["ping", "-6"] if ":" in dst else ["ping"]
            res = ns_exec(topo.netns(a.name), *ping, "-c", "2", "-i", "0.2", "-W", "2", "-q", dst,
                          timeout=15, check=False)
            good = res.returncode == 0
            ok &= good
            say(f"smoke: {a.name} -> {b.name} ({dst}): {'ok' if good else 'FAILED'} "
                f"({ping_reason(res.returncode, res.stdout, res.stderr)})")
    return ok


def smoke(topo: Topology, state: LabState, say: Say) -> bool:
    """``lab up --smoke``: the audit if the lab declares one, else pings between its hosts."""
    if topo.audit is not None:
        say(f"smoke: running the lab's audit ({len(topo.audit.flows)} flow(s), captures on "
            f"{', '.join(f'{n}:{i}' for n, i in topo.audit.untrusted)})")
        return audit_smoke(topo, state, say)
    say("smoke: the lab declares no 'audit:'; pinging between its hosts")
    return ping_smoke(topo, say)


def _host_in(topo: Topology, prefixes: list[str], exclude: set[str]) -> tuple[str, str] | None:
    for n in topo.nodes:
        if n.kind != "host" or n.name in exclude:
            continue
        for _, cidr in n.addresses:
            ip = ipaddress.ip_interface(cidr).ip
            if any(ip.version == ipaddress.ip_network(p).version and ip in ipaddress.ip_network(p) for p in prefixes):
                return n.name, str(ip)
    return None


def next_steps_plan(topo: Topology) -> dict[str, Any] | None:
    """Which hosts and link the next-step commands ``lab up`` prints use (None: no VPN host pair).

    ``protected``: a host inside what the responder side routes into the tunnel (onprem1);
    ``remote``: a host inside what the initiator side routes into it (spoke1); ``links``: the
    initiator's interfaces towards routers/VPN nodes (the CE-MSEE links), to capture on."""
    if not topo.vpn:
        return None
    c = topo.vpn[0]
    init, resp = c.nodes
    if topo.routing is not None and c.bgp:  # BGP lab: what the CE advertises over the VPN <-> Azure's prefixes
        to_prem, to_azure = list(topo.routing.ce.vpn_advertise), list(topo.routing.hub_prefixes)
    else:
        to_prem, to_azure = list(c.routes_of(resp)), list(c.routes_of(init))
    prot = _host_in(topo, to_prem, set())
    remote = _host_in(topo, to_azure, set())
    if prot is None or remote is None:
        return None
    links = []
    for lk in topo.links:
        for a, b in ((lk.a, lk.b), (lk.b, lk.a)):
            if a.node == init and topo.node(b.node).kind != "host":
                links.append(a.iface)
    for s in topo.segments:
        links += [m.iface for m in s.members if m.node == init]
    return {"initiator": init, "protected": prot, "remote": remote, "links": links}


__all__ = ["audit_smoke", "macsec_labels", "next_steps_plan", "ping_reason", "ping_smoke", "reason", "smoke"]
