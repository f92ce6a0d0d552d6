"""Shared plumbing of the atheris harnesses in this folder (not a test module).

Every harness is a module with ``TestOneInput(data: bytes)`` -- it raises on a finding and
returns quietly otherwise -- and ``main()``, which hands it to atheris (libFuzzer options on
the command line: ``python tests/fuzz/fuzz_ike_message.py CORPUS_DIR -runs=300000``).  Without
atheris the same functions run over the stored corpora (``tests/unit/fuzz/test_corpus_regress.py``).
"""

from __future__ import annotations

import gc
import inspect
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DICTS = HERE / "dicts"
PROJECT_PKG = str(HERE.parents[1] / "ipsecemu")


class SeededRng:
    """Deterministic randomness for the cores' injectable ``rng`` (same seed, same keys/nonces).
    An object, not a closure: ``copy.deepcopy`` of a state must copy its position too."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self._r.randbytes(n)

    def __deepcopy__(self, _memo: dict) -> SeededRng:
        new = SeededRng(0)
        new._r.setstate(self._r.getstate())  # the state tuple is immutable: no element-wise copy
        return new


def seeded(seed: int) -> Callable[[int], bytes]:
    return SeededRng(seed)


#: an input that costs more CPU than this is a finding (issue 9: "any input taking > 1 s")
SLOW_CPU_S = 1.0


def cpu_bounded(test_one_input: Callable[[bytes], None], limit_s: float) -> Callable[[bytes], None]:
    """``test_one_input`` that also fails when one input costs more than ``limit_s`` of CPU.

    Why CPU and not libFuzzer's ``-timeout``: that one is wall clock, and a ``nice`` harness on a
    busy 2-core box is starved for seconds between two of its own instructions (the 2026-12-03
    campaign stopped on such a "timeout" whose input replays in 1 ms).  ``make fuzz-python`` keeps a
    wall-clock ``-timeout`` as the backstop for real hangs."""

    def run(data: bytes) -> None:
        t0 = time.process_time()
        test_one_input(data)
        spent = time.process_time() - t0
        if spent > limit_s:
            raise AssertionError(f"slow input: {spent:.2f} s of CPU (limit {limit_s} s)")

    return run


def _project_code(obj: object) -> bool:
    """A function or code object of ipsecemu or of this folder (the harness itself)."""
    code = getattr(obj, "__code__", None)
    filename = getattr(code, "co_filename", "")
    return PROJECT_PKG in filename or str(HERE) in filename


def atheris_main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with coverage of the project's loaded code.

    Why not ``atheris.instrument_all()``: it also instruments yaml, cryptography's Python
    layer, copy, ipaddress, ... -- about 3x slower per input for edges the project does not own.
    ``FUZZ_INSTRUMENT=all`` restores it (the numbers before the 2026-12-03 campaign used it).
    Either way only code loaded by now is instrumented at once; ipsecemu modules imported later
    are instrumented by the import hook below."""
    import atheris  # lazy: atheris is an optional test extra; the regress tests run without it

    if os.environ.get("FUZZ_INSTRUMENT") == "all":
        atheris.instrument_all()
    else:
        for obj in gc.get_objects():
            if inspect.isfunction(obj) and _project_code(obj):
                atheris.instrument_func(obj)
    # libFuzzer's -merge=1 (and -fork) re-runs argv[0] through sh: make that "python harness.py",
    # so the harness needs neither an exec bit nor a shebang that would miss the venv
    argv = [shlex.join([sys.executable, os.path.abspath(sys.argv[0])]), *sys.argv[1:]]
    atheris.Setup(argv, cpu_bounded(test_one_input, SLOW_CPU_S))
    # modules a harness imports lazily (the config loaders' adapters) are instrumented on import
    with atheris.instrument_imports(include=["ipsecemu"]):
        atheris.Fuzz()
