"""ipsecemu: a userspace IPsec/IKEv2 + MACsec data-plane emulator."""

__version__ = "0.1.0"
