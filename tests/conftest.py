"""Shared fixtures, and markers by folder: tests/unit (no root), tests/system (root + netns),
tests/interop (root + strongSwan charon), tests/bench (pytest-benchmark).

Parallelism: pyproject's addopts say ``-n auto`` (pytest-xdist).  ``auto`` means parallel workers
only when every path on the command line lies under tests/unit and one of them is a folder (the fast
inner loop, ``pytest tests/unit``); anything else (``make test``, tests/system, tests/interop, one
test file) runs in one process as before, because root tests share namespaces, links and charon.
``-n N`` on the command line or PYTEST_XDIST_AUTO_NUM_WORKERS still decides explicitly."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from support.paths import VECTORS

# `make test` is reproducible: hypothesis draws the same examples on every run, so a red CI is a
# defect, not bad luck (a random draw once found a rare IKE rekey race only by chance).  New random
# examples: HYPOTHESIS_PROFILE=explore (`make test-explore`), and the atheris campaigns (`make fuzz`).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HERE = Path(__file__).resolve().parent
UNIT = HERE / "unit"
#: workers for the unit loop: the tests wait on subprocesses (tshark, compilers, the CLI) about
#: as much as they compute, so one more worker than cores still pays on a 2-core machine
UNIT_WORKERS = (os.cpu_count() or 1) + 1
_FOLDER_MARKS = {"unit": ("unit",), "system": ("root", "system"), "interop": ("root", "interop")}


@pytest.fixture
def vectors_dir() -> Path:
    return VECTORS


@pytest.fixture
def unique_name() -> str:
    """A short unique prefix for netns/link names (link names are limited to 15 chars)."""
    return "t" + uuid.uuid4().hex[:6]


def _unit_paths_only(args: list[str], invocation_dir: Path) -> bool:
    paths = [(invocation_dir / a.split("::")[0]).resolve() for a in args]
    return bool(paths) and all(p.is_relative_to(UNIT) for p in paths) and any(p.is_dir() for p in paths)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: UNIT_WORKERS for a folder under tests/unit, else 0 (no xdist, one process)."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    return UNIT_WORKERS if _unit_paths_only(config.args, config.invocation_params.dir) else 0


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
