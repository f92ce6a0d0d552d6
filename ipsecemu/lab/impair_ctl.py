"""Talking to a lab's impairment daemons (``lab impair``, ``lab status``): where their control
sockets are (recorded in the lab state under ``impair``) and one JSON request each."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import LabError

from .impair_schema import DIRECTIONS, ImpairDir, format_dir
from .state import LabState

__all__ = ["ImpairError", "find", "request", "status_lines"]


class ImpairError(LabError):
    """A one-line user error of ``lab impair``."""


def request(path: Path, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            line = s.makefile("rb").readline(1 << 20)
    except OSError as exc:
        raise ImpairError(f"impairment daemon at {path} does not answer ({exc.strerror or exc}); "
                          f"is the lab up?") from None
    try:
        out: dict[str, Any] = json.loads(line)
    except ValueError:
        raise ImpairError(f"impairment daemon at {path}: bad answer {line[:80]!r}") from None
    if not out.get("ok"):
        raise ImpairError(f"impairment daemon: {out.get('error', 'refused')}")
    return out


def links(state: LabState) -> dict[str, dict[str, Any]]:
    """``{link label: {"control": path, "ends": [[node, iface, netns], ...]}}`` of the lab."""
    return dict(state.data.get("impair") or {})


def find(state: LabState, endpoint: str) -> tuple[Path, int, dict[str, Any]]:
    """The control socket of the impaired link with end ``NODE:IFACE``, that end's index (0:
    endpoints[0], whose outgoing direction is a_to_b) and the link's recorded info."""
    node, _, iface = endpoint.partition(":")
    for info in links(state).values():
        for i, (n, f, *_rest) in enumerate(info["ends"]):
            if (n, f) == (node, iface):
                return Path(info["control"]), i, info
    declared = ", ".join(sorted(links(state))) or "none"
    raise ImpairError(
        f"{endpoint}: no impairment element on this link (impaired links of lab {state.name}: {declared}); "
        f"an element cannot be inserted into a running veth without renumbering both ends: declare "
        f"'impair: {{}}' on the link in {state.data.get('source', 'the lab file')} and run lab up again")


def status_lines(state: LabState) -> list[str]:
    """One line per direction of every impaired link, with settings and counters."""
    out = []
    for label, info in sorted(links(state).items()):
        try:
            d = request(Path(info["control"]), {"op": "get"}, timeout=1.0)
        except ImpairError as exc:
            out.append(f"impair {label}: {exc}")
            continue
        for k in DIRECTIONS:
            st = d[k]["stats"]
            from_end, to_end = (info["ends"][0], info["ends"][1]) if k == "a_to_b" else (info["ends"][1], info["ends"][0])
            out.append(f"impair {from_end[0]}:{from_end[1]} -> {to_end[0]}:{to_end[1]}: "
                       f"{format_dir(ImpairDir.from_json(d[k]['config']))}; passed {st['passed']}, lost {st['dropped_loss']}, "
                       f"queue drops {st['dropped_queue']}, tx drops {st['dropped_tx']}, delayed {st['delayed']}, "
                       f"reordered {st['reordered']}, duplicated {st['duplicated']}, corrupted {st['corrupted']}, "
                       f"queued {st['queued']}")
    return out

