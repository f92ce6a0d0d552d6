"""The connection model loaded into charon: :class:`Conn` (swanctl ``connections.<name>``) with
its :class:`Child` SAs, as a vici ``load-conn`` message and as equivalent swanctl.conf text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Child", "Conn"]


@dataclass(frozen=True)
class Child:
    """One CHILD_SA (swanctl ``children.<name>``)."""

    name: str = "net"
    local_ts: tuple[str, ...] = ("dynamic",)
    remote_ts: tuple[str, ...] = ("dynamic",)
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    mode: str = "tunnel"
    start_action: str = "none"  # none | trap | start
    dpd_action: str = "clear"
    close_action: str = "none"
    rekey_time: int = 0  # seconds; 0 = never (tests rekey explicitly)
    life_time: int = 0
    updown: str = ""  # shell command charon runs on up-client/down-client (PLUTO_* env); "" = none


@dataclass(frozen=True)
class Conn:
    """One IKE connection with PSK authentication (swanctl ``connections.<name>``)."""

    name: str = "peer"
    local_addrs: tuple[str, ...] = ("%any",)
    remote_addrs: tuple[str, ...] = ("%any",)
    local_id: str = "%any"
    remote_id: str = "%any"
    psk: str = ""
    proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",)
    children: tuple[Child, ...] = (Child(),)
    dpd_delay: int = 0
    rekey_time: int = 0
    mobike: bool = False
    encap: bool = False
    fragmentation: str = "yes"
    childless: str = ""  # RFC 6023: "allow" | "force" | "never"; "" keeps charon's default

    def vici(self) -> dict[str, Any]:
        """The ``load-conn`` message."""
        children = {
            c.name: {
                "local_ts": list(c.local_ts), "remote_ts": list(c.remote_ts),
                "esp_proposals": list(c.esp_proposals), "mode": c.mode,
                "start_action": c.start_action, "dpd_action": c.dpd_action,
                "close_action": c.close_action, "rekey_time": str(c.rekey_time),
                "life_time": str(c.life_time),
                **({"updown": c.updown} if c.updown else {}),
            }
            for c in self.children
        }
        body: dict[str, Any] = {
            "version": "2", "local_addrs": list(self.local_addrs), "remote_addrs": list(self.remote_addrs),
            "proposals": list(self.proposals), "mobike": _yn(self.mobike), "encap": _yn(self.encap),
            "dpd_delay": str(self.dpd_delay), "rekey_time": str(self.rekey_time),
            "fragmentation": self.fragmentation, "unique": "never",
            "local": {"auth": "psk", "id": self.local_id},
            "remote": {"auth": "psk", "id": self.remote_id},
            "children": children,
        }
        if self.childless:
            body["childless"] = self.childless
        return {self.name: body}

    def swanctl_conf(self, *, include_secret: bool = False) -> str:
        """Equivalent swanctl.conf text.  The PSK is a placeholder unless ``include_secret``
        (then hex-encoded, for a file handed to ``swanctl --load-all``; never logged)."""
        out = ["connections {", f"  {self.name} {{"]
        body = self.vici()[self.name]
        for k, v in body.items():
            if k in ("local", "remote"):
                out += [f"    {k} {{", *(f"      {kk} = {vv}" for kk, vv in v.items()), "    }"]
            elif k == "children":
                out.append("    children {")
                for cname, cbody in v.items():
                    out.append(f"      {cname} {{")
                    out += [f"        {kk} = {_fmt(vv)}" for kk, vv in cbody.items()]
                    out.append("      }")
                out.append("    }")
            else:
                out.append(f"    {k} = {_fmt(v)}")
        out += ["  }", "}", "secrets {", f"  ike-{self.name} {{",
                f"    id-1 = {self.local_id}", f"    id-2 = {self.remote_id}",
                f"    secret = {'0x' + self.psk.encode().hex() if include_secret else '<psk>'}", "  }", "}", ""]
        return "\n".join(out)


def _yn(b: bool) -> str:
    return "yes" if b else "no"


def _fmt(v: Any) -> str:
    s = ",".join(v) if isinstance(v, list) else str(v)
    # swanctl.conf needs quotes around values with blanks or separators (e.g. an updown command)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' if any(ch in s for ch in ' ;{}="#') else s
