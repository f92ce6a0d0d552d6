"""Re-run the C-path test files (unit ones and the root loop tests) against the ASan+UBSan builds
(gcc and clang) in a subprocess and require a clean pass (minutes: not in the unit loop); a deliberate overflow shows the sanitizer is really watching."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from support.paths import REPO  # noqa: E402

C_PATH_TESTS = ["unit/native/test_abi.py", "unit/native/test_vectors.py", "unit/native/test_bad_input.py",
                "unit/native/test_vs_reference.py", "unit/native/test_transport.py", "unit/native/test_impair_element.py",
                "system/test_native_loop.py", "system/test_native_loop_policy.py", "system/test_native_transport.py",
                "system/test_native_macsec_loop.py"]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
#: compiler -> (module, IPSECEMU_NATIVE_ASAN value, the runtime to preload)
VARIANTS = {
    "gcc": ("_native_asan", "1", ["gcc", "-print-file-name=libasan.so"]),
    "clang": ("_native_asan_clang", "clang", ["clang", "-print-file-name=libclang_rt.asan-x86_64.so"]),
}
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def _module(compiler: str) -> Path:
    return REPO / "ipsecemu" / "dataplane" / f"{VARIANTS[compiler][0]}{SUFFIX}"


def _asan_env(compiler: str) -> dict[str, str]:
    module, selector, probe = VARIANTS[compiler]
    if not _module(compiler).exists():
        pytest.fail(f"{module} missing: run 'make build-asan' (needs {compiler})")
    libasan = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ)
    env.update(
        IPSECEMU_NATIVE_ASAN=selector,
        LD_PRELOAD=libasan,
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        PYTHONMALLOC="malloc",  # let ASan see Python-allocated packet buffers too
    )
    return env


pytestmark = pytest.mark.skipif(not _module("gcc").exists(), reason="run 'make build-asan' first")
compilers = pytest.mark.parametrize("compiler", sorted(VARIANTS))


@compilers
def test_sanitizer_catches_a_lying_descriptor(compiler: str) -> None:
    code = textwrap.dedent("""
        from ipsecemu.dataplane.native import EspOutbound
        from ipsecemu.dataplane.native.cmodule import ffi, lib
        from ipsecemu.base.satypes import EspSaConfig
        assert lib.__name__.endswith("MODULE.lib"), lib.__name__
        out = EspOutbound(EspSaConfig(spi=0x1000, encr="aes-gcm-16", enc_key=bytes(20)))
        buf = ffi.new("uint8_t[]", 40)
        pkt = ffi.new("ie_pkt *", {"buf": buf, "off": 24, "len": 100, "cap": 400})
        lib.ie_esp_encap(out._sa, pkt, 1, ffi.new("uint8_t[1]"))
    """).replace("MODULE", VARIANTS[compiler][0])
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_asan_env(compiler), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "ERROR: AddressSanitizer" in res.stderr and "ie_esp_encap" in res.stderr


@pytest.mark.slow
@compilers
def test_c_path_tests_pass_under_asan_and_ubsan(compiler: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--import-mode=importlib",
         *(str(REPO / "tests" / t) for t in C_PATH_TESTS)],
        cwd=REPO, env=_asan_env(compiler), capture_output=True, text=True, timeout=900,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert " passed" in res.stdout and " failed" not in res.stdout
    for mark in SANITIZER_MARKS:
        assert mark not in out, out[-4000:]
