"""Extended Packet Numbering (IEEE 802.1AEbw-2013): 64-bit PNs, only the low 32 bits on the wire."""

from __future__ import annotations

PN32_MAX = (1 << 32) - 1
PN64_MAX = (1 << 64) - 1


def recover_pn(wire_pn: int, lowest_pn: int) -> int | None:
    """The full 64-bit PN of a received frame, from its 32-bit wire PN and the SA's lowest
    acceptable PN: the high half is that of ``lowest_pn`` if the wire PN is not below its
    low half, else one more (the sender has crossed a 2^32 boundary).  None when that
    would leave the 64-bit PN space."""
    high = lowest_pn >> 32
    if wire_pn < (lowest_pn & PN32_MAX):
        high += 1
    if high > PN32_MAX:
        return None
    return (high << 32) | wire_pn


def xpn_iv(ssci: int, salt: bytes, pn: int) -> bytes:
    """GCM-AES-XPN IV: (SSCI xor salt[0:4]) | (PN64 xor salt[4:12])."""
    return ((ssci << 64 | pn) ^ int.from_bytes(salt, "big")).to_bytes(12, "big")
