"""native/build.py: quiet when up to date, clear message when the toolchain is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from support.paths import REPO  # noqa: E402

BUILD = REPO / "native" / "build.py"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_second_build_is_silent_noop() -> None:
    first = run()
    assert first.returncode == 0, first.stderr
    again = run()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert run("-v").stdout.strip() == "up to date"


def test_missing_compiler_is_explained() -> None:
    # a different CC invalidates the stamp, so the toolchain check runs and must explain itself
    res = run(env={"CC": "ipsecemu-no-such-cc"})
    assert res.returncode == 1
    assert "C compiler 'ipsecemu-no-such-cc' not found" in res.stderr and "Traceback" not in res.stderr


def test_missing_openssl_headers_are_explained() -> None:
    res = run(env={"CC": "gcc -nostdinc"})
    assert res.returncode == 1
    assert "install libssl-dev" in res.stderr and "Traceback" not in res.stderr
