"""bench lab and bench macsec over rounds (no root): each cell is the round with the median ratio to
its baseline in the same round, with min-max; the JSON report carries the rounds; the CLI knows --rounds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ipsecemu.bench import macsec as macsec_bench
from ipsecemu.bench.lab import Cell, format_table, report, summarise
from ipsecemu.cli import cli

CIPHERS = ("aes128gcm16",)


def one_round(plain: float, swan: float, ours: float, err: str = "") -> list[Cell]:
    return [Cell("plain-nogso", "", 1, gbps=plain), Cell("strongswan", "aes128gcm16", 1, gbps=swan),
            Cell("ipsecemu", "aes128gcm16", 1, gbps=ours, error=err)]


def test_median_round_per_cell_against_the_same_rounds_baseline() -> None:
    # round 2 has a slow box: both paths slower, the ratio about the same
    rounds = [one_round(2.0, 0.5, 1.6), one_round(1.0, 0.25, 0.7), one_round(2.2, 0.5, 1.5)]
    plain, swan, ours = summarise(rounds, CIPHERS)
    assert ours.ratios == [3.2, 2.8, 3.0] and (ours.ratio_min, ours.ratio_max) == (2.8, 3.2)
    assert ours.ratio == 3.0 and ours.gbps == 1.5 and ours.baseline_gbps == 0.5  # round 3, one real round
    assert ours.rounds == 3 and ours.gbps_rounds == [1.6, 0.7, 1.5]
    assert swan.ratio == 1.0 and swan.gbps == 0.5 and swan.ratios == [1.0, 1.0, 1.0]  # median Gbit/s round
    assert plain.ratio == 4.0 and plain.ratios == [4.0, 4.0, 4.4]
    assert [c.path for c in (plain, swan, ours)] == ["plain-nogso", "strongswan", "ipsecemu"]


def test_even_rounds_and_a_failed_round() -> None:
    rounds = [one_round(1, 1.0, 2.0), one_round(1, 1.0, 4.0), one_round(1, 1.0, 0.0, "iperf3: boom"),
              one_round(1, 1.0, 3.0)]
    ours = summarise(rounds, CIPHERS)[2]
    assert ours.ratios == [2.0, 4.0, 3.0] and ours.rounds == 4
    assert ours.gbps == 3.0  # lower median of 2, 3, 4
    assert ours.error == "round 3/4: iperf3: boom" and ours.ratio is None  # a failed round fails the cell


def test_single_round_is_the_old_single_shot() -> None:
    plain, swan, ours = summarise([one_round(1.0, 0.4, 1.3)], CIPHERS)
    assert (ours.ratio, ours.ratio_min, ours.ratio_max, ours.rounds) == (3.25, 3.25, 3.25, 1)
    assert ours.error == ""


def test_report_json_fields_and_table() -> None:
    cells = summarise([one_round(2.0, 0.5, 1.6), one_round(1.0, 0.25, 0.7), one_round(2.2, 0.5, 1.5)], CIPHERS)
    rep = json.loads(json.dumps(report(cells, 2.0, 3)))
    assert rep["rounds"] == 3
    for row in rep["rows"]:  # the old fields and the rounds fields
        assert {"path", "cipher", "streams", "gbps", "ratio", "error", "cpu", "host_cpu", "rounds", "ratio_min",
                "ratio_max", "ratios", "gbps_rounds", "baseline_gbps"} <= set(row)
    assert rep["target"]["ratios"] == {"aes128gcm16/1": 3.0} and rep["target"]["met"] is True
    table = format_table(cells)
    assert table.splitlines()[0].split()[-5:] == ["strongSwan", "min-max", "CPU%/Gbps", "box", "idle"]
    assert "2.80-3.20" in table


@pytest.mark.parametrize("cmd", ["lab", "ike", "macsec"])
def test_ratio_benches_take_rounds(cmd: str) -> None:
    res = CliRunner().invoke(cli, ["bench", cmd, "--help"])
    assert res.exit_code == 0 and "--rounds" in res.output
    bad = CliRunner().invoke(cli, ["bench", cmd, "--rounds", "0"])
    assert bad.exit_code == 2 and "--rounds" in bad.output


def test_macsec_rows_over_rounds() -> None:
    def rnd(plain: float, macsec: float, swan: float) -> list[dict]:
        return [{"path": "plain veth (GSO)", "cipher": "", "mbps": plain, "retransmits": 0},
                {"path": "ipsecemu MACsec link", "cipher": "GcmAes128", "offload": True, "mbps": macsec,
                 "retransmits": 0, "drops": 0},
                {"path": macsec_bench.SWAN, "cipher": "aes128gcm16", "mbps": swan, "retransmits": 0}]

    plain, link, swan = macsec_bench.summarise([rnd(9000, 1500, 500), rnd(8000, 900, 450), rnd(9500, 2000, 500)])
    assert link["ratios"] == [3.0, 2.0, 4.0] and (link["ratio_min"], link["ratio_max"]) == (2.0, 4.0)
    assert link["vs_strongswan"] == 3.0 and link["mbps"] == 1500 and link["vs_plain"] == round(1500 / 9000, 3)
    assert link["rounds"] == 3 and link["mbps_rounds"] == [1500, 900, 2000]
    assert swan["vs_strongswan"] == 1.0 and swan["mbps"] == 500
    assert plain["vs_plain"] == 1.0
