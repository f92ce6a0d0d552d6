"""Lab service: one MACsec link daemon per end of every link with a ``macsec:`` mapping.

The builder already made the tap (the node's L3 side, with its addresses) and the veth under it
(``<iface>_phy``).  Each daemon runs inside its node's netns (``ip netns exec``, which execs, so
the PID we register is the daemon's own); logs, status and the daemon's config (it holds the CAK:
mode 0600) go to ``<lab state dir>/<node>/``, the SAKs in use to ``keys_dir`` for ``lab capture
--keys`` + ``pcap decrypt``.  ``start`` returns once MKA secured every link (bounded wait).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ipsecemu.base.errors import ConfigError, ServiceError
from ipsecemu.config.macsec_link import parse_link_config
from ipsecemu.macsec_link.daemon import read_status
from ipsecemu.net.netns import ns_argv
from ipsecemu.net.proc import start as start_process

from .state import LabState
from .topology import Link, Topology, phy_ifname

SECURE_TIMEOUT = 20.0  # s: MKA needs a few hello times at most


class MacsecServiceError(ServiceError):
    pass


def status_path(state: LabState, node: str, iface: str) -> Path:
    return state.dir / node / f"macsec-{iface}.status.json"


def keys_path(state: LabState, node: str, iface: str) -> Path:
    return state.keys_dir / f"macsec-{node}-{iface}.json"


def _start_end(topo: Topology, state: LabState, lk: Link, node: str, iface: str,
               raw: dict) -> tuple[int, Path, Path]:
    ns = state.node_netns(node) or topo.netns(node)
    d = state.dir / node
    d.mkdir(mode=0o700, exist_ok=True)
    cfg = d / f"macsec-{iface}.yaml"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(raw, f)  # JSON is YAML; holds the CAK, hence 0600
    st = status_path(state, node, iface)
    st.unlink(missing_ok=True)
    logf = d / f"macsec-{iface}.log"
    cmd = ns_argv(ns, sys.executable, "-m", "ipsecemu", "macsec", "link", "run",
                  "--config", str(cfg), "--tap", iface, "--phy", phy_ifname(iface), "--status", str(st),
                  "--keys-file", str(keys_path(state, node, iface)), "-v")
    with open(logf, "ab") as out:
        p = start_process(cmd, stdout=out, stderr=subprocess.STDOUT)
    state.add_process(p.pid, "daemon", node, cmd=cmd, log=str(logf))
    return p.pid, st, logf


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _secured(path: Path) -> bool:
    try:
        st = read_status(path)
    except ConfigError:
        return False
    return bool(st.get("secured") and st.get("live_peers"))


def start(topo: Topology, state: LabState, say: Callable[[str], None]) -> None:
    links = [(i, lk) for i, lk in enumerate(topo.links) if lk.macsec is not None]
    if not links:
        return
    # validate every link before starting anything
    raws = []
    for i, lk in links:
        raw = dict(lk.macsec or {})
        if "cak" not in raw and "ckn" not in raw:
            # a lab convenience: no CAK/CKN given -> a throw-away pair shared by both ends
            raw.update(cak=os.urandom(32).hex(), ckn=os.urandom(16).hex())
            say(f"macsec {lk.a} <-> {lk.b}: no cak/ckn given, using a random throw-away pair")
        try:
            parse_link_config(raw, f"links[{i}].macsec")
        except ConfigError as exc:
            raise MacsecServiceError(f"{topo.source}: {exc}") from None
        raws.append(raw)
    ends = []
    for (_, lk), raw in zip(links, raws, strict=True):
        for ep in (lk.a, lk.b):
            pid, st, logf = _start_end(topo, state, lk, ep.node, ep.iface, raw)
            ends.append((f"{ep.node}:{ep.iface}", pid, st, logf))
    deadline = time.monotonic() + SECURE_TIMEOUT
    waiting = list(ends)
    while waiting:
        for e in list(waiting):
            name, pid, st, logf = e
            if _secured(st):
                waiting.remove(e)
                continue
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                done = pid
            if done:
                raise MacsecServiceError(f"MACsec link daemon for {name} exited; log {logf}:\n{_tail(logf)}")
        if waiting and time.monotonic() > deadline:
            names = ", ".join(e[0] for e in waiting)
            raise MacsecServiceError(f"MACsec: {names} not secured within {SECURE_TIMEOUT:.0f} s "
                                     f"(MKA did not converge: check cak/ckn/cipher match); logs in {state.dir}")
        time.sleep(0.05)
    for (_, lk), raw in zip(links, raws, strict=True):
        cfg = parse_link_config(raw)
        say(f"macsec {lk.a} <-> {lk.b}: secured ({cfg.public()['cipher']}, SCI {cfg.public()['sci_state']})")
