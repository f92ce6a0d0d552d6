"""Run a command as a non-root user, to test what ipsecemu says without privileges.

The user is nobody (uid/gid 65534, no groups, no capabilities): the checks under test are
`os.geteuid() != 0` and what a non-root process may touch.  A checkout cloned into a 0700 directory
(`mktemp -d`, /root) is not traversable by nobody, so nobody could not even import it.  Then the
command runs in a private mount namespace in which each such directory is covered by a read-only
overlay of itself whose top is an empty 0755 directory: the same files with the same modes (a 0600 file
stays unreadable), only the directory itself becomes traversable, and only for that one command.
"""

from __future__ import annotations

import atexit
import functools
import shlex
import shutil
import stat
import sys
import tempfile
from pathlib import Path

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
REPO = Path(__file__).resolve().parents[2]


def closed_dirs(*paths: Path) -> list[Path]:
    """The directories on the way to ``paths`` that others cannot traverse, outermost first."""
    out: set[Path] = set()
    for p in paths:
        p = p.absolute()
        for d in [*reversed(p.parents), *([p] if p.is_dir() else [])]:
            if not d.stat().st_mode & stat.S_IXOTH:
                out.add(d)
    return sorted(out, key=lambda d: len(d.parts))


@functools.cache
def _scratch() -> Path:
    """Per test process: ``top``, the empty 0755 directory that gives each overlay its mode, and
    ``stage/<n>``, where the real directories are bound first so that no overlay sits on another (the
    kernel stacks only two deep); the mounts live only in the command's namespace."""
    d = Path(tempfile.mkdtemp(prefix="ipsecemu-nonroot-"))
    (d / "top").mkdir(mode=0o755)
    (d / "top").chmod(0o755)
    (d / "stage").mkdir()
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def non_root_prefix(readable: Path | None = None) -> list[str]:
    """argv prefix that runs a command as nobody, able to import this checkout and its venv and to
    reach ``readable`` (a file the command reads) wherever they were cloned."""
    # the venv's own path, not the interpreter it links to: the venv is found through it
    closed = closed_dirs(REPO, Path(sys.executable).parent, *([readable] if readable else []))
    if not closed:
        return list(NOBODY)
    scratch = _scratch()
    binds, overlays = [], []
    for n, d in enumerate(closed):
        if any(c in str(d) for c in ":,"):  # overlay's option separators
            raise ValueError(f"cannot make {d} traversable for nobody: ':' or ',' in its path")
        stage = scratch / "stage" / str(n)
        stage.mkdir(exist_ok=True)
        binds.append(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(stage))}")
        opts = shlex.quote(f"ro,lowerdir={scratch / 'top'}:{stage}")
        overlays.append(f"mount -t overlay ipsecemu-nonroot -o {opts} {shlex.quote(str(d))}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
            "; ".join([*binds, *overlays]) + '; exec "$@"', "sh", *NOBODY]
