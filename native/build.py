"""Build the C fast path as a cffi extension (out-of-line API mode).

    python native/build.py          -> ipsecemu/dataplane/_native.*.so
    python native/build.py --asan   -> ipsecemu/dataplane/_native_asan.*.so (ASan + UBSan, gcc) and
                                       ipsecemu/dataplane/_native_asan_clang.*.so (the same, clang)

The two sanitizer builds see different things (clang's UBSan reports pointer arithmetic on NULL
that gcc's does not); UBSan stops at the first report (-fno-sanitize-recover=all).

Our C sources are compiled by gcc directly with -Wall -Wextra -Werror (the cffi-generated glue is
compiled separately without -Werror, since its code is not ours).  Quiet on success; skips the
rebuild when nothing changed; explains what is missing when gcc or libssl-dev is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

NATIVE = Path(__file__).resolve().parent
REPO = NATIVE.parent
HEADER = NATIVE / "include" / "ipsecemu.h"
SOURCES = sorted((NATIVE / "src").glob("*.c"))
INTERNAL = sorted((NATIVE / "src").glob("*.h"))
DEST = REPO / "ipsecemu" / "dataplane"

RELEASE_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-std=c11", "-D_GNU_SOURCE"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
ASAN_FLAGS = [
    "-O1", "-g", *SANITIZE, "-fno-omit-frame-pointer",
    "-Wall", "-Wextra", "-Werror", "-fPIC", "-std=c11", "-D_GNU_SOURCE",
]
#: module name -> compiler for the sanitizer variants
ASAN_VARIANTS = {"_native_asan": "gcc", "_native_asan_clang": "clang"}


class BuildError(Exception):
    pass


def cdef_text() -> str:
    """The declarations between the CDEF markers of the public header: all cffi ever sees."""
    m = re.search(r"/\* CDEF BEGIN \*/(.*)/\* CDEF END \*/", HEADER.read_text(), re.S)
    if not m:
        raise BuildError(f"{HEADER}: CDEF BEGIN/END markers not found")
    return m.group(1)


def check_toolchain(default: str = "gcc") -> list[str]:
    cc = shlex.split(os.environ.get("CC", default) if default == "gcc" else default) or [default]
    if shutil.which(cc[0]) is None:
        raise BuildError(f"C compiler {cc[0]!r} not found: install it (apt-get install {cc[0]}) or set CC")
    probe = subprocess.run(
        [*cc, "-x", "c", "-fsyntax-only", "-"], input="#include <openssl/evp.h>\n",
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        raise BuildError("OpenSSL headers not found (<openssl/evp.h>): install libssl-dev")
    return cc


def fingerprint(flags: list[str], cc: list[str]) -> str:
    h = hashlib.sha256()
    for p in [HEADER, Path(__file__).resolve(), *SOURCES, *INTERNAL]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(" ".join(flags + cc + [sys.version, sysconfig.get_config_var("EXT_SUFFIX") or ""]).encode())
    return h.hexdigest()


def build(asan: bool, module: str | None = None) -> Path | None:
    """Build one variant; returns the .so path, or None when it was already up to date."""
    module = module or ("_native_asan" if asan else "_native")
    compiler = ASAN_VARIANTS.get(module, "gcc")
    clang = compiler == "clang"
    flags = ASAN_FLAGS if asan else RELEASE_FLAGS
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = DEST / f"{module}{suffix}"
    outdir = NATIVE / "out" / module
    stamp = outdir / "stamp"
    fp = fingerprint(flags, shlex.split(os.environ.get("CC", "gcc")) if not clang else ["clang"])
    if target.exists() and stamp.exists() and stamp.read_text() == fp:
        return None  # up to date: no compiler needed
    cc = check_toolchain(compiler)
    outdir.mkdir(parents=True, exist_ok=True)

    objects = []
    for src in SOURCES:
        obj = outdir / (src.stem + ".o")
        cmd = [*cc, *flags, "-I", str(NATIVE / "include"), "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise BuildError(f"compiling {src.name} failed:\n{res.stdout}{res.stderr}")
        objects.append(str(obj))

    import cffi  # imported late so a missing toolchain is reported first

    ffi = cffi.FFI()
    ffi.cdef(cdef_text())
    glue_flags = ["-O1", "-g", *SANITIZE, "-fno-omit-frame-pointer"] if asan else ["-O2"]
    # clang: the .so links clang's shared sanitizer runtime (preloaded by whoever runs it)
    link_flags = [*SANITIZE, "-shared-libsan"] if asan and clang else SANITIZE if asan else []
    ffi.set_source(
        f"ipsecemu.dataplane.{module}",
        '#include "ipsecemu.h"\n',
        include_dirs=[str(NATIVE / "include")],
        extra_objects=objects,
        libraries=["crypto"],
        extra_compile_args=glue_flags,
        extra_link_args=link_flags,
    )
    log = io.StringIO()
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        try:
            # distutils prints every command; keep the output for the error message only
            with redirect_stdout(log), redirect_stderr(log), _compiler_env(cc if clang else None):
                built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        except Exception as exc:  # cffi raises VerificationError/CompileError/LinkError
            raise BuildError(f"building the cffi module failed: {exc}\n{log.getvalue()}") from exc
        tmp_target = target.with_name(target.name + ".tmp")
        shutil.copyfile(built, tmp_target)
        os.replace(tmp_target, target)  # atomic: a running import never sees half a file
    stamp.write_text(fp)
    return target


#: C programs built from native/ (tests, fuzz harnesses): variant -> (compiler, flags)
PROGRAM_VARIANTS = {
    "plain": ("gcc", ["-O2", "-g"]),
    "gcc-asan": ("gcc", ["-O1", "-g", *SANITIZE, "-fno-omit-frame-pointer"]),
    "clang-asan": ("clang", ["-O1", "-g", *SANITIZE, "-fno-omit-frame-pointer"]),
    "fuzz": ("clang", ["-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                       "-fno-omit-frame-pointer"]),
}
PROGRAM_WARNINGS = ["-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE"]


def build_program(main: Path, variant: str) -> Path:
    """Build native/out/programs/<variant>/<stem> from main plus every native/src/*.c (linked
    against libcrypto); skips the compiler when nothing changed.  Returns the executable."""
    compiler, flags = PROGRAM_VARIANTS[variant]
    outdir = NATIVE / "out" / "programs" / variant
    target = outdir / main.stem
    stamp = outdir / f"{main.stem}.stamp"
    cmd = [compiler, *flags, *PROGRAM_WARNINGS, "-I", str(NATIVE / "include"), "-I", str(NATIVE / "src"),
           str(main), *map(str, SOURCES), "-lcrypto", "-lpthread", "-o"]
    h = hashlib.sha256(" ".join([*cmd, str(target)]).encode())
    for p in [main, HEADER, *SOURCES, *INTERNAL]:
        h.update(p.read_bytes())
    if target.exists() and stamp.exists() and stamp.read_text() == h.hexdigest():
        return target
    check_toolchain(compiler)
    outdir.mkdir(parents=True, exist_ok=True)
    # Link to a private name, then rename: a test worker running the previous binary, or a second
    # build racing this one, never sees a half-written executable.
    tmp_target = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    res = subprocess.run([*cmd, str(tmp_target)], capture_output=True, text=True)
    if res.returncode != 0:
        tmp_target.unlink(missing_ok=True)
        raise BuildError(f"building {main.name} ({variant}) failed:\n{res.stdout}{res.stderr}")
    os.replace(tmp_target, target)
    stamp.write_text(h.hexdigest())
    return target


@contextlib.contextmanager
def _compiler_env(cc: list[str] | None) -> Iterator[None]:
    """Compile and link the cffi glue with cc too (one sanitizer runtime per module)."""
    if cc is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("CC", "LDSHARED")}
    os.environ["CC"] = " ".join(cc)
    os.environ["LDSHARED"] = " ".join([*cc, "-shared"])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asan", action="store_true",
                    help="build the ASan+UBSan variants (_native_asan with gcc, _native_asan_clang with clang)")
    ap.add_argument("--program", metavar="MAIN.c", type=Path,
                    help="build a C program (test driver, fuzz harness) with the sources instead")
    ap.add_argument("--variant", choices=sorted(PROGRAM_VARIANTS), default="plain", help="with --program")
    ap.add_argument("-v", "--verbose", action="store_true", help="say what was built")
    args = ap.parse_args(argv)
    if args.program:
        try:
            print(build_program(args.program.resolve(), args.variant))
        except BuildError as exc:
            print(f"native/build.py: {exc}", file=sys.stderr)
            return 1
        return 0
    modules = list(ASAN_VARIANTS) if args.asan else ["_native"]
    for module in modules:
        try:
            built = build(args.asan, module)
        except BuildError as exc:
            print(f"native/build.py: {module}: {exc}", file=sys.stderr)
            return 1
        if args.verbose:
            print(f"built {built}" if built else "up to date" if not args.asan else f"{module}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
