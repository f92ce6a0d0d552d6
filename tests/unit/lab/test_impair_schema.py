"""The ``impair:`` link setting: values, units, per-direction form, file:line:field errors for
every bad input (a fuzz-ish sweep included: no input may raise anything but a located error),
and its plan (helper netns, two veth pairs, one element daemon)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ipsecemu.lab.impair_schema import ImpairDir, ImpairValueError, apply_values, format_dir, parse_value
from ipsecemu.lab.plan import compile_plan
from ipsecemu.lab.plan.model import IMPAIR, Veth
from ipsecemu.lab.topology import TopologyError, loads

LAB = """name: imp
nodes:
  a: {{kind: host, addresses: {{e0: 10.0.0.1/24}}}}
  b: {{kind: host, addresses: {{e0: 10.0.0.2/24}}}}
links:
  - endpoints: [a:e0, b:e0]
    impair: {impair}
"""


@pytest.mark.parametrize(("key", "raw", "want"), [
    ("delay", "20ms", 20_000_000), ("delay", "1.5s", 1_500_000_000), ("delay", "250us", 250_000),
    ("delay", 0, 0), ("jitter", "5 ms", 5_000_000), ("loss", "1%", 10_000), ("loss", "0.1%", 1_000),
    ("loss", 0.5, 500_000), ("corrupt", "100%", 1_000_000), ("rate", "650mbit", 650_000_000),
    ("rate", "1gbit", 10**9), ("rate", "1.25Gbit", 1_250_000_000), ("rate", "100kbit", 100_000),
    ("rate", 10**6, 10**6), ("limit", 1000, 1000),
])
def test_values(key: str, raw: object, want: int) -> None:
    assert parse_value(key, raw) == want


@pytest.mark.parametrize(("key", "raw"), [
    ("delay", "20"), ("delay", 20), ("delay", "5s"), ("delay", "-1ms"), ("loss", "101%"), ("loss", 2),
    ("loss", "x%"), ("rate", "fast"), ("rate", "1kbit"), ("rate", "500gbit"), ("rate", -5), ("limit", -1),
    ("limit", "many"), ("delay", True), ("loss", None), ("bogus", "1"),
])
def test_bad_values(key: str, raw: object) -> None:
    with pytest.raises(ImpairValueError):
        parse_value(key, raw)


def test_symmetric_and_per_direction() -> None:
    t = loads(LAB.format(impair="{delay: 20ms, loss: 1%, rate: 650mbit}"))
    imp = t.links[0].impair
    assert imp is not None and imp.a_to_b == imp.b_to_a == ImpairDir(delay_ns=20_000_000, loss_ppm=10_000,
                                                                      rate_bps=650_000_000)
    t = loads(LAB.format(impair="{a_to_b: {delay: 10ms}, b_to_a: {jitter: 1ms}}"))
    imp = t.links[0].impair
    assert imp is not None and imp.a_to_b.delay_ns == 10_000_000 and imp.b_to_a.jitter_ns == 1_000_000
    t = loads(LAB.format(impair="{}"))
    assert t.links[0].impair is not None and not t.links[0].impair.a_to_b.active
    assert format_dir(ImpairDir(delay_ns=20_000_000, loss_ppm=5_000, rate_bps=650_000_000)) == \
        "delay 20ms loss 0.5% rate 650mbit"


@pytest.mark.parametrize(("impair", "where"), [
    ("{delay: 20}", "links[0].impair.delay: must be a time"),
    ("{a_to_b: {loss: 3}}", "links[0].impair.a_to_b.loss: must be between 0% and 100%"),
    ("{a_to_b: {}, delay: 1ms}", "links[0].impair.delay: unknown field"),
    ("{delay: 3s, jitter: 2s}", "links[0].impair.jitter: delay + jitter"),
    ("[1, 2]", "links[0].impair: must be a mapping"),
    ("{foo: 1}", "links[0].impair.foo: unknown field"),
])
def test_errors_name_file_line_field(impair: str, where: str) -> None:
    with pytest.raises(TopologyError) as e:
        loads(LAB.format(impair=impair), "lab.yaml")
    assert str(e.value).startswith(f"lab.yaml:7: {where}"), str(e.value)


def test_fuzzish_inputs_only_ever_give_located_errors() -> None:
    rnd = random.Random(13)
    atoms = ["20ms", "1%", "650mbit", "0", "-1", "1e9", "ms", "%", "x", "1.5.5s", "100%%", "[]", "{}", "null",
             "true", "'5 ms'", "999999999999999999999mbit", "0.0001%", "4s", "4.1s", ""]
    keys = ["delay", "jitter", "loss", "reorder", "duplicate", "corrupt", "rate", "limit", "a_to_b", "b_to_a", "x"]
    for _ in range(500):
        body = ", ".join(f"{rnd.choice(keys)}: {rnd.choice(atoms)}" for _ in range(rnd.randint(0, 4)))
        text = LAB.format(impair="{" + body + "}")
        try:
            loads(text, "f.yaml")
        except TopologyError as exc:
            assert str(exc).startswith("f.yaml:"), str(exc)
            assert "\n" not in str(exc)


def test_apply_values_keeps_what_is_not_given() -> None:
    d = apply_values(ImpairDir(delay_ns=5, loss_ppm=7), {"rate": "1mbit"})
    assert d == ImpairDir(delay_ns=5, loss_ppm=7, rate_bps=10**6)
    with pytest.raises(ImpairValueError, match="^delay: must be a time"):
        apply_values(d, {"delay": "soon"})


def test_plan_has_a_helper_netns_two_veths_and_one_daemon(tmp_path: Path) -> None:
    plan = compile_plan(loads(LAB.format(impair="{delay: 1ms}")), base=tmp_path)
    assert ("imp--imp-0", "impair") in plan.netns()
    veths = [lk for lk in plan.links if isinstance(lk, Veth)]
    assert [(v.netns, v.ifname, v.peer_netns, v.peer_ifname) for v in veths] == [
        ("imp-a", "e0", "imp--imp-0", "side_a"), ("imp--imp-0", "side_b", "imp-b", "e0")]
    (d,) = plan.daemons_of(IMPAIR)
    assert d.node is None and "ipsecemu.lab.impair_daemon" in d.argv and d.info["a_to_b"]["delay_ns"] == 1_000_000
    assert plan.impairs[0].ifaces == ("side_a", "side_b")
