"""``ipsecemu lab audit``: run the flows a lab file's ``audit:`` declares, capture every untrusted
link, and say for each flow whether it crossed them encrypted, in clear, or not at all -- from the
packets (ipsecemu.lab.audit_classify), checked against the declared expectation.

Each probe (one flow, one direction, one port) carries its own random 16-byte marker: ICMP as the
``ping -p`` pattern (echoed back by the destination), UDP/TCP as the payload of a one-line client
whose peer, a tiny echo server started by PID in the destination node, sends it back.  Every
process started here (tcpdump, servers) is stopped by PID, also on Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import LabError
from ipsecemu.net.netns import ns_argv, ns_exec
from ipsecemu.net.proc import start, stop_popen
from ipsecemu.pcap.coalesced import split_file
from ipsecemu.pcap.macsec_sa import read_macsec_sa
from ipsecemu.pcap.uat import read_esp_sa

from .audit_classify import CaptureStats, LinkEvidence, scan_capture, verdict
from .audit_schema import Audit, AuditFlow, dst_node
from .capture import Capture, export_keys
from .check import check_file
from .state import LabState
from .topology import Topology, phy_ifname

MARKER_LEN = 16
LAST_FILE = "audit-last.json"  # in the lab's state dir: the last `lab audit` result (lab graph draws it)

# An echo server: binds, says "ready", echoes every datagram / the first read of every connection.
_SERVER = r"""
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
if proto == "tcp":
    s.listen(8)
print("ready", flush=True)
while True:
    if proto == "udp":
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)
        continue
    c, _ = s.accept()
    c.settimeout(3)
    try:
        c.sendall(c.recv(4096))
    except OSError:
        pass
    finally:
        c.close()
"""

# The client: sends the marker, exits 0 once it came back (three tries).
_CLIENT = r"""
import socket, sys
proto, ip, port, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
for _ in range(3):
    s = None
    try:
        if proto == "udp":
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(1.0)
            s.sendto(marker, (ip, port))
            data = s.recv(4096)
        else:
            s = socket.create_connection((ip, port), timeout=1.5)
            s.sendall(marker)
            data = b""
            while marker not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        if marker in data:
            sys.exit(0)
    except OSError as exc:
        print(exc, file=sys.stderr)
    finally:
        if s is not None:
            s.close()
sys.exit(1)
"""


class AuditError(LabError):
    """The audit could not run (no audit section, lab not up, a server did not start)."""


@dataclass
class Probe:
    """One direction of one flow on one port, with its own marker."""

    flow: AuditFlow
    src: str  # node
    dst: str  # node
    dst_ip: str
    port: int | None
    marker: bytes = field(default_factory=lambda: os.urandom(MARKER_LEN))
    delivered: bool = False
    detail: str = ""
    observed: str = ""
    evidence: dict[str, LinkEvidence] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.observed == self.flow.expect

    def as_dict(self) -> dict[str, Any]:
        return {"flow": self.flow.label, "from": self.src, "to": self.dst, "dst_ip": self.dst_ip,
                "proto": self.flow.proto, "port": self.port, "expected": self.flow.expect,
                "observed": self.observed, "delivered": self.delivered, "ok": self.ok, "detail": self.detail,
                "marker": self.marker.hex(),
                "evidence": {k: v.as_dict() for k, v in self.evidence.items()}}


def _addresses(topo: Topology) -> dict[str, tuple[str, ...]]:
    return {n.name: tuple(str(ipaddress.ip_interface(a).ip) for _i, a in n.addresses) for n in topo.nodes}


def plan(topo: Topology, audit: Audit) -> list[Probe]:
    """Every probe of the audit, in declaration order (forward, then reverse direction)."""
    addrs = _addresses(topo)
    probes: list[Probe] = []
    for flow in audit.flows:
        owner = dst_node(flow.dst, addrs)
        if owner is None:  # lab check refuses this; a renamed node at run time could still get here
            raise AuditError(f"flow {flow.label}: '{flow.dst}' is not a node or an address of one")
        dst_ip = flow.dst if flow.dst != owner else addrs[owner][0]
        ends = [(flow.src, owner, dst_ip)]
        if flow.both_directions:  # back to the source's address of the same family (IPv6 flows stay IPv6)
            fam = ipaddress.ip_address(dst_ip).version
            back = next((a for a in addrs[flow.src] if ipaddress.ip_address(a).version == fam), addrs[flow.src][0])
            ends.append((owner, flow.src, back))
        for src, dst, ip in ends:
            for port in flow.ports or (None,):
                probes.append(Probe(flow, src, dst, ip, port))
    return probes


def capture_points(topo: Topology, audit: Audit) -> list[tuple[str, str, str]]:
    """(label node:iface, node, interface to capture): a MACsec link is captured under its tap, on
    the veth that carries the protected frames."""
    macsec = {(ep.node, ep.iface) for lk in topo.links if lk.macsec is not None for ep in (lk.a, lk.b)}
    return [(f"{n}:{i}", n, phy_ifname(i) if (n, i) in macsec else i) for n, i in audit.untrusted]


class _Server:
    def __init__(self, ns: str, proto: str, ip: str, port: int) -> None:
        argv = ns_argv(ns, sys.executable, "-c", _SERVER, proto, ip, str(port))
        self.proc = start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 5.0)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            err = self.stop()
            raise AuditError(f"echo server {proto}/{port} on {ip} did not start: {err or 'timeout'}")

    def stop(self) -> str:
        stop_popen(self.proc, 3)
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return err.splitlines()[-1] if err else ""


def _admin_down(ns: str, iface: str) -> bool:
    """True when ``iface`` is set down (tcpdump cannot open it; no frame crosses it)."""
    res = ns_exec(ns, "ip", "-j", "link", "show", "dev", iface, timeout=5, check=False)
    try:
        return "UP" not in json.loads(res.stdout)[0].get("flags", [])
    except (ValueError, IndexError, AttributeError):
        return False  # unknown: let the capture say what is wrong


def _run_probe(topo: Topology, p: Probe) -> None:
    ns = topo.netns(p.src)
    if p.flow.proto == "icmp":
        ping = ["ping", "-6"] if ":" in p.dst_ip else ["ping"]
        res = ns_exec(ns, *ping, "-c", "3", "-i", "0.2", "-W", "1", "-s", "64", "-p", p.marker.hex(), p.dst_ip,
                      timeout=15, check=False)
        p.delivered = res.returncode == 0
        p.detail = next((ln for ln in res.stdout.splitlines() if "transmitted" in ln), res.stderr.strip())
        return
    assert p.port is not None
    server = _Server(topo.netns(p.dst), p.flow.proto, p.dst_ip, p.port)
    try:
        res = ns_exec(ns, sys.executable, "-c", _CLIENT, p.flow.proto, p.dst_ip, str(p.port), p.marker.hex(),
                      timeout=20, check=False)
        p.delivered = res.returncode == 0
        p.detail = "echoed back" if p.delivered else (res.stderr.strip().splitlines() or ["no answer"])[-1]
    finally:
        server.stop()


@dataclass
class Report:
    lab: str
    probes: list[Probe]
    captures: dict[str, dict[str, Any]]  # label -> {path, frames, decrypted, failed, no_key, coalesced}
    # (frames counts them as captured; the saved pcap has each of the coalesced frames cut per datagram)

    @property
    def mismatches(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"lab": self.lab, "ok": not self.mismatches, "flows": [p.as_dict() for p in self.probes],
                "captures": self.captures}


def run_audit(topo: Topology, state: LabState, audit: Audit | None = None) -> Report:
    """Start captures on the untrusted links, run every probe, stop, decrypt, classify."""
    audit = audit or topo.audit
    if audit is None:
        raise AuditError(f"lab {topo.name}: its file declares no 'audit:' section")
    probes = plan(topo, audit)
    work = state.dir / "audit"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    points = capture_points(topo, audit)
    caps: list[tuple[str, Capture]] = []
    skipped: dict[str, dict[str, Any]] = {}
    try:
        for label, node, iface in points:
            if _admin_down(topo.netns(node), iface):  # a link set down (lab audit --failures): nothing crosses
                skipped[label] = {"path": None, "frames": 0, "decrypted": 0, "failed": 0, "no_key": 0,
                                  "coalesced": 0, "skipped": "interface down, not captured"}
                continue
            cap = Capture(state, node, iface, work / f"{node}-{iface}.pcap")
            caps.append((label, cap))  # before start: a Ctrl-C inside start() must still stop it
            cap.start()
        for p in probes:
            _run_probe(topo, p)
    finally:
        for _label, cap in caps:
            cap.stop()
    keys = work / "keys"
    export_keys(state, keys)
    esp_rows = read_esp_sa(keys / "esp_sa") if (keys / "esp_sa").exists() else []
    macsec_sas = [sa for f in sorted(keys.glob("macsec-*.json")) for sa in read_macsec_sa(f)]
    markers = [p.marker for p in probes]
    captures: dict[str, dict[str, Any]] = dict(skipped)
    for label in skipped:
        for p in probes:
            p.evidence[label] = LinkEvidence()
    for label, cap in caps:
        st: CaptureStats = scan_capture(cap.path, markers, esp_rows, macsec_sas)
        captures[label] = {"path": str(cap.path), "frames": st.frames, "decrypted": st.decrypted,
                           "failed": st.failed, "no_key": st.no_key, "coalesced": st.coalesced}
        for p in probes:
            p.evidence[label] = st.hits[p.marker]
        if st.coalesced:  # the evidence file as a real wire would carry it: Wireshark verifies each datagram
            split_file(cap.path)
    for p in probes:
        p.observed = verdict(p.delivered, p.evidence.values())
    report = Report(topo.name, probes, captures)
    (work / "report.json").write_text(json.dumps(report.as_dict(), indent=2))  # next to the evidence pcaps
    return report


def format_report(r: Report) -> list[str]:
    """The table: flow x expected x observed x evidence (frames carrying the marker per link)."""
    rows = []
    for p in r.probes:
        what = f"{p.src} -> {p.dst} {p.dst_ip}"
        proto = p.flow.proto + (f"/{p.port}" if p.port else "")
        ev = " ".join(f"{k} {v.clear}c/{v.encrypted}e" for k, v in p.evidence.items() if v.clear or v.encrypted)
        rows.append((what, proto, p.flow.expect, p.observed, "ok" if p.ok else "MISMATCH", ev or "-"))
    head = ("FLOW", "PROTO", "EXPECTED", "OBSERVED", "", "EVIDENCE (frames with the marker: c clear / e encrypted)")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
    out = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
           for row in [head, *rows]]
    for label, c in r.captures.items():
        if c.get("skipped"):
            out.append(f"capture {label}: {c['skipped']}")
            continue
        merged = f" ({c['coalesced']} merged by GSO/GRO, split)" if c["coalesced"] else ""
        out.append(f"capture {label}: {c['frames']} frames, {c['decrypted']} decrypted{merged}, "
                   f"{c['no_key']} without a key, {c['failed']} failed ({c['path']})")
    n = len(r.mismatches)
    out.append(f"lab {r.lab}: audit {'passed' if not n else 'FAILED'}: "
               f"{len(r.probes) - n} of {len(r.probes)} flows as expected")
    return out


def save_last(state: LabState, doc: dict[str, Any]) -> Path:
    """Keep ``doc`` (a report's ``as_dict``, maybe with a failure matrix) as the lab's last audit."""
    path = state.dir / LAST_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    return path


def load_last(state_dir: Path) -> dict[str, Any] | None:
    """The last saved audit of a lab (None: never audited, or unreadable)."""
    try:
        doc = json.loads((state_dir / LAST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def load_audit_file(path: str | Path) -> Audit:
    """The ``audit:`` of another lab file (``lab audit --file``: check a running lab against it)."""
    topo = check_file(path)
    if topo.audit is None:
        raise AuditError(f"{path}: no 'audit:' section")
    return topo.audit


__all__ = ["LAST_FILE", "AuditError", "Probe", "Report", "capture_points", "format_report", "load_audit_file",
           "load_last", "plan", "run_audit", "save_last"]
