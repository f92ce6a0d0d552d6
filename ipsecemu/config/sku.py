"""Azure VPN gateway SKUs as emulated by ipsecemu (one table): aggregate throughput and tunnel count.

Figures are the ones Azure publishes for site-to-site gateways (../shared/scenarios/README.md:
VpnGw1 650 Mbit/s, VpnGw2 1 Gbit/s, VpnGw3 1.25 Gbit/s, 30 tunnels; the larger SKUs and the
zone-redundant ``AZ`` variants have the same figures as in Azure's SKU table).  This is an
emulation, not a model of Azure's hardware: in a lab, the gateway's uplink gets a token bucket at
the SKU's rate in each direction, charged for the inner (tunnelled) bytes of each frame
(:data:`ESP_FRAME_OVERHEAD` less per frame), and an ipsecemu gateway starts at most the SKU's number
of connections, refusing the rest with a log line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ESP_FRAME_OVERHEAD", "SKUS", "Sku", "sku"]


@dataclass(frozen=True)
class Sku:
    name: str
    rate_bps: int  # aggregate throughput Azure publishes
    tunnels: int  # site-to-site tunnels


_TABLE = (("Basic", 100, 10), ("VpnGw1", 650, 30), ("VpnGw2", 1000, 30), ("VpnGw3", 1250, 30),
          ("VpnGw4", 5000, 100), ("VpnGw5", 10000, 100))
SKUS: dict[str, Sku] = {}
for _name, _mbit, _tunnels in _TABLE:
    SKUS[_name] = Sku(_name, _mbit * 1_000_000, _tunnels)
    if _name != "Basic":
        SKUS[f"{_name}AZ"] = Sku(f"{_name}AZ", _mbit * 1_000_000, _tunnels)

#: Bytes of an ESP-in-UDP frame that are not the tunnelled packet: Ethernet 14, outer IPv4 20, UDP 8,
#: ESP header 8, AES-GCM IV 8 and ICV 16, pad length + next header 2 (+ ~0-3 padding).
ESP_FRAME_OVERHEAD = 76


def sku(name: str) -> Sku:
    """The SKU called ``name``; ValueError listing the known ones otherwise."""
    try:
        return SKUS[name]
    except KeyError:
        raise ValueError(f"unknown SKU {name!r} (one of: {', '.join(SKUS)})") from None
