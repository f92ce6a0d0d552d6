"""ABI smoke tests: the C header and the Python contract agree on every number."""

from __future__ import annotations

import dataclasses

import pytest

from ipsecemu.base import algorithms
from ipsecemu.base import satypes as api
from ipsecemu.dataplane import backend

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
cmodule = pytest.importorskip("ipsecemu.dataplane.native.cmodule")
ffi, lib = cmodule.ffi, cmodule.lib


def test_abi_version_matches_wrapper() -> None:
    assert lib.IE_ABI_VERSION == cmodule.ABI_VERSION == lib.ie_abi_version() == 1


@pytest.mark.parametrize("verdict", list(api.Verdict), ids=lambda v: v.name)
def test_verdict_numbers_match_api(verdict: api.Verdict) -> None:
    assert getattr(lib, f"IE_{verdict.name}") == verdict.value


def test_no_extra_c_verdicts() -> None:
    c_names = {n for n in dir(lib) if n.startswith("IE_") and n[3:] in api.Verdict.__members__}
    assert len(c_names) == len(api.Verdict)


def test_counter_struct_mirrors_sacounters() -> None:
    c_fields = [name for name, _ in ffi.typeof("ie_counters").fields]
    assert c_fields == [f.name for f in dataclasses.fields(api.SaCounters)]


def test_sizes() -> None:
    assert lib.IE_MAX_REPLAY_WINDOW == api.MAX_REPLAY_WINDOW
    # headroom/tailroom cover every algorithm the C path takes
    for encr in ("aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "aes-cbc", "3des-cbc"):
        _keys, _salt, iv, block, icv = algorithms.ESP_ENCR[encr]
        assert 8 + iv <= lib.IE_ESP_HEADROOM
        worst_icv = icv or max(i for _k, i, _h in algorithms.ESP_INTEG.values())
        assert (block - 1) + 2 + worst_icv <= lib.IE_ESP_TAILROOM
    assert lib.IE_MACSEC_HEADROOM == 16 and lib.IE_MACSEC_TAILROOM == 16
    assert ffi.sizeof("ie_counters") == 8 * len(dataclasses.fields(api.SaCounters))


def test_backend_selection() -> None:
    assert backend("native") is native
    assert backend("auto") is native
    for cls in ("EspOutbound", "EspInbound", "EspInboundTable", "MacsecTx", "MacsecRx"):
        assert hasattr(native, cls)


@pytest.mark.parametrize("decap", ["ie_esp_decap", "ie_esp_decap_transport"])
def test_decap_resets_out_fields_of_a_dropped_packet(decap: str) -> None:
    # a reused descriptor with a previous packet's results; this one is too short to reach any SA
    t = ffi.gc(lib.ie_esp_table_new(), lib.ie_esp_table_free)
    buf = ffi.new("uint8_t[]", 64)
    pkts, verdicts = ffi.new("ie_pkt[]", 1), ffi.new("uint8_t[]", 1)
    pkts[0].buf, pkts[0].off, pkts[0].len, pkts[0].cap = buf, 0, 0, 64
    pkts[0].flags, pkts[0].seq, pkts[0].spi, pkts[0].next_header = lib.IE_PKT_DELIVER, 77, 0x1234, 4
    getattr(lib, decap)(t, pkts, 1, verdicts)
    assert verdicts[0] == lib.IE_TOO_SHORT
    assert (pkts[0].flags, pkts[0].seq, pkts[0].spi, pkts[0].next_header) == (0, 0, 0, 0)
