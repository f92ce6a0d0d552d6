"""Regression tests for [fuzz] defect 5: ``pcap decrypt`` keeps every frame it read.  A pcapng
timestamp past 2106 is clamped (counted, one warning) instead of losing the rest of the capture;
frames cut by the snaplen are copied unchanged and reported once with a count."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

from fuzz_pcap_decrypt import MACSEC_SA, ROWS, seed_frames  # noqa: E402
from make_corpus import classic, pcapng  # noqa: E402

from ipsecemu.pcap.decrypt import decrypt_file  # noqa: E402
from ipsecemu.pcap.pcapfile import read_capture  # noqa: E402


def records(path: Path) -> list:
    return list(read_capture(path)[2])


def test_timestamp_after_2106_is_clamped_and_every_frame_written(tmp_path: Path) -> None:
    frames = seed_frames()[:2]
    cap, out = tmp_path / "in.pcapng", tmp_path / "out.pcap"
    cap.write_bytes(pcapng(frames, [(1 << 32) * 1_000_000 + 5, 1_700_000_000_000_000]))
    s = decrypt_file(cap, out, ROWS, [MACSEC_SA])
    got = records(out)
    assert s.frames == 2 and s.decrypted == 2 and s.written == 2 and len(got) == 2
    assert (got[0].sec, got[1].sec) == (0xFFFFFFFF, 1_700_000_000)
    assert s.clamped == 1
    assert [w for w in s.warnings if "2106" in w] == ["1 timestamp(s) after 2106 do not fit a pcap file; "
                                                     "written as 2106-02-07 06:28:15"]
    assert not any("unreadable" in w for w in s.warnings)


def test_snaplen_truncated_frames_are_counted_once_and_kept(tmp_path: Path) -> None:
    frames = seed_frames()
    cap, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    cap.write_bytes(classic(frames, snap=60))
    s = decrypt_file(cap, out, ROWS, [MACSEC_SA])
    assert s.frames == len(frames) and s.written == len(frames) == len(records(out))
    assert s.failed == 0 and s.failures == []
    assert s.truncated == len(frames)  # all are longer than 60 bytes: none can be judged
    assert [w for w in s.warnings if "snaplen" in w] == [
        "truncated by snaplen: 6 frame(s) could not be decrypted and were copied unchanged"]
    assert "truncated by snaplen: 6" in s.line()


def test_summary_equals_what_was_written(tmp_path: Path) -> None:
    frames = seed_frames()
    cap, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    cap.write_bytes(classic(frames))
    s = decrypt_file(cap, out, ROWS, [MACSEC_SA])
    assert s.decrypted + s.passed == s.written == len(records(out)) == len(frames)
