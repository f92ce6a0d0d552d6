"""native/build.py (a script, not a package module) loaded once for the tests that compile the C test
programs under native/tests and native/fuzz, and the one way they build one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from support.paths import REPO


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("native_build", REPO / "native" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _load_build()

# the build variants every tool is tested under
VARIANTS = ["plain", "gcc-asan", "clang-asan"]


def program(source: Path, variant: str) -> Path:
    """Compile ``source`` for ``variant`` (cached by build.py); a build error fails the test with its message."""
    try:
        return Path(build.build_program(source, variant))
    except build.BuildError as exc:
        pytest.fail(str(exc))
