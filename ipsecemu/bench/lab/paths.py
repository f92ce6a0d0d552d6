"""The paths ``ipsecemu bench lab`` measures, brought up on the pair topology and taken down again:
plain routing (with and without GSO) and the VPN endpoints (``ipsecemu gateway run`` daemons, charon
with kernel-libipsec), each started and stopped by PID."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.lab.worker import Say, ns_argv, ns_run
from ipsecemu.bench.procs import Procs
from ipsecemu.gateway.control import request
from ipsecemu.ike.render import normalize
from ipsecemu.lab.harness import pair_conn, ping
from ipsecemu.lab.netns import wait_for
from ipsecemu.strongswan.charon import Charon, CharonError

__all__ = ["IKE", "PSK", "Gateway", "Running", "no_gso", "plain_routes", "vpn"]

IKE = "aes128gcm16-prfsha256-ecp256"  # the IKE SA does not carry data: one proposal for all
PSK = "bench-lab-throwaway-psk"


class Gateway:
    """One ``ipsecemu gateway run`` daemon (a subprocess in ``ns``), reached by its control socket."""

    def __init__(self, procs: Procs, ns: str, workdir: Path, node: str, local: str, remote: str,
                 lts: str, rts: str, tun: str, esp: str, initiate: bool) -> None:
        self.procs, self.ns, self.node = procs, ns, node
        self.state = workdir / node
        self.cfg = workdir / f"{node}.yaml"
        self.cfg.write_text(f"""\
node: {node}
state_dir: {self.state}
local_addresses: [{local}]
datapath: {{encapsulation: udp, batch: 64}}
connections:
  pair:
    remote_address: {remote}
    local_id: {'left' if initiate else 'right'}
    remote_id: {'right' if initiate else 'left'}
    psk: {PSK}
    ike_proposals: {IKE}
    esp_proposals: {esp}
    local_ts: [{lts}]
    remote_ts: [{rts}]
    start_action: {'initiate' if initiate else 'listen'}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}, mtu: 1400}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        # `ip netns exec` execs the command, so the pid is the daemon's own
        self.proc = proc = self.procs.start(ns_argv(self.ns, sys.executable, "-m", "ipsecemu", "gateway", "run",
                                                    str(self.cfg)),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sock = self.state / "control.sock"
        if not wait_for(lambda: sock.exists() or proc.poll() is not None, 15) or proc.poll() is not None:
            raise BenchError(f"ipsecemu gateway in {self.ns} did not start: {self.log_tail()}")

    def request(self, cmd: str) -> Any:
        return request(self.state / "control.sock", cmd)

    def has_child(self) -> bool:
        try:  # normalize: the `sa list --json` view
            return any(s.get("child_sas") for s in normalize(self.request("list_sas")))
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def log_tail(self) -> str:
        err = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            err = self.proc.stderr.read().decode(errors="replace")
        p = self.state / "gateway.log"
        return (err + (p.read_text(errors="replace") if p.exists() else ""))[-1500:]

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, 10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


@dataclass
class Running:
    """The VPN endpoints of one path while it is measured."""

    pids: dict[str, int]  # role -> pid (for CPU sampling)
    gateways: list[Gateway]


@contextmanager
def vpn(path: str, topo: Any, esp: str, procs: Procs, workdir: Path, say: Say) -> Iterator[Running]:
    """Bring up ``path``'s two VPN endpoints with ESP ``esp`` and wait until data passes."""
    gl, gr = topo.gateways
    charons: list[Charon] = []
    gws: list[Gateway] = []
    workdir = workdir / f"{path}-{esp}"
    workdir.mkdir()
    try:
        left_ours = path in ("ipsecemu", "ipsecemu-strongswan")
        right_ours = path == "ipsecemu"
        tun = topo.links[0][:-2]  # the topology prefix
        if left_ours:
            gws.append(Gateway(procs, gl, workdir, "left", topo.outer[0], topo.outer[1], topo.subnets[0],
                               topo.subnets[1], tun + "tl", esp, True))
        else:
            charons.append(Charon(gl, workdir / "charon-left", log_level=0))
        if right_ours:
            gws.append(Gateway(procs, gr, workdir, "right", topo.outer[1], topo.outer[0], topo.subnets[1],
                               topo.subnets[0], tun + "tr", esp, False))
        else:
            charons.append(Charon(gr, workdir / "charon-right", log_level=0))
        sides = ([] if left_ours else [0]) + ([] if right_ours else [1])
        for c, side in zip(charons, sides, strict=True):
            c.start()
            c.load(pair_conn(topo, side, ike_proposal=IKE, esp_proposal=esp, psk=PSK))
        for g in reversed(gws):  # responder first, so the initiator's first IKE_SA_INIT is answered
            g.start()
        if not left_ours:
            charons[0].initiate(child="net", ike="pair")
        for c in charons:
            c.wait_established(15)
        for g in gws:
            if not wait_for(g.has_child, 15):
                raise BenchError(f"{path}: ipsecemu gateway in {g.ns} has no Child SA: {g.log_tail()}")
        # libipsec's route via ipsec0 and our tun routes appear just after the SAs
        if not wait_for(lambda: ping(topo.hosts[0], topo.inside[1], count=1, timeout=5) == 1, 15, 0.2):
            tails = "".join(g.log_tail() for g in gws) + "".join(c.log_tail() for c in charons)
            raise BenchError(f"{path}: no ping through the tunnel: {tails[-1500:]}")
        pids = {f"ipsecemu {g.node}": g.pid for g in gws if g.pid}
        pids.update({f"charon {'left' if c.ns == gl else 'right'}": c.pid for c in charons if c.pid})
        say(f"{path} {esp}: tunnel up (pids " + ", ".join(f"{k} {v}" for k, v in pids.items()) + ")")
        yield Running(pids, gws)
    except CharonError as exc:
        raise BenchError(f"{path}: strongSwan: {exc}") from None
    finally:
        for g in gws:
            g.stop()
        for c in charons:
            c.stop()


def _veths(topo: Any) -> list[tuple[str, str]]:
    p = topo.links[0][:-2]
    gl, gr = topo.gateways
    hl, hr = topo.hosts
    return [(hl, p + "lh"), (gl, p + "li"), (gl, p + "o0"), (gr, p + "o1"), (gr, p + "ri"), (hr, p + "rh")]


@contextmanager
def plain_routes(topo: Any) -> Iterator[None]:
    gl, gr = topo.gateways
    ns_run(gl, "ip", "route", "add", topo.subnets[1], "via", topo.outer[1])
    ns_run(gr, "ip", "route", "add", topo.subnets[0], "via", topo.outer[0])
    try:
        yield
    finally:
        subprocess.run(ns_argv(gl, "ip", "route", "del", topo.subnets[1]), capture_output=True)
        subprocess.run(ns_argv(gr, "ip", "route", "del", topo.subnets[0]), capture_output=True)


@contextmanager
def no_gso(topo: Any) -> Iterator[None]:
    """Every veth hands the stack one packet at a time (as a tun does), restored afterwards."""
    try:
        for ns, link in _veths(topo):
            ns_run(ns, "ip", "link", "set", "dev", link, "gso_max_segs", "1")
        yield
    finally:
        for ns, link in _veths(topo):
            subprocess.run(ns_argv(ns, "ip", "link", "set", "dev", link, "gso_max_segs", "65535"),
                           capture_output=True)


