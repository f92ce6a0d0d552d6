"""User-facing configuration: the validation kit (:mod:`.kit`), IKE/ESP connections
(:mod:`.connection`), the Azure device-configuration import (:mod:`.azure`), MACsec link settings
(:mod:`.macsec_link`) and the whole-lab check (:mod:`.lab_check`).  The IKE core's own settings stay in
:mod:`ipsecemu.ike.settings`; :func:`.connection.to_ike_sa_config` is the bridge."""
