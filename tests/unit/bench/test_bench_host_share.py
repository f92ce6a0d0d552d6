"""The whole-box CPU shares of bench lab add up to 100 % (steal time included: on a VM the
hypervisor's share was missing and the shares summed to 94.5 %)."""

from __future__ import annotations

from ipsecemu.bench.lab.worker import host_share


def test_host_share_counts_every_stat_field() -> None:
    before = [0] * 8
    #        user nice system idle iowait irq softirq steal
    after = [10, 5, 20, 30, 5, 2, 8, 20]
    share = host_share(before, after)
    assert share == {"user": 15.0, "system": 20.0, "softirq": 10.0, "idle": 35.0, "steal": 20.0}
    assert abs(sum(share.values()) - 100) < 0.5
