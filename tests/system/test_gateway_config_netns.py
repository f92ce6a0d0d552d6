"""The gateway config against a real netns (root): addresses and devices the config names."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, entered

from support.gateway_config import GOOD, run_in


@pytest.mark.root
def test_run_refuses_missing_address_busy_port_and_taken_tun_name(unique_name: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(GOOD.replace("lab: demo", f"state_dir: {tmp_path / 'st'}"))
    with Netns() as net:
        ns = net.add(unique_name)
        r = run_in(ns, cfg)
        assert r.returncode == 6 and "local address 192.0.2.1 is not configured" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        net.addrs(ns, "lo", "192.0.2.1/32")
        with entered(ns):
            busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            busy.bind(("192.0.2.1", 500))
            r = run_in(ns, cfg)
            assert r.returncode == 6 and "is in use" in r.stderr and "Traceback" not in r.stderr, r.stderr
        finally:
            busy.close()
        net.veth(ns, "vti0", ns, unique_name + "x")
        r = run_in(ns, cfg)
        assert r.returncode == 6 and "tunnel device vti0 already exists" in r.stderr, r.stderr
        assert not (tmp_path / "st" / "gateway.pid").exists()


@pytest.mark.root
def test_run_needs_root() -> None:
    # pytest's tmp_path is root-only; nobody must be able to read the config to get to the check
    d = Path(tempfile.mkdtemp(prefix="ipsecemu-gw-"))
    try:
        d.chmod(0o755)
        cfg = d / "gw.yaml"
        cfg.write_text(GOOD.replace("lab: demo", f"state_dir: {d / 'st'}"))
        cfg.chmod(0o644)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                            "ipsecemu", "gateway", "run", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 5 and "needs root" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
