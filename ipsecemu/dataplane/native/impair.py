"""The C link impairment element (native/src/impair.c): two AF_PACKET sockets, one pipe per
direction (delay/jitter timing wheel, loss, reorder, duplicate, corrupt, token-bucket rate),
batched, no Python per frame."""

from __future__ import annotations

import threading
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.dataplane.native.cmodule import check_status, ffi, lib

__all__ = ["DIR_FIELDS", "STAT_FIELDS", "ImpairElement"]

DIR_FIELDS = tuple(name for name, _ in ffi.typeof("ie_imp_dir_cfg").fields)
STAT_FIELDS = tuple(name for name, _ in ffi.typeof("ie_imp_stats").fields)
MAX_DELAY_NS = int(lib.IE_IMP_MAX_DELAY_NS)


def _dir(direction: int) -> int:
    if direction not in (0, 1):
        raise ConfigError(f"direction: 0 (a_to_b) or 1 (b_to_a), got {direction!r}")
    return direction


class ImpairElement:
    """Forwards frames read on ``fd_a`` to ``fd_b`` (direction 0) and back (direction 1).

    ``run()`` blocks (without the GIL) until ``stop()``; ``start()`` runs it on a thread.  While it
    runs, :meth:`set` changes a direction between two batches and :meth:`stats` reads its counters
    (the C side takes a mutex).  ``seed`` 0: the RNG is seeded from getrandom.
    """

    def __init__(self, fd_a: int, fd_b: int, *, max_frame: int = 1522, pool: int = 4096, seed: int = 0) -> None:
        if not 14 <= max_frame <= 65535:
            raise ConfigError(f"max_frame: must be 14..65535, got {max_frame}")
        if not 1 <= pool <= 1 << 20:
            raise ConfigError(f"pool: must be 1..{1 << 20}, got {pool}")
        if fd_a < 0 or fd_b < 0 or fd_a == fd_b:
            raise ConfigError("fd_a/fd_b: need two open sockets")
        out = ffi.new("ie_imp **")
        check_status(lib.ie_imp_new(fd_a, fd_b, max_frame, pool, seed & ((1 << 64) - 1), out), "impairment element")
        self._imp = ffi.gc(out[0], lib.ie_imp_free)
        self._thread: threading.Thread | None = None
        self.result: int | None = None

    def set(self, direction: int, **values: int) -> None:
        """Replace direction ``direction``'s settings (fields of ie_imp_dir_cfg; missing ones are 0)."""
        unknown = set(values) - set(DIR_FIELDS)
        if unknown:
            raise ConfigError(f"impairment: unknown setting(s) {', '.join(sorted(unknown))}")
        c = ffi.new("ie_imp_dir_cfg *")
        for k, v in values.items():
            if not isinstance(v, int) or (v < 0 and k != "rate_overhead"):
                raise ConfigError(f"impairment {k}: must be an integer >= 0, got {v!r}")
            setattr(c, k, v)
        if lib.ie_imp_set(self._imp, _dir(direction), c) != lib.IE_S_OK:
            raise ConfigError(f"impairment: out of range (delay + jitter <= {MAX_DELAY_NS // 10**9} s, "
                              f"probabilities <= 100%, rate <= 400 Gbit/s): {values}")

    def get(self, direction: int) -> dict[str, int]:
        c = ffi.new("ie_imp_dir_cfg *")
        lib.ie_imp_get(self._imp, _dir(direction), c)
        return {k: int(getattr(c, k)) for k in DIR_FIELDS}

    def stats(self, direction: int) -> dict[str, int]:
        s = ffi.new("ie_imp_stats *")
        lib.ie_imp_stats_get(self._imp, _dir(direction), s)
        return {k: int(getattr(s, k)) for k in STAT_FIELDS}

    def step(self, timeout_ms: int = 0) -> int:
        return int(lib.ie_imp_step(self._imp, timeout_ms))

    def run(self) -> int:
        self.result = int(lib.ie_imp_run(self._imp))
        return self.result

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ipsecemu-impair", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        lib.ie_imp_stop(self._imp)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ImpairElement:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
