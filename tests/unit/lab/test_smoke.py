"""``lab up --smoke``: the reason printed per flow comes from the audit's evidence, per link."""

from __future__ import annotations

from dataclasses import replace

from ipsecemu.lab.audit import plan
from ipsecemu.lab.audit_classify import LinkEvidence, verdict
from ipsecemu.lab.check import check_file
from ipsecemu.lab.smoke import macsec_labels, ping_reason, reason

from support.paths import REPO  # noqa: E402

V6 = REPO / "tests" / "system" / "labs" / "pair-v6.yaml"  # a test-only lab: ESP over an IPv6 underlay


def _probe(lab: str, evidence: dict[str, LinkEvidence], delivered: bool, i: int = 0):  # type: ignore[no-untyped-def]
    topo = check_file(REPO / "netns-labs" / lab if (REPO / "netns-labs" / lab).exists() else V6)
    assert topo.audit is not None
    p = plan(topo, topo.audit)[i]
    p.delivered, p.evidence = delivered, evidence
    p.observed = verdict(delivered, evidence.values())
    return topo, p


def test_s3_clear_is_a_declared_outcome() -> None:
    topo, p = _probe("er-vwan-s3.yaml", {"ce:msee1": LinkEvidence(clear=3)}, True, 1)
    assert p.flow.expect == "clear" and p.ok
    assert reason(p, macsec_labels(topo)) == "the marker crossed untrusted links in clear: ce:msee1 3 frames"


def test_macsec_protected_is_encrypted_not_clear() -> None:
    topo, p = _probe("er-direct-macsec.yaml", {"ce:msee1": LinkEvidence(encrypted=3), "ce:msee2": LinkEvidence()},
                     True, 4)
    assert p.observed == "encrypted" and p.ok
    r = reason(p, macsec_labels(topo))
    assert "removing MACsec/ESP" in r and "ce:msee1 (MACsec port) 3 frames" in r and "clear" not in r


def test_esp_over_ipv6_lab_reasons() -> None:
    topo, p = _probe("pair-v6.yaml", {"gwa:wan": LinkEvidence(encrypted=2)}, True, 2)
    assert p.dst_ip == "10.2.0.10" and p.port == 5201 and p.observed == "encrypted"
    assert reason(p, macsec_labels(topo)).endswith("removing ESP with the lab's keys: gwa:wan 2 frames")
    topo, p = _probe("pair-v6.yaml", {"gwa:wan": LinkEvidence()}, False, 3)
    p.detail = "3 packets transmitted, 0 received"
    assert p.dst_ip == "10.1.0.10" and p.observed == "blocked"
    assert reason(p, set()) == "not delivered (3 packets transmitted, 0 received) and never seen on an untrusted link"


def test_ping_reasons() -> None:
    ok = "2 packets transmitted, 2 received, 0% packet loss, time 201ms\nrtt min/avg/max/mdev = 0.05/0.07/0.09/0.02 ms"
    assert ping_reason(0, ok, "") == "2/2 replies, avg 0.07 ms"
    lost = "2 packets transmitted, 0 received, 100% packet loss, time 1001ms"
    assert ping_reason(1, lost, "") == "0/2 replies (no route back, or dropped on the way)"
    assert ping_reason(2, "", "ping: connect: Network is unreachable") == "ping: connect: Network is unreachable"


def test_reverse_probe_keeps_the_address_family() -> None:
    topo = check_file(REPO / "netns-labs" / "er-vwan.yaml")
    v6 = replace(topo, nodes=tuple(replace(n, addresses=(*n.addresses, ("eth0", "fd02::10/64")))
                                   if n.name == "spoke1" else
                                   replace(n, addresses=(*n.addresses, ("eth0", "fd01::10/64")))
                                   if n.name == "onprem1" else n for n in topo.nodes))
    assert topo.audit is not None
    flow = replace(topo.audit.flows[0], dst="fd02::10")
    probes = plan(v6, replace(topo.audit, flows=(flow,)))
    assert [(p.src, p.dst_ip) for p in probes] == [("onprem1", "fd02::10"), ("spoke1", "fd01::10")]
