"""Where the repository, its lab files and its test vectors are, and small file helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LABS = REPO / "netns-labs"
# Published vectors and real captures, copied into the repository (sources in tests/vectors/README.md).
VECTORS = REPO / "tests" / "vectors"


def load_vectors(name: str) -> dict:
    """Load one JSON vector file from tests/vectors."""
    path = VECTORS / name
    if not path.exists():
        pytest.fail(f"test vectors not found: {path}")
    return json.loads(path.read_text())


def underlay_copy(src: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of lab file ``src`` without its top-level ``vpn:`` section: the same network, no
    gateways.  Tests of the lab builder itself use it.  ``drop``: exact text blocks to remove too
    (routes that only make sense while the VPN announces them)."""
    out_dir = Path("/tmp/ipsecemu-test-underlay")
    out_dir.mkdir(mode=0o755, exist_ok=True)
    kept: list[str] = []
    skipping = False
    for line in src.read_text().splitlines(keepends=True):
        if line.startswith("vpn:"):
            skipping = True
            continue
        if skipping and line[:1] not in ("", " ", "\t", "#", "\n"):
            skipping = False
        if not skipping:
            kept.append(line)
    text = "".join(kept)
    for block in drop:
        if block not in text:
            raise ValueError(f"{src.name}: no such block to drop: {block!r}")
        text = text.replace(block, "")
    dst = out_dir / src.name
    dst.write_text(text)
    dst.chmod(0o644)
    return dst
