"""`.failed/` (the logs of failed `lab up`s) keeps only the newest KEEP_FAILED copies, and the error
that names a kept copy says so."""

from __future__ import annotations

import os
from pathlib import Path

from ipsecemu.lab import topology
from ipsecemu.lab.builder import Builder
from ipsecemu.lab.errors import BuildError
from ipsecemu.lab.plan import compile_plan
from ipsecemu.lab.state import KEEP_FAILED, LabState, failed_dir, keep_failed_logs, prune_failed

from support.paths import REPO


def _old_copies(base: Path, n: int) -> list[Path]:
    """n earlier failures, oldest first (names sort the other way round: they start with the lab)."""
    out = []
    for i in range(n):
        d = failed_dir(base) / f"lab{n - i:02d}-20260101-000000"
        (d / "logs").mkdir(parents=True)
        (d / "logs" / "x.log").write_text("old\n")
        os.utime(d, (1_000_000 + i, 1_000_000 + i))
        out.append(d)
    return out


def test_a_new_failure_prunes_to_the_newest_ones(tmp_path: Path) -> None:
    old = _old_copies(tmp_path, KEEP_FAILED + 2)
    st = LabState.create("lab1", "x.yaml", {}, base=tmp_path)
    (st.dir / "logs" / "ce-gateway.log").write_text("ipsecemu: failed\n")
    kept = keep_failed_logs(st)
    assert kept is not None and kept.exists()
    left = sorted(p for p in failed_dir(tmp_path).iterdir())
    assert len(left) == KEEP_FAILED
    assert left == sorted([kept, *old[-(KEEP_FAILED - 1):]])  # the 3 oldest went


def test_prune_never_removes_the_copy_just_made_and_tolerates_no_dir(tmp_path: Path) -> None:
    old = _old_copies(tmp_path, 3)
    os.utime(old[0], (1, 1))  # a clock step: the new copy looks oldest
    assert prune_failed(failed_dir(tmp_path), keep=old[0], n=1) == [old[1]]
    assert sorted(failed_dir(tmp_path).iterdir()) == sorted([old[0], old[2]])
    assert prune_failed(tmp_path / "nowhere") == []


def test_the_error_naming_a_kept_copy_says_only_the_last_are_kept(tmp_path: Path) -> None:
    plan = compile_plan(topology.load(REPO / "netns-labs" / "pair.yaml"), tmp_path)
    b = Builder(plan, base=tmp_path)
    b.state = LabState.create(plan.name, "pair.yaml", {}, base=tmp_path)
    kept = failed_dir(tmp_path) / "pair-20260101-000000"
    named = b._message(BuildError(f"gateway gwa failed: see {b.state.dir}/logs/gwa-gateway.log"), kept)
    assert named == (f"gateway gwa failed: see {kept}/logs/gwa-gateway.log; {failed_dir(tmp_path)} keeps the logs "
                     f"of the last {KEEP_FAILED} failed 'lab up's")
    other = b._message(BuildError("netns x already exists"), kept)
    assert other.startswith(f"netns x already exists (logs kept in {kept}); ") and "last 10 failed" in other
