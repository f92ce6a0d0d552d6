"""Re-run the C-path test files against the ASan+UBSan build in a subprocess and require a
clean pass; a deliberate overflow shows the sanitizer is really watching."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from support.paths import REPO  # noqa: E402

C_PATH_TESTS = ["unit/native/test_abi.py", "unit/native/test_vectors.py", "unit/native/test_bad_input.py",
                "unit/native/test_vs_reference.py", "system/test_native_loop.py", "system/test_native_macsec_loop.py"]
ASAN_MODULE = REPO / "ipsecemu" / "dataplane" / f"_native_asan{sysconfig.get_config_var('EXT_SUFFIX')}"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def _asan_env() -> dict[str, str]:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = dict(os.environ)
    env.update(
        IPSECEMU_NATIVE_ASAN="1",
        LD_PRELOAD=libasan,
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        PYTHONMALLOC="malloc",  # let ASan see Python-allocated packet buffers too
    )
    return env


pytestmark = pytest.mark.skipif(not ASAN_MODULE.exists(), reason="run 'make build-asan' first")


def test_sanitizer_catches_a_lying_descriptor() -> None:
    code = textwrap.dedent("""
        from ipsecemu.dataplane import native
        from ipsecemu.dataplane.api import EspSaConfig
        assert native.lib.__name__.endswith("_native_asan.lib"), native.lib.__name__
        out = native.EspOutbound(EspSaConfig(spi=0x1000, encr="aes-gcm-16", enc_key=bytes(20)))
        buf = native.ffi.new("uint8_t[]", 40)
        pkt = native.ffi.new("ie_pkt *", {"buf": buf, "off": 24, "len": 100, "cap": 400})
        native.lib.ie_esp_encap(out._sa, pkt, 1, native.ffi.new("uint8_t[1]"))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_asan_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "ERROR: AddressSanitizer" in res.stderr and "ie_esp_encap" in res.stderr


@pytest.mark.slow
def test_c_path_tests_pass_under_asan_and_ubsan() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--import-mode=importlib",
         *(str(REPO / "tests" / t) for t in C_PATH_TESTS)],
        cwd=REPO, env=_asan_env(), capture_output=True, text=True, timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert " passed" in res.stdout and " failed" not in res.stdout
    for mark in SANITIZER_MARKS:
        assert mark not in out, out[-4000:]
