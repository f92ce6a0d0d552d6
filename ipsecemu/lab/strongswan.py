"""Run strongSwan 5.9.8 (charon + kernel-libipsec) inside a network namespace, driven by vici.

One :class:`Charon` is one daemon in one netns, set up as notes/strongswan-netns.md says:

* a private mount namespace with the instance directory bind-mounted over ``/run`` (the pid
  file path is compiled in), its own ``strongswan.conf`` (``STRONGSWAN_CONF``), vici socket and
  log file; nothing under /etc is read;
* an explicit plugin list, ``kdf`` included and ``kernel-libipsec`` before ``kernel-netlink``
  (the kernel here has no XFRM, so ESP runs in charon over the ``ipsec0`` tun);
* started, then ready once vici answers *and* the pid is alive (a charon that failed at init
  still leaves its socket); stopped by pid: SIGTERM, then SIGKILL after a timeout.

Connections are :class:`Conn` dataclasses, loaded over vici (``load-conn`` / ``load-shared``)
and rendered as equivalent ``swanctl.conf`` text for humans.  With ``key_log=True`` the ike and
chd subsystems log at level 4 and :func:`parse_keys` extracts IKE and ESP keys + SPIs from the
log for Wireshark (:func:`wireshark_esp_sa`, :func:`wireshark_ikev2`).  Secrets go only to the
instance's own files, never to our logger.

:func:`charon_pair` brings up the charon <-> charon baseline: two gateways, an inside host
behind each, one IKE SA with one tunnel-mode CHILD_SA between the inside subnets.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.lab.netns import Netns, need_ping, ns_exec, wait_for

log = logging.getLogger(__name__)

__all__ = [
    "CHARON", "Charon", "CharonError", "CharonPair", "Child", "Conn", "KeyLog", "charon_available",
    "charon_pair", "pair_conn", "pair_topology", "PairTopology", "star_topology", "StarTopology", "parse_keys", "wireshark_esp_sa", "wireshark_ikev2",
]

CHARON = os.environ.get("IPSECEMU_CHARON", "/usr/lib/ipsec/charon")
# Order matters: the first kernel_ipsec provider wins, and kdf is needed after IKE_SA_INIT.
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm kdf curve25519 pem pkcs1 x509 pubkey "
           "revocation constraints kernel-libipsec kernel-netlink socket-default vici updown")


class CharonError(RuntimeError):
    """charon could not be started, or a vici command failed (message says which)."""


def charon_available() -> str | None:
    """None when charon + the plugins we need are installed, else the reason they are not."""
    if not os.access(CHARON, os.X_OK):
        return f"strongSwan charon not installed ({CHARON}); apt-get install strongswan-charon"
    plugdir = Path(CHARON).parent / "plugins"
    for plug in ("kernel-libipsec", "vici", "kdf"):
        if not (plugdir / f"libstrongswan-{plug}.so").exists():
            return f"strongSwan plugin {plug} missing; apt-get install libcharon-extra-plugins"
    if shutil.which("unshare") is None:
        return "unshare(1) not found (util-linux)"
    return None


# --------------------------------------------------------------------------- config model
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
    return ",".join(v) if isinstance(v, list) else str(v)


def _decode(obj: Any) -> Any:
    """vici answers in bytes; tests want str."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, dict):
        return {(_decode(k)): _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- the daemon
class Charon:
    """One charon in netns ``ns``.  Use as a context manager (start / stop)."""

    def __init__(self, ns: str, workdir: str | os.PathLike | None = None, *, key_log: bool = False,
                 log_level: int = 1, retransmit_tries: int = 3, retransmit_timeout: float = 1.0,
                 extra_conf: str = "") -> None:
        self.ns = ns
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"charon-{ns}-"))
        self.run_dir = self.dir / "run"
        self.conf = self.dir / "strongswan.conf"
        self.log_file = self.dir / "charon.log"
        self.vici_path = self.run_dir / "charon.vici"
        self.key_log = key_log
        self.log_level = log_level
        self.retransmit_tries = retransmit_tries
        self.retransmit_timeout = retransmit_timeout
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self._stderr: Any = None

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_conf(self) -> None:
        lvl = 4 if self.key_log else self.log_level
        text = f"""# generated by ipsecemu.lab.strongswan for netns {self.ns}
charon {{
  load_modular = no
  load = {PLUGINS}
  threads = 24
  dos_protection = no
  reuse_ikesa = no
  block_threshold = 1000
  cookie_threshold = 1000
  init_limit_half_open = 0
  retransmit_tries = {self.retransmit_tries}
  retransmit_timeout = {self.retransmit_timeout}
  retransmit_base = 1.4
  install_virtual_ip = no
  plugins {{
    vici {{
      socket = unix://{self.vici_path}
    }}
  }}
  filelog {{
    main {{
      path = {self.log_file}
      default = {self.log_level}
      ike = {lvl}
      chd = {lvl}
      flush_line = yes
      time_format = %H:%M:%S
      time_add_ms = yes
      ike_name = yes
    }}
  }}
  syslog {{
  }}
}}
{self.extra_conf}
"""
        self.conf.write_text(text)

    def start(self, timeout: float = 10.0) -> None:
        reason = charon_available()
        if reason:
            raise CharonError(reason)
        if self.alive():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("charon.pid", "charon.vici"):
            (self.run_dir / stale).unlink(missing_ok=True)
        self.write_conf()
        # `exec` all the way down, so the pid we hold is charon's own.
        script = (f"mount --bind {self.run_dir} /run && "
                  f"exec env STRONGSWAN_CONF={self.conf} {CHARON}")
        self._stderr = open(self.dir / "charon.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, start_new_session=True)
        ok = wait_for(lambda: not self.alive() or self._vici_answers(), timeout)
        if not ok or not self.alive():
            tail = self.log_tail()
            self.stop()
            raise CharonError(f"charon in netns {self.ns} did not come up within {timeout}s:\n{tail}")
        log.debug("charon pid %s up in netns %s (dir %s)", self.pid, self.ns, self.dir)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by pid, SIGKILL after ``timeout``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        if self._stderr:
            self._stderr.close()
            self._stderr = None

    def kill(self) -> None:
        """SIGKILL by pid: the peer sees no DELETE and keeps its SAs (tests take them over)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.stop()

    def cleanup(self) -> None:
        """Stop and remove the instance directory if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        parts = []
        for f in (self.log_file, self.dir / "charon.stderr"):
            if f.exists():
                parts += f.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(parts)

    # -- vici --------------------------------------------------------------------------
    def _vici_answers(self) -> bool:
        if not self.vici_path.exists():
            return False
        try:
            s = self.session(timeout=1.0)
            s.version()
            s.transport.socket.close()
            return True
        except (OSError, Exception):  # noqa: BLE001 - any failure means "not yet"
            return False

    def session(self, timeout: float = 30.0):  # noqa: ANN201 - vici.Session (untyped package)
        import vici

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.vici_path))
        return vici.Session(sock)

    def _call(self, what: str, fn_name: str, *args: Any) -> Any:
        import vici.exception

        s = self.session()
        try:
            res = getattr(s, fn_name)(*args)
            if hasattr(res, "__next__"):  # streamed commands: drain the log events
                res = list(res)
            return res
        except vici.exception.CommandException as exc:
            raise CharonError(f"{what}: {exc}") from exc
        finally:
            s.transport.socket.close()

    def version(self) -> dict[str, str]:
        return _decode(self._call("version", "version"))

    def load(self, conn: Conn) -> None:
        """load-conn + load-shared (the PSK)."""
        self._call(f"load-conn {conn.name}", "load_conn", conn.vici())
        # the same connection as swanctl.conf text, for humans reading the instance dir
        with open(self.dir / "swanctl.conf", "a") as f:
            f.write(conn.swanctl_conf())
        if conn.psk:
            ids = [i for i in (conn.local_id, conn.remote_id) if i != "%any"] or ["%any"]
            self._call("load-shared", "load_shared",
                       {"id": f"psk-{conn.name}", "type": "IKE", "data": conn.psk, "owners": ids})

    def initiate(self, child: str | None = None, ike: str | None = None, timeout_ms: int = 8000) -> None:
        msg: dict[str, Any] = {"timeout": str(timeout_ms), "init-limits": "no"}
        if child:
            msg["child"] = child
        if ike:
            msg["ike"] = ike
        self._call(f"initiate {child or ike}", "initiate", msg)

    def terminate(self, *, ike: str | None = None, child: str | None = None, ike_id: int | None = None,
                  child_id: int | None = None, timeout_ms: int = 5000, force: bool = False) -> None:
        msg: dict[str, Any] = {"timeout": str(timeout_ms)}
        for k, v in (("ike", ike), ("child", child), ("ike-id", ike_id), ("child-id", child_id)):
            if v is not None:
                msg[k] = str(v)
        if force:
            msg["force"] = "yes"
        self._call("terminate", "terminate", msg)

    def rekey(self, *, ike: str | None = None, child: str | None = None, reauth: bool = False) -> None:
        msg: dict[str, Any] = {}
        if ike:
            msg["ike"] = ike
        if child:
            msg["child"] = child
        if reauth:
            msg["reauth"] = "yes"
        self._call("rekey", "rekey", msg)

    def list_sas(self) -> dict[str, dict[str, Any]]:
        """``{ike_name: sa_dict}`` with str values (one entry per IKE SA name; the newest wins)."""
        out: dict[str, dict[str, Any]] = {}
        for item in self._call("list-sas", "list_sas"):
            out.update(_decode(item))
        return out

    def list_conns(self) -> dict[str, dict[str, Any]]:
        """Loaded connections as charon reports them (``list-conns``), str values."""
        out: dict[str, dict[str, Any]] = {}
        for item in self._call("list-conns", "list_conns"):
            out.update(_decode(item))
        return out

    def list_sas_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every IKE SA, including several with the same connection name."""
        return [(k, v) for item in self._call("list-sas", "list_sas") for k, v in _decode(item).items()]

    def child_sas(self) -> list[dict[str, Any]]:
        """Every CHILD_SA of every IKE SA (each dict also carries ``ike`` = the IKE SA dict)."""
        out = []
        for _name, ike in self.list_sas_all():
            for child in ike.get("child-sas", {}).values():
                out.append({**child, "ike": ike})
        return out

    def wait_established(self, timeout: float = 10.0, ike: str | None = None) -> dict[str, Any]:
        """Poll list-sas until an IKE SA is ESTABLISHED with an INSTALLED child."""
        found: dict[str, Any] = {}

        def ready() -> bool:
            for name, sa in self.list_sas_all():
                if ike and name != ike:
                    continue
                if sa.get("state") == "ESTABLISHED" and any(
                        c.get("state") == "INSTALLED" for c in sa.get("child-sas", {}).values()):
                    found.update(sa)
                    return True
            return False

        if not wait_for(ready, timeout, 0.05):
            raise CharonError(f"no ESTABLISHED/INSTALLED SA in {self.ns} after {timeout}s:\n{self.log_tail()}")
        return found

    def keys(self) -> KeyLog:
        """Keys from the log (needs ``key_log=True``); IKE rows get their SPIs from list-sas."""
        kl = parse_keys(self.log_file.read_text(errors="replace") if self.log_file.exists() else "")
        spis = {sa.get("uniqueid"): sa for _n, sa in self.list_sas_all()}
        for row in kl.ike:
            sa = spis.get(row["uid"])
            if sa:
                row.update(spi_i=sa["initiator-spi"], spi_r=sa["responder-spi"])
        return kl


    def esp_sa_configs(self) -> list[tuple[EspSaConfig, EspSaConfig, dict[str, Any]]]:
        """``(inbound, outbound, child)`` data-plane configs of every installed CHILD_SA, built
        from the key log (needs ``key_log=True``) and the algorithms list-sas reports."""
        by_spi = {r["spi"]: r for r in self.keys().esp}
        out = []
        for child in self.child_sas():
            if child.get("state") != "INSTALLED":
                continue
            encr = CHARON_ENCR.get(child.get("encr-alg", ""))
            integ = CHARON_INTEG.get(child.get("integ-alg", ""))
            if encr is None or child.get("integ-alg") and integ is None:
                raise CharonError(f"no data-plane name for {child.get('encr-alg')}/{child.get('integ-alg')}")
            pair = []
            for spi in (child["spi-in"], child["spi-out"]):
                row = by_spi.get(spi)
                if row is None:
                    raise CharonError(f"SPI {spi} not in the key log (start Charon with key_log=True)")
                pair.append(EspSaConfig(spi=int(spi, 16), encr=encr, enc_key=bytes.fromhex(row["enc"]),
                                        integ=integ, integ_key=bytes.fromhex(row["integ"]) if integ else b""))
            out.append((pair[0], pair[1], child))
        return out


#: list-sas algorithm names -> ipsecemu.dataplane.api names
CHARON_ENCR = {"AES_GCM_16": "aes-gcm-16", "AES_GCM_12": "aes-gcm-12", "AES_GCM_8": "aes-gcm-8",
               "AES_CBC": "aes-cbc", "3DES_CBC": "3des-cbc", "CHACHA20_POLY1305": "chacha20-poly1305",
               "NULL": "null"}
CHARON_INTEG = {"HMAC_SHA1_96": "hmac-sha1-96", "HMAC_SHA2_256_128": "hmac-sha256-128",
                "HMAC_SHA2_384_192": "hmac-sha384-192", "HMAC_SHA2_512_256": "hmac-sha512-256",
                "HMAC_MD5_96": "hmac-md5-96"}


# --------------------------------------------------------------------------- key log
@dataclass
class KeyLog:
    """Keys recovered from a level-4 charon log (hex strings, lower case).

    ``ike`` rows: ``uid`` (charon's IKE_SA unique id), ``sk_d``, ``sk_ei``, ``sk_er``, ``sk_ai``,
    ``sk_ar`` (absent for AEAD), ``sk_pi``, ``sk_pr``; :meth:`Charon.keys` adds ``spi_i``/``spi_r``.
    ``esp`` rows, one per direction: ``spi`` (hex), ``src``, ``dst``, ``enc`` (key || salt for
    AEAD), ``integ`` ("" for AEAD), ``uid``.
    """

    ike: list[dict[str, str]] = field(default_factory=list)
    esp: list[dict[str, str]] = field(default_factory=list)


# "<conn|uid>", or just "<uid>" while a responder does not know the connection yet
_PREFIX = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<(?:[^|>]*\|)?(\d+)> )?(.*)$")
_HEXLINE = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} ){1,16})")
_SECRET = re.compile(r"^(Sk_\w+) secret => (\d+) bytes")
_CHILDKEY = re.compile(r"^(encryption|integrity) (initiator|responder) key => (\d+) bytes")
_SA_LINE = re.compile(r"^\s*SPI 0x([0-9a-f]{8}), src (\S+) dst (\S+)")
_ADDING = re.compile(r"^adding (inbound|outbound) ESP SA")
_PARSED = re.compile(r"^parsed \S+ (request|response)")


def parse_keys(text: str) -> KeyLog:
    """Extract IKE SK_* keys and per-direction ESP keys/SPIs from a charon log (ike/chd = 4).

    charon prints each secret as ``<name> => N bytes @ 0x...`` and then hex-dump lines.  The
    "initiator" ESP keys protect traffic from the initiator of the exchange that created the
    CHILD_SA, so we remember per worker thread whether it last parsed a request or a response.
    """
    out = KeyLog()
    ike_rows: dict[str, dict[str, str]] = {}
    last_parsed: dict[str, str] = {}
    child: dict[str, dict[str, str]] = {}  # per thread: keys of the CHILD_SA being installed
    pending_dir: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _PREFIX.match(lines[i])
        i += 1
        if not m:
            continue
        thread, uid, msg = m.group(1), m.group(3) or "", m.group(4)
        if (p := _PARSED.match(msg)):
            last_parsed[thread] = p.group(1)
        elif (s := _SECRET.match(msg)):
            hexs, i = _read_dump(lines, i, int(s.group(2)))
            row = ike_rows.setdefault(uid, {"uid": uid})
            if s.group(1).lower() == "sk_d" and "sk_d" in row:  # IKE rekey: a new SA under this uid
                out.ike.append(row)
                row = ike_rows[uid] = {"uid": uid}
            row[s.group(1).lower()] = hexs
        elif (k := _CHILDKEY.match(msg)):
            hexs, i = _read_dump(lines, i, int(k.group(3)))
            child.setdefault(thread, {})[f"{k.group(1)[:3]}_{k.group(2)[0]}"] = hexs
        elif (a := _ADDING.match(msg)):
            pending_dir[thread] = a.group(1)
        elif (sa := _SA_LINE.match(msg)) and thread in pending_dir and thread in child:
            keys = child[thread]
            we_initiated = last_parsed.get(thread) == "response"
            outbound = pending_dir.pop(thread) == "outbound"
            who = "i" if outbound == we_initiated else "r"
            out.esp.append({"uid": uid, "spi": sa.group(1), "src": sa.group(2), "dst": sa.group(3),
                            "enc": keys.get(f"enc_{who}", ""), "integ": keys.get(f"int_{who}", "")})
            if outbound:
                child.pop(thread, None)
    out.ike.extend(ike_rows.values())
    return out


def _read_dump(lines: list[str], i: int, n: int) -> tuple[str, int]:
    got = ""
    while i < len(lines) and len(got) < 2 * n:
        m = _PREFIX.match(lines[i])
        h = _HEXLINE.match(m.group(4)) if m else None
        if not h:
            break
        got += h.group(1).replace(" ", "").lower()
        i += 1
    return got, i


#: charon's ESP algorithm names (list-sas ``encr-alg``/``integ-alg``) -> Wireshark's UAT names
WS_ENCR = {"AES_GCM_16": "AES-GCM with 16 octet ICV [RFC4106]", "AES_GCM_12": "AES-GCM with 12 octet ICV [RFC4106]",
           "AES_GCM_8": "AES-GCM with 8 octet ICV [RFC4106]", "AES_CBC": "AES-CBC [RFC3602]",
           "3DES_CBC": "TripleDES-CBC [RFC2451]", "AES_CTR": "AES-CTR [RFC3686]",
           "CHACHA20_POLY1305": "ChaCha20 with Poly1305 [RFC7634]", "NULL": "NULL"}
WS_INTEG = {"": "NULL", "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
            "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]", "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
            "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]", "HMAC_MD5_96": "HMAC-MD5-96 [RFC2403]"}


def wireshark_esp_sa(rows: list[dict[str, str]], encr: str = "AES_GCM_16", integ: str = "") -> str:
    """Wireshark ``esp_sa`` UAT text from :attr:`KeyLog.esp` rows; ``encr``/``integ`` are
    charon's algorithm names as list-sas reports them."""
    out = []
    for r in rows:
        fam = "IPv6" if ":" in r["src"] else "IPv4"
        akey = f'0x{r["integ"]}' if r.get("integ") else ""
        out.append(f'"{fam}","{r["src"]}","{r["dst"]}","0x{r["spi"]}","{WS_ENCR.get(encr, encr)}",'
                   f'"0x{r["enc"]}","{WS_INTEG.get(integ, integ)}","{akey}"')
    return "\n".join(out) + "\n"


def wireshark_ikev2(rows: list[dict[str, str]], encr: str = "AES-CBC-256 [RFC3602]",
                    integ: str = "HMAC_SHA2_256_128 [RFC4868]") -> str:
    """Wireshark ``ikev2_decryption_table`` UAT text from :attr:`KeyLog.ike` rows."""
    return "".join(
        f'{r["spi_i"]},{r["spi_r"]},{r["sk_ei"]},{r["sk_er"]},"{encr}",{r.get("sk_ai", "")},'
        f'{r.get("sk_ar", "")},"{integ}"\n'
        for r in rows if "spi_i" in r)


# --------------------------------------------------------------------------- the baseline pair
@dataclass
class CharonPair:
    """charon <-> charon across one veth; an inside host behind each gateway.

    ``left``/``right`` are the gateways' :class:`Charon`; ``hosts`` the inside host netns
    names; ``inside`` the inside host addresses (ping/iperf from ``hosts[0]`` to ``inside[1]``).
    """

    lab: Netns
    left: Charon
    right: Charon
    gateways: tuple[str, str]
    hosts: tuple[str, str]
    outer: tuple[str, str]
    inside: tuple[str, str]
    conn: tuple[Conn, Conn]

    def ping(self, count: int = 3, size: int = 56, from_left: bool = True, timeout: float = 10.0) -> int:
        """Ping inside host to inside host; returns how many replies came back."""
        src, dst = (self.hosts[0], self.inside[1]) if from_left else (self.hosts[1], self.inside[0])
        return ping(src, dst, count=count, size=size, timeout=timeout)


def ping(ns: str, dst: str, count: int = 3, size: int = 56, timeout: float = 10.0, interval: float = 0.2) -> int:
    """Ping from netns ``ns``; returns the number of replies received."""
    need_ping()
    r = ns_exec(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", "-s", str(size), dst,
                timeout=timeout, check=False)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def setup_gateway(lab: Netns, gw: str, host: str, prefix: str, side: str, gw_inside: str, host_inside: str) -> None:
    """An inside host netns behind gateway ``gw`` on a veth, with forwarding on the gateway."""
    lab.veth(gw, f"{prefix}{side}i", host, f"{prefix}{side}h", (gw_inside,), (host_inside,))
    v6 = ":" in gw_inside
    lab.route(host, "::/0" if v6 else "0.0.0.0/0", gateway=gw_inside.split("/")[0])
    lab.sysctl(gw, "net.ipv6.conf.all.forwarding" if v6 else "net.ipv4.ip_forward", "1")


def _link_local_ready(ns: str, link: str) -> bool:
    out = ns_exec(ns, "ip", "-6", "-o", "addr", "show", "dev", link, "scope", "link", check=False).stdout
    return "fe80" in out and "tentative" not in out


@dataclass(frozen=True)
class PairTopology:
    """Two gateways joined by one veth, an inside host behind each (see :func:`pair_topology`)."""

    lab: Netns
    gateways: tuple[str, str]
    hosts: tuple[str, str]
    outer: tuple[str, str]  # gateway addresses on the shared link
    inside: tuple[str, str]  # inside host addresses
    subnets: tuple[str, str]  # inside subnets (the traffic selectors)
    links: tuple[str, str]  # the gateways' outer link names (for captures)


@contextmanager
def pair_topology(prefix: str, *, ipv6: bool = False) -> Iterator[PairTopology]:
    """netns ``<prefix>L``/``<prefix>R`` (gateways, 192.0.2.1/.2 on one veth) and
    ``<prefix>HL``/``<prefix>HR`` (inside hosts 10.1.0.2 / 10.2.0.2, gateways .1, forwarding on).
    IPv6 is off everywhere (charon would send MOBIKE updates on address events) unless
    ``ipv6``: then everything is IPv6 only (2001:db8::1/2 outside, fd00:1::/64 and fd00:2::/64
    inside) and connections must say ``mobike = no`` (our :class:`Conn` default)."""
    lab = Netns()
    try:
        gl, gr = lab.add(prefix + "L", ipv6=ipv6), lab.add(prefix + "R", ipv6=ipv6)
        hl, hr = lab.add(prefix + "HL", ipv6=ipv6), lab.add(prefix + "HR", ipv6=ipv6)
        if ipv6:
            outer, plen = ("2001:db8::1", "2001:db8::2"), "/64"
            gw_in, host_in, subnets = ("fd00:1::1/64", "fd00:2::1/64"), ("fd00:1::2", "fd00:2::2"), \
                ("fd00:1::/64", "fd00:2::/64")
        else:
            outer, plen = ("192.0.2.1", "192.0.2.2"), "/24"
            gw_in, host_in, subnets = ("10.1.0.1/24", "10.2.0.1/24"), ("10.1.0.2", "10.2.0.2"), \
                ("10.1.0.0/24", "10.2.0.0/24")
        lab.veth(gl, prefix + "o0", gr, prefix + "o1", (outer[0] + plen,), (outer[1] + plen,))
        hplen = "/" + gw_in[0].split("/")[1]
        setup_gateway(lab, gl, hl, prefix, "l", gw_in[0], host_in[0] + hplen)
        setup_gateway(lab, gr, hr, prefix, "r", gw_in[1], host_in[1] + hplen)
        if ipv6:
            # neighbour discovery needs a usable link-local address; until the kernel has one,
            # the first packets wait (about a second), which would look like IKE retransmissions
            for ns, link in ((gl, prefix + "o0"), (gr, prefix + "o1"), (gl, prefix + "li"), (gr, prefix + "ri"),
                             (hl, prefix + "lh"), (hr, prefix + "rh")):
                wait_for(lambda ns=ns, link=link: _link_local_ready(ns, link), 5)
        yield PairTopology(lab, (gl, gr), (hl, hr), outer, host_in, subnets, (prefix + "o0", prefix + "o1"))
    finally:
        lab.close()


@dataclass(frozen=True)
class StarTopology:
    """One gateway (``hub``) and ``n`` remote gateways on one bridged segment, an inside host
    behind each (see :func:`star_topology`)."""

    lab: Netns
    hub: str
    hub_host: str
    remotes: tuple[str, ...]
    remote_hosts: tuple[str, ...]
    hub_addr: str
    remote_addrs: tuple[str, ...]
    hub_subnet: str
    remote_subnets: tuple[str, ...]
    hub_inside: str
    remote_inside: tuple[str, ...]


@contextmanager
def star_topology(prefix: str, n: int = 2) -> Iterator[StarTopology]:
    """netns ``<prefix>H`` (hub, 192.0.2.1 on a bridge) + ``<prefix>R0..`` (192.0.2.2.., each on a
    veth into the hub's bridge), inside hosts ``<prefix>HH`` (10.1.0.2) and ``<prefix>HR<i>``
    (10.<i+2>.0.2).  E.g. an on-premises device with tunnels to both instances of an
    active-active Azure VPN gateway."""
    if not 1 <= n <= 8:
        raise ValueError(f"n: 1..8 remote gateways, got {n}")
    lab = Netns()
    try:
        hub, hub_host = lab.add(prefix + "H"), lab.add(prefix + "HH")
        setup_gateway(lab, hub, hub_host, prefix, "h", "10.1.0.1/24", "10.1.0.2/24")
        remotes, hosts, addrs, subnets, inside = [], [], [], [], []
        for i in range(n):
            r, h = lab.add(f"{prefix}R{i}"), lab.add(f"{prefix}HR{i}")
            addr = f"192.0.2.{i + 2}"
            lab.veth(hub, f"{prefix}b{i}", r, f"{prefix}o{i}", (), (addr + "/24",))
            setup_gateway(lab, r, h, prefix, f"r{i}", f"10.{i + 2}.0.1/24", f"10.{i + 2}.0.2/24")
            remotes.append(r)
            hosts.append(h)
            addrs.append(addr)
            subnets.append(f"10.{i + 2}.0.0/24")
            inside.append(f"10.{i + 2}.0.2")
        lab.bridge(hub, prefix + "br", tuple(f"{prefix}b{i}" for i in range(n)), ("192.0.2.1/24",))
        yield StarTopology(lab, hub, hub_host, tuple(remotes), tuple(hosts), "192.0.2.1", tuple(addrs),
                           "10.1.0.0/24", tuple(subnets), "10.1.0.2", tuple(inside))
    finally:
        lab.close()


def pair_conn(topo: PairTopology, side: int, *, ike_proposal: str, esp_proposal: str, psk: str,
              **conn_kw: Any) -> Conn:
    """The charon connection for gateway ``side`` (0 left, 1 right) of a :class:`PairTopology`:
    IDs "left"/"right", inside subnet to inside subnet, connection "pair", child "net"."""
    me, peer = topo.outer[side], topo.outer[1 - side]
    ids = ("left", "right")
    child = Child(name="net", local_ts=(topo.subnets[side],), remote_ts=(topo.subnets[1 - side],),
                  esp_proposals=(esp_proposal,))
    return Conn(name="pair", local_addrs=(me,), remote_addrs=(peer,), local_id=ids[side],
                remote_id=ids[1 - side], psk=psk, proposals=(ike_proposal,), children=(child,), **conn_kw)


@contextmanager
def charon_pair(prefix: str, *, ike_proposal: str = "aes128gcm16-prfsha256-ecp256",
                esp_proposal: str = "aes128gcm16", key_log: bool = False, psk: str = "ipsecemu-test-psk",
                establish: bool = True) -> Iterator[CharonPair]:
    """Bring up two charons on a :func:`pair_topology`, load a PSK connection on both, initiate
    from the left and wait until both show it ESTABLISHED/INSTALLED.  Everything is stopped and
    deleted on exit."""
    charons: list[Charon] = []
    with pair_topology(prefix) as topo:
        try:
            gl, gr = topo.gateways
            conns = [pair_conn(topo, i, ike_proposal=ike_proposal, esp_proposal=esp_proposal, psk=psk)
                     for i in (0, 1)]
            left, right = Charon(gl, key_log=key_log), Charon(gr, key_log=key_log)
            charons += [left, right]
            left.start()
            right.start()
            left.load(conns[0])
            right.load(conns[1])
            pair = CharonPair(topo.lab, left, right, topo.gateways, topo.hosts, topo.outer, topo.inside,
                              (conns[0], conns[1]))
            if establish:
                left.initiate(child="net", ike="pair")
                left.wait_established()
                right.wait_established()
                # libipsec's route via ipsec0 appears right after the SA is installed
                wait_for(lambda: "ipsec0" in ns_exec(gl, "ip", "route", "show", "table", "all").stdout, 3)
            yield pair
        finally:
            for c in charons:
                c.cleanup()
