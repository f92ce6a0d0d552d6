"""Lab service: the impairment daemons of the plan, one per link with ``impair:``.

Started first (before MACsec and VPN daemons): until its element runs, the link carries nothing.
The endpoints' checksum and segmentation offloads are switched off first (``ethtool -K tx off
sg off tso off gso off`` through the ioctl: no ethtool binary needed), so the element reads
complete, MTU-size frames with real checksums (a frame with a checksum left to the hardware
would arrive broken on the other side, and a 64 KiB super-packet would not fit the link).  Each
daemon is recorded by PID before it starts, and its control socket under ``impair`` in the lab
state, for ``lab impair`` and ``lab status``.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable

from ipsecemu.net.netns import entered
from ipsecemu.net.proc import start as start_process

from .errors import BuildError
from .impair_ctl import ImpairError, request
from .impair_schema import DIRECTIONS, ImpairDir, format_dir
from .plan import Daemon, LabPlan, write_file
from .plan.model import IMPAIR
from .plan.render import daemon_argv
from .state import LabState

__all__ = ["ImpairServiceError", "offloads_off", "start"]

READY_TIMEOUT = 10.0
SIOCETHTOOL = 0x8946
# legacy ethtool "set" commands (still served by the kernel): tx checksum, scatter-gather, TSO, GSO, GRO
ETHTOOL_OFF = (0x17, 0x19, 0x1F, 0x24, 0x2C)


class ImpairServiceError(BuildError):
    """An impairment daemon did not come up (message names the link and its log)."""


def offloads_off(ns: str, ifname: str) -> None:
    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for cmd in ETHTOOL_OFF:
            buf = array.array("I", [cmd, 0])
            ifr = struct.pack("16sP", ifname.encode(), buf.buffer_info()[0])
            try:
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr + bytes(40 - len(ifr)))
            except OSError as exc:
                if cmd == 0x17:  # the one that matters; the others may be unsupported
                    raise ImpairServiceError(f"{ns}:{ifname}: cannot turn tx checksum offload off: "
                                             f"{exc.strerror}") from None


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""


def _start_one(plan: LabPlan, state: LabState, d: Daemon) -> tuple[int, str]:
    for _node, iface, ns in d.info["ends"]:
        offloads_off(ns, iface)
    for f in d.files:
        write_file(state.dir, f)
    logf = str(state.dir / d.log)
    cmd = daemon_argv(d, plan)
    with open(logf, "ab") as out:
        p = start_process(cmd, stdout=out, stderr=subprocess.STDOUT)
    state.add_process(p.pid, "impair", None, cmd=cmd, log=logf)
    control = str(state.dir / d.info["control"])
    with state.update() as data:
        data.setdefault("impair", {})[d.info["link"]] = {
            "control": control, "ends": d.info["ends"], "pid": p.pid, "log": logf, "netns": d.info["netns"],
            "sides": d.info["sides"]}
    return p.pid, logf


def start(plan: LabPlan, state: LabState, say: Callable[[str], None]) -> None:
    daemons = plan.daemons_of(IMPAIR)
    started = [(d, *_start_one(plan, state, d)) for d in daemons]
    deadline = time.monotonic() + READY_TIMEOUT
    for d, pid, logf in started:
        while True:
            try:
                request(state.dir / d.info["control"], {"op": "get"}, timeout=1.0)
                break
            except ImpairError:
                if time.monotonic() > deadline or not _alive(pid):
                    raise ImpairServiceError(f"impair {d.info['link']}: the element did not start; log {logf}:\n"
                                             f"{_tail(logf)}") from None
                time.sleep(0.05)
        a, b = (ImpairDir.from_json(d.info[k]) for k in DIRECTIONS)
        text = format_dir(a) if a == b else f"a_to_b {format_dir(a)}; b_to_a {format_dir(b)}"
        say(f"impair {d.info['link']}: element running ({text})")


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False
