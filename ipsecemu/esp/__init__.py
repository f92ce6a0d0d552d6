"""ESP (RFC 4303): the pure-Python reference transform (``reference``), its anti-replay window
with ESN inference (``replay``) and outer IPv4/IPv6/UDP framing (``framing``)."""
