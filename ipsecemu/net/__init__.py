"""Linux plumbing shared by the gateway, the lab, the MACsec link, the benches and the tests.

netns.py: entering a network namespace and running things in it; tun.py: opening tun/tap devices
(vnet header, persistence); proc.py: processes started and stopped by PID.  Nothing here knows
about IKE, ESP or lab topologies.
"""

from ipsecemu.base.errors import SystemSetupError


class NetError(SystemSetupError):
    """A netns, link, tun/tap or process operation on the host failed (the message says which)."""


__all__ = ["NetError"]
