"""Shared fixtures, and markers by folder: tests/unit (no root), tests/system (root + netns),
tests/interop (root + strongSwan charon), tests/bench (pytest-benchmark)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from support.paths import VECTORS

HERE = Path(__file__).resolve().parent
_FOLDER_MARKS = {"unit": ("unit",), "system": ("root", "system"), "interop": ("root", "interop")}


@pytest.fixture
def vectors_dir() -> Path:
    return VECTORS


@pytest.fixture
def unique_name() -> str:
    """A short unique prefix for netns/link names (link names are limited to 15 chars)."""
    return "t" + uuid.uuid4().hex[:6]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs as root")
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(HERE)
        for mark in _FOLDER_MARKS.get(rel.parts[0], ()):
            item.add_marker(mark)
        if rel.parts[0] == "unit" and "root" in item.keywords:
            raise pytest.UsageError(f"{rel}: a root test belongs in tests/system or tests/interop")
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(skip)
