"""User-facing configuration: the validation kit (:mod:`.kit`), the connection-style field readers
(:mod:`.fields`), IKE/ESP connections (:mod:`.connection`), Azure ipsec-policy names
(:mod:`.azure_policy`) and device-configuration import (:mod:`.azure`), gateway files (:mod:`.gateway`)
and MACsec link settings (:mod:`.macsec_link`).  The IKE core's own settings stay in
:mod:`ipsecemu.ike.settings`; :func:`.connection_ike.to_ike_sa_config` is the bridge
(:mod:`.connection_dump` writes connections back as YAML).  The whole-lab check
(``lab check``) is :mod:`ipsecemu.lab.check`, above both."""
