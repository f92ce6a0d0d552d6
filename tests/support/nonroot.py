"""Run a command as a non-root user, to test what ipsecemu says without privileges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def non_root_prefix(readable: Path) -> list[str]:
    """setpriv to nobody; if nobody cannot read ``readable`` (CI under /root), an unmapped user
    namespace instead: euid 65534 there, still able to read root-owned files."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", f"import ipsecemu.commands.lab; open({str(readable)!r})"],
                           capture_output=True, timeout=60, cwd="/")
    return nobody if probe.returncode == 0 else ["unshare", "--user"]
