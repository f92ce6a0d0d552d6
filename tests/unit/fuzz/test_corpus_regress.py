"""Every atheris harness of tests/fuzz over every file of its corpus (no atheris needed): the
seeds and every input a campaign ever crashed on must keep passing."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
TARGETS = {  # corpus folder -> harness module
    "ike_message": "fuzz_ike_message",
    "ike_endpoint": "fuzz_ike_endpoint",
    "mka": "fuzz_mka",
    "pcap_decrypt": "fuzz_pcap_decrypt",
    "config_loaders": "fuzz_config_loaders",
}


def harness(module: str):  # noqa: ANN201 - a module
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(module)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_cleanly(target: str) -> None:
    mod = harness(TARGETS[target])
    files = sorted((FUZZ / "corpus" / target).iterdir())
    assert files, f"empty corpus for {target}"
    for f in files:
        t0 = time.monotonic()
        mod.TestOneInput(f.read_bytes())  # raises on a finding
        assert time.monotonic() - t0 < 1.0 * 5, f"{f.name}: slow input (a finding above 1 s under fuzzing)"


def test_every_corpus_has_a_harness() -> None:
    assert {p.name for p in (FUZZ / "corpus").iterdir()} == set(TARGETS)
