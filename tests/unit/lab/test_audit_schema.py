"""The ``audit:`` section of lab files: shapes (topology validator) and references (``lab check``),
each mistake one located file:line:field error; every shipped lab declares a valid audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.cli import cli
from ipsecemu.lab import audit as lab_audit
from ipsecemu.lab.audit_schema import AuditFlow
from ipsecemu.lab.check import check_file, check_text
from ipsecemu.lab.topology import TopologyError

from support.paths import REPO  # noqa: E402

LABS = sorted((REPO / "netns-labs").glob("*.yaml"))
ER = REPO / "netns-labs" / "er-vwan.yaml"

BASE = """\
name: tt
nodes:
  a: {kind: host, addresses: {eth0: [10.0.0.1/24]}}
  b: {kind: host, addresses: {eth0: [10.0.0.2/24]}}
links:
  - endpoints: ["a:eth0", "b:eth0"]
"""


def _audit(body: str) -> str:
    return BASE + "audit:\n" + "".join(f"  {ln}\n" for ln in body.splitlines())


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_every_shipped_lab_declares_an_audit(lab: Path) -> None:
    topo = check_file(lab)
    assert topo.audit is not None and topo.audit.flows and topo.audit.untrusted
    assert lab_audit.plan(topo, topo.audit)  # every flow resolves to probes


def test_er_vwan_audit_matches_s1() -> None:
    topo = check_file(ER)
    assert topo.audit is not None
    assert set(topo.audit.untrusted) == {("ce", "msee1"), ("ce", "msee2"), ("hub", "msee1"), ("hub", "msee2")}
    expect = {(f.src, f.dst, f.proto): f.expect for f in topo.audit.flows}
    assert expect[("onprem1", "spoke1", "icmp")] == "encrypted"
    assert expect[("onprem2", "spoke1", "icmp")] == "clear"


def test_s3_declares_the_warning_as_clear() -> None:
    topo = check_file(REPO / "netns-labs" / "er-vwan-s3.yaml")
    assert topo.audit is not None
    assert {f.expect for f in topo.audit.flows if f.src == "onprem1"} == {"clear"}


def test_flow_defaults_and_ports() -> None:
    topo = check_text(_audit("""untrusted: ["a:eth0"]
flows:
  - {from: a, to: b, proto: icmp, expect: encrypted}
  - {from: a, to: 10.0.0.2, proto: tcp, ports: [80, 443], expect: clear, both_directions: false, name: web}"""))
    assert topo.audit is not None
    f0, f1 = topo.audit.flows
    assert (f0.both_directions, f0.ports, f0.label) == (True, (), "a->b icmp")
    assert (f1.both_directions, f1.ports, f1.label) == (False, (80, 443), "web")
    probes = lab_audit.plan(topo, topo.audit)
    assert [(p.src, p.dst, p.dst_ip, p.port) for p in probes] == [
        ("a", "b", "10.0.0.2", None), ("b", "a", "10.0.0.1", None),
        ("a", "b", "10.0.0.2", 80), ("a", "b", "10.0.0.2", 443)]
    assert len({p.marker for p in probes}) == len(probes)  # one random marker per probe


def test_macsec_link_is_captured_on_its_phy() -> None:
    topo = check_file(REPO / "netns-labs" / "er-direct-macsec.yaml")
    assert topo.audit is not None
    points = lab_audit.capture_points(topo, topo.audit)
    assert ("ce:msee1", "ce", "msee1_phy") in points


BAD = [
    # (audit body, needle on the error's line, message part, field)
    ("untrusted: [a:eth0]\nflows: []", "flows:", "at least one flow", "audit.flows"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: icmpp, expect: clear}", "icmpp",
     "unknown protocol 'icmpp'", "audit.flows[0].proto"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: icmp, expect: encrypted_}", "encrypted_",
     "unknown expectation", "audit.flows[0].expect"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: tcp, expect: clear}", "proto: tcp",
     "needs 'port' or 'ports'", "audit.flows[0]"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: icmp, port: 7, expect: clear}", "port: 7",
     "icmp has no ports", "audit.flows[0].port"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: udp, port: 70000, expect: clear}", "70000",
     "1..65535", "audit.flows[0].port"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: icmp, expect: clear, dport: 3}", "dport",
     "unknown field", "audit.flows[0].dport"),
    ("untrusted: [a-eth0]\nflows:\n  - {from: a, to: b, proto: icmp, expect: clear}", "a-eth0",
     "expected 'node:iface'", "audit.untrusted[0]"),
    # references, found by lab check
    ("untrusted: [a:eth9]\nflows:\n  - {from: a, to: b, proto: icmp, expect: clear}", "a:eth9",
     "no link interface 'eth9'", "audit.untrusted[0]"),
    ("untrusted: [c:eth0]\nflows:\n  - {from: a, to: b, proto: icmp, expect: clear}", "c:eth0",
     "unknown node 'c'", "audit.untrusted[0]"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: x, to: b, proto: icmp, expect: clear}", "from: x",
     "unknown node 'x'", "audit.flows[0].from"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: 10.9.9.9, proto: icmp, expect: clear}", "10.9.9.9",
     "neither a node nor an address", "audit.flows[0].to"),
    ("untrusted: [a:eth0]\nflows:\n  - {from: a, to: 10.0.0.1, proto: icmp, expect: clear}", "10.0.0.1, proto",
     "two different nodes", "audit.flows[0].to"),
]


@pytest.mark.parametrize(("body", "needle", "msg", "field"), BAD, ids=[b[2] for b in BAD])
def test_mistakes_are_located(body: str, needle: str, msg: str, field: str) -> None:
    text = _audit(body)
    with pytest.raises(TopologyError) as ei:
        check_text(text, "lab.yaml")
    err = ei.value
    line = next(i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln)
    assert (err.file, err.line, err.field) == ("lab.yaml", line, field), str(err)
    assert msg in err.message


def test_lab_check_cli_names_file_line_field(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(_audit("untrusted: [a:eth0]\nflows:\n  - {from: a, to: b, proto: icmp, expect: encryptd}"))
    res = CliRunner().invoke(cli, ["lab", "check", str(lab)])
    assert res.exit_code == 2
    assert f"{lab}:10: audit.flows[0].expect: unknown expectation 'encryptd'" in res.output


def test_flow_label_falls_back_to_its_ends() -> None:
    assert AuditFlow("a", "b", "udp", "clear", (53,)).label == "a->b udp"
