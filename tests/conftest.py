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
