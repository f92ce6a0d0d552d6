"""``ipsecemu lab graph``: the topology as a Graphviz picture.

The DOT text is generated here (no Python dependency); Debian's ``dot`` (package ``graphviz``)
renders it to SVG or PNG.  Nodes by kind (shape and color), links with their interface names,
segments as their own box, IPsec tunnels dashed and labeled, MACsec links blue and thick, untrusted
links (the audit's) red.  For a running lab, tunnels are colored by the state the route agent last
saw (up green / down red) and the last saved audit (``lab audit`` writes it into the lab's state
dir) is drawn as a table of flows with their expected and observed verdicts.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import LabError, SystemSetupError

from .topology import Topology

FORMATS = ("svg", "png", "dot")

# kind -> (shape, fill color): one look per kind, also used for the legend
KIND_STYLE = {
    "host": ("box", "#dbeafe"),
    "router": ("ellipse", "#e5e7eb"),
    "ipsecemu": ("hexagon", "#bbf7d0"),
    "strongswan": ("hexagon", "#fef08a"),
}
UNTRUSTED = "#dc2626"
MACSEC = "#1d4ed8"
TUNNEL = {True: "#15803d", False: "#dc2626", None: "#6b7280"}  # up / down / unknown (not running)
VERDICT_COLOR = {"encrypted": "#15803d", "clear": "#c2410c", "blocked": "#374151"}


class GraphError(LabError):
    """The picture cannot be made (unknown output format, Graphviz missing or failing)."""


class DotMissing(GraphError):
    """Graphviz' ``dot`` is not installed: a missing system part, exits as SystemSetupError does."""

    exit_status = SystemSetupError.exit_status


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _h(s: str) -> str:
    """Text inside a DOT HTML-like label."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attrs(**kw: str | float) -> str:
    return "[" + ", ".join(f"{k}={v if isinstance(v, float) else _q(str(v))}" for k, v in kw.items()) + "]"


def _node_label(topo: Topology, name: str) -> str:
    n = topo.node(name)
    addrs = [f"{i} {a}" for i, a in n.addresses]
    if len(addrs) > 5:  # keep boxes small: the first few, then a count
        addrs = [*addrs[:4], f"(+{len(addrs) - 4} more)"]
    return "\n".join([n.name, f"[{n.kind}]", *addrs])


def _tunnel_state(conn: str, nodes: Sequence[str], tunnels: Mapping[str, bool] | None) -> bool | None:
    if tunnels is None:
        return None
    ends = [tunnels.get(f"{n}/{conn}") for n in nodes]
    if any(e is None for e in ends):
        return None
    return all(bool(e) for e in ends)


def _audit_table(audit: Mapping[str, Any]) -> str:
    """An HTML-like table: flow, expected, observed (colored), ok/MISMATCH."""
    rows = ['<TR><TD COLSPAN="4"><B>last audit: ' + ("passed" if audit.get("ok") else "FAILED") + "</B></TD></TR>",
            "<TR><TD>flow</TD><TD>expected</TD><TD>observed</TD><TD></TD></TR>"]
    for f in audit.get("flows", []):
        what = f"{f['from']} -> {f['to']} {f['proto']}" + (f"/{f['port']}" if f.get("port") else "")
        color = VERDICT_COLOR.get(str(f.get("observed")), "#6b7280")
        rows.append(f"<TR><TD ALIGN=\"LEFT\">{_h(what)}</TD><TD>{_h(str(f.get('expected')))}</TD>"
                    f"<TD><FONT COLOR=\"{color}\">{_h(str(f.get('observed')))}</FONT></TD>"
                    f"<TD>{'ok' if f.get('ok') else '<B>MISMATCH</B>'}</TD></TR>")
    fails = [c for c in audit.get("failures", []) if c.get("failure") != "none"]
    if fails:  # saved by `lab audit --failures`: the leaks of the matrix, or that there were none
        leaks = [f"{x} when {c['failure']}" for c in fails for x in c.get("leaks", [])]
        text = ("went clear: " + "; ".join(leaks)) if leaks else "no flow expected encrypted went clear"
        color = VERDICT_COLOR["clear"] if leaks else VERDICT_COLOR["encrypted"]
        rows.append(f'<TR><TD COLSPAN="4" ALIGN="LEFT"><FONT COLOR="{color}">under {len(fails)} failure(s): '
                    f"{_h(text)}</FONT></TD></TR>")
    return '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0">' + "".join(rows) + "</TABLE>>"


def dot_text(topo: Topology, tunnels: Mapping[str, bool] | None = None,
             audit: Mapping[str, Any] | None = None) -> str:
    """The lab as a DOT graph.  ``tunnels``: the route agent's ``{"node/conn": up}`` of a running lab;
    ``audit``: the last saved ``lab audit`` report (its JSON document)."""
    untrusted = set(topo.audit.untrusted) if topo.audit else set()
    out = ["graph " + _q(topo.name) + " {",
           "  graph " + _attrs(rankdir="LR", label=f"lab {topo.name}", labelloc="t", fontname="Helvetica",
                                fontsize=16.0) + ";",
           "  node " + _attrs(fontname="Helvetica", fontsize=10.0, style="filled") + ";",
           "  edge " + _attrs(fontname="Helvetica", fontsize=9.0) + ";"]
    for n in topo.nodes:
        shape, fill = KIND_STYLE.get(n.kind, ("box", "white"))
        out.append(f"  {_q(n.name)} " + _attrs(label=_node_label(topo, n.name), shape=shape, fillcolor=fill) + ";")
    for lk in topo.links:
        bad = (lk.a.node, lk.a.iface) in untrusted or (lk.b.node, lk.b.iface) in untrusted
        kw: dict[str, str | float] = {"taillabel": lk.a.iface, "headlabel": lk.b.iface}
        notes = []
        if lk.macsec is not None:
            notes.append(f"MACsec {lk.macsec.get('cipher', '')}".strip())
            kw.update(color=f"{UNTRUSTED}:{MACSEC}" if bad else MACSEC, penwidth=2.5, fontcolor=MACSEC)
        elif bad:
            kw.update(color=UNTRUSTED, penwidth=2.0, fontcolor=UNTRUSTED)
        if bad:
            notes.append("untrusted")
        if notes:
            kw["label"] = "\n".join(notes)
        out.append(f"  {_q(lk.a.node)} -- {_q(lk.b.node)} " + _attrs(**kw) + ";")
    for s in topo.segments:
        sid = f"segment:{s.name}"
        out.append(f"  {_q(sid)} " + _attrs(label=f"{s.name}\n[segment]", shape="box", style="rounded,dashed",
                                              fillcolor="white") + ";")
        for m in s.members:
            color: dict[str, str | float] = (
                {"color": UNTRUSTED, "penwidth": 2.0} if (m.node, m.iface) in untrusted else {})
            out.append(f"  {_q(m.node)} -- {_q(sid)} " + _attrs(taillabel=m.iface, **color) + ";")
    for c in topo.vpn:
        up = _tunnel_state(c.name, c.nodes, tunnels)
        state = "" if up is None else (" (up)" if up else " (DOWN)")
        out.append(f"  {_q(c.nodes[0])} -- {_q(c.nodes[1])} " + _attrs(
            label=f"IPsec {c.name}{state}", style="dashed", color=TUNNEL[up], fontcolor=TUNNEL[up],
            penwidth=2.0, constraint="false") + ";")
    if audit is not None and audit.get("flows"):
        out.append('  "audit" [shape=plaintext, style="", label=' + _audit_table(audit) + "];")
    out.append("}")
    return "\n".join(out) + "\n"


def output_format(path: str | Path) -> str:
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise GraphError(f"{path}: unknown picture format '{fmt or '(none)'}' (one of: .svg, .png, .dot)")
    return fmt


def render(dot: str, out: str | Path) -> Path:
    """Write ``dot`` to ``out`` in the format its suffix names (.dot: the text itself)."""
    out = Path(out)
    fmt = output_format(out)
    if fmt == "dot":
        out.write_text(dot)
        return out
    exe = shutil.which("dot")
    if exe is None:
        raise DotMissing("Graphviz 'dot' is not installed (Debian: apt-get install graphviz); "
                         f"-o {out.with_suffix('.dot')} writes the DOT text without it")
    try:
        res = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot.encode(), capture_output=True,
                             timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise GraphError("dot did not finish within 60 s") from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise GraphError(f"dot -T{fmt} failed: {err[-1] if err else f'exit status {res.returncode}'}")
    return out


__all__ = ["FORMATS", "DotMissing", "GraphError", "dot_text", "output_format", "render"]
