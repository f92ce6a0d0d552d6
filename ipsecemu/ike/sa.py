"""The IKEv2 SA object: a sans-I/O state machine (RFC 7296).  No sockets, no clock, no randomness.

API (stable; the asyncio transport in ``ipsecemu.io`` codes against this)
--------------------------------------------------------------------------

Addresses are ``(host: str, port: int)`` tuples.  ``now`` is a float in seconds (any monotonic
clock the caller likes).  Randomness (SPIs, nonces, DH private keys, IVs) comes from
``rng: Callable[[int], bytes]`` (default ``os.urandom``) so published vectors reproduce.

``IkeEndpoint(configs, local, *, rng=os.urandom, cookie_threshold=10)`` — what a transport drives.
    Owns every IKE SA of one local address; routes datagrams by SPI; answers IKE_SA_INIT requests
    for the configs it holds (responder role); sends COOKIE challenges when more than
    ``cookie_threshold`` SAs are half-open.
    * ``receive_datagram(data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None``
      ``data`` is the IKE message *without* the 4-byte non-ESP marker (the transport strips it on
      port 4500 and drops 1-byte 0xFF keepalives).  Bad input never raises; it is counted in
      ``counters`` and, where RFC 7296 says so, answered.
    * ``datagrams_to_send(now) -> list[tuple[bytes, Addr, Addr]]``: ``(data, remote, local)``.
      ``local`` tells the transport which socket to use; the port is 4500 once NAT-T floated
      (prepend the non-ESP marker then).
    * ``get_timer() -> float | None``: the earliest time ``handle_timer`` must be called.
    * ``handle_timer(now) -> None``: retransmissions, DPD, lifetimes.
    * ``next_event() -> Event | None``: events from ``ipsecemu.ike.events`` in order.
    * ``initiate(name, now, remote: Addr | None = None) -> IkeSa``: start an IKE SA for config
      ``name`` (IKE_SA_INIT + IKE_AUTH with the first Child SA).
    * ``sas``: dict ``spi_i -> IkeSa``; ``counters``: dict of drop reasons.

``IkeSa`` — one IKE SA (either role); usable alone in tests with the same five driving calls
    (``receive_datagram``, ``datagrams_to_send``, ``get_timer``, ``handle_timer``, ``next_event``)
    plus the API calls ``initiate(now)``, ``rekey_child(inbound_spi, now)``, ``rekey_ike(now)``,
    ``delete_child(inbound_spi, now)``, ``delete(now)``, ``dpd(now)``.  Properties: ``state``
    (``ipsecemu.ike.states.IkeState``), ``spi_i``, ``spi_r``, ``initiator`` (bool, original role),
    ``children`` (dict inbound SPI -> ``ChildSa``), ``nat_local`` / ``nat_remote`` (we / the peer
    are behind a NAT; either one True means "float to 4500"), ``keys`` (``IkeKeys``, SK_*).

Events (``ipsecemu.ike.events``), all frozen dataclasses carrying ``ike_spi_i``/``ike_spi_r``:
    ``IkeSaEstablished``, ``IkeSaRekeyed`` (old and new SPIs), ``IkeSaDeleted`` (``reason``:
    "local", "remote", "dpd", "timeout", "auth_failed", "no_proposal", ...),
    ``ChildSaEstablished`` / ``ChildSaRekeyed`` (new SA installed *before* the old is deleted:
    make-before-break) carrying ``ChildSaKeys``: ``inbound`` and ``outbound``
    ``ipsecemu.dataplane.api.EspSaConfig`` objects (``encr`` like "aes-gcm-16", ``enc_key``
    including the 4-byte salt, ``integ`` like "hmac-sha256-128" or None), ``local_ts``/``remote_ts``
    (lists of ``TrafficSelector``), ``mode``, ``lifetime_s``; ``ChildSaDeleted`` (SPIs).
    ``NatDetected`` (``local_behind_nat``, ``remote_behind_nat``).

Errors (``ipsecemu.ike.errors``): ``LocalProtocolError`` for caller misuse (raised from API calls),
``RemoteProtocolError`` for a misbehaving peer (never escapes the driving calls; carries the
notify to answer with).
"""
