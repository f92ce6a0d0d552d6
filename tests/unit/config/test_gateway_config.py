"""The gateway config file and ``ipsecemu gateway check``/``run`` startup errors: every mistake
is one clear line naming file:line and field (no traceback), and the PSK never shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipsecemu.config.gateway import ConnectionConfigError, loads, summary

from support.gateway_config import GOOD, run_in  # noqa: F401


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "gateway", *args], capture_output=True, text=True,
                          timeout=30)


def test_good_config_parses_with_defaults() -> None:
    cfg = loads(GOOD, "gw.yaml")
    assert cfg.node == "gw-a" and str(cfg.state_dir) == "/run/ipsecemu/demo/gw-a"
    assert cfg.encapsulation == "esp" and cfg.batch == 64 and cfg.local_addresses == ("192.0.2.1",)
    (c,) = cfg.connections
    assert str(c.conn.local_address) == "192.0.2.1"  # from local_addresses
    assert c.conn.dpd.interval == 5 and c.conn.dpd.timeout == 15  # top-level default
    assert c.close_action == "restart" and c.tunnel.name == "vti0" and c.tunnel.mtu == 1400
    assert [str(r) for r in c.tunnel.routes] == ["10.2.0.0/16", "10.3.0.0/16"]
    assert c.conn.child_lifetime.kilobytes == 102400000  # Azure SADataSizeInKilobytes
    assert c.conn.child_lifetime.to_dataplane().soft_bytes > 0
    assert not c.conn.nat_t.force_encap
    udp = loads(GOOD.replace("encapsulation: esp", "encapsulation: udp"))
    assert udp.connections[0].conn.nat_t.force_encap  # udp forces NAT-T floating


def test_check_prints_summary_without_secret(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(GOOD)
    r = gateway("check", str(p), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 0, r.stderr
    assert "node gw-a (lab demo)" in r.stdout and f"state dir  {tmp_path / 'st'}" in r.stdout
    assert "azure: tunnel vti0 mtu 1400 address 169.254.21.1/30" in r.stdout
    assert "aes256gcm16" in r.stdout and "very-secret-psk" not in r.stdout


@pytest.mark.parametrize(("old", "new", "where"), [
    ("node: gw-a\n", "", "gw.yaml:1: <top>: node is required"),
    ("encapsulation: esp", "encapsulation: gre", "gw.yaml:4: datapath.encapsulation: must be one of auto, udp, esp"),
    ("mtu: 1400}", "mtu: 1400, colour: red}", "gw.yaml:16: connections.azure.tunnel.colour: unknown key"),
    ("routes: [10.2.0.0/16, 10.3.0.0/16]", "routes: [10.2.0.0/33]", "gw.yaml:16: connections.azure.tunnel.routes.0"),
    ("name: vti0", "name: a-very-long-tunnel-name", "connections.azure.tunnel.name: a link name of 1..15"),
    ("    remote_address: 192.0.2.2\n", "", "gw.yaml:7: connections.azure: remote_address is required"),
    ("close_action: restart", "close_action: sometimes", "gw.yaml:15: connections.azure.close_action"),
    ("local_addresses: [192.0.2.1]", "local_addresses: [192.0.2.300]", "gw.yaml:3: local_addresses.0"),
    ("lab: demo", "lab: ../etc", "gw.yaml:2: lab: must be a plain name"),
])
def test_errors_name_file_line_and_field(old: str, new: str, where: str) -> None:
    assert old in GOOD
    with pytest.raises(ConnectionConfigError) as exc:
        loads(GOOD.replace(old, new, 1), "gw.yaml")
    assert where in str(exc.value)
    assert "very-secret-psk" not in str(exc.value)


def test_cli_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(GOOD.replace("encapsulation: esp", "encapsulation: gre"))
    for cmd in ("check", "run"):
        r = gateway(cmd, str(p))
        assert r.returncode == 2 and "datapath.encapsulation" in r.stderr and "Traceback" not in r.stderr
    r = gateway("check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_duplicate_tunnel_names_refused() -> None:
    two = GOOD + GOOD[GOOD.index("  azure:"):].replace("  azure:", "  azure2:")
    with pytest.raises(ConnectionConfigError, match="vti0 is already used by azure"):
        loads(two, "gw.yaml")




def test_routes_external_means_the_gateway_routes_nothing() -> None:
    """A lab's gateways say ``routes: external``: the lab's route agent routes into the tun, and a
    0.0.0.0/0 traffic selector is then no reason for a 'not routing a default route' warning."""
    cfg = loads(GOOD.replace("routes: [10.2.0.0/16, 10.3.0.0/16]", "routes: external"), "gw.yaml")
    t = cfg.connections[0].tunnel
    assert t.external_routes and t.routes == ()
    assert "routes external" in summary(cfg)
    assert not loads(GOOD, "gw.yaml").connections[0].tunnel.external_routes
    with pytest.raises(ConnectionConfigError, match="tunnel.routes"):
        loads(GOOD.replace("routes: [10.2.0.0/16, 10.3.0.0/16]", "routes: externl"), "gw.yaml")
