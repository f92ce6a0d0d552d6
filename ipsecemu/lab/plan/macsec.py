"""The MACsec part of a lab plan: one link daemon per end of every ``macsec:`` link, with its
config (the CAK inside: written 0600) and the status/keys files it maintains."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ipsecemu.base.errors import ConfigError
from ipsecemu.config.macsec_link import parse_link_config

from ..errors import MacsecServiceError
from ..topology import Topology, phy_ifname
from .model import MACSEC_LINK, Daemon, GeneratedFile

Random = Callable[[int], bytes]


def status_file(node: str, iface: str) -> str:
    return f"{node}/macsec-{iface}.status.json"


def keys_file(node: str, iface: str) -> str:
    return f"keys/macsec-{node}-{iface}.json"


def daemons(topo: Topology, lab_dir: Path, rand: Random) -> tuple[dict[str, list[Daemon]], list[str]]:
    """``({node: [its link daemons]}, notes)``.  A link without cak/ckn gets a throw-away pair
    from ``rand`` (shared by both ends); a bad setting raises :class:`MacsecServiceError`."""
    out: dict[str, list[Daemon]] = {}
    notes: list[str] = []
    for i, lk in enumerate(topo.links):
        if lk.macsec is None:
            continue
        raw = dict(lk.macsec)
        if "cak" not in raw and "ckn" not in raw:
            raw.update(cak=rand(32).hex(), ckn=rand(16).hex())
            notes.append(f"macsec {lk.a} <-> {lk.b}: no cak/ckn given, using a random throw-away pair")
        try:
            pub = parse_link_config(raw, f"links[{i}].macsec").public()
        except ConfigError as exc:
            raise MacsecServiceError(f"{topo.source}: {exc}") from None
        for ep in (lk.a, lk.b):
            cfg = f"{ep.node}/macsec-{ep.iface}.yaml"
            argv = (sys.executable, "-m", "ipsecemu", "macsec", "link", "run", "--config", str(lab_dir / cfg),
                    "--tap", ep.iface, "--phy", phy_ifname(ep.iface),
                    "--status", str(lab_dir / status_file(ep.node, ep.iface)),
                    "--keys-file", str(lab_dir / keys_file(ep.node, ep.iface)), "-v")
            out.setdefault(ep.node, []).append(Daemon(
                MACSEC_LINK, ep.node, argv, (GeneratedFile(cfg, json.dumps(raw), secret=True),),  # JSON is YAML
                log=f"{ep.node}/macsec-{ep.iface}.log",
                info={"link": f"{lk.a} <-> {lk.b}", "end": str(ep), "iface": ep.iface,
                      "status": status_file(ep.node, ep.iface),
                      "cipher": pub["cipher"], "sci_state": pub["sci_state"]}))
    return out, notes
