"""Shared test fixtures.  Vectors come from ../shared/vectors (beside the repository)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("IPSECEMU_VECTORS", REPO.parent / "shared" / "vectors"))


def load_vectors(name: str) -> dict:
    """Load one JSON vector file from ../shared/vectors."""
    path = VECTORS / name
    if not path.exists():
        pytest.fail(f"test vectors not found: {path} (set IPSECEMU_VECTORS)")
    return json.loads(path.read_text())


@pytest.fixture
def vectors_dir() -> Path:
    return VECTORS


@pytest.fixture
def unique_name() -> str:
    """A short unique prefix for netns/link names (link names are limited to 15 chars)."""
    return "t" + uuid.uuid4().hex[:6]


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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
