"""Services a lab runs once its network is built: MACsec link daemons, then VPN gateways.

Each kind of service lives in its own module with one entry point
``start(topo: Topology, state: LabState, say: Callable[[str], None]) -> None`` that starts its
processes (inside the node netns) and registers every PID with ``state.add_process(pid, role,
node)``, so ``lab down`` stops them by PID.  Raising aborts ``lab up``, which then rolls back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .state import LabState
from .topology import Topology

# in start order: MACsec links carry the IPsec underlay in the MACsec lab, so they come first
SERVICE_MODULES = ("ipsecemu.lab.svc_macsec", "ipsecemu.lab.svc_vpn")


def start(topo: Topology, state: LabState, say: Callable[[str], None]) -> None:
    for name in SERVICE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that service is not part of this build
            raise
        mod.start(topo, state, say)
