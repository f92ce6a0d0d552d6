"""The on-demand (trap) connection keys of the gateway config (issue 12, scenario S5):
``start_action: trap``, ``trap_fallback``, ``trap_timeout`` and the tunnel's routing ``table``.
Every mistake is one ``file:line: field: message`` error."""

from __future__ import annotations

import pytest

from ipsecemu.config.gateway import ConnectionConfigError, loads, summary

TRAP = """\
node: host1
local_addresses: [10.2.27.4]
connections:
  to-vm1:
    remote_address: 10.0.1.4
    psk: s5-secret
    mode: transport
    esp_proposals: 3des-sha1,aes128gcm16
    local_ts: ["10.2.27.4/32[tcp]"]
    remote_ts: ["10.0.1.4/32[tcp/8080]"]
    start_action: trap
    trap_fallback: clear
    trap_timeout: 3
    tunnel: {name: ipsec-vm1, table: 108}
"""


def test_trap_keys_parse() -> None:
    cfg = loads(TRAP, "gw.yaml")
    (c,) = cfg.connections
    assert c.conn.start_action == "trap" and c.conn.trap_fallback == "clear" and c.conn.trap_timeout == 3
    assert c.tunnel.table == 108 and c.tunnel.routes == () and not c.tunnel.external_routes
    assert c.conn.mode == "transport"
    assert "table 108" in summary(cfg) and "trap (fallback clear after 3s)" in summary(cfg)


def test_trap_defaults_and_aliases() -> None:
    text = TRAP.replace("    trap_fallback: clear\n    trap_timeout: 3\n", "")
    c = loads(text).connections[0]
    assert (c.conn.trap_fallback, c.conn.trap_timeout) == ("drop", 10)  # drop = never in clear
    # strongSwan's ipsec.conf word and the host policy's action words
    assert loads(text.replace("start_action: trap", "start_action: route")).connections[0].conn.start_action == "trap"
    for word, want in (("require", "drop"), ("request", "clear"), ("Drop", "drop")):
        c = loads(TRAP.replace("trap_fallback: clear", f"trap_fallback: {word}")).connections[0]
        assert c.conn.trap_fallback == want
    # the table: main (or 254) is the default main table; no table: main
    for v in ("main", "254"):
        assert loads(TRAP.replace("table: 108", f"table: {v}")).connections[0].tunnel.table is None
    assert loads(TRAP.replace(", table: 108", "")).connections[0].tunnel.table is None
    assert loads(TRAP.replace("table: 108", f"table: {2 ** 31}")).connections[0].tunnel.table == 2 ** 31
    # other start actions are unchanged
    listen = TRAP.replace("start_action: trap", "start_action: listen").replace(
        "    trap_fallback: clear\n    trap_timeout: 3\n", "")
    assert loads(listen).connections[0].conn.start_action == "listen"


@pytest.mark.parametrize(("old", "new", "where"), [
    ("start_action: trap", "start_action: trapp", "gw.yaml:11: connections.to-vm1.start_action: must be initiate, "
                                                  "listen or trap, got 'trapp'"),
    ("trap_fallback: clear", "trap_fallback: maybe", "gw.yaml:12: connections.to-vm1.trap_fallback: must be drop or "
                                                     "clear, got 'maybe'"),
    ("trap_timeout: 3", "trap_timeout: 0", "gw.yaml:13: connections.to-vm1.trap_timeout: must be in 1..3600, got 0"),
    ("trap_timeout: 3", "trap_timeout: soon", "gw.yaml:13: connections.to-vm1.trap_timeout: must be an integer"),
    ("start_action: trap", "start_action: initiate", "gw.yaml:12: connections.to-vm1.trap_fallback: only with "
                                                     "start_action: trap (this connection is initiate)"),
    ("table: 108", "table: 0", "gw.yaml:14: connections.to-vm1.tunnel.table: must be in 1..2147483648, got 0"),
    ("table: 108", f"table: {2 ** 31 + 1}", "gw.yaml:14: connections.to-vm1.tunnel.table: must be in 1..2147483648"),
    ("table: 108", "table: 255", "gw.yaml:14: connections.to-vm1.tunnel.table: 255 is the kernel's local table"),
    ("table: 108", "table: lots", "gw.yaml:14: connections.to-vm1.tunnel.table: must be an integer, got 'lots'"),
    ("table: 108", "table: 108, routes: external", "connections.to-vm1.tunnel.table: routes: external installs no "
                                                   "routes"),
    ("remote_address: 10.0.1.4", "remote_address: '%any'", "gw.yaml:11: connections.to-vm1.start_action: trap needs "
                                                           "a concrete remote_address"),
])
def test_trap_errors_name_file_line_and_field(old: str, new: str, where: str) -> None:
    assert old in TRAP
    with pytest.raises(ConnectionConfigError) as ei:
        loads(TRAP.replace(old, new), "gw.yaml")
    assert where in str(ei.value)
    assert "\n" not in str(ei.value) and "s5-secret" not in str(ei.value)
