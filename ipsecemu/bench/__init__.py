"""Benchmarks: ``dataplane`` (transforms vs ``openssl speed``), ``lab`` (iperf3 through VPN gateways),
``macsec`` (the MACsec link), ``ike`` (setup rate); every ratio is measured in alternating rounds by the
rule in :mod:`ipsecemu.bench.rounds`."""
