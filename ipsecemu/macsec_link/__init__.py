"""The MACsec link daemon: one end of an 802.1AE link (MKA + the C SecY loop on a tap and an
AF_PACKET socket), its status file and its control (SIGUSR1 rekey).  Its configuration schema is
:mod:`ipsecemu.config.macsec_link`; the protocol (SecTAG, SecY reference, MKA) is :mod:`ipsecemu.macsec`."""
