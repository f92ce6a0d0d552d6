"""The C MACsec link loop: tap <-> SecY <-> AF_PACKET on the phy."""

from __future__ import annotations

import threading

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig, SaCounters, SecYConfig
from ipsecemu.dataplane.native.cmodule import VALIDATE, check_status, ffi, lib, to_counters
from ipsecemu.dataplane.native.macsec import MacsecRx, MacsecTx, macsec_sa_cfg


class MacsecLinkLoop:
    """The C MACsec link loop: tap <-> SecY <-> AF_PACKET on the phy, batched, no Python per frame.

    ``run()`` blocks (without the GIL) until ``stop()``; ``start()`` runs it on a thread.  While
    it runs, :meth:`set_tx`, :meth:`add_rx_sa` and :meth:`remove_rx_sa` apply MKA's SA changes
    between two batches (the C side takes a mutex), so SAK rotation loses no frames.
    """

    def __init__(self, *, tap_fd: int, phy_fd: int, secy: SecYConfig, batch: int = 64,
                 max_frame: int = 1514, poll_ms: int = 50, vlan: int | None = None,
                 qinq: tuple[int, int] | None = None, tap_vnet: bool = False) -> None:
        """``tap_vnet``: the tap was opened with IFF_VNET_HDR; the loop then turns on its TSO
        offloads, cuts TCP super-packets into ``max_frame`` frames and coalesces received TCP
        segments of one flow into super-packets (userspace GRO)."""
        if not 1 <= batch <= lib.IE_LOOP_MAX_BATCH:
            raise ConfigError(f"batch: must be 1..{lib.IE_LOOP_MAX_BATCH}, got {batch}")
        if not 60 <= max_frame <= 65535:
            raise ConfigError(f"max_frame: must be 60..65535, got {max_frame}")
        if tap_fd < 0 or phy_fd < 0:
            raise ConfigError("tap_fd/phy_fd: need open file descriptors")
        if vlan is not None and qinq is not None:
            raise ConfigError("vlan/qinq: give one of them")
        stag, ctag = qinq if qinq is not None else (0, vlan or 0)
        if not (0 <= stag <= 4094 and 0 <= ctag <= 4094) or (qinq is not None and not (stag and ctag)) \
                or vlan == 0:
            raise ConfigError(f"vlan/qinq: VIDs must be 1..4094, got {vlan if qinq is None else qinq}")
        self.secy = secy
        self._rx = MacsecRx(secy)  # its SA table is only touched through the loop from now on
        c = ffi.new("ie_mloop_cfg *")
        c.tap_fd, c.phy_fd, c.batch, c.max_frame, c.poll_ms = tap_fd, phy_fd, batch, max_frame, poll_ms
        c.validate = VALIDATE[secy.validate]
        c.stag, c.ctag = stag, ctag
        c.tap_vnet = int(tap_vnet)
        out = ffi.new("ie_mloop **")
        check_status(lib.ie_mloop_new(c, self._rx._rx, out), "MACsec link loop (is tap_vnet right for this fd?)"
               if tap_vnet else "MACsec link loop")
        self._loop = ffi.gc(out[0], lib.ie_mloop_free)
        self.tx: MacsecTx | None = None
        self._retired: list[MacsecTx] = []
        self._thread: threading.Thread | None = None
        self.result: int | None = None

    def set_tx(self, sa: MacsecSaConfig | None) -> MacsecTx | None:
        """Start transmitting with ``sa`` (None: stop); returns the new MacsecTx."""
        tx = MacsecTx(self.secy, sa) if sa is not None else None
        lib.ie_mloop_set_tx(self._loop, tx._tx if tx is not None else ffi.NULL)
        if self.tx is not None:
            self._retired = [self.tx]  # unused by C now; keep its counters readable a while
        self.tx = tx
        return tx

    def add_rx_sa(self, sa: MacsecSaConfig) -> None:
        c, _keep = macsec_sa_cfg(sa)
        check_status(lib.ie_mloop_rx_add_sa(self._loop, c), "MACsec RX SA")

    def remove_rx_sa(self, sci: bytes, an: int) -> None:
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_mloop_rx_remove_sa(self._loop, int.from_bytes(sci, "big"), an) != lib.IE_S_OK:
            raise self._rx._missing(sci, an)

    def rx_counters_for(self, sci: bytes, an: int) -> SaCounters:
        c = ffi.new("ie_counters *")
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_mloop_rx_sa_counters(self._loop, int.from_bytes(sci, "big"), an, c) != lib.IE_S_OK:
            raise self._rx._missing(sci, an)
        return to_counters(c)

    @property
    def rx_counters(self) -> SaCounters:
        """SecY-wide receive drops not tied to an SA (unknown SCI/AN, bad SecTAG...)."""
        return self._rx.counters

    def run(self) -> int:
        self.result = int(lib.ie_mloop_run(self._loop))
        return self.result

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ipsecemu-macsec-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        lib.ie_mloop_stop(self._loop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def step(self, timeout_ms: int = 0) -> int:
        return int(lib.ie_mloop_step(self._loop, timeout_ms))

    @property
    def stats(self) -> dict[str, int]:
        s = ffi.new("ie_mloop_stats *")
        lib.ie_mloop_get_stats(self._loop, s)
        return {name: getattr(s, name) for name, _ in ffi.typeof("ie_mloop_stats").fields}
