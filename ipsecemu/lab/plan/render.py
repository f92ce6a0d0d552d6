"""A plan as readable text, as JSON, and as files on disk (``lab up --dry-run [--out DIR]``; the
services write the same files into the lab state dir with :func:`write_file`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipsecemu.net.netns import ns_argv

from ..topology import Route, Rule
from .model import CHARON, FRR, Daemon, GeneratedFile, LabPlan, NodePlan, Tap, Veth


def write_file(root: Path, f: GeneratedFile) -> Path:
    """Write ``f`` under ``root``; a secret file is created 0600 in a 0700 dir (PSK, CAK inside)."""
    path = root / f.path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if f.secret else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(f.text)
    return path


def write_files(plan: LabPlan, out: Path) -> list[Path]:
    return [write_file(out, f) for f in plan.files()]


def daemon_argv(d: Daemon, plan: LabPlan) -> list[str]:
    """The full command line: inside the node's netns, or as is in the root netns."""
    return ns_argv(plan.node(d.node).netns, *d.argv) if d.node else list(d.argv)


# ---------------------------------------------------------------- JSON


def route_json(r: Route) -> dict[str, Any]:
    return {"dst": r.dst, "nexthops": [{"via": h.via, "dev": h.dev, "weight": h.weight} for h in r.nexthops],
            "table": r.table, "metric": r.metric, "src": r.src}


def rule_json(r: Rule) -> dict[str, Any]:
    return {"table": r.table, "from": r.src, "to": r.dst, "iif": r.iif, "priority": r.priority}


def daemon_json(d: Daemon, plan: LabPlan) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": d.kind, "node": d.node, "argv": daemon_argv(d, plan) if d.argv else [],
                           "files": [{"path": f.path, "secret": f.secret} for f in d.files],
                           "log": str(plan.lab_dir / d.log) if d.log else None}
    if d.conns:
        out["connections"] = [c.name for c in d.conns]
    if d.run_dir:
        out["run_dir"] = d.run_dir
    if d.kind == FRR:
        out["frr_daemons"] = list(d.info["daemons"])
    return out


def _link_json(lk: Veth | Tap) -> dict[str, Any]:
    if isinstance(lk, Veth):
        return {"kind": "veth", "netns": lk.netns, "ifname": lk.ifname, "peer_netns": lk.peer_netns,
                "peer_ifname": lk.peer_ifname, "mtu": lk.mtu}
    return {"kind": "tap", "netns": lk.netns, "ifname": lk.ifname, "mtu": lk.mtu}


def node_json(n: NodePlan, plan: LabPlan) -> dict[str, Any]:
    return {"name": n.name, "kind": n.kind, "netns": n.netns,
            "base_sysctls": dict(n.base_sysctls), "interfaces": list(n.interfaces), "taps": list(n.taps),
            "addresses": [{"iface": i, "address": a} for i, a in n.addresses],
            "routes": [route_json(r) for r in n.routes], "rules": [rule_json(r) for r in n.rules],
            "sysctls": dict(n.sysctls),
            "tunnels": [{"conn": t.conn, "dev": t.dev, "local": t.local, "remote": t.remote, "peer": t.peer,
                         "table": t.table, "prefixes": list(t.prefixes), "control": t.control} for t in n.tunnels],
            "daemons": [daemon_json(d, plan) for d in n.daemons]}


def plan_json(plan: LabPlan) -> dict[str, Any]:
    return {"name": plan.name, "source": plan.source, "state_dir": str(plan.lab_dir),
            "netns": [ns for ns, _ in plan.netns()],
            "nodes": [node_json(n, plan) for n in plan.nodes],
            "segments": [{"name": s.name, "netns": s.netns, "bridge": "br0", "mtu": s.mtu,
                          "ports": [_link_json(p) for p in s.ports]} for s in plan.segments],
            "links": [_link_json(lk) for lk in plan.links],
            "root_daemons": [daemon_json(d, plan) for d in plan.daemons],
            "files": [{"path": f.path, "secret": f.secret} for f in plan.files()],
            "notes": list(plan.notes)}


# ---------------------------------------------------------------- text


def route_text(r: Route) -> str:
    hops = " ".join(" ".join(x for x in (f"via {h.via}" if h.via else "", f"dev {h.dev}" if h.dev else "",
                                         f"weight {h.weight}" if r.multipath else "") if x)
                    for h in r.nexthops)
    extra = "".join(f" {k} {v}" for k, v in (("table", r.table), ("metric", r.metric), ("src", r.src))
                    if v is not None)
    return f"{r.dst} {'nexthops ' if r.multipath else ''}{hops}{extra}"


def rule_text(r: Rule) -> str:
    parts = [f"{k} {v}" for k, v in (("from", r.src), ("to", r.dst), ("iif", r.iif)) if v]
    parts.append(f"table {r.table}")
    if r.priority is not None:
        parts.append(f"priority {r.priority}")
    return " ".join(parts)


def _link_text(lk: Veth | Tap) -> str:
    mtu = f" mtu {lk.mtu}" if lk.mtu else ""
    if isinstance(lk, Veth):
        return f"veth {lk.netns}:{lk.ifname} <-> {lk.peer_netns}:{lk.peer_ifname}{mtu}"
    return f"tap  {lk.netns}:{lk.ifname}{mtu} (MACsec L3 side)"


def _daemon_lines(d: Daemon, plan: LabPlan) -> list[str]:
    head = f"    daemon {d.kind}: "
    if d.argv:
        head += " ".join(daemon_argv(d, plan))
    elif d.kind == FRR:
        head += (f"FRR {' '.join(d.info['daemons'])} in this netns, state/sockets/logs in {d.run_dir} "
                 f"({d.info['origin']})")
    elif d.kind == CHARON:
        head += f"charon in {d.run_dir}, loads over vici: {', '.join(c.name for c in d.conns)}"
    else:
        head += "no process (steering only)"
    out = [head]
    out += [f"      config {plan.lab_dir / f.path}{' (0600: secrets)' if f.secret else ''}" for f in d.files]
    if d.log:
        out.append(f"      log    {plan.lab_dir / d.log}")
    out += [f"      {x}" for x in d.info.get("show", ())]  # kind-specific lines (host IPsec steering)
    if d.kind == FRR and plan.nodes:
        out.append(f"      vtysh  ipsecemu lab exec {plan.name}/{d.node} -- vtysh -c 'show bgp summary'")
    return out


def plan_text(plan: LabPlan) -> str:
    out = [f"lab {plan.name} (from {plan.source}); state in {plan.lab_dir}",
           f"  netns ({len(plan.netns())}): {', '.join(ns for ns, _ in plan.netns())}"]
    for s in plan.segments:
        out.append(f"  segment {s.name}: bridge br0 in {s.netns}, ports "
                   + ", ".join(f"{p.netns}:{p.ifname}={p.peer_ifname}" for p in s.ports)
                   + (f" mtu {s.mtu}" if s.mtu else ""))
    if plan.links:
        out.append("  links:")
        out += [f"    {_link_text(lk)}" for lk in plan.links]
    for n in plan.nodes:
        out.append(f"  node {n.name} ({n.kind}) in {n.netns}")
        out.append(f"    sysctl (base) {' '.join(f'{k}={v}' for k, v in n.base_sysctls)}")
        if n.interfaces:
            taps = f" (taps, up once their daemon runs: {' '.join(n.taps)})" if n.taps else ""
            out.append(f"    up lo {' '.join(n.interfaces)}{taps}")
        out += [f"    addr {a} dev {i}" for i, a in n.addresses]
        out += [f"    route {route_text(r)}" for r in n.routes]
        out += [f"    rule {rule_text(r)}" for r in n.rules]
        if n.sysctls:
            out.append(f"    sysctl {' '.join(f'{k}={v}' for k, v in n.sysctls)}")
        for t in n.tunnels:
            sends = ", ".join(t.prefixes) or "nothing routed"
            table = "main" if t.table == 254 else str(t.table)
            out.append(f"    tunnel {t.conn}: dev {t.dev} {t.local} <-> {t.remote} ({t.peer}), "
                       f"table {table}, sends {sends}")
        for d in n.daemons:
            out += _daemon_lines(d, plan)
    if plan.daemons:
        out.append("  root netns:")
        for d in plan.daemons:
            out += _daemon_lines(d, plan)
    out += [f"  note: {x}" for x in plan.notes]
    return "\n".join(out)
