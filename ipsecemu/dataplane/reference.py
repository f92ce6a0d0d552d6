"""The pure-Python reference backend: re-exports the reference ESP and MACsec classes."""

from ipsecemu.esp.reference import EspInbound, EspInboundTable, EspOutbound
from ipsecemu.macsec.reference import MacsecRx, MacsecTx

__all__ = ["EspOutbound", "EspInbound", "EspInboundTable", "MacsecTx", "MacsecRx"]
