"""Shared plumbing of the atheris harnesses in this folder (not a test module).

Every harness is a module with ``TestOneInput(data: bytes)`` -- it raises on a finding and
returns quietly otherwise -- and ``main()``, which hands it to atheris (libFuzzer options on
the command line: ``python tests/fuzz/fuzz_ike_message.py CORPUS_DIR -runs=300000``).  Without
atheris the same functions run over the stored corpora (``tests/unit/fuzz/test_corpus_regress.py``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DICTS = HERE / "dicts"


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


def atheris_main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with coverage of every module loaded so far."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
