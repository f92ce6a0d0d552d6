"""Connections back to text: the YAML/dict file format (``config show``, round-trips through
:func:`ipsecemu.config.connection.loads`) and the human summary of ``config check``."""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from ipsecemu.config.connection import ConnectionConfig, NatT
from ipsecemu.ike.ts import TrafficSelector

__all__ = ["to_dict", "dumps", "summary"]


def _ts_text(ts: TrafficSelector) -> list[str]:
    nets = ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)
    extra = ""
    if ts.ip_proto or (ts.start_port, ts.end_port) != (0, 65535):
        ports = "%any" if (ts.start_port, ts.end_port) == (0, 65535) else (
            str(ts.start_port) if ts.start_port == ts.end_port else f"{ts.start_port}-{ts.end_port}")
        extra = f"[{ts.ip_proto}/{ports}]"
    return [f"{n}{extra}" for n in nets]


def to_dict(conn: ConnectionConfig, *, include_secret: bool = False) -> dict[str, Any]:
    """The dict/YAML form of a connection; ``parse_connection(to_dict(c, include_secret=True)) == c``.

    Without ``include_secret`` the PSK is replaced by ``env:IPSECEMU_PSK`` so the output can be
    shared (and the secret supplied through the environment).
    """
    d: dict[str, Any] = {
        "name": conn.name,
        "local_address": str(conn.local_address) if conn.local_address is not None else "%any",
        "remote_address": str(conn.remote_address) if conn.remote_address is not None else "%any",
    }
    if conn.local_id is not None:
        d["local_id"] = conn.local_id.spec()
    if conn.remote_id is not None:
        d["remote_id"] = conn.remote_id.spec()
    if conn.auth.method == "psk":
        if include_secret:
            try:
                secret = conn.auth.secret.decode()
                if secret.lower().startswith(("0x", "env:")) or not secret.isprintable():
                    raise ValueError
            except ValueError:
                secret = "0x" + conn.auth.secret.hex()
            d["psk"] = secret
        else:
            d["psk"] = "env:IPSECEMU_PSK"
    else:
        d["auth"] = {k: v for k, v in (("method", "cert"), ("cert", conn.auth.cert), ("key", conn.auth.key),
                                       ("ca", conn.auth.ca)) if v is not None}
    if conn.azure_policy is not None:
        d["ipsec_policy"] = dict(vars(conn.azure_policy))
    else:
        d["ike_proposals"] = [p.to_strongswan_string() for p in conn.ike_proposals]
        d["esp_proposals"] = [p.to_strongswan_string() for p in conn.esp_proposals]
        lt = conn.child_lifetime
        d["child_lifetime"] = {"seconds": lt.seconds, "kilobytes": lt.kilobytes, "packets": lt.packets,
                               "rekey_margin": lt.rekey_margin, "jitter": lt.jitter,
                               "rekey_margin_percent": lt.rekey_margin_percent,
                               "jitter_percent": lt.jitter_percent}
    lt = conn.ike_lifetime
    d["ike_lifetime"] = {"seconds": lt.seconds, "kilobytes": lt.kilobytes, "packets": lt.packets,
                         "rekey_margin": lt.rekey_margin, "jitter": lt.jitter,
                         "rekey_margin_percent": lt.rekey_margin_percent,
                         "jitter_percent": lt.jitter_percent}
    d["local_ts"] = [t for ts in conn.local_ts for t in _ts_text(ts)]
    d["remote_ts"] = [t for ts in conn.remote_ts for t in _ts_text(ts)]
    d["mode"] = conn.mode
    d["dpd"] = {"interval": conn.dpd.interval, "timeout": conn.dpd.timeout}
    d["nat_t"] = {"ike_port": conn.nat_t.ike_port, "natt_port": conn.nat_t.natt_port,
                  "force_encap": conn.nat_t.force_encap}
    if conn.nat_t.keepalive != NatT.keepalive:
        d["nat_t"]["keepalive"] = conn.nat_t.keepalive
    if conn.childless != "allow":
        d["childless"] = conn.childless
    d["replay_window"] = conn.replay_window
    d["start_action"] = conn.start_action
    if not conn.fragmentation or conn.fragment_size != 1280:
        d["fragmentation"] = conn.fragmentation
        d["fragment_size"] = conn.fragment_size
    return d


def dumps(conns: list[ConnectionConfig], *, include_secret: bool = False) -> str:
    """YAML text for ``connections:`` (what ``loads`` reads back)."""
    conns_out: dict[str, Any] = {}
    body = {"connections": conns_out}
    for c in conns:
        d = to_dict(c, include_secret=include_secret)
        conns_out[d.pop("name")] = d
    return str(yaml.safe_dump(body, sort_keys=False, default_flow_style=False))


def summary(conns: list[ConnectionConfig]) -> str:
    """Human summary for ``config check`` (never shows the PSK)."""
    out: list[str] = []
    for c in conns:
        la = str(c.local_address) if c.local_address is not None else "%any"
        ra = str(c.remote_address) if c.remote_address is not None else "%any"
        lid = c.effective_local_id()
        out.append(f"{c.name}: {la} -> {ra} ({c.mode}, {c.start_action}, auth {c.auth.method})")
        out.append(f"  ids    {lid or '%any'} -> {c.remote_id or '%any'}")
        if c.azure_policy is not None:
            pol = c.azure_policy
            out.append(f"  azure  ike {pol.ike_encryption}/{pol.ike_integrity}/{pol.dh_group}, "
                       f"ipsec {pol.ipsec_encryption}/{pol.ipsec_integrity}/{pol.pfs_group}")
        out.append(f"  ike    {', '.join(p.to_strongswan_string() for p in c.ike_proposals)}")
        out.append(f"  esp    {', '.join(p.to_strongswan_string() for p in c.esp_proposals)}")
        out.append(f"  ts     {' '.join(str(t) for t in c.local_ts)} === {' '.join(str(t) for t in c.remote_ts)}")
        ch, ik = c.child_lifetime, c.ike_lifetime
        out.append(f"  life   ike {ik.seconds}s (rekey at {ik.seconds - ik.rekey_margin}s -{ik.jitter}s), "
                   f"child {ch.seconds}s / {ch.kilobytes} KB (rekey at {ch.seconds - ch.rekey_margin}s -{ch.jitter}s)")
        dpd = f"{c.dpd.interval}s/{c.dpd.timeout}s" if c.dpd.interval else "off"
        out.append(f"  dpd {dpd}, nat-t {c.nat_t.ike_port}/{c.nat_t.natt_port}"
                   f"{' forced' if c.nat_t.force_encap else ''}, replay window {c.replay_window}")
    return "\n".join(out) + ("\n" if out else "")
