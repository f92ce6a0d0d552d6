"""IKE SA concerns, one module each (mixed into ``ipsecemu.ike.sa.IkeSa``)."""
