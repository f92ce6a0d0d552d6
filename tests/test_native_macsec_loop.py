"""The C MACsec link loop without root: AF_UNIX datagram socketpairs stand in for the tap and the
phy (one frame per read/recvmmsg, as a tap and an AF_PACKET socket behave).  Frames on the "wire"
are checked against the Python reference SecY, and SA changes land while the loop runs."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from ipsecemu.dataplane.api import ConfigError, MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.macsec.reference import MacsecRx as RefRx

native = pytest.importorskip("ipsecemu.dataplane.native")

SCI_A = bytes.fromhex("020000000a010001")
SCI_B = bytes.fromhex("020000000b010001")
SAK1 = bytes(range(16))
SAK2 = bytes(range(16, 32))


def _frame(i: int, size: int = 100, src: bytes = SCI_A) -> bytes:
    body = i.to_bytes(4, "big") + bytes(size - 18)
    dst = SCI_B if src == SCI_A else SCI_A
    return dst[:6] + src[:6] + b"\x08\x00" + body


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


def _drain(sock: socket.socket, want: int, timeout: float = 3.0) -> list[bytes]:
    out: list[bytes] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(sock.recv(70000))
        except TimeoutError:
            pass
    return out


@pytest.fixture
def wires():
    """(tap_user, tap_loop, phy_loop, phy_wire) socket pairs, closed afterwards."""
    tap_user, tap_loop = _pair()
    phy_loop, phy_wire = _pair()
    for s in (tap_loop, phy_loop, phy_wire):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield tap_user, tap_loop, phy_loop, phy_wire
    for s in (tap_user, tap_loop, phy_loop, phy_wire):
        s.close()


@pytest.mark.parametrize("cipher", ["gcm-aes-128", "gcm-aes-xpn-256"])
@pytest.mark.parametrize("include_sci", [True, False])
def test_protects_what_the_reference_validates_and_back(wires, cipher: str, include_sci: bool) -> None:
    tap_user, tap_loop, phy_loop, phy_wire = wires
    xpn = "xpn" in cipher
    key = SAK1 * (2 if "256" in cipher else 1)
    extra = {"ssci": 1, "salt": bytes(range(12))} if xpn else {}
    secy = SecYConfig(include_sci=include_sci, end_station=not include_sci)
    sa_a = MacsecSaConfig(cipher, key, SCI_A, 0, next_pn=7, **extra)
    loop = native.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, batch=8)
    # nothing leaves before MKA installed a Tx SA
    tap_user.send(_frame(0))
    loop.step(200)
    assert loop.stats["no_tx_sa"] == 1 and loop.stats["phy_tx"] == 0
    loop.set_tx(sa_a)
    frames = [_frame(i) for i in range(20)]
    for f in frames:
        tap_user.send(f)
    while loop.step(50) > 0:
        pass
    wire = _drain(phy_wire, 20)
    assert len(wire) == 20
    ref = RefRx(secy)
    ref.add_sa(sa_a)
    got = [ref.validate(w) for w in wire]
    assert [r.verdict for r in got] == [Verdict.OK] * 20
    assert [r.frame for r in got] == frames
    assert [r.pn for r in got] == list(range(7, 27))
    # the other way: the reference protects, the loop validates and writes to the tap
    from ipsecemu.macsec.reference import MacsecTx as RefTx

    sa_b = MacsecSaConfig(cipher, key, SCI_B, 1, next_pn=1, **({"ssci": 2, "salt": bytes(12)} if xpn else {}))
    loop.add_rx_sa(sa_b)
    ref_tx = RefTx(secy, sa_b)
    frames = [_frame(i, src=SCI_B) for i in range(6)]  # without SCI, the source MAC names the SC
    for f in frames[:5]:
        phy_wire.send(ref_tx.protect(f)[1])
    phy_wire.send(bytes(60))  # unprotected, strict: dropped
    phy_wire.send(bytes(12) + b"\x88\x8e" + bytes(50))  # EAPOL: left to MKA
    tampered = bytearray(ref_tx.protect(frames[5])[1])
    tampered[-1] ^= 1
    phy_wire.send(bytes(tampered))
    while loop.step(50) > 0:
        pass
    assert _drain(tap_user, 5) == frames[:5]
    st = loop.stats
    assert (st["validated"], st["unprotected_drop"], st["eapol"], st["validate_drop"]) == (5, 1, 1, 1)
    assert loop.rx_counters_for(SCI_B, 1).bad_icv == 1
    assert loop.tx is not None and loop.tx.counters.packets == 20
    loop.remove_rx_sa(SCI_B, 1)
    with pytest.raises(ConfigError):
        loop.remove_rx_sa(SCI_B, 1)


def test_sa_changes_while_running_lose_no_frames(wires) -> None:
    """Two loops back to back on their own threads; the Tx SA is switched (new AN) repeatedly
    while frames flow, after the new Rx SA was installed, as MKA does."""
    tap_a_user, tap_a, phy_a, phy_b = wires
    tap_b_user, tap_b = _pair()
    try:
        for s in (tap_b, tap_b_user, tap_a_user):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        secy = SecYConfig()
        la = native.MacsecLinkLoop(tap_fd=tap_a.fileno(), phy_fd=phy_a.fileno(), secy=secy, batch=32, poll_ms=5)
        lb = native.MacsecLinkLoop(tap_fd=tap_b.fileno(), phy_fd=phy_b.fileno(), secy=secy, batch=32, poll_ms=5)
        first = MacsecSaConfig("gcm-aes-128", SAK1, SCI_A, 0)
        lb.add_rx_sa(first)
        la.set_tx(first)
        la.start()
        lb.start()
        try:
            # AF_UNIX datagram queues hold only a few frames (max_dgram_qlen), unlike a tap: a
            # reader thread keeps up and the sender pauses a little between bursts
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.extend(_drain(tap_b_user, 1000, timeout=10)))
            reader.start()
            sent = 0
            for rot in range(1, 21):
                for _ in range(50):
                    tap_a_user.send(_frame(sent))
                    sent += 1
                    if sent % 4 == 0:
                        time.sleep(0.0005)
                new = MacsecSaConfig("gcm-aes-128", os.urandom(16), SCI_A, rot % 4)
                lb.add_rx_sa(new)  # make before break
                la.set_tx(new)
            reader.join()
        finally:
            la.stop()
            lb.stop()
        assert (la.stats["send_errors"], lb.stats["tap_tx_errors"]) == (0, 0)
        assert len(got) == sent
        assert [int.from_bytes(g[14:18], "big") for g in got] == list(range(sent))
        assert lb.stats["validate_drop"] == 0 and la.stats["send_errors"] == 0
    finally:
        tap_b.close()
        tap_b_user.close()


def test_bad_configuration_is_a_clear_error(wires) -> None:
    _, tap_loop, phy_loop, _ = wires
    with pytest.raises(ConfigError, match="batch"):
        native.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=SecYConfig(), batch=0)
    with pytest.raises(ConfigError, match="max_frame"):
        native.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=SecYConfig(), max_frame=10)
    with pytest.raises(ConfigError, match="tap_fd"):
        native.MacsecLinkLoop(tap_fd=-1, phy_fd=phy_loop.fileno(), secy=SecYConfig())
    with pytest.raises(ConfigError):
        native.MacsecLinkLoop(tap_fd=999_999, phy_fd=phy_loop.fileno(), secy=SecYConfig())


@pytest.mark.parametrize(("vlan", "qinq", "tags"), [
    (100, None, bytes.fromhex("81000064")),
    (None, (10, 4094), bytes.fromhex("88a8000a81000ffe")),
])
def test_vlan_tags_go_inside_the_protected_frame_and_are_checked(wires, vlan, qinq, tags: bytes) -> None:
    from ipsecemu.macsec.reference import MacsecTx as RefTx

    tap_user, tap_loop, phy_loop, phy_wire = wires
    secy = SecYConfig()
    sa = MacsecSaConfig("gcm-aes-128", SAK1, SCI_A, 2)
    loop = native.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, vlan=vlan,
                                 qinq=qinq, max_frame=1514)
    loop.set_tx(sa)
    full = _frame(1, 1514)  # a full-size untagged frame still fits once tagged
    tap_user.send(full)
    loop.step(200)
    ref = RefRx(secy)
    ref.add_sa(sa)
    got = ref.validate(_drain(phy_wire, 1)[0])
    assert got.verdict is Verdict.OK and got.frame == full[:12] + tags + full[12:]
    # receive: our tags are stripped; other VIDs and untagged frames are dropped
    sb = MacsecSaConfig("gcm-aes-128", SAK2, SCI_B, 0)
    loop.add_rx_sa(sb)
    tx = RefTx(secy, sb)
    frame = _frame(2, src=SCI_B)
    wrong = tags[:-1] + bytes([tags[-1] ^ 1])
    for f in (frame[:12] + tags + frame[12:], frame[:12] + wrong + frame[12:], frame):
        phy_wire.send(tx.protect(f)[1])
    while loop.step(50) > 0:
        pass
    assert _drain(tap_user, 1) == [frame]
    assert loop.stats["vlan_drop"] == 2 and loop.stats["validated"] == 1
    with pytest.raises(ConfigError, match="vlan"):
        native.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, vlan=4095)
