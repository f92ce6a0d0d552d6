"""The gateway config against a real netns (root): addresses and devices the config names."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, entered

from support.gateway_config import GOOD, run_in
from support.nonroot import closed_dirs, non_root_prefix


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
def test_run_needs_root(tmp_path: Path) -> None:
    # tmp_path sits in a 0700 dir of root, like a checkout cloned into `mktemp -d`: support.nonroot lets
    # nobody through such dirs (and only through them), so this also proves that helper
    assert closed_dirs(tmp_path)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(GOOD.replace("lab: demo", f"state_dir: {tmp_path / 'st'}"))
    cfg.chmod(0o644)
    r = subprocess.run([*non_root_prefix(cfg), sys.executable, "-m", "ipsecemu", "gateway", "run", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "needs root" in r.stderr, r.stderr  # one line
    assert not (tmp_path / "st").exists()
