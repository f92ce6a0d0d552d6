"""IKEv2 message codec: a real capture (tcpdump test suite), RFC 7634 App. B, round trips."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.utils import rdpcap

from ipsecemu.ike.consts import Exchange, Notify, Payload
from ipsecemu.ike.crypto import SkCipher
from ipsecemu.ike.errors import ParseError
from ipsecemu.ike.message import (
    ID,
    KE,
    SA,
    SK,
    SKF,
    TS,
    Auth,
    Cert,
    Delete,
    Message,
    Nonce,
    Notification,
    Proposal,
    Transform,
    Unknown,
    decode_message,
    decode_payloads,
    decrypt,
    encode_payloads,
)
from ipsecemu.ike.ts import TrafficSelector, narrow

from support.ike_pair import pair
from support.paths import VECTORS, load_vectors


def _capture_ike() -> list[bytes]:
    out = []
    for pkt in rdpcap(str(VECTORS / "captures" / "ikev2pI2.pcap")):
        raw = bytes(pkt)
        ip = raw[4:]  # BSD loopback: 4-byte address family
        ihl = (ip[0] & 15) * 4
        out.append(ip[ihl + 8 :])
    return out


def test_capture_ike_sa_init_decodes_and_reencodes() -> None:
    meta = load_vectors("captures/ikev2pI2.json")
    init, _auth = _capture_ike()
    msg = decode_message(init)
    assert msg.exchange == Exchange.IKE_SA_INIT and msg.initiator and not msg.response
    assert msg.spi_i.hex() == meta["ike_sa"]["spi_i"]
    assert [p.ptype for p in msg.payloads][:3] == [Payload.SA, Payload.KE, Payload.NONCE]
    sa = msg.first(SA)
    assert sa.proposals and sa.proposals[0].protocol == 1
    ke = msg.first(KE)
    assert len(ke.data) > 0
    again = msg.encode()
    # byte-exact except the critical bit Openswan set on known payloads (we never set it on them)
    assert len(again) == len(init)
    diffs = [i for i in range(len(init)) if again[i] != init[i]]
    assert diffs and all(init[i] ^ again[i] == 0x80 for i in diffs)


def test_capture_ike_auth_sk_decrypts() -> None:
    meta = load_vectors("captures/ikev2pI2.json")
    _init, auth = _capture_ike()
    msg = decode_message(auth)
    assert msg.exchange == Exchange.IKE_AUTH and msg.spi_r.hex() == meta["ike_sa"]["spi_r"]
    sk = msg.payloads[-1]
    assert isinstance(sk, SK) and sk.first_inner == meta["ike_auth_sk_payload"]["first_inner_payload"]
    keys = meta["ike_sa"]["initiator_keys"]
    c = SkCipher(12, bytes.fromhex(keys["sk_ei"]), 2, bytes.fromhex(keys["sk_ai"]))
    content = c.decrypt_unauthenticated(sk.data)
    assert content.hex() == meta["ike_auth_sk_payload"]["decrypted"]
    inner = decode_payloads(sk.first_inner, SkCipher.strip_padding(content))
    idi = inner[0]
    assert isinstance(idi, ID) and idi.ptype == Payload.IDi and idi.data == b"west"
    assert any(isinstance(p, Auth) for p in inner)
    # the sidecar says the ICV does not verify with the published SK_ai: we must refuse it
    with pytest.raises(ParseError.__mro__[1]):
        decrypt(msg, auth, c)


def test_rfc7634_appendix_b_message_bytes() -> None:
    v = [x for x in load_vectors("esp_ikev2_chacha20poly1305_rfc7634.json")["vectors"] if x["id"].endswith("_4")][0]
    aad = bytes.fromhex(v["aad"])
    msg = Message(aad[:8], aad[8:16], Exchange.INFORMATIONAL, 9, False, False,
                  [Notification(Notify.SET_WINDOW_SIZE, bytes.fromhex("0000000a"))])
    c = SkCipher(28, bytes.fromhex(v["key"] + v["salt"]), None, b"")
    wire = msg.encode_encrypted(c, bytes.fromhex(v["iv"]))
    assert wire == aad + bytes.fromhex(v["iv"] + v["ciphertext"] + v["tag"])
    back = decode_message(wire)
    inner = decrypt(back, wire, c)
    assert inner[0].type == Notify.SET_WINDOW_SIZE and inner[0].data == b"\0\0\0\x0a"


def _sample() -> Message:
    ts = [TrafficSelector.from_cidr("10.1.0.0/16"), TrafficSelector.from_cidr("fd00::/64", 6, 443)]
    prop = Proposal(1, 3, b"\x01\x02\x03\x04", (Transform(1, 20, 256), Transform(5, 0)))
    return Message(b"A" * 8, b"B" * 8, Exchange.IKE_AUTH, 1, True, False, [
        ID(Payload.IDi, 2, b"left.example"), Auth(2, bytes(32)), SA([prop]),
        TS(Payload.TSi, ts), TS(Payload.TSr, ts[:1]), Notification(Notify.INITIAL_CONTACT),
        Delete(3, [b"\0\0\1\0", b"\0\0\2\0"]), Delete(1), Nonce(bytes(32)), Unknown(200, b"xyz"),
        Cert(Payload.CERT, 4, b"0\x82der"), Cert(Payload.CERTREQ, 4, bytes(20)), Unknown(Payload.CP, b"\1\0\0\0"),
        SA([Proposal(1, 1, b"", (Transform(1, 12, 128, ((15, b"\x00\x01"), (200, b"tlv"))),))]),
    ])


def test_roundtrip_all_payload_kinds() -> None:
    msg = _sample()
    wire = msg.encode()
    back = decode_message(wire)
    assert back.payloads == msg.payloads
    assert back.encode() == wire
    assert back.first(TS, Payload.TSi).selectors[1].ip_proto == 6


def test_roundtrip_encrypted() -> None:
    c = SkCipher(12, bytes(16), 12, bytes(32))
    msg = _sample()
    wire = msg.encode_encrypted(c, bytes(range(16)))
    back = decode_message(wire)
    assert decrypt(back, wire, c) == msg.payloads


def test_skf_fragment_header() -> None:
    body = struct.pack("!HH", 2, 3) + b"iv-and-ciphertext"
    (skf,) = decode_payloads(Payload.SKF, struct.pack("!BBH", 0, 0, 4 + len(body)) + body)
    assert isinstance(skf, SKF) and (skf.number, skf.total, skf.data) == (2, 3, b"iv-and-ciphertext")
    assert encode_payloads([skf]) == struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    with pytest.raises(ParseError):  # fragment 4 of 3
        decode_payloads(Payload.SKF, struct.pack("!BBHHH", 0, 0, 8, 4, 3))


def test_unknown_critical_payload_is_refused_with_notify() -> None:
    body = struct.pack("!BBH", 0, 0x80, 6) + b"ab"
    with pytest.raises(ParseError) as e:
        decode_payloads(201, body)
    assert e.value.notify == Notify.UNSUPPORTED_CRITICAL_PAYLOAD and e.value.notify_data == bytes([201])
    # the same payload without the critical bit is skipped over
    ok = decode_payloads(201, struct.pack("!BBH", 0, 0, 6) + b"ab")
    assert isinstance(ok[0], Unknown) and ok[0].data == b"ab"


@pytest.mark.parametrize("mutate", ["version", "length", "truncate", "nonce"])
def test_malformed_messages(mutate: str) -> None:
    wire = bytearray(_sample().encode())
    if mutate == "version":
        wire[17] = 0x30
        with pytest.raises(ParseError) as e:
            decode_message(bytes(wire))
        assert e.value.notify == Notify.INVALID_MAJOR_VERSION
        return
    if mutate == "length":
        wire[24:28] = (len(wire) + 1).to_bytes(4, "big")
    elif mutate == "truncate":
        wire = wire[:-3]
        wire[24:28] = len(wire).to_bytes(4, "big")
    else:
        wire = bytearray(Message(b"A" * 8, bytes(8), 34, 0, True, False, [Nonce(b"x")]).encode())
    with pytest.raises(ParseError):
        decode_message(bytes(wire))


def test_narrowing() -> None:
    prop = [TrafficSelector.from_cidr("10.0.0.0/8")]
    allowed = [TrafficSelector.from_cidr("10.1.0.0/16"), TrafficSelector.from_cidr("192.168.0.0/24")]
    got = narrow(prop, allowed)
    assert got == [TrafficSelector.from_cidr("10.1.0.0/16")]
    assert got[0].start_addr == ipaddress.ip_address("10.1.0.0") and str(got[0]) == "10.1.0.0/16"


def test_scapy_reads_our_ike_sa_init_and_we_read_scapys() -> None:
    """scapy's independent IKEv2 dissector agrees with our encoding, and its encoding parses here."""
    from scapy.contrib.ikev2 import IKEv2, IKEv2_KE, IKEv2_Nonce, IKEv2_Notify, IKEv2_Proposal, IKEv2_SA
    from scapy.contrib.ikev2 import IKEv2_Transform as ST

    a, b, net = pair("aes256-sha256-modp2048", "aes256gcm16")
    a.initiate("c", 0.0)
    net.run()
    ours = decode_message(net.log[1].data)
    theirs = IKEv2(net.log[1].data)
    assert theirs.init_SPI == ours.spi_i and theirs.resp_SPI == ours.spi_r and theirs.length == len(net.log[1].data)
    assert theirs[IKEv2_KE].group == 14 and theirs[IKEv2_KE].ke == ours.first(KE).data
    assert theirs[IKEv2_Nonce].nonce == ours.first(Nonce).data
    trans = theirs[IKEv2_Proposal].trans
    got = []
    while trans is not None and isinstance(trans, ST):
        got.append((trans.transform_type, trans.transform_id, trans.key_length))
        trans = trans.payload if isinstance(trans.payload, ST) else None
    want = [(t.type, t.id, t.keylen) for t in ours.first(SA).proposals[0].transforms]
    assert [(t, i) for t, i, _k in got] == [(t, i) for t, i, _k in want] and got[0][2] == 256
    notes = [p.type for p in theirs.iterpayloads() if isinstance(p, IKEv2_Notify)]
    assert notes == [Notify.NAT_DETECTION_SOURCE_IP, Notify.NAT_DETECTION_DESTINATION_IP,
                     Notify.IKEV2_FRAGMENTATION_SUPPORTED, Notify.CHILDLESS_IKEV2_SUPPORTED]
    # and the other way round: a message scapy builds decodes here
    built = IKEv2(init_SPI=b"\x01" * 8, resp_SPI=bytes(8), exch_type=34, flags="Initiator") / IKEv2_SA(
        prop=IKEv2_Proposal(proposal=1, proto=1, trans_nb=3, trans=ST(transform_type=1, transform_id=20, key_length=128, length=12)
                            / ST(transform_type=2, transform_id=5) / ST(transform_type=4, transform_id=19))) \
        / IKEv2_KE(group=19, ke=bytes(64)) / IKEv2_Nonce(nonce=bytes(range(32)))
    msg = decode_message(bytes(built))
    (prop,) = msg.first(SA).proposals
    assert [(t.type, t.id, t.keylen) for t in prop.transforms] == [(1, 20, 128), (2, 5, None), (4, 19, None)]
    assert msg.first(KE).group == 19 and msg.first(Nonce).data == bytes(range(32))
