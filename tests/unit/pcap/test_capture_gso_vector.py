"""A real capture of the IPv6-underlay pair lab (tests/vectors/captures/ipsecemu-pair-v6-gso.*): two
of its frames are UDP GSO/GRO trains of two ESP datagrams each.  Stop 16's CI saw the audit call the
TCP flow there 'not observed' because the splitter only knew IPv4.  Checked here against the flows'
real markers, and against Wireshark: tshark fails those two frames' ICV as captured and verifies
every ICV once ``split_file`` has cut them (what ``lab capture`` writes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ipsecemu.lab.audit_classify import ENCRYPTED, scan_capture, verdict
from ipsecemu.pcap.coalesced import split_file
from ipsecemu.pcap.uat import read_esp_sa

from support.paths import REPO

VEC = REPO / "tests" / "vectors" / "captures"
PCAP, KEYS, META = (VEC / f"ipsecemu-pair-v6-gso{ext}" for ext in (".pcap", ".esp_sa", ".json"))


def test_every_flow_of_the_real_capture_is_proven_encrypted() -> None:
    meta = json.loads(META.read_text())
    markers = [bytes.fromhex(m["marker"]) for m in meta["markers"]]
    st = scan_capture(PCAP, markers, read_esp_sa(KEYS))
    assert (st.frames, st.failed, st.coalesced, st.no_key) == (34, 0, 2, 0)
    for m, info in zip(markers, meta["markers"], strict=True):
        assert st.hits[m].clear == 0, info
        assert verdict(True, [st.hits[m]]) == ENCRYPTED, info  # the TCP echoes were 'not observed' before


def _tshark_icv(pcap: Path, tmp: Path) -> list[tuple[int, str, str]]:
    conf = tmp / "ws"
    (conf / "wireshark").mkdir(parents=True, exist_ok=True)
    shutil.copy(KEYS, conf / "wireshark" / "esp_sa")
    out = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                          "-o", "esp.enable_authentication_check:TRUE", "-T", "fields", "-e", "frame.number",
                          "-e", "esp.icv_good", "-e", "esp.icv_bad"],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "XDG_CONFIG_HOME": str(conf)}).stdout
    return [(int(n), good, bad) for n, good, bad in (ln.split("\t") for ln in out.splitlines())]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (make deps)")
def test_split_capture_is_wire_format_esp_for_wireshark(tmp_path: Path) -> None:
    raw = _tshark_icv(PCAP, tmp_path)
    assert [n for n, _g, bad in raw if bad == "1"] == [22, 31]  # the trains, as captured
    work = tmp_path / "c.pcap"
    shutil.copy(PCAP, work)
    counts = split_file(work)
    assert (counts.trains, counts.datagrams, counts.written) == (2, 4, 36)
    split = _tshark_icv(work, tmp_path)
    assert len(split) == 36
    assert all(good == "1" and bad == "0" for _n, good, bad in split), split  # every ESP ICV verified
    before = work.read_bytes()
    assert split_file(work).trains == 0  # nothing left to cut: the file is left as it is
    assert work.read_bytes() == before


def test_split_file_keeps_a_capture_without_trains_byte_for_byte(tmp_path: Path) -> None:
    src = VEC / "espudp1.pcap"
    work = tmp_path / "c.pcap"
    shutil.copy(src, work)
    assert split_file(work).trains == 0
    assert work.read_bytes() == src.read_bytes()
