"""A valid gateway config file, and running 'gateway run' on one inside a netns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = """\
node: gw-a
lab: demo
local_addresses: [192.0.2.1]
datapath: {encapsulation: esp, batch: 64}
dpd: {interval: 5, timeout: 15}
connections:
  azure:
    remote_address: 192.0.2.2
    psk: very-secret-psk
    ipsec_policy: {ike_encryption: GCMAES256, ike_integrity: GCMAES256, dh_group: ECP384,
                   ipsec_encryption: GCMAES256, ipsec_integrity: GCMAES256, pfs_group: None,
                   sa_lifetime_seconds: 27000, sa_datasize_kilobytes: 102400000}
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    close_action: restart
    tunnel: {name: vti0, address: 169.254.21.1/30, routes: [10.2.0.0/16, 10.3.0.0/16], mtu: 1400}
"""


# ----------------------------------------------------------------------------- startup errors
def run_in(ns: str, cfg: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "ipsecemu", "gateway", "run", str(cfg)],
                          capture_output=True, text=True, timeout=timeout)
