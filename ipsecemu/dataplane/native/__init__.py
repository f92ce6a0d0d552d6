"""The native (C, cffi) data-plane backend.

This package is what ``ipsecemu.dataplane.backend("native")`` returns: the same five classes,
signatures and per-packet semantics as the reference backend (see :mod:`ipsecemu.dataplane` and
:mod:`ipsecemu.dataplane.api`).  Single-packet methods call the batch C functions with n=1;
``*_batch`` methods hand the whole list to C in one call.

Modules: ``cmodule`` (loading the C extension, ABI check, shared helpers), ``esp`` (ESP SAs and
the inbound SAD), ``macsec`` (SecY TX/RX), ``gateway_loop`` (tun <-> ESP-in-UDP loop),
``macsec_loop`` (tap <-> SecY <-> phy loop).  Importing this package raises ImportError when the
C module is not built (``make build``).
"""

from ipsecemu.dataplane.native.esp import (
    EspInbound,
    EspInboundTable,
    EspOutbound,
    bench_esp,
    native_esp_supported,
)
from ipsecemu.dataplane.native.macsec import MacsecRx, MacsecTx, bench_macsec

# the backend surface (as ipsecemu.dataplane.reference): backend("native") hands out this module.
# Besides the five classes, users of a backend module look up (gateway.datapath, bench.dataplane):
# native_esp_supported (which SAs the C loop can drive) and the C timing hooks bench_esp/bench_macsec.
__all__ = ["EspOutbound", "EspInbound", "EspInboundTable", "MacsecTx", "MacsecRx", "native_esp_supported",
           "bench_esp", "bench_macsec"]
