"""The lab state's bookkeeping for issue 11 (no root, a private run dir): the source recorded absolute,
the builder's PID and the "builder died" verdict, the default lab, the logs a failed `lab up` keeps."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ipsecemu.lab.state import (
    LabState,
    builder_died,
    default_lab,
    failed_dir,
    keep_failed_logs,
    list_labs,
    set_default_lab,
)


def test_source_is_recorded_absolute_and_builder_alive(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    st = LabState.create("lab1", "labs/x.yaml", {"a": "host"}, base=tmp_path / "run")
    assert st.data["source"] == str(tmp_path / "labs" / "x.yaml")
    assert st.data["builder"]["pid"] == os.getpid()
    assert not builder_died(st.data)  # we are alive and building


def test_a_dead_builder_is_detected_only_while_building(tmp_path: Path) -> None:
    st = LabState.create("lab1", "x.yaml", {}, base=tmp_path)
    p = subprocess.Popen(["true"])
    p.wait()
    st.data["builder"] = {"pid": p.pid, "start_time": None}
    assert builder_died(st.data)
    st.data["status"] = "up"  # a finished lab does not need its builder any more
    assert not builder_died(st.data)
    assert not builder_died({"status": "building"})  # older state files: no builder recorded, no verdict


def test_default_lab_only_while_it_is_up(tmp_path: Path) -> None:
    assert default_lab(tmp_path) is None
    LabState.create("mine", "x.yaml", {}, base=tmp_path)
    LabState.create("other", "x.yaml", {}, base=tmp_path)
    set_default_lab("mine", tmp_path)
    assert default_lab(tmp_path) == "mine"
    LabState("mine", tmp_path).remove()
    assert default_lab(tmp_path) is None  # never falls over to someone else's lab
    assert list_labs(tmp_path) == ["other"]


def test_failed_logs_kept_without_keys_or_sockets(tmp_path: Path) -> None:
    st = LabState.create("lab1", "x.yaml", {"ce": "ipsecemu"}, base=tmp_path)
    (st.dir / "ce").mkdir()
    (st.dir / "ce" / "gateway.log").write_text("ce: tunnel device vpn0 already exists\n")
    (st.dir / "ce" / "gateway.yaml").write_text("psk: s3cret\n")
    (st.dir / "ce" / "control.sock").write_text("")
    (st.dir / "keys" / "esp_sa").write_text("key material\n")
    (st.dir / "logs" / "ce-gateway.log").write_text("ipsecemu: failed\n")
    outside = tmp_path / "charon.log"
    outside.write_text("charon says\n")
    st.add_process(os.getpid(), "daemon", "ce", ["charon"], str(outside))
    kept = keep_failed_logs(st)
    assert kept is not None and kept.parent == failed_dir(tmp_path) and kept.name.startswith("lab1-")
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == ["ce/gateway.log", "ce/gateway.yaml", "external/ce/charon.log", "logs/ce-gateway.log",
                     "state.json"]
    assert kept.stat().st_mode & 0o777 == 0o700  # gateway.yaml holds the PSK
    assert list_labs(tmp_path) == ["lab1"]  # .failed is not a lab
    assert keep_failed_logs(st) != kept  # a second failure in the same second gets its own dir


def test_nothing_kept_before_any_daemon_logged(tmp_path: Path) -> None:
    st = LabState.create("lab1", "x.yaml", {}, base=tmp_path)
    assert keep_failed_logs(st) is None
    assert not failed_dir(tmp_path).exists() or not any(failed_dir(tmp_path).iterdir())
