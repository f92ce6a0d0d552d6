"""The bridge from a user's connection (:class:`ipsecemu.config.connection.ConnectionConfig`) to
the IKE core's settings (:class:`ipsecemu.ike.settings.IkeSaConfig`): certificate files are read
here, so the core never opens a file."""

from __future__ import annotations

from typing import Any

from ipsecemu.config.connection import ConnectionConfig
from ipsecemu.config.fields import ConnectionConfigError
from ipsecemu.ike.certs import CertAuth
from ipsecemu.ike.consts import IdType
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.settings import Identity, IkeSaConfig

__all__ = ["to_ike_sa_config"]


def to_ike_sa_config(conn: ConnectionConfig) -> IkeSaConfig:
    """The IKE core's view (:class:`ipsecemu.ike.settings.IkeSaConfig`) of a connection.

    With ``auth: {method: cert}`` the certificate, key and CA files are read here (a clear
    :class:`ConnectionConfigError` names the file if one is missing or unreadable); without a
    ``local_id`` we use the certificate's subject DN, as strongSwan does.
    """
    certs = None
    if conn.auth.method == "cert":
        if not conn.auth.ca:
            raise ConnectionConfigError(f"{conn.name}: auth: method cert needs ca (the CA that issued the peer's "
                                        "certificate)")
        try:
            certs = CertAuth.load(conn.auth.cert or "", conn.auth.key or "", conn.auth.ca)
        except LocalProtocolError as exc:
            raise ConnectionConfigError(f"{conn.name}: auth: {exc}") from None
    if conn.local_id is None and certs is not None:
        core_local = Identity(IdType.DER_ASN1_DN, certs.dn)
    else:
        local_id = conn.effective_local_id()
        if local_id is None:
            raise ConnectionConfigError(f"{conn.name}: local_id: needed when local_address is %any")
        core_local = local_id
    child, ike = conn.child_lifetime, conn.ike_lifetime
    kw: dict[str, Any] = {"certs": certs} if certs is not None else {}
    try:
        return IkeSaConfig(
        name=conn.name,
        psk=conn.auth.secret,
        local_id=core_local,
        remote_id=conn.remote_id,
        ike_proposals=list(conn.ike_proposals),
        esp_proposals=list(conn.esp_proposals),
        local_ts=list(conn.local_ts),
        remote_ts=list(conn.remote_ts),
        remote_addr=(str(conn.remote_address), conn.nat_t.ike_port) if conn.remote_address is not None else None,
        mode=conn.mode,
        ike_lifetime_s=float(conn.ike_lifetime.seconds),
        child_lifetime_s=float(child.seconds),
        rekey_fraction=(child.seconds - child.rekey_margin) / child.seconds,
        # the IKE SA's own margin and both jitters (a margin that scaled down to 0 for a lifetime of a
        # few seconds keeps the core's defaults: rekey at the child's fraction, jitter 10 %)
        ike_rekey_fraction=(ike.seconds - ike.rekey_margin) / ike.seconds if ike.rekey_margin else None,
        child_jitter_s=float(child.jitter) if child.rekey_margin else None,
        ike_jitter_s=float(ike.jitter) if ike.rekey_margin else None,
        dpd_delay_s=float(conn.dpd.interval),
        replay_window=conn.replay_window,
        force_encap=conn.nat_t.force_encap,
        fragmentation=conn.fragmentation,
        fragment_size=conn.fragment_size,
        childless=conn.childless,
        keepalive_s=float(conn.nat_t.keepalive),
        dpd_timeout_s=float(conn.dpd.timeout),
        child_kilobytes=child.kilobytes,
        child_packets=child.packets,
            **kw,
        )
    except LocalProtocolError as exc:  # e.g. local_id not in the certificate
        raise ConnectionConfigError(f"{conn.name}: {exc}") from None
