"""The lab plan (``lab up`` = check -> plan -> apply), without root: for every shipped lab the
generated files equal what ``lab up`` wrote before the plan existed (golden/, written by the
pre-plan svc_vpn), the per-node facts the builder executes, and ``lab up --dry-run`` via the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.lab import builder, check, topology
from ipsecemu.lab.errors import BuildError, MacsecServiceError
from ipsecemu.lab.plan import (
    CHARON,
    FRR,
    GATEWAY,
    MACSEC_LINK,
    ROUTE_AGENT,
    compile_plan,
    plan_json,
    plan_text,
)
from ipsecemu.lab.plan import frr as frr_plan
from ipsecemu.lab.plan.model import Tap, Veth

from support.nonroot import non_root_prefix  # noqa: E402
from support.paths import REPO  # noqa: E402

LABS = sorted((REPO / "netns-labs").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
BASE = Path("/run/ipsecemu")  # the state root the golden files name


def _fixed(n: int) -> bytes:
    return bytes(range(n))


@pytest.mark.parametrize("lab", LABS, ids=[p.stem for p in LABS])
def test_generated_files_equal_pre_plan_lab_up(lab: Path) -> None:
    plan = compile_plan(check.check_file(lab), BASE, rand=_fixed)
    golden = {str(p.relative_to(GOLDEN / lab.stem)): p.read_text()
              for p in (GOLDEN / lab.stem).rglob("*") if p.is_file()}
    made = {f.path: f.text for f in plan.files()}
    assert made == golden
    secret = {f.path for f in plan.files() if f.secret}
    assert secret == {p for p in made if p != "vpn-plan.json" and not p.endswith("frr/frr.conf")
                      and "/www/" not in p}  # PSK / CAK: 0600; a host's HTTP pages are public


@pytest.mark.parametrize("lab", LABS, ids=[p.stem for p in LABS])
def test_plan_per_node_facts(lab: Path) -> None:
    topo = check.check_file(lab)
    plan = compile_plan(topo, BASE)
    assert [n.name for n in plan.nodes] == [n.name for n in topo.nodes]
    for tn, pn in zip(topo.nodes, plan.nodes, strict=True):
        assert pn.netns == f"{topo.name}-{tn.name}"
        assert (pn.addresses, pn.routes, pn.rules, pn.sysctls) == (tn.addresses, tn.routes, tn.rules, tn.sysctls)
        assert (("net.ipv4.ip_forward", "1") in pn.base_sysctls) == (tn.kind != "host")
        assert set(pn.taps) <= set(pn.interfaces)
        for iface, _ in tn.addresses:  # every addressed interface exists on the node
            assert iface == "lo" or iface in pn.interfaces
        for r in tn.routes:
            for h in r.nexthops:
                assert h.dev is None or h.dev == "lo" or h.dev in pn.interfaces
    created = [ns for ns, _ in plan.netns()]
    assert len(created) == len(set(created)) == len(topo.nodes) + len(topo.segments)
    ifaces = {(n.netns, i) for n in plan.nodes for i in n.interfaces}
    made = {(v.netns, v.ifname) for v in plan.links if isinstance(v, Veth)}
    made |= {(v.peer_netns, v.peer_ifname) for v in plan.links if isinstance(v, Veth)}
    made |= {(t.netns, t.ifname) for t in plan.links if isinstance(t, Tap)}
    made |= {(p.netns, p.ifname) for s in plan.segments for p in s.ports}
    assert ifaces == made  # what the builder brings up is exactly what it creates
    # one daemon per VPN node, one per MACsec end, one agent for a VPN lab
    kinds = [d.kind for d in plan.all_daemons()]
    vpn_nodes = {n for c in topo.vpn for n in c.nodes}
    assert kinds.count(GATEWAY) + kinds.count(CHARON) == len(vpn_nodes)
    assert kinds.count(MACSEC_LINK) == 2 * sum(lk.macsec is not None for lk in topo.links)
    assert kinds.count(ROUTE_AGENT) == (1 if topo.vpn and topo.routing is None else 0)  # BGP labs: none
    assert kinds.count(FRR) == len(frr_plan.routing_nodes(topo))  # one FRR instance per routing node
    text = plan_text(plan)
    assert all(ns in text for ns in created)
    assert json.loads(json.dumps(plan_json(plan)))["netns"] == created


def test_er_vwan_plan_routes_and_tunnels() -> None:
    plan = compile_plan(topology.load(REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"), BASE)
    ce, hub = plan.node("ce"), plan.node("hub")
    assert [(t.conn, t.dev, t.table, t.peer) for t in ce.tunnels] == [
        ("ce-hubgw0", "vpn0", 100, "hubgw0"), ("ce-hubgw1", "vpn1", 100, "hubgw1")]
    assert all(t.control == "/run/ipsecemu/er-vwan/ce/control.sock" for t in ce.tunnels)
    (vpn_route,) = [r for r in hub.routes if r.dst == "10.0.1.0/24"]
    assert [h.via for h in vpn_route.nexthops] == ["10.51.230.4", "10.51.230.5"]  # ECMP over both instances
    assert [(r.src, r.table) for r in ce.rules] == [("10.0.1.0/24", 100)]
    (gw,) = ce.daemons
    assert gw.argv[-3:] == ("gateway", "run", "/run/ipsecemu/er-vwan/ce/gateway.yaml")
    (agent,) = plan.daemons
    assert agent.node is None and agent.argv[-1] == "/run/ipsecemu/er-vwan"
    assert plan.route_plan is not None and json.loads(plan.file("vpn-plan.json").text) == plan.route_plan


def test_strongswan_node_gets_charon_with_conns() -> None:
    plan = compile_plan(topology.load(REPO / "netns-labs" / "er-vwan-strongswan.yaml"), BASE)
    (ch,) = [d for d in plan.node("ce").daemons if d.kind == CHARON]  # + the CE's FRR
    assert ch.argv == () and [c.name for c in ch.conns] == ["ce-hubgw0", "ce-hubgw1"]
    assert ch.run_dir == f"/tmp/ipsecemu-charon/{plan.name}/ce"
    assert {t.dev for t in plan.node("ce").tunnels} == {"ipsec0"}
    # BGP inside the tunnels: each child narrowed to its own BGP /32s (libipsec picks SAs by policy),
    # charon's routes off, its updown routes the instance's /32 into ipsec0 while the SA lives
    (c0,), (c1,) = (c.children for c in ch.conns)
    assert c0.local_ts == ("169.254.21.2/32", "10.0.0.0/16") and c0.remote_ts == ("169.254.21.1/32", "10.51.231.0/24")
    assert c1.local_ts == ("169.254.22.2/32", "10.0.0.0/16") and c1.remote_ts == ("169.254.22.1/32", "10.51.231.0/24")
    assert "route replace 169.254.21.1/32 dev ipsec0 src 169.254.21.2" in c0.updown
    assert ch.info["install_routes"] is False and ch.info["bgp_addresses"] == ["169.254.21.2", "169.254.22.2"]


_MACSEC_NO_KEYS = """
name: mkeys
nodes:
  a: {kind: router, addresses: {eth0: 10.9.0.1/30}}
  b: {kind: router, addresses: {eth0: 10.9.0.2/30}}
links:
  - endpoints: [a:eth0, b:eth0]
    mtu: 1400
    macsec: {cipher: GcmAes128}
"""


def test_macsec_link_without_keys_shares_one_throwaway_pair(tmp_path: Path) -> None:
    plan = compile_plan(check.check_text(_MACSEC_NO_KEYS, "m.yaml"), tmp_path, rand=_fixed)
    a, b = plan.node("a").daemons + plan.node("b").daemons
    cfg_a, cfg_b = (json.loads(d.files[0].text) for d in (a, b))
    assert cfg_a == cfg_b and cfg_a["cak"] == _fixed(32).hex() and cfg_a["ckn"] == _fixed(16).hex()
    assert plan.notes and "throw-away" in plan.notes[0]
    veth, tap_a, tap_b = plan.links
    assert isinstance(veth, Veth) and (veth.ifname, veth.mtu) == ("eth0_phy", 1440)  # + SecTAG/ICV/VLAN
    assert isinstance(tap_a, Tap) and (tap_a.ifname, tap_a.mtu) == ("eth0", 1400)
    assert plan.node("a").taps == ("eth0",) and plan.node("a").interfaces == ("eth0", "eth0_phy")
    assert "--phy" in a.argv and a.argv[a.argv.index("--status") + 1] == str(tmp_path / "mkeys/a/macsec-eth0.status.json")


def test_bad_macsec_setting_fails_at_plan_time() -> None:
    topo = topology.loads(_MACSEC_NO_KEYS.replace("cipher: GcmAes128", "cipher: Rot13"), "m.yaml")
    with pytest.raises(MacsecServiceError, match=r"m\.yaml: links\[0\]\.macsec\.cipher"):
        compile_plan(topo)


def _netns() -> set[str]:
    """This run's lab netns (``plandry*``): other helpers may add and remove theirs meanwhile."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    return {n for n in out if n.startswith("plandry")}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A dir the non-root run can write (pytest's tmp_path sits under a 0700 dir of root)."""
    d = Path(tempfile.mkdtemp(prefix="ipsecemu-plan-test-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_dry_run_cli_writes_configs_and_builds_nothing(open_dir: Path) -> None:
    lab = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan-strongswan.yaml"  # with a route agent
    out, run = open_dir / "out", open_dir / "run"
    before = _netns()
    prefix = non_root_prefix(lab) if os.geteuid() == 0 else []
    env = {**os.environ, "IPSECEMU_RUN_DIR": str(run)}
    res = subprocess.run([*prefix, sys.executable, "-m", "ipsecemu", "lab", "up", str(lab), "--name", "plandry",
                          "--dry-run", "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "plandry" and doc["state_dir"] == str(run / "plandry")
    assert sorted(doc["written"]) == sorted(str(out / f["path"]) for f in doc["files"])
    gw = (out / "hubgw0" / "gateway.yaml").read_text()
    assert f"state_dir: {run}/plandry/hubgw0" in gw and "lab: plandry" in gw
    assert (out / "hubgw0" / "gateway.yaml").stat().st_mode & 0o777 == 0o600
    assert "connections {" in (out / "ce" / "swanctl.conf").read_text()
    # the route agent's plan names the sockets the lab would use, not --out
    assert json.loads((out / "vpn-plan.json").read_text())["tunnels"][0]["control"].startswith("/tmp/ipsecemu-charon/")
    assert not run.exists()  # no lab state either
    assert _netns() == before
    text = subprocess.run([*prefix, sys.executable, "-m", "ipsecemu", "lab", "up", str(lab), "--name", "plandry2",
                           "--dry-run"],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert text.returncode == 0, text.stderr
    assert "daemon charon" in text.stdout and "dry run: nothing built" in text.stdout
    assert "--out DIR writes them" in text.stdout and _netns() == before == set()


def test_out_without_dry_run_is_a_usage_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "ipsecemu", "lab", "up", str(REPO / "netns-labs" / "pair.yaml"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--dry-run" in res.stderr and not any(tmp_path.iterdir())


def test_apply_refuses_a_plan_for_another_state_dir(tmp_path: Path) -> None:
    """The generated configs name the state dir: applying elsewhere fails before anything exists."""
    plan = compile_plan(topology.load(REPO / "netns-labs" / "pair.yaml"), tmp_path / "a")
    with pytest.raises(BuildError, match="plan compiled for state dir"):
        builder.apply(plan, base=tmp_path / "b")
    assert not (tmp_path / "b").exists()
