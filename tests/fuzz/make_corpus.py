"""Regenerate the seed corpora in ``tests/fuzz/corpus/<target>/`` with the project's own code
(deterministic: the same files every run).  ``python tests/fuzz/make_corpus.py``.

Crash/regression inputs found by fuzzing live beside the seeds as ``regress-*`` files and are
kept (this script only rewrites ``seed-*`` files).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from fuzzlib import CORPUS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def write(target: str, items: list[bytes]) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for data in dict.fromkeys(items):  # unique, in order
        (d / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
    print(f"{target}: {len(list(d.glob('seed-*')))} seeds")


def ike() -> None:
    import fuzz_ike_endpoint as fe

    from ipsecemu.ike import message as m

    msgs, chains, ep = [], [], []
    for suite in (0, 1):
        snaps = fe.snapshots(suite)
        for i, sc in enumerate(snaps):
            wire, who = sc.queue[0]
            msgs.append(wire)
            ep.append(bytes([suite, i, 0]) + wire)
            # the receiver's state right after the delivery can open the SK payload
            after = snaps[i + 1] if i + 1 < len(snaps) else None
            got = fe.inner_of(wire, after.ep("b" if who == "a" else "a")) if after is not None else None
            if got is not None:
                first, plain = got
                chains.append(bytes([first]) + plain)
                ep.append(bytes([suite | 2, i, first]) + plain)
    msgs.append(m.Message(bytes(8), bytes(8), 34, 0, True, False, []).encode())
    write("ike_message", msgs + chains)
    write("ike_endpoint", ep)


def mka() -> None:
    import fuzz_mka as fm

    items = []
    for which in (0, 1):
        pair = fm.Pair(fm.CIPHERS[which])
        for _ in range(8):
            pair.now += 0.5
            for i, p in enumerate(pair.p):
                for f in p.frames_to_send(pair.now):
                    items.append(bytes([0, which]) + f)
                    blen = ((f[20] & 0x0F) << 8) | f[21]
                    items.append(bytes([1, which]) + f[22 + blen + (-blen % 4) : -16])
                    pair.p[1 - i].receive(f, pair.now)
            for p in pair.p:
                while p.next_event() is not None:
                    pass
    write("mka", items)


def pcapng(frames: list[bytes], stamps: list[int], tsresol: int | None = None) -> bytes:
    """A minimal little-endian pcapng: SHB, one Ethernet IDB, one EPB per frame."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = (struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)) if tsresol is not None else b""
    out += block(1, struct.pack("<HHI", 1, 0, 262144) + opts)
    for f, ts in zip(frames, stamps, strict=True):
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f)
    return out


def classic(frames: list[bytes], snap: int = 262144) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snap, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1700000000 + i, 0, min(len(f), snap), len(f)) + f[:snap]
    return out


def pcap() -> None:
    import fuzz_pcap_decrypt as fp

    frames = fp.seed_frames()
    us = [1_700_000_000_000_000 + i for i in range(len(frames))]
    items = [
        classic(frames),
        classic(frames, snap=60),  # every frame cut by the snaplen
        pcapng(frames, us),
        # [fuzz] defect 5: seconds >= 2^32 (microsecond resolution) in the first record
        pcapng(frames[:2], [(1 << 32) * 1_000_000 + 5, us[1]]),
        pcapng(frames[:1], [1 << 63], tsresol=9),
    ]
    write("pcap_decrypt", items)


def config() -> None:
    from ipsecemu.config import connection as ikecfg
    from ipsecemu.config import gateway as gw
    from ipsecemu.config.connection_dump import dumps
    from ipsecemu.lab import svc_vpn, topology

    items = []
    for lab in sorted((REPO / "netns-labs").glob("*.yaml")):
        text = lab.read_text()
        items.append(b"\x00" + text.encode())
        topo = topology.loads(text, str(lab))
        for node in sorted(n.name for n in topo.nodes):
            if svc_vpn.node_conns(topo, node):
                g = yaml.safe_dump(svc_vpn.gateway_config(topo, node, Path("/run/x")), sort_keys=False)
                items.append(b"\x01" + g.encode())
                try:
                    conns = gw.loads(g, "g.yaml").connections
                except ikecfg.ConnectionConfigError:
                    continue  # e.g. several tunnels of one node share a name before lab up numbers them
                items.append(b"\x02" + dumps([c.conn for c in conns], include_secret=True).encode())
    for cipher in ("gcm-aes-128", "gcm-aes-xpn-256"):
        cak = "00112233445566778899aabbccddeeff" * (2 if cipher.endswith("256") else 1)
        link = {"cak": cak, "ckn": "01", "cipher": cipher, "replay_window": 64,
                "validate": "strict", "key_server_priority": 16, "vlan": 100}
        items.append(b"\x03" + yaml.safe_dump({"macsec": link}).encode())
    write("config_loaders", items[:40])


if __name__ == "__main__":
    ike()
    mka()
    pcap()
    config()
