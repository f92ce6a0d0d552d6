"""Azure SKU emulation: the table, ``sku:`` on lab nodes (errors with file:line:field), the cap on
the gateway's uplink in the plan, ``sku`` in the generated gateway config, and the tunnel count
(connections beyond it refused with a log line)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ipsecemu.config import gateway as gwcfg
from ipsecemu.config.sku import ESP_FRAME_OVERHEAD, SKUS, sku
from ipsecemu.gateway.daemon import sku_admitted
from ipsecemu.lab.plan import compile_plan
from ipsecemu.lab.plan.model import IMPAIR, Veth
from ipsecemu.lab.topology import TopologyError, loads

LAB = """name: skulab
nodes:
  gwa:
    kind: ipsecemu
    sku: {sku}
    addresses: {{lan: 10.1.0.1/24, wan: 192.0.2.1/30}}
  gwb:
    kind: ipsecemu
    addresses: {{wan: 192.0.2.2/30}}
links:
  - endpoints: [gwa:wan, gwb:wan]
  - endpoints: [gwa:lan, gwb:lan]
vpn:
  connections:
    - name: ab
      nodes: [gwa, gwb]
      addresses: [{ike}, 192.0.2.2]
      config: {{psk: unit-test-only-psk}}
"""


def test_published_figures() -> None:
    assert (sku("VpnGw1").rate_bps, sku("VpnGw1").tunnels) == (650_000_000, 30)
    assert sku("VpnGw2").rate_bps == 1_000_000_000 and sku("VpnGw3").rate_bps == 1_250_000_000
    assert sku("VpnGw2AZ") == sku("VpnGw2").__class__("VpnGw2AZ", 1_000_000_000, 30)
    assert "Basic" in SKUS and "BasicAZ" not in SKUS
    with pytest.raises(ValueError, match="unknown SKU 'VpnGw9'"):
        sku("VpnGw9")


def test_uplink_gets_the_cap_and_gateway_the_sku(tmp_path: Path) -> None:
    plan = compile_plan(loads(LAB.format(sku="VpnGw1", ike="192.0.2.1")), base=tmp_path)
    (d,) = plan.daemons_of(IMPAIR)
    assert d.info["link"] == "gwa:wan <-> gwb:wan"
    for k in ("a_to_b", "b_to_a"):
        assert d.info[k]["rate_bps"] == 650_000_000 and d.info[k]["rate_overhead"] == -ESP_FRAME_OVERHEAD
    veths = [(v.netns, v.ifname) for v in plan.links if isinstance(v, Veth)]
    assert ("skulab-gwa", "lan") in veths  # the other link stays a plain veth
    text = plan.file("gwa/gateway.yaml").text
    assert gwcfg.loads(text).sku == "VpnGw1"


def test_sku_errors_are_located() -> None:
    with pytest.raises(TopologyError, match=r"^f.yaml:5: nodes.gwa.sku: unknown SKU 'VpnGw7'"):
        loads(LAB.format(sku="VpnGw7", ike="192.0.2.1"), "f.yaml")
    with pytest.raises(TopologyError, match=r"nodes.gwa.sku: the SKU's rate cap goes on the link of the IKE address"):
        loads(LAB.format(sku="VpnGw1", ike="10.1.0.1").replace("  - endpoints: [gwa:lan, gwb:lan]\n", "")
              .replace("lan: 10.1.0.1/24, ", "lo: 10.1.0.1/32, "), "f.yaml")
    with pytest.raises(TopologyError, match="only VPN nodes"):
        loads("name: xy\nnodes:\n  h: {kind: host, sku: VpnGw1}\n", "f.yaml")


def _gateway(n: int, sku_line: str) -> gwcfg.GatewayConfig:
    conns = "".join(f"  c{i}:\n    remote_address: 192.0.2.{i + 2}\n    psk: unit-test-only-psk\n"
                    f"    local_ts: [10.1.0.0/24]\n    remote_ts: [10.{i % 250}.1.0/24]\n" for i in range(n))
    return gwcfg.loads(f"node: gwa\nstate_dir: /tmp/x\nlocal_addresses: [192.0.2.1]\n{sku_line}connections:\n{conns}")


def test_tunnels_beyond_the_sku_are_refused_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    cfg = _gateway(32, "sku: VpnGw1\n")
    assert cfg.sku == "VpnGw1"
    with caplog.at_level(logging.ERROR, logger="ipsecemu.gateway"):
        kept = sku_admitted(cfg)
    assert [c.name for c in kept.connections] == [f"c{i}" for i in range(30)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"gwa: connection c{i} (peer 192.0.2.{i + 2}) refused: SKU VpnGw1 allows 30 tunnels "
                     f"(emulated Azure limit)" for i in (30, 31)]
    assert sku_admitted(_gateway(3, "")).connections == _gateway(3, "").connections


def test_bad_sku_in_gateway_config() -> None:
    with pytest.raises(gwcfg.ConnectionConfigError, match="sku: unknown SKU 'Gold'"):
        _gateway(1, "sku: Gold\n")
