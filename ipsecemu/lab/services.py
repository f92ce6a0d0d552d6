"""Services a lab runs once its network is built: MACsec link daemons, then VPN gateways.

Each kind of service lives in its own module with one entry point
``start(plan: LabPlan, state: LabState, say: Callable[[str], None]) -> None`` that starts the
daemons of its kinds from the plan (:class:`ipsecemu.lab.plan.Daemon`: argv, generated files,
log), inside the node netns, and registers every PID with ``state.add_process(pid, role, node)``,
so ``lab down`` stops them by PID.  Raising aborts ``lab up``, which then rolls back.  A new
daemon kind (the FRR daemons of the routing issue) is a Daemon in the plan plus a module here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .plan import LabPlan
from .state import LabState

# in start order: impaired links carry nothing until their element runs; MACsec links carry the IPsec
# underlay in the MACsec lab, so they come next; FRR before the VPN: IKE between the CE and the hub's
# instances rides routes BGP learns over ER.  Host IPsec policies (S5) last: their IKE rides the lab's routes.
SERVICE_MODULES = ("ipsecemu.lab.svc_impair", "ipsecemu.lab.svc_macsec", "ipsecemu.lab.svc_frr",
                   "ipsecemu.lab.svc_vpn", "ipsecemu.lab.hostpolicy_svc")


def start(plan: LabPlan, state: LabState, say: Callable[[str], None]) -> None:
    """Start every service in order, then give each an optional ``settle(plan, state, say)`` pass
    (FRR waits there for the BGP sessions inside the tunnels the VPN service brought up)."""
    mods = []
    for name in SERVICE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that service is not part of this build
            raise
        mod.start(plan, state, say)
        mods.append(mod)
    for mod in mods:
        settle = getattr(mod, "settle", None)
        if settle is not None:
            settle(plan, state, say)
