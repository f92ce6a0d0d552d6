"""The cffi C module of the native backend: loading it (plain or sanitizer build), the ABI
check, the C constants and the helpers every wrapper shares (status checks, counters, expire
events, the packet batch).  The only module importing the C extension.

``IPSECEMU_NATIVE_ASAN=1`` selects the AddressSanitizer/UBSan build (``_native_asan``), which
needs ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; ``IPSECEMU_NATIVE_ASAN=clang`` the clang
one (``_native_asan_clang``), with ``LD_PRELOAD=$(clang -print-file-name=libclang_rt.asan-x86_64.so)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import ExpireEvent, SaCounters, Verdict

# the build is chosen at import (module-level branches, not lazy imports): the sanitizer builds need
# LD_PRELOAD and exist only after make build-asan
if os.environ.get("IPSECEMU_NATIVE_ASAN") == "1":
    from ipsecemu.dataplane._native_asan import ffi, lib  # type: ignore[import-not-found]
elif os.environ.get("IPSECEMU_NATIVE_ASAN") == "clang":
    from ipsecemu.dataplane._native_asan_clang import ffi, lib  # type: ignore[import-not-found]
else:
    from ipsecemu.dataplane._native import ffi, lib  # type: ignore[import-not-found]

__all__ = [
    "ffi", "lib", "ABI_VERSION", "U64_MAX", "VALIDATE", "VERDICT", "DELIVER", "HAS_SCI", "TFC_DUMMY", "OK",
    "TOO_SHORT", "check_status", "to_counters", "add_counters", "pop_events", "u64_limit", "Batch", "tx_results",
]


#: The C API version this wrapper was written against.
ABI_VERSION = 1
if lib.ie_abi_version() != ABI_VERSION:  # a stale .so from an older checkout
    raise ImportError(
        f"ipsecemu native module ABI {lib.ie_abi_version()} != {ABI_VERSION}; run 'make build'"
    )

U64_MAX = (1 << 64) - 1
_COUNTER_FIELDS = tuple(f.name for f in dataclasses.fields(SaCounters))

VALIDATE = {"strict": lib.IE_VALIDATE_STRICT, "check": lib.IE_VALIDATE_CHECK,
             "disabled": lib.IE_VALIDATE_DISABLED}
_EV_REASON = {lib.IE_EV_BYTES: "bytes", lib.IE_EV_PACKETS: "packets", lib.IE_EV_SEQ: "seq",
              lib.IE_EV_PN: "pn"}
_STATUS = {lib.IE_S_EINVAL: "invalid configuration", lib.IE_S_ENOMEM: "out of memory",
           lib.IE_S_ECRYPTO: "libcrypto refused the key", lib.IE_S_EEXIST: "already exists",
           lib.IE_S_ENOENT: "not found"}
VERDICT = tuple(Verdict(i) for i in range(len(Verdict)))
DELIVER = lib.IE_PKT_DELIVER
HAS_SCI = lib.IE_PKT_HAS_SCI
TFC_DUMMY = lib.IE_TFC_DUMMY
OK = lib.IE_OK
TOO_SHORT = lib.IE_TOO_SHORT


def check_status(status: int, what: str) -> None:
    if status != lib.IE_S_OK:
        raise ConfigError(f"{what}: {_STATUS.get(status, f'error {status}')}")


def to_counters(c: Any) -> SaCounters:
    return SaCounters(**{name: getattr(c, name) for name in _COUNTER_FIELDS})


def add_counters(a: SaCounters, b: SaCounters) -> SaCounters:
    return SaCounters(**{n: getattr(a, n) + getattr(b, n) for n in _COUNTER_FIELDS})


def pop_events(pop: Any, handle: Any, key: int | bytes, *args: Any) -> list[ExpireEvent]:
    codes = ffi.new("uint8_t[]", 16)
    n = pop(handle, *args, codes, 16)
    return [
        ExpireEvent(key, "soft" if codes[i] & lib.IE_EV_SOFT else "hard", _EV_REASON[codes[i] & 15])
        for i in range(n)
    ]


def u64_limit(value: int, what: str) -> int:
    if value < 0:
        raise ConfigError(f"{what}: must be >= 0, got {value}")
    return min(value, U64_MAX)


class Batch:
    """n packets back to back in one buffer, each with head/tail room, plus C descriptors."""

    __slots__ = ("data", "base", "pkts", "verdicts", "n", "_ivs")

    def __init__(self, items: Sequence[bytes], head: int, tail: int, next_header: int = 0) -> None:
        n = self.n = len(items)
        # [head] item0 [tail+head] item1 ... [tail]: one join, one copy of the payloads
        self.data = bytearray(head) + bytes(tail + head).join(items) + bytearray(tail + 1)
        self.base = ffi.from_buffer("uint8_t[]", self.data)
        self.pkts = ffi.new("ie_pkt[]", max(n, 1))
        self.verdicts = ffi.new("uint8_t[]", max(n, 1))
        self._ivs: Any = None
        lens = ffi.new("uint32_t[]", [len(x) for x in items] or [0])
        lib.ie_pkts_layout(self.pkts, n, self.base, lens, head, tail, next_header)

    def set_ivs(self, ivs: Sequence[bytes | None], iv_len: int) -> None:
        self._ivs = ffi.new("uint8_t[]", b"".join(iv if iv is not None else bytes(iv_len) for iv in ivs))
        for i, iv in enumerate(ivs):
            if iv is not None:
                self.pkts[i].iv = self._ivs + i * iv_len

    def verdict_codes(self) -> list[int]:
        return ffi.unpack(self.verdicts, self.n)  # type: ignore[no-any-return]

    def outputs(self) -> list[bytes]:
        """Every packet's current [off, off+len) bytes (callers pick the delivered ones)."""
        spans = ffi.new("uint64_t[]", 2 * max(self.n, 1))
        lib.ie_pkts_spans(self.pkts, self.n, self.base, spans)
        sp = ffi.unpack(spans, 2 * self.n)
        mv = memoryview(self.data)
        return [mv[sp[k]:sp[k] + sp[k + 1]].tobytes() for k in range(0, 2 * self.n, 2)]


def tx_results(b: Batch) -> list[tuple[Verdict, bytes]]:
    codes = b.verdict_codes()
    outs = b.outputs()
    return [(VERDICT[v], outs[i] if v == OK else b"") for i, v in enumerate(codes)]
