"""The operations of the gateway's control socket: initiate, rekey, terminate, list_sas, counters,
status, export_keys (see :mod:`ipsecemu.gateway.control` for the protocol)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from ipsecemu.gateway.control import ControlError
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState
from ipsecemu.ike.transforms import TransformType
from ipsecemu.pcap.uat import IkeSaRow, esp_row, write_esp_sa, write_ikev2_table

from .driver import GatewayState, LocalAddress
from .timers import Backoff

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["ControlOps"]


class ControlOps(GatewayState):
    """Mixin of :class:`~ipsecemu.gateway.daemon.Gateway`: what the control socket can ask."""

    held: set[str]
    ike_conn: dict[bytes, str]
    ike_info: dict[tuple[bytes, bytes], dict[str, Any]]
    child_created: dict[int, float]
    _uid: int
    _uids: dict[bytes, int]
    backoff: Backoff

    def trap_view(self, name: str) -> dict[str, object]:
        """A trap connection's queue and fallback (``trap.Traps`` overrides this: it comes first in
        the gateway's bases); nothing for other connections."""
        return {}

    def _uniqueid(self, spi_i: bytes) -> int:
        if spi_i not in self._uids:
            self._uid += 1
            self._uids[spi_i] = self._uid
        return self._uids[spi_i]

    def initiate(self, name: str) -> str:
        gw = self.cfg.connection(name)
        if gw is None:
            raise ControlError(f"no connection named {name!r}; known: {', '.join(c.name for c in self.cfg.connections)}")
        self.held.discard(name)
        local = self.locals[str(gw.conn.local_address)]
        try:
            sa = local.endpoint.initiate(name, self.now())
        except LocalProtocolError as exc:
            raise ControlError(str(exc)) from None
        self.ike_conn[sa.spi_i] = name
        local.transport.pump()
        log.info("%s: initiating to %s", name, gw.conn.remote_address)
        return sa.spi_i.hex()

    def _all_sas(self) -> list[tuple[LocalAddress, IkeSa]]:
        return [(local, sa) for local in self.locals.values() for sa in list(local.endpoint.sas.values())
                if sa.state != IkeState.CLOSED]

    def _match(self, target: str) -> tuple[list[tuple[LocalAddress, IkeSa]], list[tuple[LocalAddress, IkeSa, int]]]:
        """``target`` -> (IKE SAs, Child SAs (owner, inbound SPI)).  A connection name selects its
        IKE SAs; a hex SPI selects an IKE SA (16 digits) or a Child SA (inbound or outbound)."""
        sas = self._all_sas()
        if self.cfg.connection(target) is not None:
            return [(lo, sa) for lo, sa in sas if sa.config.name == target], []
        t = target.lower().removeprefix("0x")
        try:
            value = int(t, 16)
        except ValueError:
            raise ControlError(f"{target!r} is neither a connection name nor a hex SPI") from None
        ikes = [(lo, sa) for lo, sa in sas if value in (int.from_bytes(sa.spi_i, "big"),
                                                        int.from_bytes(sa.spi_r, "big"))]
        if ikes and len(t) > 8:
            return ikes, []
        kids = [(lo, sa, spi) for lo, sa in sas for spi, ch in sa.children.items()
                if value in (ch.inbound_spi, ch.outbound_spi)]
        if not kids and not ikes:
            raise ControlError(f"no SA with SPI {target}")
        return ikes, kids

    def rekey(self, target: str) -> list[str]:
        ikes, kids = self._match(target)
        done = []
        now = self.now()
        if self.cfg.connection(target) is not None:  # a name: rekey its Child SAs
            kids = [(lo, sa, spi) for lo, sa in ikes for spi, ch in sa.children.items() if not ch.rekeyed]
            ikes = []
        for lo, sa, spi in kids:
            try:
                sa.rekey_child(spi, now)
                done.append(f"child {spi:08x}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        for lo, sa in ikes:
            try:
                sa.rekey_ike(now)
                done.append(f"ike {sa.spi_i.hex()}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        if not done:
            raise ControlError(f"nothing to rekey for {target!r} (no established SA)")
        return done

    def terminate(self, target: str) -> list[str]:
        if self.cfg.connection(target) is not None:
            self.held.add(target)  # an operator's terminate is not undone by a restart
            self.backoff.succeeded(target)  # nor is it a failure to back off from
        ikes, kids = self._match(target)
        now = self.now()
        done = []
        for lo, sa, spi in kids:
            try:
                sa.delete_child(spi, now)
                done.append(f"child {spi:08x}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        for lo, sa in ikes:
            self.held.add(sa.config.name)
            try:
                sa.delete(now)
                done.append(f"ike {sa.spi_i.hex()}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        if not done:
            raise ControlError(f"nothing to terminate for {target!r}")
        return done

    def list_sas(self) -> list[dict[str, Any]]:
        out = []
        now_wall = time.time()
        now = self.now()
        for _lo, sa in self._all_sas():
            info = self.ike_info.get((sa.spi_i, sa.spi_r), {})
            name = sa.config.name
            d: dict[str, Any] = {
                "name": name, "uniqueid": self._uniqueid(sa.spi_i), "version": 2,
                "state": sa.state.name, "local-host": sa.local[0], "local-port": sa.local[1],
                "local-id": info.get("local_id", str(sa.config.local_id)),
                "remote-host": sa.remote[0], "remote-port": sa.remote[1],
                "remote-id": info.get("remote_id", str(sa.remote_id or "")),
                "initiator": sa.initiator, "initiator-spi": sa.spi_i.hex(), "responder-spi": sa.spi_r.hex(),
                "nat-local": sa.nat_local, "nat-remote": sa.nat_remote,
            }
            if info.get("proposal"):
                d["proposal"] = info["proposal"]
            if "established" in info:
                d["established"] = int(now_wall - info["established"])
            dp = self.dps.get(name)
            children = []
            for spi, ch in sa.children.items():
                k = ch.keys
                # reqid as in strongSwan: one per child (its policies), kept across rekeys
                lineage = dp.lineage_of(spi) if dp is not None else None
                c: dict[str, Any] = {
                    "name": name, "uniqueid": self._uniqueid(spi.to_bytes(4, "big")), "reqid": lineage or 1,
                    "state": "REKEYED" if ch.rekeyed else "INSTALLED",
                    "mode": k.mode.upper(), "protocol": "ESP", "encap": k.encap,
                    "spi-in": f"{ch.inbound_spi:08x}", "spi-out": f"{ch.outbound_spi:08x}", "proposal": k.proposal,
                    "install-time": int(now_wall - self.child_created.get(spi, now_wall)),
                    "local-ts": [str(t) for t in k.local_ts], "remote-ts": [str(t) for t in k.remote_ts],
                }
                if ch.rekey_at is not None:
                    c["rekey-time"] = max(0, int(ch.rekey_at - now))
                if ch.expire_at is not None:
                    c["life-time"] = max(0, int(ch.expire_at - now))
                if dp is not None and dp.has_spi(spi):
                    cin, cout = dp.counters(spi)
                    c.update({"bytes-in": cin.bytes, "packets-in": cin.packets, "bytes-out": cout.bytes,
                              "packets-out": cout.packets, "backend": dp.mode, "tunnel": dp.gw.tunnel.name})
                children.append(c)
            d["child-sas"] = children
            d.update(self.backoff.view(name, now))  # an attempt after failures: how many so far
            if trap := self.trap_view(name):
                d["trap"] = trap
            out.append(d)
        listed = {d["name"] for d in out}
        for gw in self.cfg.connections:
            retry = self.backoff.view(gw.name, now)
            trap = self.trap_view(gw.name)
            if (retry or trap) and gw.name not in listed:
                # waiting to re-initiate, or on demand without an SA: the user should see why and
                # until when (and what waits in the trap queue)
                out.append({"name": gw.name, "state": "BACKOFF" if retry else "TRAP", "version": 2,
                            "local-host": str(gw.conn.local_address), "remote-host": str(gw.conn.remote_address),
                            "child-sas": [], **retry, **({"trap": trap} if trap else {})})
        return out

    def counters(self) -> dict[str, Any]:
        conns = {}
        for name, dp in self.dps.items():
            sas = []
            for spi, ch in dp.children.items():
                cin, cout = dp.counters(spi)
                sas.append({"spi_in": f"{spi:08x}", "spi_out": f"{ch.outbound.spi:08x}",
                            "in": dataclasses.asdict(cin), "out": dataclasses.asdict(cout)})
            conns[name] = {"backend": dp.mode, "native": dp.native, "tunnel": dp.gw.tunnel.name,
                           # what the kernel routes into the tun (ours, or a lab route agent's)
                           "routes": dp.kernel_routes(), "loop": dp.loop_stats(), "sas": sas,
                           "children": dp.policies()}
            if trap := self.trap_view(name):
                conns[name]["trap"] = trap
        ike = {lo.addr: {"transport": dict(lo.transport.counters), "endpoint": dict(lo.endpoint.counters)}
               for lo in self.locals.values()}
        return {"connections": conns, "ike": ike}

    def export_keys(self, out_dir: str) -> dict[str, Any]:
        rows, ike_rows = [], []
        for _lo, sa in self._all_sas():
            for ch in sa.children.values():
                k = ch.keys
                for cfg, src, dst in ((k.outbound, k.local[0], k.remote[0]), (k.inbound, k.remote[0], k.local[0])):
                    rows.append(esp_row(src, dst, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key))
            if sa.keys is not None and sa.proposal is not None:
                enc = next((t.keyword for t in sa.proposal.transforms if t.type == TransformType.ENCR), "")
                integ = next((t.keyword for t in sa.proposal.transforms if t.type == TransformType.INTEG), "none")
                ks = sa.keys
                ike_rows.append(IkeSaRow(sa.spi_i, sa.spi_r, ks.sk_ei, ks.sk_er, enc, ks.sk_ai, ks.sk_ar, integ))
        d = Path(out_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_esp_sa(d / "esp_sa", rows)
            write_ikev2_table(d / "ikev2_decryption_table", ike_rows)
        except OSError as exc:
            raise ControlError(f"{out_dir}: {exc.strerror}") from None
        log.info("exported keys of %d ESP / %d IKE SAs to %s", len(rows), len(ike_rows), d)  # paths only
        return {"esp_sa": str(d / "esp_sa"), "ikev2_decryption_table": str(d / "ikev2_decryption_table"),
                "esp_rows": len(rows), "ike_rows": len(ike_rows)}

    async def handle(self, req: dict[str, Any]) -> Any:
        cmd = req["cmd"]
        if cmd == "list_sas":
            return self.list_sas()
        if cmd == "counters":
            return self.counters()
        if cmd == "status":
            return {"node": self.cfg.node, "pid": os.getpid(), "connections": [c.name for c in self.cfg.connections],
                    "traps": {c.name: self.trap_view(c.name) for c in self.cfg.connections
                              if c.conn.start_action == "trap"}}
        if cmd in ("rekey", "terminate", "initiate"):
            target = req.get("target") or req.get("name")
            if not isinstance(target, str) or not target:
                raise ControlError(f"{cmd}: needs a 'target' (connection name or SPI)")
            return getattr(self, cmd)(target)
        if cmd == "export_keys":
            out = req.get("dir")
            if not isinstance(out, str) or not out:
                raise ControlError("export_keys: needs a 'dir'")
            return self.export_keys(out)
        raise ControlError(f"unknown command {cmd!r}; known: list_sas, counters, status, rekey, terminate, "
                           "initiate, export_keys")
