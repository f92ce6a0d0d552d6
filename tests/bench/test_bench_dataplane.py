"""pytest-benchmark view of the data plane (``make bench`` enables it; in a normal test run the
``--benchmark-disable`` default makes each benchmark execute once, as a quick check)."""

from __future__ import annotations

import pytest

from ipsecemu.base.satypes import SecYConfig, Verdict
from ipsecemu.bench.dataplane import SUITES
from ipsecemu.dataplane import BackendUnavailable, backend


def _backend():  # noqa: ANN202 - a module
    try:
        return backend("native")
    except BackendUnavailable:
        return backend("reference")


BE = _backend()
BATCH = 32
SIZE = 1400


@pytest.mark.parametrize("suite", [s for s in SUITES if s.esp], ids=lambda s: s.name)
def test_esp_encap_batch(benchmark, suite) -> None:
    out = BE.EspOutbound(suite.esp)
    payloads = [b"\x45" + bytes(SIZE - 1)] * BATCH
    results = benchmark(out.encap_batch, payloads, 4)
    assert [v for v, _ in results] == [Verdict.OK] * BATCH


@pytest.mark.parametrize("suite", [s for s in SUITES if s.esp], ids=lambda s: s.name)
def test_esp_decap_batch(benchmark, suite) -> None:
    packets = [p for _, p in BE.EspOutbound(suite.esp).encap_batch([bytes(SIZE)] * BATCH, 4)]
    inbound = BE.EspInbound(suite.esp)  # replay window 0: the same batch decaps every round
    results = benchmark(inbound.decap_batch, packets)
    assert all(r.verdict == Verdict.OK and len(r.payload) == SIZE for r in results)


@pytest.mark.parametrize("suite", [s for s in SUITES if s.macsec], ids=lambda s: s.name)
def test_macsec_protect_validate_batch(benchmark, suite) -> None:
    frame = b"\x02" * 6 + suite.macsec.sci[:6] + b"\x08\x00" + bytes(SIZE - 14)
    tx = BE.MacsecTx(SecYConfig(), suite.macsec)
    rx = BE.MacsecRx(SecYConfig(replay_protect=False))
    rx.add_sa(suite.macsec)

    def round_trip() -> list:
        return rx.validate_batch([f for _, f in tx.protect_batch([frame] * BATCH)])

    results = benchmark(round_trip)
    assert all(r.verdict == Verdict.OK and r.frame == frame for r in results)
