"""Each libFuzzer harness of native/fuzz, built with clang (-fsanitize=fuzzer,address,undefined),
run over its seed corpus and regression inputs (libFuzzer regression mode: every file once), so a
defect a campaign once found stays fixed.  Seconds; the campaigns themselves are `make fuzz-native`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.native_tools import build
from support.paths import REPO  # noqa: E402

FUZZ = REPO / "native" / "fuzz"
TARGETS = sorted(p.stem for p in FUZZ.glob("fuzz_*.c"))


def test_every_harness_has_a_corpus() -> None:
    assert TARGETS == ["fuzz_esp", "fuzz_loop", "fuzz_macsec", "fuzz_mloop", "fuzz_offload"]
    for t in TARGETS:
        assert any((FUZZ / "corpus" / t).glob("seed-*")), f"{t}: no seeds (run native/fuzz/make_corpus.py)"


@pytest.mark.parametrize("target", TARGETS)
def test_harness_passes_its_corpus(target: str, tmp_path: Path) -> None:
    try:
        binary = build.build_program(FUZZ / f"{target}.c", "fuzz")
    except build.BuildError as exc:
        pytest.fail(str(exc))
    inputs = sorted((FUZZ / "corpus" / target).iterdir())
    res = subprocess.run([str(binary), f"-artifact_prefix={tmp_path}/", *map(str, inputs)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stderr.count("Executed ") == len(inputs)
    for mark in ("ERROR: AddressSanitizer", "runtime error:", "oracle", "ERROR: libFuzzer"):
        assert mark not in res.stderr, res.stderr[-4000:]
