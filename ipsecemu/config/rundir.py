"""Where ipsecemu keeps its runtime state: one root for labs, gateways and their control sockets."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run_dir"]


def run_dir() -> Path:
    """Root of all runtime state (``/run/ipsecemu``); IPSECEMU_RUN_DIR overrides it (kept for odd
    hosts, and for tests that must not touch the real one)."""
    return Path(os.environ.get("IPSECEMU_RUN_DIR", "/run/ipsecemu"))
