"""The VPN route agent: a daemon in the root netns that stands in for BGP over the lab's tunnels.

Every ``POLL`` seconds it asks each gateway which tunnels are up (ipsecemu: control socket;
charon: vici) and makes the routes of the plan :func:`ipsecemu.lab.plan.vpn.route_plan` made
match (see :mod:`ipsecemu.lab.svc_vpn` for the rules).  Started by the VPN service as
``python -m ipsecemu.lab.route_agent agent LAB_STATE_DIR`` and stopped by PID.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import vici

from ipsecemu.gateway.control import ControlError, request
from ipsecemu.net.netns import ipr_in

from .plan.vpn import PLAN_FILE, STATUS_FILE

POLL = 0.25  # seconds between agent passes
REFRESH_PASSES = 8  # every 2 s the agent re-installs its routes even without a change


def ipsecemu_tunnels(control: str) -> dict[str, bool] | None:
    """``{connection: has an installed Child SA}`` from a gateway, None if it does not answer."""
    try:
        res = request(control, "counters", timeout=1.0)
    except (ControlError, OSError, ValueError):
        return None
    return {name: bool(c.get("sas")) for name, c in (res.get("connections") or {}).items()}


def charon_tunnels(vici_path: str) -> dict[str, bool] | None:
    """``{connection: ESTABLISHED with an INSTALLED child}`` from charon over vici."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(vici_path)
            out: dict[str, bool] = {}
            for item in vici.Session(s).list_sas():
                for name, sa in item.items():
                    n = name.decode() if isinstance(name, bytes) else name
                    ok = sa.get("state") in (b"ESTABLISHED", "ESTABLISHED") and any(
                        ch.get("state") in (b"INSTALLED", "INSTALLED") for ch in sa.get("child-sas", {}).values())
                    out[n] = out.get(n, False) or ok
            return out
        finally:
            s.close()
    except Exception:  # noqa: BLE001 - charon gone or busy: treat as "no tunnel"
        return None


class Agent:
    """One pass = ask every gateway, then make routes match; applies only what changed."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir
        self.plan = json.loads((lab_dir / PLAN_FILE).read_text())
        self.applied: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.changes = 0
        self.passes = 0

    def poll(self) -> dict[str, bool]:
        by_ctl: dict[str, dict[str, bool] | None] = {}
        up: dict[str, bool] = {}
        for t in self.plan["tunnels"]:
            if t["control"] not in by_ctl:
                fn = ipsecemu_tunnels if t["kind"] == "ipsecemu" else charon_tunnels
                by_ctl[t["control"]] = fn(t["control"])
            ans = by_ctl[t["control"]] or {}
            up[f"{t['node']}/{t['conn']}"] = bool(ans.get(t["conn"]))
        return up

    def desired(self, up: dict[str, bool]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        want: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for t in self.plan["tunnels"]:  # tunnel routes: (netns, table, dst) -> devs
            live = up[f"{t['node']}/{t['conn']}"]
            for p in t["prefixes"]:
                key = (t["netns"], t["table"], p, None)
                devs = set(want.get(key, ()))
                if live:
                    devs.add(("dev", t["dev"]))
                want[key] = tuple(sorted(devs))
        for u in self.plan["upstream"]:
            key = (u["netns"], u["table"], u["dst"], u["metric"])
            hops = []
            for h in u["hops"]:
                vn = h["vpn_node"]
                if vn is None or any(up[f"{t['node']}/{t['conn']}"] and any(
                        ipaddress.ip_network(u["dst"]).subnet_of(ipaddress.ip_network(p))  # type: ignore[arg-type]
                        for p in t["prefixes"]) for t in self.plan["tunnels"] if t["node"] == vn):
                    hops.append(("via", h["via"], h["dev"], h["weight"]))
            want[key] = tuple(hops)
        return want

    @staticmethod
    def _apply(key: tuple[Any, ...], hops: tuple[Any, ...]) -> None:
        ns, table, dst, metric = key
        with ipr_in(ns) as ipr:
            base: dict[str, Any] = {"dst": dst, "table": table}
            if metric is not None:
                base["priority"] = metric
            nh = []
            for h in hops:
                if h[0] == "dev":
                    idx = ipr.link_lookup(ifname=h[1])
                    if not idx:  # tun not there (yet): retried next pass
                        raise LookupError(f"no device {h[1]}")
                    nh.append({"oif": idx[0]})
                else:
                    hop: dict[str, Any] = {"gateway": h[1], "hops": h[3] - 1}
                    if h[2]:
                        hop["oif"] = ipr.link_lookup(ifname=h[2])[0]
                    nh.append(hop)
            if not nh:
                try:
                    ipr.route("del", **base)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            elif len(nh) == 1:
                ipr.route("replace", **base, **{k: v for k, v in nh[0].items() if k != "hops"})
            else:
                ipr.route("replace", **base, multipath=nh)

    def step(self) -> bool:
        up = self.poll()
        want = self.desired(up)
        self.passes += 1
        refresh = self.passes % REFRESH_PASSES == 0  # re-assert all: a tun that came back lost its routes
        for key, hops in want.items():
            if refresh and self.applied.get(key) == hops:
                try:
                    self._apply(key, hops)
                except Exception:  # noqa: BLE001 - handled as a change next pass
                    self.applied.pop(key, None)
                continue
            if self.applied.get(key) != hops:
                try:
                    self._apply(key, hops)
                except Exception as exc:  # noqa: BLE001 - netns gone (lab down) or a dev just vanished
                    print(f"{time.strftime('%H:%M:%S')} route {key[0]} {key[2]}: {exc}", flush=True)
                    continue
                self.applied[key] = hops
                self.changes += 1
                desc = ", ".join(h[1] for h in hops) or "withdrawn"
                print(f"{time.strftime('%H:%M:%S')} {key[0]} table {key[1]} {key[2]} -> {desc}", flush=True)
        status = {"pid": os.getpid(), "time": time.time(), "tunnels": up, "applied": True,
                  "routes": [{"netns": k[0], "table": k[1], "dst": k[2], "metric": k[3], "nexthops": [h[1] for h in v]}
                             for k, v in sorted(self.applied.items(), key=str)]}
        tmp = self.dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, self.dir / STATUS_FILE)
        return True


def agent_main(lab_dir: str) -> int:
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    d = Path(lab_dir)
    try:
        agent = Agent(d)
    except (OSError, ValueError) as exc:
        print(f"vpn route agent: cannot read the plan in {d}: {exc}", file=sys.stderr)
        return 1
    print(f"{time.strftime('%H:%M:%S')} vpn route agent pid {os.getpid()} for lab {agent.plan['lab']}", flush=True)
    while not stop and d.is_dir():
        try:
            agent.step()
        except OSError as exc:  # state dir removed under us (lab down)
            if not d.is_dir():
                break
            print(f"agent pass failed: {exc}", flush=True)
        time.sleep(POLL)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(agent_main(sys.argv[2]))
    print("usage: python -m ipsecemu.lab.route_agent agent LAB_STATE_DIR", file=sys.stderr)
    sys.exit(2)
