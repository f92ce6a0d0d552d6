"""The issue-12 responder bug, as a new user met it: hosts as IKE peers, ``mode: transport``,
selectors written as the hosts' subnet with a port (``10.9.2.0/24[tcp/8080]``), no routing table
of their own.  The responder used to route the negotiated selectors into its tun as whole prefixes --
its own LAN included, replacing the LAN's connected route -- and swallowed its own IKE_AUTH reply,
so the tunnel never came up.  Now a gateway never routes a prefix holding its own IKE address or
its own selectors, and routes transport mode's peer host only in a table of its own: the SA comes
up on both sides, the main tables are untouched, and each side logs what it did not route and why.
Needs root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, ns_exec, wait_for

from support.gateway_lab import Gw, established

pytestmark = pytest.mark.root

A, B = "10.9.2.1", "10.9.2.2"
PSK = "hostgw-routes-psk"


def config(node: str, state: Path, me: str, peer: str, start: str, tun: str, mode: str) -> str:
    return f"""\
node: {node}
state_dir: {state}
local_addresses: [{me}]
connections:
  s5:
    remote_address: {peer}
    psk: {PSK}
    mode: {mode}
    local_ts: ["10.9.2.0/24[tcp/8080]"]
    remote_ts: ["10.9.2.0/24[tcp/8080]"]
    start_action: {start}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}}}
"""


@pytest.fixture
def pair(unique_name: str) -> Iterator[tuple[str, str, str]]:
    net = Netns()
    prefix = "hg" + unique_name[1:6]
    try:
        a = net.add("hostgw-" + unique_name + "-a")
        b = net.add("hostgw-" + unique_name + "-b")
        net.veth(a, prefix + "va", b, prefix + "vb", (f"{A}/24",), (f"{B}/24",))
        yield a, b, prefix
    finally:
        net.close()


def main_table(ns: str) -> str:
    return ns_exec(ns, "ip", "route", "show", "table", "main").stdout


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_responder_does_not_route_its_own_lan_and_the_sa_comes_up(pair: tuple[str, str, str], tmp_path: Path,
                                                                  mode: str) -> None:
    a, b, prefix = pair
    before = {ns: main_table(ns) for ns in (a, b)}
    gws = []
    try:
        for node, ns, me, peer, start in (("b", b, B, A, "listen"), ("a", a, A, B, "initiate")):
            cfg = tmp_path / f"{node}.yaml"
            cfg.write_text(config(node, tmp_path / node, me, peer, start, prefix + "t" + node, mode))
            g = Gw(ns, cfg, tmp_path / node, prefix + "t" + node)
            gws.append(g)
            g.start()
        ga, gb = gws[1], gws[0]
        assert wait_for(lambda: established(ga) and established(gb), 15), ga.log() + gb.log()
        for g, ns, me in ((ga, a, A), (gb, b, B)):
            (sa,) = g.sas()
            assert sa["child_sas"][0]["mode"] == mode.upper()
            assert main_table(ns) == before[ns], main_table(ns)  # nothing replaced, nothing added
            why = (f"10.9.2.{2 if me == A else 1}/32: transport mode in the main table" if mode == "transport"
                   else f"10.9.2.0/24: contains our IKE address {me}")
            assert f"s5: peer {B if me == A else A}: not routing {why}" in g.log(), g.log()
        assert ns_exec(a, "ping", "-n", "-c", "1", "-W", "2", B, check=False).returncode == 0
        print(f"\n[{mode}] responder and initiator up, main tables unchanged: "
              f"{before[b].strip().splitlines()}")
    finally:
        for g in gws:
            g.stop()
